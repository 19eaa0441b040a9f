//! `Port::reserve`: a port sized ahead for its connections opens them
//! without a heap allocation (no table grows, no chunk is added), while the
//! same traffic through a port left to grow allocates; a reservation
//! beyond the port's limit is refused and changes nothing.

#[path = "common/mod.rs"]
mod common;
use common::counting::{Counting, allocation_calls};
use common::*;
use strata_engine::scenario::*;
use strata_engine::{ActionSpec, DefaultAction, Group, LayerSpec, Rule};
use strata_engine::{ApiError, Direction, Port, PortConfig, secs};
use strata_packet::PacketBuf;

#[global_allocator]
static ALLOC: Counting = Counting;

fn port() -> Port {
    let cfg = PortConfig {
        max_connections: 100_000,
        ..PortConfig::default()
    };
    let mut port = four_layer_port(cfg, 0).expect("port");
    install_mappings(&mut port, 4).expect("mappings");
    port
}

/// The handshake (SYN, SYN-ACK, ACK) of generated connections `range`.
fn handshakes(range: std::ops::Range<u32>) -> Vec<(Direction, Vec<u8>)> {
    range
        .flat_map(|i| lifecycle(i).into_iter().take(3))
        .collect()
}

/// Run the frames; the allocation calls made meanwhile.
fn allocations_running(port: &mut Port, frames: &[(Direction, Vec<u8>)]) -> usize {
    let mut buf = PacketBuf::with_capacity(2048);
    let before = allocation_calls();
    for (d, f) in frames {
        buf.reset(f);
        let v = port.process(*d, &mut buf, secs(2));
        assert!(v.is_forward(), "{v:?}");
    }
    allocation_calls() - before
}

/// Two ports of the four-layer stack that have run `warm`: one to reserve,
/// one to leave growing.
fn two_ports_after(warm: &[(Direction, Vec<u8>)]) -> (Port, Port) {
    let mut reserved = port();
    let mut growing = port();
    for p in [&mut reserved, &mut growing] {
        allocations_running(p, warm);
    }
    (reserved, growing)
}

#[test]
fn a_reserved_port_opens_its_connections_without_allocating() {
    // Connections 0..1000 reach every peer once: the verdicts' actions,
    // counter lists and meter buckets exist after them. The next 30,000
    // go to the same peers from other source ports.
    let warm = handshakes(0..1000);
    let more = handshakes(1000..31_000);
    let (mut reserved, mut growing) = two_ports_after(&warm);
    let held = reserved.flow_memory().total();
    reserved.reserve(40_000).expect("within the limit");
    assert!(
        reserved.flow_memory().total() > held + 40_000 * 150,
        "the reservation is held and accounted"
    );

    assert_eq!(allocations_running(&mut reserved, &more), 0);
    assert!(allocations_running(&mut growing, &more) > 0);
    assert_eq!(reserved.connection_count(), 31_000);
    assert_eq!(growing.connection_count(), 31_000);
    // Every connection works in both (the VM's ACK again, now on the
    // fast path).
    let data = |i: u32| lifecycle(i)[2].clone();
    for i in [0, 999, 1000, 17_321, 30_999] {
        let (d, f) = data(i);
        assert!(forwards(&mut reserved, d, &f, secs(3)), "connection {i}");
        assert!(forwards(&mut growing, d, &f, secs(3)), "connection {i}");
    }
    assert_eq!(reserved.unified_flow_count(), growing.unified_flow_count());
}

#[test]
fn reserving_beyond_the_limit_is_refused_and_changes_nothing() {
    let mut p = port();
    allocations_running(&mut p, &handshakes(0..10));
    let before = p.flow_memory();
    assert_eq!(
        p.reserve(100_001),
        Err(ApiError::ReserveBeyondLimit {
            requested: 100_001,
            max: 100_000
        })
    );
    assert_eq!(p.flow_memory().total(), before.total());
    assert_eq!(p.reserved_connections(), 0);
    // Reserving less than the port holds already is a no-op that works.
    p.reserve(5).expect("within the limit");
    assert_eq!(p.connection_count(), 10);
}

