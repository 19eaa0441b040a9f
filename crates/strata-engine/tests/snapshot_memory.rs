//! What taking a snapshot costs in memory: the snapshot's bytes and little
//! more. A port near its memory cgroup's limit must be able to save itself
//! for an upgrade or a migration; a copy of its tables first (as snapshots
//! were made before) doubles what it holds for a moment, and the kernel
//! kills the process instead.

#[path = "common/mod.rs"]
mod common;
use common::counting::{Counting, live_bytes, peak_bytes, reset_peak_bytes};
use common::*;
use strata_engine::{ActionRegistry, Direction, Port, secs};

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn a_snapshot_costs_its_bytes_not_a_copy_of_the_tables() {
    let mut port = port_for(20_000);
    for i in 0..10_000 {
        for (d, f) in lifecycle(i).into_iter().take(3) {
            assert!(forwards(&mut port, d, &f, secs(1)), "VNET {i}");
        }
    }
    for i in 0..2_000 {
        nat_conn(&mut port, i);
    }
    port.reserve(15_000).expect("within the limit");
    let tables = port.flow_memory().total();

    let held = live_bytes();
    reset_peak_bytes();
    let bytes = port.snapshot().expect("snapshot");
    let extra = peak_bytes() - held;
    let len = bytes.len() as i64;
    // The bytes, and small parts (the layers' specs as JSON, a list of
    // the layer tables): under 64 KiB here.
    assert!(
        extra <= len + 64 * 1024,
        "a snapshot of {len} bytes took {extra} bytes at its peak ({tables} bytes of tables)"
    );
    drop(port);

    // It restores to a port that forwards its connections.
    let held = live_bytes();
    reset_peak_bytes();
    let mut back = Port::restore(&bytes, ActionRegistry::default()).expect("restores");
    // Restoring holds the port it makes and little more on the way
    // (12.8 MB at its peak for a 12.0 MB port here).
    let (peak, kept) = (peak_bytes() - held, live_bytes() - held);
    assert!(
        peak <= kept + kept / 10,
        "restoring peaked at {peak} bytes for a port of {kept}"
    );
    assert_eq!(back.connection_count(), 12_000);
    assert_eq!(back.reserved_connections(), 15_000);
    let slow = back.direction_counters(Direction::Out).slow_path;
    let (d, f) = lifecycle(7_777)[2].clone();
    assert!(forwards(&mut back, d, &f, secs(2)));
    assert_eq!(back.direction_counters(Direction::Out).slow_path, slow);
}
