//! Deterministic fast-path profile: N established SNAT'd connections
//! (NAT + VXLAN encap through the four-layer port), then ROUNDS batches of
//! 32 of their data frames through `Port::process_batch` — every packet a
//! unified-flow hit. Prints the wall time per packet; for instruction
//! counts, collect only the measured rounds:
//!
//! ```text
//! cargo build --release -p strata-engine --example fast_path
//! N=4096 ROUNDS=2000 valgrind --tool=callgrind \
//!     --toggle-collect='fast_path::measured_rounds' target/release/examples/fast_path
//! ```

#[path = "../tests/common/mod.rs"]
mod common;
use common::nat_conn;
use strata_engine::scenario::{four_layer_port_with, install_mappings};
use strata_engine::{Direction, Port, PortConfig, Verdict, secs};
use strata_packet::PacketBuf;

const BATCH: usize = 32;

fn env(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env("N", 32_768).clamp(BATCH as u32, 32_768);
    let rounds = env("ROUNDS", 100_000);
    let cfg = PortConfig {
        tcp_established_idle: secs(3600),
        ..PortConfig::default()
    };
    let mut port = four_layer_port_with(cfg, 0, true).expect("port");
    install_mappings(&mut port, 4).expect("mappings");
    let mut buf = PacketBuf::with_capacity(2048);
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| nat_conn(&mut port, &mut buf, i, secs(1)))
        .collect();
    let mut bufs: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::with_capacity(2048)).collect();
    let mut verdicts = [Verdict::Forward; BATCH];
    let mut next = 0;
    // Warm-up, then the measured rounds.
    batches(&mut port, &mut bufs, &mut verdicts, &frames, &mut next, 100);
    let t = std::time::Instant::now();
    measured_rounds(
        &mut port,
        &mut bufs,
        &mut verdicts,
        &frames,
        &mut next,
        rounds,
    );
    let packets = u64::from(rounds) * BATCH as u64;
    println!(
        "{n} connections, {packets} packets: {:.1} ns per packet",
        t.elapsed().as_nanos() as f64 / packets as f64
    );
    assert!(verdicts.iter().all(|v| *v == Verdict::Forward));
}

/// A separate symbol, so callgrind can collect these rounds only.
#[inline(never)]
fn measured_rounds(
    port: &mut Port,
    bufs: &mut [PacketBuf],
    verdicts: &mut [Verdict],
    frames: &[Vec<u8>],
    next: &mut usize,
    rounds: u32,
) {
    batches(port, bufs, verdicts, frames, next, rounds)
}

#[inline(always)]
fn batches(
    port: &mut Port,
    bufs: &mut [PacketBuf],
    verdicts: &mut [Verdict],
    frames: &[Vec<u8>],
    next: &mut usize,
    rounds: u32,
) {
    for _ in 0..rounds {
        for b in bufs.iter_mut() {
            b.reset(&frames[*next]);
            *next = (*next + 1) % frames.len();
        }
        port.process_batch(Direction::Out, bufs, secs(2), verdicts);
    }
}
