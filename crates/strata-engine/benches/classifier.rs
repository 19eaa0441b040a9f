//! Classifier benchmarks: per-packet classification of generated ACL groups
//! (1k, 10k, 50k rules) by the planner's classifier and by the linear
//! reference in the same run, longest-prefix lookups over 1M IPv4 and 100k
//! IPv6 routes (for IPv4 also the DIR-24-8 table and the poptrie side by
//! side, whichever the planner picks), and group build (replacement) times:
//! the classifier alone, and a 50k-rule group replaced on a port
//! (`Port::set_group`: validation, action compilation, classifier, counter
//! slots, swap and generation bump).
//! Memory per rule (and build time of the IPv4 variants) is printed before
//! the measurements.
//!
//! Packets: 4096 per group from `rulegen::packets` (hits, near misses and
//! misses), cycled through, so a lookup touches its own random path of the
//! structure.
//!
//! `many`: the classifier side of the engine's first packet through 10
//! layers × 10 groups × 5,000 ACL rules (`rulegen::acl(5000, 1..=100)`, as
//! in the engine bench): per packet, every group of every layer is
//! classified, one `best_match` per group (`per_group`) or one
//! `best_match_many` per layer (`lockstep`); time per packet (all 100
//! groups). The 100 groups' total memory is printed first.

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Instant;
use strata_engine::classifier::lpm::V4Index;
use strata_engine::classifier::plan::{Strategy, build_with};
use strata_engine::classifier::tree::TreeConfig;
use strata_engine::classifier::{
    GroupClassifier, MatchType, RuleMatch, best_match_many, build, linear,
};
use strata_engine::condition::{Field, FieldValues};
use strata_engine::rulegen;
use strata_engine::scenario::generated_acl_group;
use strata_engine::{DefaultAction, LayerSpec, Port, PortConfig};

const PACKETS: usize = 4096;

fn report(
    name: &str,
    rules: &[RuleMatch],
    mt: MatchType,
    c: &dyn GroupClassifier,
    pk: &[FieldValues],
) {
    let lin = linear::LinearClassifier::new(rules.to_vec(), mt);
    let hits = pk.iter().filter(|p| c.best_match(p).is_some()).count();
    println!(
        "{name}: {} rules, classifier {}, {:.0} B/rule ({:.1} MB), linear {:.0} B/rule, packets {} ({:.0}% hit)",
        rules.len(),
        c.kind(),
        c.memory_bytes() as f64 / rules.len() as f64,
        c.memory_bytes() as f64 / 1e6,
        lin.memory_bytes() as f64 / rules.len() as f64,
        pk.len(),
        100.0 * hits as f64 / pk.len() as f64,
    );
}

fn cycle<'a>(pk: &'a [FieldValues], i: &mut usize) -> &'a FieldValues {
    let p = &pk[*i % pk.len()];
    *i = i.wrapping_add(1);
    p
}

fn acl(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("acl");
    for n in [1_000usize, 10_000, 50_000] {
        let rules = rulegen::acl(n, 1);
        let pk = rulegen::packets(&rules, PACKETS, 2);
        let mt = MatchType::Priority;
        let c = build(&rules, mt);
        report(&format!("acl/{n}"), &rules, mt, c.as_ref(), &pk);
        g.sample_size(50);
        g.bench_with_input(BenchmarkId::new("planner", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| c.best_match(black_box(cycle(&pk, &mut i))))
        });
        g.sample_size(10);
        g.bench_with_input(BenchmarkId::new("linear", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| linear::best_match(&rules, mt, black_box(cycle(&pk, &mut i))))
        });
    }
    g.finish();
}

fn lpm(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("lpm");
    let mt = MatchType::Lpm(Field::DstIp);
    for (name, rules) in [
        ("v4_1M", rulegen::routes_v4(1_000_000, 1)),
        ("v6_100k", rulegen::routes_v6(100_000, 1)),
    ] {
        let pk = rulegen::packets(&rules, PACKETS, 2);
        let c = build(&rules, mt);
        report(&format!("lpm/{name}"), &rules, mt, c.as_ref(), &pk);
        g.sample_size(50);
        g.bench_function(BenchmarkId::new("planner", name), |b| {
            let mut i = 0;
            b.iter(|| c.best_match(black_box(cycle(&pk, &mut i))))
        });
        if name.starts_with("v4") {
            // The two IPv4 structures side by side, same packets.
            for (v4name, v4) in [("dir24", V4Index::Dir24), ("poptrie", V4Index::PopTrie)] {
                let t0 = Instant::now();
                let c = build_with(&rules, mt, Strategy::LpmV4(TreeConfig::default(), v4));
                let built = t0.elapsed();
                report(&format!("lpm/{name}/{v4name}"), &rules, mt, c.as_ref(), &pk);
                println!(
                    "lpm/{name}/{v4name}: built in {:.0} ms",
                    built.as_secs_f64() * 1e3
                );
                g.bench_function(BenchmarkId::new(v4name, name), |b| {
                    let mut i = 0;
                    b.iter(|| c.best_match(black_box(cycle(&pk, &mut i))))
                });
            }
        }
        g.sample_size(10);
        g.bench_function(BenchmarkId::new("linear", name), |b| {
            let mut i = 0;
            b.iter(|| linear::best_match(&rules, mt, black_box(cycle(&pk, &mut i))))
        });
    }
    g.finish();
}