/// A reservation the machine cannot back is refused before anything is
/// allocated (every page of it would be written at once: the process
/// would be killed instead), and past 2^31 connections, which a port
/// cannot number, whatever its `max_connections`.
#[test]
fn reserving_beyond_memory_or_numbering_is_refused_and_changes_nothing() {
    let cfg = PortConfig {
        max_connections: usize::MAX,
        ..PortConfig::default()
    };
    let mut p = four_layer_port(cfg, 0).expect("port");
    install_mappings(&mut p, 4).expect("mappings");
    allocations_running(&mut p, &handshakes(0..10));
    let before = p.flow_memory();
    let most = strata_engine::port::MAX_CONNECTIONS;
    assert_eq!(
        p.reserve(most + 1),
        Err(ApiError::ReserveBeyondLimit {
            requested: most + 1,
            max: most
        })
    );
    // 2^31 connections need hundreds of GiB of flow tables.
    let Some(available) = strata_engine::host_memory::available() else {
        return; // not known here: nothing to check against
    };
    match p.reserve(most) {
        Err(ApiError::ReserveBeyondMemory {
            requested,
            needed,
            available: said,
        }) => {
            assert_eq!(requested, most);
            // The slots alone are 184 bytes per connection.
            assert!(needed > most * 184, "{needed}");
            // The machine's figure, read again: close to the one reported.
            assert!(said.abs_diff(available) < 1 << 30, "{said} vs {available}");
            let e = p.reserve(most).unwrap_err().to_string();
            assert!(e.contains("bytes available"), "{e}");
        }
        other => panic!("{other:?} (available {available})"),
    }
    assert_eq!(p.flow_memory(), before);
    assert_eq!(p.reserved_connections(), 0);
    assert_eq!(p.connection_count(), 10);
    p.reserve(1000).expect("a reservation the machine can back");
    assert_eq!(p.reserved_connections(), 1000);
}

/// The bytes a reservation is checked against memory with are the bytes
/// it then holds (within the tables' small fixed parts): an estimate far
/// off would refuse what fits, or let through what does not.
#[test]
fn a_reservation_holds_the_bytes_it_was_checked_for() {
    use strata_engine::action::MAX_METER_BUCKETS;
    use strata_engine::flow_table::{LayerFlowTable, UnifiedFlowTable};
    for n in [40_000, 100_000] {
        let mut p = port();
        let before = p.flow_memory().total();
        p.reserve(n).expect("within the limit");
        let held = p.flow_memory().total() - before;
        // Two layers hold stateful rules: the ACL and SLB NAT, whose rules
        // transpose (its map of extra parts is sized too).
        // And a counter list for each meter bucket to come: the meter
        // layer's two rules may make 65,537 each, one per connection and
        // direction at most.
        let buckets = p.meter_bucket_room(n);
        assert_eq!(buckets, (2 * n).min(2 * (MAX_METER_BUCKETS + 1)));
        let expected = UnifiedFlowTable::reserve_bytes(n)
            + 2 * LayerFlowTable::reserve_bytes(n)
            + LayerFlowTable::extras_reserve_bytes(n)
            + UnifiedFlowTable::counter_lists_reserve_bytes(buckets);
        let off = held.abs_diff(expected) as f64 / expected as f64;
        assert!(off < 0.02, "{n}: held {held}, expected {expected}");
    }
}

/// SNAT'd connections on a reserved port: the NAT layer's map of extra
/// parts, their pool's first chunk and the SNAT pool's set of ports in use
/// were sized with it, so none doubles (re-hashing or copying every entry)
/// inside a packet, and no flow boxes its extra parts: no allocation at
/// all (30,010 before the maps were sized, 30,000 before the pool).
#[test]
fn snat_connections_on_a_reserved_port_grow_no_map() {
    let web = std::net::Ipv4Addr::new(93, 184, 216, 34);
    let syn = |i: u32| {
        (
            Direction::Out,
            vm_tcp(web, 1024 + (i % 60_000) as u16, 443, SYN, 1, 0, b""),
        )
    };
    let warm: Vec<_> = (0..1000).map(syn).collect();
    let more: Vec<_> = (1000..31_000).map(syn).collect();
    let (mut reserved, mut growing) = two_ports_after(&warm);
    reserved.reserve(40_000).expect("within the limit");
    let calls = allocations_running(&mut reserved, &more);
    assert_eq!(
        calls,
        0,
        "allocations for {} SNAT'd connections",
        more.len()
    );
    // Left to grow, the maps and the pool's first chunk double on the way.
    assert!(allocations_running(&mut growing, &more) > 0);
    assert_eq!(reserved.layer_flow_count("slb"), 31_000);
}

