//! Deterministic slow-path profile: runs N full TCP lifecycles (SYN,
//! SYN-ACK, ACK, FIN, FIN-ACK, ACK) through the four-layer port twice — a
//! warm-up round, then a measured round after expiring the first — and
//! prints the wall time per connection. Wall time on a shared VM is noisy;
//! for instruction counts run it under callgrind and collect only the
//! measured round:
//!
//! ```text
//! cargo build --release -p strata-engine --example lifecycle
//! N=20000 valgrind --tool=callgrind --toggle-collect='lifecycle::measured_round' \
//!     target/release/examples/lifecycle
//! ```
//!
//! `SYN=1` runs only the first packet of each connection (the outbound slow
//! path; the SYN-ACK's slow path then makes the inbound flow), `PACKETS=2`
//! the first two (so the difference with `SYN=1` is the SYN-ACK's cost; with
//! three or more the warm-up round leaves the connections established and
//! the measured round's first packets find them); `PACKET=k` processes the
//! k-th packet of each connection of the measured round in a symbol of its
//! own (`--toggle-collect='lifecycle::measured_packet'`, ÷ N: that
//! packet's cost); `RULES=1000` puts that many rules in the customer ACL
//! group. `BATCH=1` runs 32 connections at a time through
//! `Port::process_batch`, one burst per lifecycle step (their SYNs, then
//! their SYN-ACKs, ...; `PACKET` is then ignored).

#[path = "../tests/common/mod.rs"]
mod common;
use common::*;
use strata_engine::scenario::*;
use strata_engine::{Direction, PortConfig, secs};
use strata_packet::PacketBuf;

fn main() {
    let n: u32 = env_or("N", 2000);
    let rules: usize = env_or("RULES", 0);
    let cfg = PortConfig {
        max_connections: 1 << 21,
        ..PortConfig::default()
    };
    let mut port = four_layer_port(cfg, rules).expect("port");
    install_mappings(&mut port, 4).expect("mappings");
    let mut buf = PacketBuf::with_capacity(2048);
    let lc: Vec<[(Direction, Vec<u8>); 6]> = (0..n).map(lifecycle).collect();
    let packets = if std::env::var("SYN").is_ok() {
        1
    } else {
        env_or("PACKETS", 6usize)
    };
    round(&mut port, &mut buf, &lc, packets, secs(1), false);
    measured_expire(&mut port, secs(100));
    let t = std::time::Instant::now();
    measured_round(&mut port, &mut buf, &lc, packets, secs(101));
    println!("{n} connections: {:?} per connection", t.elapsed() / n);
}

/// Retiring the warm-up round's connections, as a symbol of its own
/// (`--toggle-collect='lifecycle::measured_expire'`, ÷ N: the cost of
/// retiring one connection).
#[inline(never)]
fn measured_expire(port: &mut strata_engine::Port, now: u64) {
    port.expire(now);
}

/// A separate symbol, so callgrind can collect this round only.
#[inline(never)]
fn measured_round(
    port: &mut strata_engine::Port,
    buf: &mut PacketBuf,
    lc: &[[(Direction, Vec<u8>); 6]],
    packets: usize,
    now: u64,
) {
    round(port, buf, lc, packets, now, true)
}
#[inline(always)]
fn round(
    port: &mut strata_engine::Port,
    buf: &mut PacketBuf,
    lc: &[[(Direction, Vec<u8>); 6]],
    packets: usize,
    now: u64,
    measured: bool,
) {
    // `PACKET=k` (1-based): the k-th packet of each connection goes
    // through `measured_packet`, a symbol of its own, so callgrind can
    // collect that packet alone.
    let only = if measured { env_or("PACKET", 0) } else { 0 };
    if std::env::var_os("BATCH").is_some() {
        // 32 connections at a time, step by step: their SYNs as one
        // burst, then their SYN-ACKs, and so on (a connection storm as a
        // datapath reads it from its rings).
        let mut bufs: Vec<PacketBuf> = (0..32).map(|_| PacketBuf::with_capacity(2048)).collect();
        let mut out = vec![strata_engine::Verdict::Forward; 32];
        for chunk in lc.chunks(32) {
            for step in 0..packets.min(6) {
                let d = chunk[0][step].0;
                for (b, l) in bufs.iter_mut().zip(chunk) {
                    b.reset(&l[step].1);
                }
                port.process_batch(d, &mut bufs[..chunk.len()], now, &mut out);
                assert!(out[..chunk.len()].iter().all(|v| v.is_forward()), "{out:?}");
            }
        }
        return;
    }
    for l in lc {
        for (i, (d, f)) in l.iter().take(packets).enumerate() {
            buf.reset(f);
            let v = if i + 1 == only {
                measured_packet(port, buf, *d, now)
            } else {
                port.process(*d, buf, now)
            };
            assert!(v.is_forward(), "{v:?}");
        }
    }
}

/// One packet, as a symbol of its own (`PACKET=k`).
#[inline(never)]
fn measured_packet(
    port: &mut strata_engine::Port,
    buf: &mut PacketBuf,
    d: Direction,
    now: u64,
) -> strata_engine::Verdict {
    port.process(d, buf, now)
}