fn many(cr: &mut Criterion) {
    const LAYERS: usize = 10;
    const GROUPS: usize = 10;
    let mt = MatchType::Priority;
    let t0 = Instant::now();
    let mut probe_rules = Vec::new();
    let groups: Vec<Box<dyn GroupClassifier>> = (0..LAYERS * GROUPS)
        .map(|i| {
            let rules = rulegen::acl(5000, i as u64 + 1);
            let c = build(&rules, mt);
            if i == 0 {
                probe_rules = rules;
            }
            c
        })
        .collect();
    let built = t0.elapsed();
    let mem: usize = groups.iter().map(|g| g.memory_bytes()).sum();
    let pk = rulegen::packets(&probe_rules, PACKETS, 3);
    // Same answers both ways (and a hit count for the record).
    let mut out = [None; GROUPS];
    let mut hits = 0usize;
    for p in &pk {
        for layer in groups.chunks(GROUPS) {
            best_match_many(layer.iter().map(|g| g.as_ref()), p, &mut out);
            for (g, o) in layer.iter().zip(&out) {
                assert_eq!(g.best_match(p), *o);
                hits += usize::from(o.is_some());
            }
        }
    }
    println!(
        "many/10x10x5k: {} groups ({}), built in {:.1} s, {:.1} MiB ({:.0} B/rule), {:.1} group hits per packet",
        groups.len(),
        groups[0].kind(),
        built.as_secs_f64(),
        mem as f64 / 1048576.0,
        mem as f64 / (groups.len() * 5000) as f64,
        hits as f64 / pk.len() as f64,
    );
    let mut g = cr.benchmark_group("many");
    g.sample_size(20);
    g.bench_function("per_group/10x10x5k", |b| {
        let mut i = 0;
        b.iter(|| {
            let p = black_box(cycle(&pk, &mut i));
            let mut n = 0usize;
            for grp in &groups {
                n += grp.best_match(p).map_or(0, |r| r + 1);
            }
            n
        })
    });
    g.bench_function("lockstep/10x10x5k", |b| {
        let mut i = 0;
        let mut out = [None; GROUPS];
        b.iter(|| {
            let p = black_box(cycle(&pk, &mut i));
            let mut n = 0usize;
            for layer in groups.chunks(GROUPS) {
                best_match_many(layer.iter().map(|g| g.as_ref()), p, &mut out);
                n += out.iter().map(|o| o.map_or(0, |r| r + 1)).sum::<usize>();
            }
            n
        })
    });
    g.finish();
}

fn build_time(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("build");
    g.sample_size(10);
    for (name, rules, mt) in [
        ("acl_10k", rulegen::acl(10_000, 1), MatchType::Priority),
        ("acl_50k", rulegen::acl(50_000, 1), MatchType::Priority),
        (
            "routes_v6_100k",
            rulegen::routes_v6(100_000, 1),
            MatchType::Lpm(Field::DstIp),
        ),
        (
            "routes_v4_1M",
            rulegen::routes_v4(1_000_000, 1),
            MatchType::Lpm(Field::DstIp),
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || (),
                |()| build(black_box(&rules), mt),
                BatchSize::PerIteration,
            )
        });
    }
    // The whole replacement on a port, as a controller's update does it.
    let mut port = Port::new("replace", PortConfig::default());
    port.add_layer(
        LayerSpec::new("acl", DefaultAction::Block, DefaultAction::Block),
        None,
    )
    .expect("layer");
    let groups = [1, 2].map(|seed| generated_acl_group(50_000, seed, "r"));
    port.set_group("acl", groups[1].clone()).expect("group");
    let mut k = 0;
    g.bench_function("acl_50k_set_group_on_port", |b| {
        b.iter_batched(
            || {
                k += 1;
                groups[k % 2].clone()
            },
            |grp| port.set_group("acl", grp).expect("replace"),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, acl, lpm, many, build_time);
criterion_main!(benches);
