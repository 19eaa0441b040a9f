//! Deterministic profile of issue 2's slow-path benchmark: outbound first
//! packets (SYNs) through the four-layer port with a 1,000-rule ACL, each
//! a new connection, measured after `PREFILL` other connections were made
//! (default 300,000: the tables are far larger than the caches, as in the
//! criterion bench at up to 1M connections). Prints the wall time per
//! first packet; for instructions and simulated cache misses, collect only
//! the measured round:
//!
//! ```text
//! cargo build --release -p strata-engine --example slow_path
//! N=5000 valgrind --tool=callgrind --cache-sim=yes --LL=4194304,16,64 \
//!     --toggle-collect='slow_path::measured_round' target/release/examples/slow_path
//! ```
//!
//! `BATCH=1` gives the port the first packets as receive bursts of 32
//! (`Port::process_batch`) instead of one by one.

#[path = "../tests/common/mod.rs"]
mod common;
use common::*;
use strata_engine::scenario::{four_layer_port, install_mappings};
use strata_engine::{Direction, Port, PortConfig, secs};
use strata_packet::PacketBuf;

fn main() {
    let n: u32 = env_or("N", 20_000);
    let prefill: u32 = env_or("PREFILL", 300_000);
    let cfg = PortConfig {
        max_connections: 1 << 21,
        ..PortConfig::default()
    };
    let mut port = four_layer_port(cfg, 1000).expect("port");
    install_mappings(&mut port, 4).expect("mappings");
    let mut buf = PacketBuf::with_capacity(2048);
    for i in 0..prefill {
        buf.reset(&vnet_syn(i));
        assert!(port.process(Direction::Out, &mut buf, secs(1)).is_forward());
    }
    let frames: Vec<Vec<u8>> = (prefill..prefill + n).map(vnet_syn).collect();
    let t = std::time::Instant::now();
    measured_round(&mut port, &mut buf, &frames);
    println!(
        "{n} first packets after {prefill} connections: {:?} per packet ({} connections)",
        t.elapsed() / n,
        port.connection_count()
    );
}

/// A separate symbol, so callgrind can collect this round only.
#[inline(never)]
fn measured_round(port: &mut Port, buf: &mut PacketBuf, frames: &[Vec<u8>]) {
    if std::env::var_os("BATCH").is_some() {
        return process_in_bursts(port, Direction::Out, frames, secs(1));
    }
    for f in frames {
        buf.reset(f);
        std::hint::black_box(port.process(Direction::Out, buf, secs(1)));
    }
}