/// Connections that arrive encapsulated from VNET peers (to the VM's web
/// port): their ACL flows are keyed by the decapsulated packet, which
/// neither of the connection's keys is, so each keeps its own key. On a
/// reserved port the store of own keys does not grow inside a packet;
/// left to grow, it does (it was a map re-hashing every key as it
/// doubled: 5 growths per 30,000 connections).
#[test]
fn inbound_encapsulated_connections_on_a_reserved_port_keep_their_keys_without_allocating() {
    let handshake = |i: u32| inbound_handshake(i, 1024 + (i / 1000) as u16);
    let warm: Vec<_> = (0..1000).flat_map(handshake).collect();
    let more: Vec<_> = (1000..31_000).flat_map(handshake).collect();
    let (mut reserved, mut growing) = two_ports_after(&warm);
    let acl_flows = reserved.layer_flow_count("acl");
    reserved.reserve(40_000).expect("within the limit");
    assert_eq!(allocations_running(&mut reserved, &more), 0);
    assert!(allocations_running(&mut growing, &more) > 0);
    assert_eq!(reserved.layer_flow_count("acl"), acl_flows + 30_000);
    // The keys were kept: after a policy change the peer's data is
    // reconciled through the ACL, which finds the connection's flow by its
    // own key (a lost key would make a second flow).
    for p in [&mut reserved, &mut growing] {
        let customer_in = p
            .layer_specs()
            .into_iter()
            .find(|l| l.id == "acl")
            .and_then(|l| l.groups.into_iter().find(|g| g.id == "customer-in"))
            .expect("the ACL's inbound group");
        p.set_group("acl", customer_in)
            .expect("the same group again");
        let before = p.layer_flow_count("acl");
        let (x, y) = peer_of(20_000);
        let data = peer_tcp(x, y, 1024 + 20, 8080, ACK, 2, 10, &PAYLOAD);
        assert!(forwards(p, Direction::In, &data, secs(3)));
        assert_eq!(p.layer_flow_count("acl"), before);
    }
}

/// A SNAT pool added to a reserved port has its in-use set sized as
/// `Port::reserve` sizes the pools it finds: connections SNAT'd with its
/// ports allocate no more than when the pool came before the reservation,
/// and less than on a port left to grow (where the set doubles, re-hashing
/// its ports, inside packets).
#[test]
fn a_snat_pool_added_after_a_reservation_is_sized_for_it() {
    const LATE_POOL: &str = "snat-late";
    let late_ip = std::net::Ipv4Addr::new(203, 0, 113, 20);
    // SLB NAT's outbound group, its SNAT rule taking ports from the new
    // pool (the layer is stateful and transposes already: installing the
    // group sizes nothing).
    let add_pool = |p: &mut Port| {
        p.add_port_pool(LATE_POOL, late_ip.into(), vec![(1024, 65535)])
            .expect("a new pool");
        let mut g = four_layer_specs(0)
            .into_iter()
            .find(|l| l.id == "slb")
            .and_then(|l| l.groups.into_iter().find(|g| g.id == "snat-out"))
            .expect("SLB NAT's outbound group");
        for r in &mut g.rules {
            if let ActionSpec::Snat { pool } = &mut r.action {
                *pool = LATE_POOL.into();
            }
        }
        p.set_group("slb", g).expect("the group, with the new pool");
    };
    let web = std::net::Ipv4Addr::new(93, 184, 216, 34);
    let syn = |i: u32| {
        (
            Direction::Out,
            vm_tcp(web, 1024 + (i % 60_000) as u16, 443, SYN, 1, 0, b""),
        )
    };
    let frames = |r: std::ops::Range<u32>| r.map(syn).collect::<Vec<_>>();
    let more = frames(1100..31_000);
    enum Order {
        ReserveFirst,
        PoolFirst,
        NoReservation,
    }
    let measure = |order: Order| {
        let mut p = port();
        allocations_running(&mut p, &frames(0..1000));
        match order {
            Order::ReserveFirst => {
                p.reserve(40_000).expect("within the limit");
                add_pool(&mut p);
            }
            Order::PoolFirst => {
                add_pool(&mut p);
                p.reserve(40_000).expect("within the limit");
            }
            Order::NoReservation => add_pool(&mut p),
        }
        // The new rule's first connections (its action, its counters).
        allocations_running(&mut p, &frames(1000..1100));
        let calls = allocations_running(&mut p, &more);
        let pools = &p.resources().port_pools;
        // Every connection after the first thousand took a port from it.
        assert_eq!(pools[LATE_POOL].in_use(), 30_000);
        assert_eq!(pools[SNAT_POOL].in_use(), 1000);
        (p, calls)
    };
    let (mut late, calls) = measure(Order::ReserveFirst);
    let (_, sized_by_reserve) = measure(Order::PoolFirst);
    let (_, growing) = measure(Order::NoReservation);
    // As in `snat_connections_on_a_reserved_port_grow_no_map`: nothing
    // grows inside a packet.
    assert_eq!(
        calls,
        0,
        "allocations for {} SNAT'd connections",
        more.len()
    );
    assert!(
        calls <= sized_by_reserve,
        "{calls} allocations, {sized_by_reserve} when reserved after the pool came"
    );
    assert!(calls < growing, "{calls} reserved, {growing} growing");
    // A new connection leaves from the new pool's address.
    let (d, f) = syn(31_000);
    let (v, out) = run(&mut late, d, &f, secs(2));
    assert!(v.is_forward(), "{v:?}");
    assert_eq!(decode(&out).inner.src, late_ip);
}

