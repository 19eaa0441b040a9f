//! Engine benchmarks (issue 2): fast path with 1M established connections,
//! slow path through a 1,000-rule ACL group, full TCP connection rate, and
//! memory per connection. A counting allocator proves the fast path does not
//! allocate and measures memory.
//!
//! Run: `cargo bench -p strata-engine --bench engine`
//! (`STRATA_BENCH_FLOWS=100000` for a quicker, smaller table.)

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use strata_engine::scenario::*;
use strata_engine::{Direction, Port, PortConfig, Verdict, secs};
use strata_packet::PacketBuf;

/// Counts allocations and live bytes.
struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicU64 = AtomicU64::new(0);

/// Live heap bytes: what the counting allocator saw, plus the big bucket
/// arrays the engine maps itself (`hint::ZeroedArray`).
fn live_bytes() -> u64 {
    LIVE.load(Relaxed) + strata_engine::hint::mapped_bytes() as u64
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        LIVE.fetch_add(l.size() as u64, Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as u64, Relaxed);
        // SAFETY: p was allocated by System with layout l.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        LIVE.fetch_add(new as u64, Relaxed);
        LIVE.fetch_sub(l.size() as u64, Relaxed);
        // SAFETY: p was allocated by System with layout l.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Frame builders shared with the integration tests (etherparse-based).
#[path = "../tests/common/mod.rs"]
mod common;
use common::{nat_conn, peer_of, probe_syn, tcp};

/// The fast path's floor: the same frames, the least work (see its docs).
mod floor;

fn vxlan(src_pa: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    common::vxlan(GW_MAC, HOST_MAC, src_pa, HOST_PA, VNI, inner)
}

fn run(p: &mut Port, buf: &mut PacketBuf, d: Direction, f: &[u8], now: u64) -> Verdict {
    buf.reset(f);
    p.process(d, buf, now)
}

/// Establish a VNET connection `i` (VM → 10.1.x.y, encap) with a handshake.
fn vnet_conn(p: &mut Port, buf: &mut PacketBuf, i: u32, now: u64) {
    let (x, y) = peer_of(i);
    let sp = 1024 + ((i / 1000) % 60000) as u16;
    let dp = 80 + (i % 1000) as u16;
    let peer = Ipv4Addr::new(10, 1, x, y);
    run(
        p,
        buf,
        Direction::Out,
        &tcp(VM_MAC, VM_GW_MAC, VM_CA, peer, sp, dp, 0x02, 1, 0, b""),
        now,
    );
    let sa = tcp(
        remote_mac(x, y),
        VM_MAC,
        peer,
        VM_CA,
        dp,
        sp,
        0x12,
        9,
        2,
        b"",
    );
    run(p, buf, Direction::In, &vxlan(remote_pa(x, y), &sa), now);
    run(
        p,
        buf,
        Direction::Out,
        &tcp(VM_MAC, VM_GW_MAC, VM_CA, peer, sp, dp, 0x10, 2, 10, b""),
        now,
    );
}

fn flows_target() -> u32 {
    std::env::var("STRATA_BENCH_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn fast_path(c: &mut Criterion) {
    let total = flows_target();
    let nat_flows = 32_768u32.min(total / 2);
    let cfg = PortConfig {
        max_connections: total as usize + 1024,
        tcp_established_idle: secs(3600),
        ..PortConfig::default()
    };
    let live0 = live_bytes();
    let mut port = four_layer_port_with(cfg, 0, true).expect("port");
    install_mappings(&mut port, 4).expect("mappings");
    let mut buf = PacketBuf::with_capacity(2048);
    let live_policy = live_bytes();
    let mut frames = Vec::with_capacity(nat_flows as usize);
    for i in 0..nat_flows {
        let [(_, out), _] = nat_conn(&mut port, i);
        frames.push(out);
    }
    for i in 0..(total - nat_flows) {
        vnet_conn(&mut port, &mut buf, i, secs(1));
    }
    let frames_bytes: u64 =
        frames.iter().map(|f| f.capacity() as u64).sum::<u64>() + 24 * frames.capacity() as u64;
    let live = live_bytes() - live_policy - frames_bytes;
    let conns = port.connection_count() as u64;
    let mem = port.flow_memory();
    let per = |b: u64| b as f64 / conns.max(1) as f64;
    let flow_state = mem.total() as u64;
    let counters = port.counter_memory_bytes() as u64;
    // The target's measure is the flow state (both unified flows, the
    // layer flows, their indexes and shared parts), as the port accounts
    // it; the allocator's count of everything the connections added is
    // printed beside it, with the counters (per-destination meter buckets
    // here) and what neither explains.
    println!(
        "setup: {conns} connections, {} unified flows, layer flows acl={} slb={}; \
         flow state {:.1} MiB = {:.1} bytes/connection; all heap growth {:.1} bytes/connection \
         = flow state + counters {:.1} ({} meter buckets) + unexplained {:.1} \
         (policy+mappings {:.1} MiB)",
        port.unified_flow_count(),
        port.layer_flow_count("acl"),
        port.layer_flow_count("slb"),
        flow_state as f64 / 1048576.0,
        per(flow_state),
        per(live),
        per(counters),
        port.counters().arena.meter_bucket_count(),
        per(live) - per(flow_state) - per(counters),
        (live_policy - live0) as f64 / 1048576.0
    );
    println!(
        "flow state by part (bytes/connection): connections {:.1}, unified flow index {:.1}, \
         shared {:.1}, layer flows {}",
        per(mem.connections as u64),
        per(mem.uft_index as u64),
        per(mem.shared as u64),
        mem.layer_flows
            .iter()
            .map(|(l, b)| format!("{l} {:.1}", per(*b as u64)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(
        port.counters().tcp.handshakes_completed,
        conns,
        "all established"
    );

    // Zero allocations per packet on the fast path.
    let mut bufs: Vec<PacketBuf> = (0..32).map(|_| PacketBuf::with_capacity(2048)).collect();
    let mut verdicts = vec![Verdict::Forward; 32];
    // Frames laid out back to back with a fixed stride, as in an rx ring.
    const STRIDE: usize = 256;
    let mut ring = vec![0u8; frames.len() * STRIDE];
    let mut lens = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        ring[i * STRIDE..i * STRIDE + f.len()].copy_from_slice(f);
        lens.push(f.len());
    }
    drop(frames);
    let mut next = 0usize;
    let mut batch = |port: &mut Port, bufs: &mut [PacketBuf], verdicts: &mut [Verdict]| {
        for b in bufs.iter_mut() {
            b.reset(&ring[next * STRIDE..next * STRIDE + lens[next]]);
            next = (next + 1) % lens.len();
        }
        port.process_batch(Direction::Out, bufs, secs(2), verdicts);
    };
    batch(&mut port, &mut bufs, &mut verdicts);
    let a0 = ALLOCS.load(Relaxed);
    let n_batches = 10_000;
    for _ in 0..n_batches {
        batch(&mut port, &mut bufs, &mut verdicts);
    }
    let allocs = ALLOCS.load(Relaxed) - a0;
    assert!(verdicts.iter().all(|v| *v == Verdict::Forward));
    println!(
        "fast path allocations: {allocs} in {} packets ({:.4}/packet)",
        n_batches * 32,
        allocs as f64 / (n_batches * 32) as f64
    );

    println!(
        "fast path check: {:?}",
        port.counters().direction(Direction::Out)
    );
    let mut g = c.benchmark_group("fast_path");
    g.throughput(Throughput::Elements(32));
    g.bench_function(format!("nat_vxlan_batch32_{conns}_conns"), |b| {
        b.iter(|| {
            batch(&mut port, &mut bufs, &mut verdicts);
            black_box(&verdicts);
        })
    });

    // The floor, in the same run: a table of as many connections, the
    // same frames out of the same ring, its output checked against the
    // engine's for every frame first.
    let n = lens.len();
    let frame = |i: usize| &ring[i * STRIDE..i * STRIDE + lens[i]];
    let outs: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let v = run(&mut port, &mut buf, Direction::Out, frame(i), secs(2));
            assert_eq!(v, Verdict::Forward);
            buf.as_slice().to_vec()
        })
        .collect();
    let mut fl = floor::Floor::new((2 * conns as usize).next_power_of_two(), &outs[0]);
    for (i, o) in outs.iter().enumerate() {
        fl.add_flow(frame(i), o);
    }
    for i in 0..(conns as usize - n) as u32 {
        fl.add_other(i);
    }
    let mut fbufs: Vec<floor::Buf> = (0..32).map(|_| floor::Buf::new()).collect();
    let mut fwd = [false; 32];
    let mut fnext = 0usize;
    let mut fbatch = |fl: &mut floor::Floor, fbufs: &mut [floor::Buf], fwd: &mut [bool]| {
        let first = fnext;
        fnext = (fnext + fbufs.len()) % n;
        let frames = (0..fbufs.len()).map(|k| {
            let i = (first + k) % n;
            (i * STRIDE, lens[i])
        });
        fl.batch(fbufs, frames, &ring, fwd);
        first
    };
    for _ in 0..n.div_ceil(32) {
        let first = fbatch(&mut fl, &mut fbufs, &mut fwd);
        for (k, b) in fbufs.iter().enumerate() {
            let i = (first + k) % n;
            assert!(fwd[k], "floor forwards frame {i}");
            assert_eq!(
                b.as_slice(),
                &outs[i][..],
                "floor output = engine output, frame {i}"
            );
        }
    }
    drop(outs);
    println!(
        "fast path floor: {} frames' output equal to the engine's; {} flows in its table",
        n, conns
    );
    g.bench_function(format!("floor_nat_vxlan_batch32_{conns}_conns"), |b| {
        b.iter(|| {
            fbatch(&mut fl, &mut fbufs, &mut fwd);
            black_box(&fwd);
        })
    });
    g.finish();
}

fn slow_path(c: &mut Criterion) {
    // Two table sizes: up to 1M connections (new flows' state lands in
    // tables far bigger than the caches, as on a busy host), and up to 10k
    // (the same work with the tables cache-resident).
    for (name, cap) in [
        ("first_packet_4_layers_acl_1000_rules", 1_000_000),
        ("first_packet_4_layers_acl_1000_rules_10k_flows", 10_000),
    ] {
        slow_path_with(c, name, cap, false);
    }
    // The other half of a connection's slow-path work: an outbound
    // connection's inbound flow is made by its first reply (the SYN-ACK,
    // VXLAN-encapsulated), which simulates the inbound layers (meeting the
    // SYN's layer flows) and joins the connection by its VM-side key.
    slow_path_with(c, "first_reply_4_layers_acl_1000_rules", 1_000_000, true);
}

fn slow_path_with(c: &mut Criterion, name: &str, cap: usize, reply: bool) {
    let cfg = PortConfig {
        max_connections: 1 << 21,
        ..PortConfig::default()
    };
    let mut port = four_layer_port(cfg, 1000).expect("port");
    install_mappings(&mut port, 4).expect("mappings");
    // Shared by the untimed setup (which retires the table when it is
    // full, so no sample holds a bulk expiry) and the timed routine.
    let port = std::cell::RefCell::new(port);
    let mut buf = PacketBuf::with_capacity(2048);
    let mut i = 0u32;
    let mut g = c.benchmark_group("slow_path");
    g.bench_function(name, |b| {
        // By reference: the frames are freed after the timed batch (a
        // datapath's frames live in rings; freeing one is the harness's
        // work, not the port's).
        b.iter_batched_ref(
            || {
                if port.borrow().connection_count() > cap {
                    port.borrow_mut().expire(u64::MAX / 2);
                }
                i = i.wrapping_add(1);
                if reply {
                    // Untimed: the SYN that opens connection `i`.
                    let [(d, syn), (_, synack), ..] = common::lifecycle(i);
                    let mut setup_buf = PacketBuf::with_capacity(2048);
                    let v = run(&mut port.borrow_mut(), &mut setup_buf, d, &syn, secs(1));
                    assert!(v.is_forward());
                    return (Direction::In, synack);
                }
                (Direction::Out, common::vnet_syn(i))
            },
            |(d, f)| {
                let v = run(&mut port.borrow_mut(), &mut buf, *d, f, secs(1));
                black_box(v)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    let port = port.into_inner();
    println!(
        "slow path ({name}): {} outbound and {} inbound slow-path packets, {} connections, \
         {} unified flows",
        port.counters().direction(Direction::Out).slow_path,
        port.counters().direction(Direction::In).slow_path,
        port.connection_count(),
        port.unified_flow_count()
    );
}

fn connection_rate(c: &mut Criterion) {
    let mut port = four_layer_port(PortConfig::default(), 0).expect("port");
    install_mappings(&mut port, 4).expect("mappings");
    let mut buf = PacketBuf::with_capacity(2048);
    // Pre-built lifecycles (6 packets each) for 60,000 distinct connections.
    let lifecycles: Vec<[(Direction, Vec<u8>); 6]> =
        (0..60_000u32).map(common::lifecycle).collect();
    let mut now = secs(1);
    let mut k = 0usize;
    let mut g = c.benchmark_group("connection_rate");
    g.throughput(Throughput::Elements(1));
    g.bench_function("tcp_lifecycle_6_packets_create_and_retire", |b| {
        b.iter(|| {
            for (d, f) in &lifecycles[k] {
                black_box(run(&mut port, &mut buf, *d, f, now));
            }
            k += 1;
            if k == lifecycles.len() {
                // Retire every connection (all in TIME_WAIT) before the
                // tuples are reused.
                now += secs(61);
                port.expire(now);
                k = 0;
            }
        })
    });
    // The same lifecycles as a datapath reads a connection storm from its
    // rings: 32 connections at a time, each step one burst through
    // `process_batch` (their SYNs, then their SYN-ACKs, ...), retired
    // the same way. Per connection: the throughput is 32 connections.
    let mut bufs: Vec<PacketBuf> = (0..32).map(|_| PacketBuf::with_capacity(2048)).collect();
    let mut out = vec![Verdict::Forward; 32];
    g.throughput(Throughput::Elements(32));
    g.bench_function("tcp_lifecycle_6_packets_bursts_of_32", |b| {
        b.iter(|| {
            let burst = &lifecycles[k..k + 32];
            for step in 0..6 {
                let d = burst[0][step].0;
                for (buf, l) in bufs.iter_mut().zip(burst) {
                    buf.reset(&l[step].1);
                }
                port.process_batch(d, &mut bufs, now, &mut out);
                black_box(&out);
            }
            k += 32;
            if k + 32 > lifecycles.len() {
                now += secs(61);
                port.expire(now);
                k = 0;
            }
        })
    });
    g.finish();
    let cn = port.counters();
    println!(
        "connection rate: {} handshakes, {} closed, live {}",
        cn.tcp.handshakes_completed,
        cn.flows.connections_closed,
        port.connection_count()
    );
}

/// Issue 3: first packet through 10 layers × 10 groups × 5,000 generated
/// ACL rules each (500,000 rules; classifiers chosen by the planner).
fn slow_path_10x10x5k(c: &mut Criterion) {
    let t0 = std::time::Instant::now();
    let live0 = live_bytes();
    let (port, probes) = acl_layers_port(10, 10, 5000, 8192).expect("port");
    println!(
        "10x10x5k: built 500,000 rules in {:?}, {:.0} MiB",
        t0.elapsed(),
        (live_bytes() - live0) as f64 / 1048576.0
    );
    // Bulk expiry in the untimed setup, as in `slow_path_with`.
    let port = std::cell::RefCell::new(port);
    let mut buf = PacketBuf::with_capacity(2048);
    let mut i = 0u32;
    let mut g = c.benchmark_group("slow_path");
    g.bench_function("first_packet_10_layers_x_10_groups_x_5k_rules", |b| {
        b.iter_batched_ref(
            || {
                if port.borrow().connection_count() > 500_000 {
                    port.borrow_mut().expire(u64::MAX / 2);
                }
                i = i.wrapping_add(1);
                // A new flow each time (the source port varies), from the
                // VM's own MAC as in `slow_path`: a port whose every flow
                // came from a new MAC would intern a header context per
                // flow (`NEW_MAC=1` in `examples/acl_layers`).
                probe_syn(&probes, i)
            },
            |f| {
                black_box(run(
                    &mut port.borrow_mut(),
                    &mut buf,
                    Direction::Out,
                    f,
                    secs(1),
                ))
            },
            BatchSize::SmallInput,
        )
    });
    // The same first packets as a receive burst of 32 (`process_batch`,
    // as a datapath reads its rings): each frame's index bucket is
    // prefetched before the first is processed.
    let mut bufs: Vec<PacketBuf> = (0..32).map(|_| PacketBuf::with_capacity(2048)).collect();
    let mut verdicts = vec![Verdict::Forward; 32];
    g.throughput(Throughput::Elements(32));
    g.bench_function(
        "first_packet_10_layers_x_10_groups_x_5k_rules_batch_32",
        |b| {
            b.iter_batched_ref(
                || {
                    if port.borrow().connection_count() > 500_000 {
                        port.borrow_mut().expire(u64::MAX / 2);
                    }
                    (0..32)
                        .map(|_| {
                            i = i.wrapping_add(1);
                            probe_syn(&probes, i)
                        })
                        .collect::<Vec<_>>()
                },
                |frames| {
                    for (b, f) in bufs.iter_mut().zip(frames.iter()) {
                        b.reset(f);
                    }
                    port.borrow_mut().process_batch(
                        Direction::Out,
                        &mut bufs,
                        secs(1),
                        &mut verdicts,
                    );
                    black_box(&verdicts);
                },
                BatchSize::SmallInput,
            )
        },
    );
    g.finish();
    let out = port.into_inner().direction_counters(Direction::Out);
    println!(
        "10x10x5k: {} slow paths, {} forwarded",
        out.slow_path, out.forwarded
    );
}

/// ICMP errors relayed to the VM (a port-unreachable from a peer, through
/// the four layers with the 1,000-rule ACL and SNAT): about connections
/// not answered yet (the answer's walk through the layers, changing
/// nothing) and about answered ones (their inbound flow); beside them, the
/// same port's first packet, for the ratio. Errors make no state, so the
/// same 4,096 errors are sent again and again.
fn icmp_errors(c: &mut Criterion) {
    const N: u32 = 4096;
    let mut port = four_layer_port(PortConfig::default(), 1000).expect("port");
    let mut buf = PacketBuf::with_capacity(2048);
    let unreachable = etherparse::Icmpv4Type::DestinationUnreachable(
        etherparse::icmpv4::DestUnreachableHeader::Port,
    );
    let mut errors = [Vec::new(), Vec::new()];
    for i in 0..2 * N {
        let answered = i >= N;
        let dst = Ipv4Addr::new(93, 184, (i >> 8) as u8, i as u8);
        let sp = 20000 + (i % 30000) as u16;
        let query = common::udp(VM_MAC, VM_GW_MAC, VM_CA, dst, sp, 53, b"query");
        assert!(run(&mut port, &mut buf, Direction::Out, &query, secs(1)).is_forward());
        let sent = buf.as_slice().to_vec();
        if answered {
            let nat_port = u16::from_be_bytes([sent[34], sent[35]]);
            let answer = common::udp(GW_MAC, HOST_MAC, dst, VIP, 53, nat_port, b"answer");
            // (An answer to the tunnel ports' numbers reads as a tunnel
            // frame: those connections stay unanswered.)
            if !run(&mut port, &mut buf, Direction::In, &answer, secs(1)).is_forward() {
                continue;
            }
        }
        errors[usize::from(answered)].push(common::icmp_error(
            (GW_MAC, HOST_MAC),
            dst,
            VIP,
            unreachable.clone(),
            &sent[14..],
        ));
    }
    let mut g = c.benchmark_group("icmp_errors");
    for (name, errs) in [
        (
            "relayed_unanswered_connection_4_layers_acl_1000_rules",
            &errors[0],
        ),
        (
            "relayed_answered_connection_4_layers_acl_1000_rules",
            &errors[1],
        ),
    ] {
        // Allocations counted over passes of their own (criterion's
        // bookkeeping allocates too).
        let before = port.icmp_error_counters().relayed;
        let allocs = ALLOCS.load(Relaxed);
        for _ in 0..4 {
            for e in errs.iter() {
                assert!(run(&mut port, &mut buf, Direction::In, e, secs(2)).is_forward());
            }
        }
        let allocs = ALLOCS.load(Relaxed) - allocs;
        let relayed = port.icmp_error_counters().relayed - before;
        println!("icmp errors ({name}): {allocs} allocations in {relayed} relayed");
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % errs.len();
                black_box(run(&mut port, &mut buf, Direction::In, &errs[i], secs(2)))
            })
        });
    }
    g.finish();
    println!(
        "icmp errors: {} connections, {} unified flows after them",
        port.connection_count(),
        port.unified_flow_count()
    );
}

/// Large UDP datagrams from the VM to the internet (SNAT, through the
/// four layers with the 1,000-rule ACL), 4,096 connections, each datagram
/// 2,960 bytes of payload in three fragments: in order (the first hits
/// its unified flow and starts tracking, the later two take its ports),
/// and last first (two held, copied; the first releases them). Beside
/// them, the same connections' unfragmented 1,400-byte datagrams, for the
/// ratio. Per fragment (per datagram for the reference).
fn fragments(c: &mut Criterion) {
    const N: u32 = 4096;
    let mut port = four_layer_port(PortConfig::default(), 1000).expect("port");
    let mut buf = PacketBuf::with_capacity(4096);
    let mut whole = Vec::new();
    let mut datagrams = Vec::new();
    for i in 0..N {
        let dst = Ipv4Addr::new(93, 184, (i >> 8) as u8, i as u8);
        let sp = 20000 + i as u16;
        let small = common::udp(VM_MAC, VM_GW_MAC, VM_CA, dst, sp, 53, &[0x33; 1400]);
        assert!(run(&mut port, &mut buf, Direction::Out, &small, secs(1)).is_forward());
        whole.push(small);
        let large = common::udp(VM_MAC, VM_GW_MAC, VM_CA, dst, sp, 53, &[0x44; 2960]);
        datagrams.push(common::fragment_mtu(&large, i as u16, 1500));
    }
    let in_order: Vec<Vec<u8>> = datagrams.iter().flatten().cloned().collect();
    let last_first: Vec<Vec<u8>> = datagrams
        .iter()
        .flat_map(|d| d.iter().rev().cloned())
        .collect();
    let mut drained = 0u64;
    let mut send = |port: &mut Port, buf: &mut PacketBuf, f: &[u8]| {
        let v = run(port, buf, Direction::Out, f, secs(2));
        port.drain_released(|r| {
            drained += 1;
            black_box(r.verdict);
        });
        v
    };
    // Allocations counted over passes of their own (criterion's
    // bookkeeping allocates too), after one pass that sizes the tables.
    for frames in [&in_order, &last_first] {
        for f in frames.iter() {
            send(&mut port, &mut buf, f);
        }
    }
    let fc0 = port.fragment_counters();
    let allocs = ALLOCS.load(Relaxed);
    for _ in 0..4 {
        for frames in [&in_order, &last_first] {
            for f in frames.iter() {
                let v = send(&mut port, &mut buf, f);
                assert!(matches!(v, Verdict::Forward | Verdict::Held), "{v:?}");
            }
        }
    }
    let allocs = ALLOCS.load(Relaxed) - allocs;
    let fc = port.fragment_counters();
    println!(
        "fragments: {allocs} allocations in {} fragments ({} followed, {} held and released)",
        fc.first + fc.followed - fc0.first - fc0.followed,
        fc.followed - fc0.followed,
        fc.released - fc0.released
    );
    assert_eq!(fc.timed_out + fc.overflow, 0);
    let mut g = c.benchmark_group("fragments");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("reference_whole_datagram_1400_bytes", |b| {
        b.iter(|| {
            i = (i + 1) % whole.len();
            black_box(run(&mut port, &mut buf, Direction::Out, &whole[i], secs(2)))
        })
    });
    for (name, frames) in [
        ("fragment_of_3_in_order_4_layers_acl_1000_rules", &in_order),
        (
            "fragment_of_3_last_first_4_layers_acl_1000_rules",
            &last_first,
        ),
    ] {
        // Each datagram's fragments in their order, datagram after datagram.
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                let v = send(&mut port, &mut buf, &frames[i]);
                i = (i + 1) % frames.len();
                black_box(v)
            })
        });
    }
    g.finish();
    println!(
        "fragments: {} released and drained; {} connections",
        drained,
        port.connection_count()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(4));
    targets = fast_path, slow_path, slow_path_10x10x5k, connection_rate, icmp_errors, fragments
}
criterion_main!(benches);
