//! `Port::reserve`: a port sized ahead for its connections opens them
//! without a heap allocation (no table grows, no chunk is added), while the
//! same traffic through a port left to grow allocates; a reservation
//! beyond the port's limit is refused and changes nothing.

#[path = "common/mod.rs"]
mod common;
use common::counting::{Counting, allocation_calls};
use common::*;
use strata_engine::scenario::*;
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

#[test]
fn a_reserved_port_opens_its_connections_without_allocating() {
    // Connections 0..1000 reach every peer once: the verdicts' actions,
    // counter lists and meter buckets exist after them. The next 30,000
    // go to the same peers from other source ports.
    let warm = handshakes(0..1000);
    let more = handshakes(1000..31_000);
    let mut reserved = port();
    let mut growing = port();
    for p in [&mut reserved, &mut growing] {
        allocations_running(p, &warm);
    }
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
    let Some(available) = strata_engine::hint::available_memory() else {
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
    use strata_engine::flow_table::{LayerFlowTable, UnifiedFlowTable};
    for n in [40_000, 100_000] {
        let mut p = port();
        let before = p.flow_memory().total();
        p.reserve(n).expect("within the limit");
        let held = p.flow_memory().total() - before;
        // Two layers hold stateful rules: the ACL and SLB NAT.
        let expected = UnifiedFlowTable::reserve_bytes(n) + 2 * LayerFlowTable::reserve_bytes(n);
        let off = held.abs_diff(expected) as f64 / expected as f64;
        assert!(off < 0.02, "{n}: held {held}, expected {expected}");
    }
}