/// New destinations past a meter rule's bucket cap share its "other"
/// bucket, found without building a name: on a reserved port their first
/// packets allocate nothing (each built the bucket's name, three strings,
/// to look it up, a sender spraying addresses among them).
#[test]
fn destinations_past_the_meter_cap_allocate_nothing_on_a_reserved_port() {
    use strata_engine::action::MAX_METER_BUCKETS;
    use strata_engine::condition::Field;
    let cap = MAX_METER_BUCKETS as u32;
    let mut meter = LayerSpec::new("meter", DefaultAction::Allow, DefaultAction::Allow);
    meter.groups.push(
        Group::new("per-dst", Direction::Out).with_rules(vec![Rule::new(
            "dst",
            1,
            vec![],
            ActionSpec::Meter {
                by: Field::DstIp,
                prefix_len: None,
            },
        )]),
    );
    let mut p = Port::new(
        "metered",
        PortConfig {
            max_connections: 100_000,
            ..PortConfig::default()
        },
    );
    p.add_layer(meter, None).expect("a meter layer");
    // One packet to each of `n` destinations from `first` (20.0.0.0 on).
    let to = |first: u32, n: u32| -> Vec<(Direction, Vec<u8>)> {
        (first..first + n)
            .map(|i| {
                let dst = std::net::Ipv4Addr::from(0x1400_0000 + i);
                (Direction::Out, vm_tcp(dst, 40_000, 80, SYN, 1, 0, b""))
            })
            .collect()
    };
    // Every bucket of the rule's own, then the shared one.
    allocations_running(&mut p, &to(0, cap + 1));
    p.reserve(90_000).expect("within the limit");
    let past = to(cap + 1, 2_000);
    assert_eq!(allocations_running(&mut p, &past), 0);
    let buckets = p.counters().meter("meter", "dst");
    assert_eq!(buckets.len(), MAX_METER_BUCKETS + 1);
    assert_eq!(buckets["other"].packets, 2_001);
    assert_eq!(buckets["20.0.0.7"].packets, 1);
}

/// A layer that allows everything outbound and tracks it (stateful: one
/// layer flow pair per connection).
fn tracking_layer(id: &str) -> LayerSpec {
    let mut l = LayerSpec::new(id, DefaultAction::Allow, DefaultAction::Allow);
    l.groups.push(tracking_group());
    l
}

fn tracking_group() -> Group {
    Group::new("track", Direction::Out).with_rules(vec![
        Rule::new("all-out", 1, vec![], ActionSpec::Allow).stateful(),
    ])
}

