//! What the 10 × 10 × 5k first packet's classification costs, outside the
//! port: the last group of each layer is searched first (VFP-3 order, see
//! `LayerPolicy::classify`), and earlier groups only when it has no match.
//! Builds the same groups as `scenario::acl_layers_port` and the same first
//! packets as `examples/acl_layers`, then prints
//!
//! - group searches per packet, split into hits and misses, with the nodes,
//!   leaves and box checks each visits (`LookupTrace`);
//! - the time per packet of the ten layers' searches over bursts of 32
//!   packets, packet by packet (each packet's ten layers, then the next
//!   packet's: the walk's order) against layer by layer (each layer's
//!   group for the 32 packets, then the next layer: the order
//!   `Port::process_batch` classifies a burst's first packets in, see
//!   `strata_engine::preclassify`), and walked in lock-step
//!   (`classifier::best_match_many` over the ten groups of a packet).
//!
//! `PROBES=k` aims the packets at the first k of the 8,192 probe targets
//! (fewer distinct walks: with a few dozen the walked lines stay in
//! cache, which tells the walk's own work from its waits on memory).
//!
//! ```text
//! cargo run --release -p strata-engine --example layer_searches
//! ```

#[path = "../tests/common/mod.rs"]
mod common;
use common::probe_syn;
use std::hint::black_box;
use std::time::Instant;
use strata_engine::classifier::tree::LookupTrace;
use strata_engine::classifier::{GroupClassifier, MatchType, best_match_many, build};
use strata_engine::condition::FieldValues;
use strata_engine::rulegen;
use strata_engine::scenario::probe_targets;

const LAYERS: u64 = 10;
const GROUPS: u64 = 10;
const RULES: usize = 5000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let layers: Vec<Vec<Box<dyn GroupClassifier>>> = (0..LAYERS)
        .map(|l| {
            (0..GROUPS)
                .map(|g| {
                    build(
                        &rulegen::acl(RULES, l * GROUPS + g + 1),
                        MatchType::Priority,
                    )
                })
                .collect()
        })
        .collect();
    let probes = probe_targets(&rulegen::acl(RULES, 1), env("PROBES", 8192));
    let packets: Vec<FieldValues> = (0..20_000u32)
        .map(|i| {
            let f = probe_syn(&probes, i);
            let p = strata_packet::parse::parse(&f).expect("a generated frame parses");
            FieldValues::from_ufid(&p.ufid)
        })
        .collect();

    // Searches, in the layers' order (groups from the last, to the first
    // with a match).
    let (mut hits, mut misses) = (LookupTrace::default(), LookupTrace::default());
    let (mut nh, mut nm) = (0usize, 0usize);
    for fv in packets.iter().take(4000) {
        for groups in &layers {
            for g in groups.iter().rev() {
                let Some(t) = g.as_tree() else { continue };
                let mut tr = LookupTrace::default();
                let found = t.best_match_traced(fv, &mut tr).is_some();
                let (acc, n) = if found {
                    (&mut hits, &mut nh)
                } else {
                    (&mut misses, &mut nm)
                };
                *n += 1;
                acc.nodes += tr.nodes;
                acc.leaves += tr.leaves;
                acc.checks += tr.checks;
                if found {
                    break;
                }
            }
        }
    }
    let per = |t: &LookupTrace, n: usize| {
        let n = n.max(1) as f64;
        format!(
            "{:.2} nodes, {:.2} leaves, {:.2} box checks",
            t.nodes as f64 / n,
            t.leaves as f64 / n,
            t.checks as f64 / n
        )
    };
    println!(
        "group searches per packet: {:.2} hits ({}), {:.2} misses ({})",
        nh as f64 / 4000.0,
        per(&hits, nh),
        nm as f64 / 4000.0,
        per(&misses, nm)
    );

    // Each layer's last group (what a packet nearly always searches).
    let last: Vec<&dyn GroupClassifier> = layers
        .iter()
        .filter_map(|g| g.last().map(|c| &**c))
        .collect();
    for round in 0..3 {
        let mut acc = 0usize;
        let t = Instant::now();
        for burst in packets.chunks(32) {
            for fv in burst {
                for g in &last {
                    acc += black_box(g.best_match(fv)).unwrap_or(0);
                }
            }
        }
        let by_packet = t.elapsed() / packets.len() as u32;
        let t = Instant::now();
        for burst in packets.chunks(32) {
            for g in &last {
                for fv in burst {
                    acc += black_box(g.best_match(fv)).unwrap_or(0);
                }
            }
        }
        let by_layer = t.elapsed() / packets.len() as u32;
        // The ten searches of each packet walked in lock-step.
        let t = Instant::now();
        let mut found = [None; LAYERS as usize];
        for fv in &packets {
            best_match_many(last.iter().copied(), fv, &mut found);
            for f in found {
                acc += black_box(f).unwrap_or(0);
            }
        }
        let lockstep = t.elapsed() / packets.len() as u32;
        println!(
            "round {round}: ten searches per packet, packet by packet {by_packet:?}, \
             layer by layer {by_layer:?}, lock-step {lockstep:?} (checksum {acc})"
        );
    }
}
