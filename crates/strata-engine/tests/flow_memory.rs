//! The port's own memory accounting (`Port::flow_memory`, counters) explains
//! what the allocator sees the connections add: the per-connection figure
//! in BENCHMARKS.md rests on it, so an unaccounted structure (or a part
//! counted twice) fails here.

#[path = "common/mod.rs"]
mod common;
use common::*;
use strata_engine::scenario::*;
use strata_engine::{PortConfig, secs};

#[global_allocator]
static ALLOC: common::counting::Counting = common::counting::Counting;

#[test]
fn accounting_explains_the_heap_the_connections_add() {
    let cfg = PortConfig {
        max_connections: 1 << 20,
        tcp_established_idle: secs(3600),
        ..PortConfig::default()
    };
    let mut port = four_layer_port_with(cfg, 0, true).expect("port");
    install_mappings(&mut port, 4).expect("mappings");
    let before = common::counting::live_bytes();
    let accounted_before = (port.flow_memory().total() + port.counter_memory_bytes()) as i64;
    // VNET connections (ACL layer flows, few meter buckets) and SNAT ones
    // (SLB flows with extra parts, a meter bucket per destination).
    let vnet = 30_000;
    for i in 0..vnet {
        for (d, f) in lifecycle(i).iter().take(3) {
            assert!(forwards(&mut port, *d, f, secs(1)));
        }
    }
    let nat = 2_000;
    for i in 0..nat {
        nat_conn(&mut port, i);
    }
    assert_eq!(port.connection_count(), (vnet + nat) as usize);
    let grown = common::counting::live_bytes() - before;
    let mem = port.flow_memory();
    let accounted = (mem.total() + port.counter_memory_bytes()) as i64 - accounted_before;
    let per = |b: i64| b as f64 / f64::from(vnet + nat);
    eprintln!(
        "heap growth {:.1} B/connection, accounted {:.1} ({mem:?})",
        per(grown),
        per(accounted)
    );
    let off = (grown - accounted).abs() as f64 / grown as f64;
    assert!(
        off < 0.05,
        "accounting off by {:.1}%: heap grew {grown} bytes, accounted {accounted}",
        off * 100.0
    );
}
