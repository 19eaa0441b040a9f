//! Worst-case first-packet latency while a port's tables grow: establishes
//! N VNET connections (the VM's, outbound) one packet at a time and reports the slowest packets
//! (a table that doubles re-places all its entries inside one packet's
//! slow path). Wall time, so run it on a quiet machine:
//!
//! ```text
//! cargo build --release -p strata-engine --example growth
//! N=1000000 target/release/examples/growth
//! ```
//!
//! `INBOUND=1` opens the connections from VNET peers to the VM's web port
//! instead: they arrive encapsulated, and each one's ACL flow keeps a key
//! of its own.
//!
//! `SNAPSHOT=1` then times a snapshot of the port and its restore (what
//! an upgrade or a migration waits for).
//!
//! `RESERVE=1` sizes the port for the N connections first
//! (`Port::reserve`, timed and printed): then no table grows and no page
//! is first touched inside a packet.

#[path = "../tests/common/mod.rs"]
mod common;
use common::*;
use std::time::Instant;
use strata_engine::{ActionRegistry, Direction, Port, secs};
use strata_packet::PacketBuf;

fn main() {
    let n: u32 = env_or("N", 200_000);
    let mut port = port_for(n);
    if env_or("RESERVE", 0u32) != 0 {
        let t = Instant::now();
        port.reserve(n as usize).expect("reserve");
        println!(
            "reserved {n} connections in {:?} ({} MB of flow tables)",
            t.elapsed(),
            port.flow_memory().total() >> 20
        );
    }
    let mut buf = PacketBuf::with_capacity(2048);
    let mut worst: Vec<(u128, u32, usize)> = Vec::new();
    let mut total = 0u128;
    let mut packets = 0u32;
    // WINDOW=k: also print the mean of every k connections' packets (a
    // table's doubling, and the moving of its entries after it, shows up
    // in the windows that follow it).
    let window: u32 = env_or("WINDOW", 0);
    let inbound = env_or("INBOUND", 0u32) != 0;
    let mut window_ns = 0u128;
    for i in 0..n {
        if window > 0 && i > 0 && i % window == 0 {
            println!(
                "  connections {:>8}..{i}: mean {} ns/packet",
                i - window,
                window_ns / u128::from(3 * window)
            );
            window_ns = 0;
        }
        let handshake: [(Direction, Vec<u8>); 3] = if inbound {
            inbound_handshake(i, 1024 + (i / 1000) as u16)
        } else {
            let [syn, syn_ack, ack, ..] = lifecycle(i);
            [syn, syn_ack, ack]
        };
        for (k, (d, f)) in handshake.iter().enumerate() {
            buf.reset(f);
            let t = Instant::now();
            let v = port.process(*d, &mut buf, secs(1));
            let ns = t.elapsed().as_nanos();
            assert!(v.is_forward(), "{v:?}");
            total += ns;
            window_ns += ns;
            packets += 1;
            worst.push((ns, i, k));
            if worst.len() > 64 {
                worst.sort_unstable_by(|a, b| b.cmp(a));
                worst.truncate(8);
            }
        }
    }
    worst.sort_unstable_by(|a, b| b.cmp(a));
    println!(
        "{n} connections, {packets} packets, mean {} ns/packet; slowest:",
        total / u128::from(packets)
    );
    for (ns, i, k) in worst.iter().take(8) {
        println!("  {:>10.3} ms  connection {i} packet {k}", *ns as f64 / 1e6);
    }
    if env_or("SNAPSHOT", 0u32) != 0 {
        let t = Instant::now();
        let bytes = port.snapshot().expect("snapshot");
        let saved = t.elapsed();
        let t = Instant::now();
        let back = Port::restore(&bytes, ActionRegistry::default()).expect("restore");
        println!(
            "snapshot: {} MB in {saved:?}; restored in {:?} ({} connections)",
            bytes.len() >> 20,
            t.elapsed(),
            back.connection_count()
        );
    }
}
