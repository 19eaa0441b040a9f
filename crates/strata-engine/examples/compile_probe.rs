//! Times the classifiers' common front end alone: `Compiled::new` on a
//! generated ACL group of N rules (`rulegen::acl(N, 2)` as a port's
//! group), `R` times, printing the median, fastest and slowest.
//!
//! ```text
//! cargo build --release -p strata-engine --example compile_probe
//! N=50000 R=20 target/release/examples/compile_probe
//! ```

use std::hint::black_box;
use std::time::Instant;
use strata_engine::Rule;
use strata_engine::classifier::MatchType;
use strata_engine::classifier::compile::Compiled;
use strata_engine::scenario::generated_acl_group;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[inline(never)]
fn measured(rules: &[Rule]) -> Compiled {
    Compiled::new(rules, MatchType::Priority)
}

fn main() {
    let n = env("N", 50_000);
    let rounds = env("R", 20).max(1);
    let group = generated_acl_group(n, 2, "r");
    let mut ms: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            black_box(measured(&group.rules));
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let c = measured(&group.rules);
    println!(
        "n={n}: {} entries; compile median {:.2} ms, fastest {:.2}, slowest {:.2} ({rounds} rounds)",
        c.len(),
        ms[ms.len() / 2],
        ms[0],
        ms[ms.len() - 1]
    );
}
