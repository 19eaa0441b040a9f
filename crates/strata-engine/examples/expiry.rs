//! Expiry cost at scale: a four-layer port holding N established VNET TCP
//! connections (`lifecycle` handshakes), then one `Port::expire` (a whole
//! table walk, nothing due) against `Port::expire_some` calls of BUDGET
//! slots over one full cycle. Prints the pause each makes the datapath
//! take.
//!
//! ```text
//! cargo build --release -p strata-engine --example expiry
//! N=1000000 BUDGET=4096 target/release/examples/expiry
//! ```

#[path = "../tests/common/mod.rs"]
mod common;
use common::*;
use std::time::Instant;
use strata_engine::scenario::*;
use strata_engine::{PortConfig, secs};
use strata_packet::PacketBuf;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env("N", 1_000_000) as u32;
    let budget = env("BUDGET", 4096);
    let cfg = PortConfig {
        max_connections: 1 << 21,
        ..PortConfig::default()
    };
    let mut port = four_layer_port(cfg, 0).expect("port");
    install_mappings(&mut port, 4).expect("mappings");
    let mut buf = PacketBuf::with_capacity(2048);
    for i in 0..n {
        for (d, f) in lifecycle(i).iter().take(3) {
            buf.reset(f);
            port.process(*d, &mut buf, secs(1));
        }
    }
    let now = secs(2);
    let t = Instant::now();
    let removed = port.expire(now);
    let whole = t.elapsed();
    let mut calls = Vec::new();
    loop {
        let t = Instant::now();
        let p = port.expire_some(now, budget);
        calls.push(t.elapsed());
        if p.cycle_ended {
            break;
        }
    }
    let total: std::time::Duration = calls.iter().sum();
    calls.sort();
    println!(
        "{} connections: expire {whole:?} (removed {removed}); expire_some({budget}): {} calls, median {:?}, max {:?}, cycle total {total:?}",
        port.connection_count(),
        calls.len(),
        calls[calls.len() / 2],
        calls[calls.len() - 1],
    );
}