/// A layer added with stateful rules after the reservation, and a layer
/// given its first stateful rule after it, get their flow tables sized for
/// it as they are installed. With the four-layer port's ACL and SLB NAT
/// that makes four stateful layers, past the two layer flows a connection
/// holds inline: the rest of each list goes to overflow blocks, reserved
/// too. The reserved port still opens its connections without allocating.
/// (Both new layers sit above VNET's encapsulation, so their flows share
/// their connection's key, as the ACL's and NAT's do.)
#[test]
fn layers_made_stateful_after_a_reservation_are_sized_for_it() {
    use strata_engine::flow_table::LayerFlowTable;
    use strata_engine::layer_refs::RefBlocks;
    let mut p = port();
    allocations_running(&mut p, &handshakes(0..1000));
    p.reserve(40_000).expect("within the limit");
    let held = p.flow_memory().total();
    p.add_layer(tracking_layer("track-vm"), Some(0))
        .expect("a stateful layer");
    p.add_layer(
        LayerSpec::new("later", DefaultAction::Allow, DefaultAction::Allow),
        Some(2),
    )
    .expect("a stateless layer");
    p.set_group("later", tracking_group())
        .expect("its first stateful group");
    let grown = p.flow_memory().total() - held;
    let expected = 2 * LayerFlowTable::reserve_bytes(40_000)
        + RefBlocks::bytes_for(40_000 * RefBlocks::blocks_for(4));
    assert!(
        grown >= expected * 98 / 100,
        "two tables and the overflow blocks sized: grew {grown}, expected {expected}"
    );
    // New action contexts and counter lists come with the first
    // connections through the new layers; after those, nothing allocates.
    allocations_running(&mut p, &handshakes(1000..2000));
    assert_eq!(allocations_running(&mut p, &handshakes(2000..31_000)), 0);
    assert_eq!(p.connection_count(), 31_000);
    // The first thousand came before the new layers (their next packets
    // reconcile them).
    assert_eq!(p.layer_flow_count("track-vm"), 30_000);
    assert_eq!(p.layer_flow_count("later"), 30_000);
    // The close of an early connection and of the last one (which holds
    // four layer flows): they pass, and every flow is let go of.
    let mut buf = PacketBuf::with_capacity(2048);
    for i in [0, 30_999] {
        for (d, f) in lifecycle(i).into_iter().skip(3) {
            buf.reset(&f);
            assert!(
                p.process(d, &mut buf, secs(3)).is_forward(),
                "connection {i}"
            );
        }
    }
    p.expire(secs(1_000_000));
    assert_eq!(p.connection_count(), 0);
    assert_eq!(p.layer_flow_count("track-vm"), 0);
    assert_eq!(p.layer_flow_count("later"), 0);
}

/// The SYNs of generated VNET connections `range` (see [`lifecycle`]):
/// outbound only, so a connection NAT'd on the way out needs no reply
/// addressed to its new source.
fn syns(range: std::ops::Range<u32>) -> Vec<(Direction, Vec<u8>)> {
    range
        .map(|i| lifecycle(i).into_iter().next().expect("a SYN"))
        .collect()
}

/// The address [`nat_group`] rewrites the VM's source to.
const NAT_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(100, 64, 0, 4);

/// [`tracking_group`] replaced by a static source NAT: the layer stays
/// stateful, and its rules now transpose.
fn nat_group() -> Group {
    Group::new("track", Direction::Out).with_rules(vec![
        Rule::new(
            "nat-out",
            1,
            vec![],
            ActionSpec::Nat {
                src_ip: Some(NAT_IP.into()),
                dst_ip: None,
                src_port: None,
                dst_port: None,
            },
        )
        .stateful(),
    ])
}

/// When a reserved port's stateful layer gains its first rule that may
/// transpose, its map of extra parts is sized then, as `Port::reserve`
/// sizes it for a layer that transposes already: connections NAT'd in that
/// layer afterwards allocate no more than on a port whose layer transposed
/// when it was reserved (a map doubling inside packets would be more), and
/// less than on a port left to grow.
#[test]
fn a_layer_gaining_transposition_after_a_reservation_is_sized_for_it() {
    // The tracking layer goes between SLB NAT and VNET: the layers before
    // it transpose nothing for VNET traffic, so its flows share their
    // connection's key (no own-key map to grow).
    enum Order {
        ReserveFirst,
        NatFirst,
        NoReservation,
    }
    let more = syns(2000..31_000);
    let measure = |order: Order| {
        let mut p = port();
        p.add_layer(tracking_layer("nat"), Some(3))
            .expect("a stateful layer");
        allocations_running(&mut p, &handshakes(0..1000));
        match order {
            Order::ReserveFirst => {
                p.reserve(40_000).expect("within the limit");
                p.set_group("nat", nat_group()).expect("its first NAT rule");
            }
            Order::NatFirst => {
                p.set_group("nat", nat_group()).expect("its first NAT rule");
                p.reserve(40_000).expect("within the limit");
            }
            Order::NoReservation => {
                p.set_group("nat", nat_group()).expect("its first NAT rule");
            }
        }
        // The NAT'd actions of every peer come with these.
        allocations_running(&mut p, &syns(1000..2000));
        let calls = allocations_running(&mut p, &more);
        assert_eq!(p.layer_flow_count("nat"), 31_000);
        (p, calls)
    };
    let (mut late, calls) = measure(Order::ReserveFirst);
    let (_, sized_by_reserve) = measure(Order::NatFirst);
    let (_, growing) = measure(Order::NoReservation);
    // The map of extra parts and their pool's first chunk were sized when
    // the layer first could transpose: nothing grows inside a packet.
    assert_eq!(calls, 0, "allocations for {} NAT'd connections", more.len());
    assert!(
        calls <= sized_by_reserve,
        "{calls} allocations, {sized_by_reserve} when reserved after the NAT rule came"
    );
    assert!(calls < growing, "{calls} reserved, {growing} growing");
    // The connections were NAT'd there: a new one leaves from NAT_IP.
    let (d, f) = lifecycle(31_000)[0].clone();
    let (v, out) = run(&mut late, d, &f, secs(2));
    assert!(v.is_forward(), "{v:?}");
    assert_eq!(decode(&out).inner.src, NAT_IP);
}

