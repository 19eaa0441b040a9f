//! Deterministic fast-path profile: establishes N connections through the
//! four-layer port (half SNAT + VXLAN to the internet gateway, half VNET),
//! then runs batches of established-flow data packets in all four classes
//! (NAT out, NAT in, VNET out, VNET in) through [`Port::process_batch`].
//! Wall time on a shared VM is noisy; for instruction counts run it under
//! callgrind and collect only the measured batches:
//!
//! ```text
//! cargo build --release -p strata-engine --example fastpath
//! N=4096 valgrind --tool=callgrind --toggle-collect='fastpath::measured' \
//!     target/release/examples/fastpath
//! ```
//!
//! The instruction total divided by the printed packet count is the
//! fast-path cost per packet (parse, lookup, TCP tracking, counting, emit).
//! `CLASSES` (a bit mask, default 15) measures only some classes: 1 is
//! outbound NAT (SNAT + VXLAN push, the criterion fast path's traffic).

#[path = "../tests/common/mod.rs"]
mod common;
use common::*;
use std::net::Ipv4Addr;
use strata_engine::{Direction, Port, Verdict, secs};
use strata_packet::PacketBuf;

/// Establish VNET connection `i`; its outbound and inbound data frames.
fn vnet_conn(p: &mut Port, i: u32) -> [(Direction, Vec<u8>); 2] {
    let (x, y) = peer_of(i);
    let peer = Ipv4Addr::new(10, 1, x, y);
    let sp = 1024 + ((i / 1000) % 60000) as u16;
    let dp = 80 + (i % 1000) as u16;
    assert!(forwards(
        p,
        Direction::Out,
        &vm_tcp(peer, sp, dp, SYN, 1, 0, b""),
        secs(1)
    ));
    assert!(forwards(
        p,
        Direction::In,
        &peer_tcp(x, y, dp, sp, SYN | ACK, 9, 2, b""),
        secs(1)
    ));
    assert!(forwards(
        p,
        Direction::Out,
        &vm_tcp(peer, sp, dp, ACK, 2, 10, b""),
        secs(1)
    ));
    [
        (Direction::Out, vm_tcp(peer, sp, dp, ACK, 2, 10, &PAYLOAD)),
        (Direction::In, peer_tcp(x, y, dp, sp, ACK, 10, 2, &PAYLOAD)),
    ]
}

fn main() {
    let n: u32 = env_or("N", 4096);
    let rounds: usize = env_or("ROUNDS", 4);
    let mask: usize = env_or("CLASSES", 15);
    let mut port = port_for(n);
    // Per class: outbound NAT, inbound NAT, outbound VNET, inbound VNET.
    let mut classes: [Vec<Vec<u8>>; 4] = Default::default();
    for i in 0..n / 2 {
        let [(_, o), (_, i_)] = nat_conn(&mut port, i);
        classes[0].push(o);
        classes[1].push(i_);
        let [(_, o), (_, i_)] = vnet_conn(&mut port, i);
        classes[2].push(o);
        classes[3].push(i_);
    }
    let mut bufs: Vec<PacketBuf> = (0..32).map(|_| PacketBuf::with_capacity(2048)).collect();
    let mut verdicts = vec![Verdict::Forward; 32];
    // Warm-up: every flow once (first data packets change TCP state).
    measured_or_not(&mut port, &mut bufs, &mut verdicts, &classes, 1);
    let slow = |p: &Port| {
        [Direction::Out, Direction::In].map(|d| {
            let c = p.direction_counters(d);
            (c.slow_path, c.reconciled)
        })
    };
    let before = slow(&port);
    let t = std::time::Instant::now();
    for (k, c) in classes.iter_mut().enumerate() {
        if mask & 1 << k == 0 {
            c.clear();
        }
    }
    let packets = measured(&mut port, &mut bufs, &mut verdicts, &classes, rounds);
    assert_eq!(
        slow(&port),
        before,
        "measured packets all hit the fast path"
    );
    println!(
        "{} connections, {packets} packets: {:?} per packet",
        port.connection_count(),
        t.elapsed() / packets as u32
    );
}

/// A separate symbol, so callgrind can collect the measured batches only.
#[inline(never)]
fn measured(
    port: &mut Port,
    bufs: &mut [PacketBuf],
    verdicts: &mut [Verdict],
    classes: &[Vec<Vec<u8>>; 4],
    rounds: usize,
) -> usize {
    measured_or_not(port, bufs, verdicts, classes, rounds)
}

#[inline(always)]
fn measured_or_not(
    port: &mut Port,
    bufs: &mut [PacketBuf],
    verdicts: &mut [Verdict],
    classes: &[Vec<Vec<u8>>; 4],
    rounds: usize,
) -> usize {
    let mut packets = 0;
    for _ in 0..rounds {
        for (k, frames) in classes.iter().enumerate() {
            let d = if k % 2 == 0 {
                Direction::Out
            } else {
                Direction::In
            };
            for chunk in frames.chunks(bufs.len()) {
                for (b, f) in bufs.iter_mut().zip(chunk) {
                    b.reset(f);
                }
                let m = chunk.len();
                port.process_batch(d, &mut bufs[..m], secs(2), &mut verdicts[..m]);
                assert!(verdicts[..m].iter().all(|v| v.is_forward()));
                packets += m;
            }
        }
    }
    packets
}
