//! ACL classification probe: builds the classifier bench's ACL group
//! (`rulegen::acl(N, 1)`, planner's choice) and classifies the bench's
//! 4,096 packets (`rulegen::packets(.., 4096, 2)`) `ROUNDS` times, printing
//! build time, memory, the walk's shape (nodes visited and entries checked
//! per lookup) and the time per lookup.
//!
//! Wall time on a shared VM is noisy; compare builds by running two
//! binaries alternately, and count instructions under callgrind, collecting
//! only the measured rounds:
//!
//! ```text
//! cargo build --release -p strata-engine --example acl_probe
//! N=50000 ROUNDS=1 valgrind --tool=callgrind \
//!     --toggle-collect='acl_probe::measured' target/release/examples/acl_probe
//! ```
//!
//! (instructions per lookup = collected Ir / (4096 × ROUNDS)). `BUILDS=k`
//! times k builds of the group and prints the median. `COMPILES=k` times
//! k runs of the classifiers' common front end alone (`Compiled::new`)
//! and prints the median, fastest and slowest. `FAMILY=4` or `6` keeps
//! only the IPv4 or IPv6 packets.

use std::hint::black_box;
use std::time::Instant;
use strata_engine::classifier::compile::Compiled;
use strata_engine::classifier::tree::{LookupTrace, TreeClassifier, TreeConfig};
use strata_engine::classifier::{GroupClassifier, MatchType, build};
use strata_engine::condition::FieldValues;
use strata_engine::rulegen;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[inline(never)]
fn measured(c: &dyn GroupClassifier, pk: &[FieldValues], rounds: usize) -> usize {
    let mut acc = 0usize;
    for _ in 0..rounds {
        for p in pk {
            acc = acc.wrapping_add(c.best_match(black_box(p)).map_or(0, |r| r + 1));
        }
    }
    acc
}

/// This thread's CPU time (user + system) in seconds, from procfs (clock
/// ticks of 10 ms): unlike wall time, it leaves out the time the thread
/// waits for a core on a busy machine.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn main() {
    let n = env("N", 50_000);
    let rounds = env("ROUNDS", 200);
    let builds = env("BUILDS", 1);
    let mt = MatchType::Priority;
    let rules = rulegen::acl(n, 1);
    let mut pk = rulegen::packets(&rules, 4096, 2);
    // FAMILY=4 or 6: only the packets whose source address is IPv4 (in
    // IPv6 space) or IPv6 (the bench's mix is about a tenth IPv6).
    let family = env("FAMILY", 0);
    if family == 4 || family == 6 {
        let v4 = |fv: &FieldValues| {
            fv.get(strata_engine::condition::Field::SrcIp)
                .is_some_and(|v| v >> 32 == 0xffff)
        };
        pk.retain(|fv| v4(fv) == (family == 4));
    }
    // PACKETS=k: cycle through the first k only (warm caches).
    pk.truncate(env("PACKETS", 4096).max(1));
    // Tree tuning from the environment (LEAF, LARGE_LEAF, LARGE_FROM, WIDE_LEAF, BITS,
    // REPLICATE, SPACE, BUDGET, SAMPLE, CHUNK, BLOCKS): when any is set, the tree is built with it
    // instead of the planner's choice.
    let d = TreeConfig::default();
    let cfg = TreeConfig {
        leaf_size: env("LEAF", d.leaf_size),
        large_leaf_size: env("LARGE_LEAF", d.large_leaf_size),
        large_from: env("LARGE_FROM", d.large_from),
        wide_leaf_size: env("WIDE_LEAF", d.wide_leaf_size),
        max_bits: env("BITS", usize::from(d.max_bits)) as u8,
        max_replicate: env("REPLICATE", d.max_replicate),
        space_factor: env("SPACE", d.space_factor),
        budget_factor: env("BUDGET", d.budget_factor),
        sample: env("SAMPLE", d.sample),
        chunk: env("CHUNK", d.chunk),
        blocks: env("BLOCKS", usize::from(d.blocks)) != 0,
        ..d
    };
    let tuned = cfg != d;
    let make = |rules: &[strata_engine::classifier::RuleMatch]| -> Box<dyn GroupClassifier> {
        if tuned {
            Box::new(TreeClassifier::new(rules, mt, cfg))
        } else {
            build(rules, mt)
        }
    };
    let mut times = Vec::new();
    let mut c = make(&rules);
    for _ in 0..builds {
        let t0 = Instant::now();
        let x = make(black_box(&rules));
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        c = x;
    }
    times.sort_by(f64::total_cmp);
    let compiles = env("COMPILES", 0);
    if compiles > 0 {
        let mut ms: Vec<f64> = (0..compiles)
            .map(|_| {
                let t0 = Instant::now();
                black_box(Compiled::new(black_box(&rules), mt));
                t0.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "n={n}: compile median {:.2} ms, fastest {:.2}, slowest {:.2} ({compiles} runs)",
            ms[ms.len() / 2],
            ms[0],
            ms[ms.len() - 1]
        );
    }
    let mut trace = LookupTrace::default();
    let tree = TreeClassifier::new(&rules, mt, cfg);
    for p in &pk {
        tree.best_match_traced(p, &mut trace);
    }
    println!(
        "n={n} kind={} build {:.1} ms (median of {builds}) {:.0} B/rule; per lookup: {:.2} trees, {:.2} nodes, {:.2} leaves, {:.2} checks; stats {:?}",
        c.kind(),
        times[times.len() / 2],
        c.memory_bytes() as f64 / n as f64,
        trace.trees as f64 / pk.len() as f64,
        trace.nodes as f64 / pk.len() as f64,
        trace.leaves as f64 / pk.len() as f64,
        trace.checks as f64 / pk.len() as f64,
        tree.stats(),
    );
    // PARTS=1: heap bytes per rule by part.
    if env("PARTS", 0) != 0 {
        for (part, bytes) in tree.memory_parts() {
            println!("  {part}: {:.1} B/rule", bytes as f64 / n as f64);
        }
    }
    // OUTLINE=k: print the tree's top k levels.
    if let Some(levels) = std::env::var("OUTLINE").ok().and_then(|v| v.parse().ok()) {
        print!("{}", tree.outline(levels));
    }
    if rounds > 0 {
        let rounds = rounds * 4096 / pk.len();
        let (t0, c0) = (Instant::now(), cpu_secs());
        let acc = measured(c.as_ref(), &pk, rounds);
        let lookups = (rounds * pk.len()) as f64;
        let ns = t0.elapsed().as_secs_f64() * 1e9 / lookups;
        let cpu = (cpu_secs() - c0) * 1e9 / lookups;
        println!("n={n}: {ns:.1} ns/lookup wall, {cpu:.1} ns cpu (checksum {acc})");
    }
}
