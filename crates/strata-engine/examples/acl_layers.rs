//! Deterministic profile of the issue-3 first packet: 10 layers × 10 groups
//! × 5,000 generated ACL rules (`scenario::acl_layers_port`), N new TCP
//! flows (SYN) aimed at the rules, each a slow path through all layers.
//! Prints the wall time per first packet. For instruction counts and
//! simulated cache misses, collect only the measured round:
//!
//! ```text
//! cargo build --release -p strata-engine --example acl_layers
//! N=2000 valgrind --tool=callgrind --cache-sim=yes \
//!     --toggle-collect='acl_layers::measured_round' target/release/examples/acl_layers
//! ```
//!
//! `LAYERS`, `GROUPS` and `RULES` change the shape (defaults 10, 10, 5000).
//! `PREFILL=k` keeps k other connections in the port during the measured
//! round (a busy port's tables are large and cold: with callgrind, add
//! `--cache-sim=yes --LL=4194304,16,64` to count the misses of a 4 MiB
//! L2). `NEW_MAC=1` gives every flow its own source MAC (the port then
//! interns a header context per flow; by default all come from the VM's
//! MAC, as a VM port's do). `PROBES=k` aims the flows at the first k of
//! the 8,192 probe targets only (fewer distinct tree walks: with k up to
//! about 64 the walked lines stay in L2). `PAUSE=1` sleeps 2 s before the
//! measured round and prints when it ran, for a sampling profiler started
//! with a delay (`perf record -D <ms> -e cpu-clock`).

#[path = "../tests/common/mod.rs"]
mod common;
use common::{probe_syn, process_in_bursts, tcp};
use strata_engine::scenario::{ProbeTarget, VM_GW_MAC, acl_layers_port};
use strata_engine::{Direction, Port, secs};
use strata_packet::{MacAddr, PacketBuf};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env("N", 20_000) as u32;
    let start = std::time::Instant::now();
    let t = std::time::Instant::now();
    let (mut port, probes) = acl_layers_port(
        env("LAYERS", 10),
        env("GROUPS", 10),
        env("RULES", 5000) as usize,
        8192,
    )
    .expect("port");
    let mut probes = probes;
    probes.truncate((env("PROBES", 8192) as usize).max(1));
    println!("built in {:?}", t.elapsed());
    let frames: Vec<Vec<u8>> = (0..n).map(|i| first_packet(&probes, i)).collect();
    let mut buf = PacketBuf::with_capacity(2048);
    // Warm-up: the same flows, then expired, so the measured round creates
    // every flow again with tables already grown.
    round(&mut port, &mut buf, &frames, secs(1));
    port.expire(secs(100_000));
    // PREFILL=k: k other connections stay in the tables during the
    // measured round (a busy port's flow table is large and cold).
    let prefill = env("PREFILL", 0) as u32;
    for i in 0..prefill {
        buf.reset(&first_packet(&probes, 1_000_000 + i));
        std::hint::black_box(port.process(Direction::Out, &mut buf, secs(100_000)));
    }
    if std::env::var("PAUSE").is_ok() {
        // A gap a profiler started with a delay can aim after.
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    let t = std::time::Instant::now();
    measured_round(&mut port, &mut buf, &frames, secs(100_001));
    let per = t.elapsed() / n;
    if std::env::var("PAUSE").is_ok() {
        println!(
            "measured from {:?} to {:?}",
            start.elapsed() - t.elapsed(),
            start.elapsed()
        );
    }
    println!("{n} first packets: {per:?} per packet");
}

/// A new outbound TCP flow aimed at probe `i` (the source port varies),
/// from the VM's MAC, or with `NEW_MAC=1` from a new MAC each (one header
/// context interned per flow).
fn first_packet(probes: &[ProbeTarget], i: u32) -> Vec<u8> {
    if std::env::var_os("NEW_MAC").is_none() {
        return probe_syn(probes, i);
    }
    let (s, d, dp) = probes[i as usize % probes.len()];
    let sm = MacAddr([2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    tcp(
        sm,
        VM_GW_MAC,
        s,
        d,
        (i % 60000) as u16 + 1024,
        dp,
        0x02,
        1,
        0,
        b"",
    )
}

/// A separate symbol, so callgrind can collect this round only.
#[inline(never)]
fn measured_round(port: &mut Port, buf: &mut PacketBuf, frames: &[Vec<u8>], now: u64) {
    round(port, buf, frames, now)
}

#[inline(always)]
fn round(port: &mut Port, buf: &mut PacketBuf, frames: &[Vec<u8>], now: u64) {
    if std::env::var_os("BATCH").is_some() {
        return process_in_bursts(port, Direction::Out, frames, now);
    }
    for f in frames {
        buf.reset(f);
        std::hint::black_box(port.process(Direction::Out, buf, now));
    }
}