/// Set in the child process of
/// [`reservations_stay_within_the_memory_cgroups_limit`]: the cgroup
/// directory it moves itself into.
const CGROUP_CHILD: &str = "STRATA_TEST_IN_CGROUP";
const CGROUP_LIMIT: usize = 512 << 20;

/// Inside a memory cgroup limited to 512 MiB, the port sees the limit:
/// a reservation beyond it, or a stateful layer whose table would not fit
/// beside a reservation, is refused with an error (past a cgroup's limit
/// the kernel would kill the process instead). Needs root (it makes the
/// cgroup, under this process's own memory cgroup, v1 or v2); the work
/// runs in a child process moved into it, and the cgroup is removed after.
#[test]
fn reservations_stay_within_the_memory_cgroups_limit() {
    use strata_engine::host_memory::{CgroupVersion, own_memory_cgroups};
    if let Ok(dir) = std::env::var(CGROUP_CHILD) {
        return in_limited_cgroup(std::path::Path::new(&dir));
    }
    let uid = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = uid
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0");
    if !root {
        eprintln!("skipped: making a memory cgroup needs root");
        return;
    }
    let groups = own_memory_cgroups();
    let Some(own) = groups.first() else {
        eprintln!("skipped: no memory cgroup hierarchy is mounted");
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = own
        .dir
        .join(format!("strata-test-{}-{nanos}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&dir) {
        eprintln!("skipped: cannot make {} ({e})", dir.display());
        return;
    }
    /// Removes the cgroup even when the test fails (its only process, the
    /// child, has exited by then).
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _remove = Remove(dir.clone());
    let limit_file = match own.version {
        CgroupVersion::V1 => "memory.limit_in_bytes",
        CgroupVersion::V2 => "memory.max",
    };
    // (Under cgroup v2 the group's parent must hand the memory controller
    // down, which a group holding processes cannot: then there is no
    // limit file to write.)
    if let Err(e) = std::fs::write(dir.join(limit_file), CGROUP_LIMIT.to_string()) {
        eprintln!("skipped: cannot limit {} ({e})", dir.display());
        return;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "reservations_stay_within_the_memory_cgroups_limit",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CGROUP_CHILD, &dir)
        .output()
        .expect("run the child");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child {:?}:\n{text}", out.status);
    assert!(text.contains("all refused within the cgroup"), "{text}");
}

/// The child's part: move into `dir`, then reserve up to and past its
/// limit.
fn in_limited_cgroup(dir: &std::path::Path) {
    use strata_engine::action::MAX_METER_BUCKETS;
    use strata_engine::counters::CounterArena;
    use strata_engine::flow_table::{LayerFlowTable, UnifiedFlowTable};
    use strata_engine::host_memory::available;
    std::fs::write(dir.join("cgroup.procs"), "0").expect("move into the cgroup");
    let room = available().expect("known");
    assert!(
        room <= CGROUP_LIMIT,
        "sees {room} bytes, limit {CGROUP_LIMIT}"
    );
    let cfg = PortConfig {
        max_connections: 1 << 24,
        ..PortConfig::default()
    };
    let mut p = four_layer_port(cfg, 0).expect("port");
    install_mappings(&mut p, 4).expect("mappings");
    // The four-layer port's reservation: the unified flows, two stateful
    // layers' tables, and room for its two meter rules' buckets.
    let bytes = |n: usize| {
        let buckets = (2 * n).min(2 * (MAX_METER_BUCKETS + 1));
        UnifiedFlowTable::reserve_bytes(n)
            + 2 * LayerFlowTable::reserve_bytes(n)
            + CounterArena::meter_reserve_bytes(buckets)
            + UnifiedFlowTable::counter_lists_reserve_bytes(buckets)
    };
    match p.reserve(1 << 22) {
        Err(ApiError::ReserveBeyondMemory {
            needed, available, ..
        }) => {
            assert!(
                needed > available && available <= CGROUP_LIMIT,
                "{needed} {available}"
            );
        }
        other => panic!("4M connections in {room} bytes: {other:?}"),
    }
    assert_eq!(p.reserved_connections(), 0);
    // The largest reservation within 92% of the room (the rest is for
    // the test's own allocations), then a layer whose table (a sixth of
    // the reservation) would not fit in what is left.
    let room = available().expect("known");
    let fits = |n: usize| bytes(n) <= room / 100 * 92;
    let mut n = 1024;
    while fits(n * 2) {
        n *= 2;
    }
    let mut step = n / 2;
    while step > 0 {
        if fits(n + step) {
            n += step;
        }
        step /= 2;
    }
    p.reserve(n).expect("within the room");
    let left = available().expect("known");
    assert!(
        LayerFlowTable::reserve_bytes(n) > left,
        "setup: a layer table for {n} takes {}, {left} left",
        LayerFlowTable::reserve_bytes(n)
    );
    let layers = p.layer_ids();
    match p.add_layer(tracking_layer("track"), None) {
        Err(ApiError::LayerBeyondReservation {
            layer, connections, ..
        }) => {
            assert_eq!((layer.as_str(), connections), ("track", n));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.layer_ids(), layers, "nothing added");
    p.add_layer(
        LayerSpec::new("later", DefaultAction::Allow, DefaultAction::Allow),
        None,
    )
    .expect("a stateless layer needs no table");
    let e = p.set_group("later", tracking_group()).unwrap_err();
    assert!(
        matches!(e, ApiError::LayerBeyondReservation { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("bytes available"), "{e}");
    // The same group prepared off the datapath and installed: refused as
    // well, before the swap, with connections live. (Compared by getters,
    // not snapshots: a snapshot clones the flow tables, past what the
    // cgroup has left; the child is killed.)
    allocations_running(&mut p, &handshakes(100..110));
    let state = |p: &Port| {
        let flows: Vec<usize> = p
            .layer_ids()
            .iter()
            .map(|l| p.layer_flow_count(l))
            .collect();
        (
            p.generation(),
            p.layer_specs(),
            flows,
            p.connection_count(),
            p.flow_memory(),
            p.counter_memory_bytes(),
        )
    };
    let before = state(&p);
    let later = p.policy().layer("later").expect("added");
    let prepared = tracking_group()
        .prepare_for(p.registry(), later)
        .expect("a valid group");
    match p.install_group("later", prepared) {
        Err(ApiError::LayerBeyondReservation {
            layer,
            connections,
            needed,
            available,
        }) => {
            assert_eq!((layer.as_str(), connections), ("later", n));
            assert!(needed > available, "{needed} {available}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(state(&p), before, "the port is as it was");
    // Meter rules whose buckets' room would not fit in what is left:
    // refused too, as a new layer and as a group, changing nothing.
    let meters = |k: u32| {
        Group::new("meters", Direction::Out).with_rules(
            (0..k)
                .map(|i| {
                    let by = strata_engine::condition::Field::DstIp;
                    let action = ActionSpec::Meter {
                        by,
                        prefix_len: None,
                    };
                    Rule::new(&format!("m{i}"), i, vec![], action)
                })
                .collect(),
        )
    };
    let mut metered = LayerSpec::new("metered", DefaultAction::Allow, DefaultAction::Allow);
    metered.groups.push(meters(10));
    let layers = p.layer_ids();
    for e in [
        p.add_layer(metered, None).unwrap_err(),
        p.set_group("later", meters(10)).unwrap_err(),
    ] {
        match e {
            ApiError::MetersBeyondReservation {
                connections,
                needed,
                available,
                ..
            } => {
                assert_eq!(connections, n);
                assert!(needed > available, "{needed} {available}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(p.layer_ids(), layers, "nothing added");
    assert_eq!(state(&p), before, "the port is as it was");
    assert_eq!(p.connection_count(), 10);
    // The port works on: a connection through it.
    let mut buf = PacketBuf::with_capacity(2048);
    for (d, f) in lifecycle(7) {
        buf.reset(&f);
        assert!(p.process(d, &mut buf, secs(2)).is_forward());
    }
    println!("reserved {n} connections in {room} bytes; all refused within the cgroup");
}

/// A port with one meter layer: `rule` counts per value of `by`.
fn metered_port(rule: &str, by: strata_engine::condition::Field) -> Port {
    let mut p = Port::new(
        "metered",
        PortConfig {
            max_connections: 100_000,
            ..PortConfig::default()
        },
    );
    p.add_layer(meter_layer("meter", rule, by), None)
        .expect("a meter layer");
    p
}

fn meter_layer(layer: &str, rule: &str, by: strata_engine::condition::Field) -> LayerSpec {
    let mut l = LayerSpec::new(layer, DefaultAction::Allow, DefaultAction::Allow);
    l.groups.push(
        Group::new("per-value", Direction::Out).with_rules(vec![Rule::new(
            rule,
            1,
            vec![],
            ActionSpec::Meter {
                by,
                prefix_len: None,
            },
        )]),
    );
    l
}

/// One outbound SYN to each destination `first..first + n` (from
/// 20.0.0.0 on), to port `dport`.
fn to_destinations(first: u32, n: u32, dport: u16) -> Vec<(Direction, Vec<u8>)> {
    (first..first + n)
        .map(|i| {
            let dst = std::net::Ipv4Addr::from(0x1400_0000 + i);
            (Direction::Out, vm_tcp(dst, 40_000, dport, SYN, 1, 0, b""))
        })
        .collect()
}

/// New destinations below a meter rule's bucket cap get buckets of their
/// own; on a reserved port making them allocates nothing (the bucket's
/// name is inline, its rule's strings shared, the arena's room reserved),
/// also for a meter layer added after the reservation. The same traffic
/// through a port left to grow allocates.
#[test]
fn new_meter_buckets_allocate_nothing_on_a_reserved_port() {
    use strata_engine::action::MAX_METER_BUCKETS;
    use strata_engine::condition::Field;
    let mut reserved = metered_port("dst", Field::DstIp);
    let mut growing = metered_port("dst", Field::DstIp);
    // Ten destinations first: the verdict's shared action and the like
    // are made once, by the first packets.
    for p in [&mut reserved, &mut growing] {
        allocations_running(p, &to_destinations(0, 10, 80));
    }
    // Room for the buckets to come: the meter rule's cap and its shared
    // one, less the ten made (fewer than two per connection and
    // direction).
    reserved.reserve(100_000).expect("within the limit");
    assert_eq!(
        reserved.meter_bucket_room(100_000),
        MAX_METER_BUCKETS + 1 - 10
    );
    let held = reserved.counter_memory_bytes();
    let fresh = to_destinations(10, 20_000, 80);
    assert_eq!(allocations_running(&mut reserved, &fresh), 0);
    assert!(allocations_running(&mut growing, &fresh) > 0);
    assert_eq!(
        reserved.counter_memory_bytes(),
        held,
        "the buckets took the reserved room"
    );
    for p in [&reserved, &growing] {
        let buckets = p.counters().meter("meter", "dst");
        assert_eq!(buckets.len(), 20_010);
        assert_eq!(buckets["20.0.0.0"].packets, 1);
        assert_eq!(buckets["20.0.78.41"].packets, 1, "destination 20,009");
    }

    // A second meter layer, by destination port, after the reservation:
    // its buckets get room of their own. 50,000 new destinations to as
    // many ports make 100,000 buckets, past the first room.
    reserved
        .add_layer(meter_layer("ports", "dport", Field::DstPort), None)
        .expect("a meter layer");
    let ports: Vec<_> = (0..50_000u16)
        .flat_map(|i| to_destinations(30_000 + u32::from(i), 1, 1_000 + i))
        .collect();
    assert_eq!(allocations_running(&mut reserved, &ports), 0);
    let buckets = reserved.counters().meter("ports", "dport");
    assert_eq!(buckets.len(), 50_000);
    assert_eq!(buckets["50999"].packets, 1);
    assert_eq!(
        reserved.counters().meter("meter", "dst").len(),
        MAX_METER_BUCKETS + 1,
        "destinations up to the cap, then the shared bucket"
    );
}
