//! Profile of the issue-3 group replacement at engine level: a port with an
//! ACL layer holding one generated group of N stateful rules
//! (`rulegen::acl(N, seed)`) has that group replaced `ROUNDS` times (at
//! least 2): every other time by `Port::set_group` (validate, compile
//! actions, build the classifier, assign counters, swap, bump the
//! generation), in between in its two halves, `Group::prepare_for` (off
//! the datapath, against a policy snapshot) and `Port::install_group`
//! (the datapath's pause). Also times the classifier build
//! alone. Prints the medians.
//!
//! ```text
//! cargo build --release -p strata-engine --example group_replace
//! N=50000 ROUNDS=6 target/release/examples/group_replace
//! ```
//!
//! `SAME=1`: each group keeps the rule ids of the one it replaces.
//! `BACK=1`: every replacement is a `Port::set_group`, back to back (no
//! classifier build in between: the replaced group is still being freed
//! on another thread when the next replacement starts).

use std::hint::black_box;
use std::time::Instant;
use strata_engine::classifier::{MatchType, build};
use strata_engine::scenario::generated_acl_group;
use strata_engine::{DefaultAction, Group, LayerSpec, Port, PortConfig};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let n = env("N", 50_000);
    let rounds = env("ROUNDS", 6).max(2);
    let mut port = Port::new("replace", PortConfig::default());
    port.add_layer(
        LayerSpec::new("acl", DefaultAction::Block, DefaultAction::Block),
        None,
    )
    .expect("layer");
    port.set_group("acl", generated_acl_group(n, 1, "s1r"))
        .expect("first group");
    // SAME=1: every group reuses the rule ids of the one it replaces (a
    // controller updating a group in place); else the ids are new each time.
    let same = env("SAME", 0) != 0;
    let back = env("BACK", 0) != 0;
    let groups: Vec<Group> = (0..rounds)
        .map(|i| {
            let seed = 2 + i as u64 % 2;
            let prefix = if same {
                "s1r".into()
            } else {
                format!("s{seed}r")
            };
            generated_acl_group(n, seed, &prefix)
        })
        .collect();
    let registry = port.registry().clone();
    let (mut whole, mut prep, mut install, mut classify) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, g) in groups.into_iter().enumerate() {
        if !back {
            let t = Instant::now();
            black_box(build(&g.rules, MatchType::Priority));
            classify.push(ms(t));
        }
        if i % 2 == 0 || back {
            let t = Instant::now();
            port.set_group("acl", g).expect("replace");
            whole.push(ms(t));
        } else {
            let policy = port.policy().clone();
            let t = Instant::now();
            let p = g
                .prepare_for(&registry, policy.layer("acl").expect("layer"))
                .expect("prepare");
            prep.push(ms(t));
            let t = Instant::now();
            port.install_group("acl", p).expect("install");
            install.push(ms(t));
        }
    }
    if back {
        println!(
            "n={n}: set_group back to back {:.1} ms (median of {rounds})",
            median(whole)
        );
        return;
    }
    println!(
        "n={n}: set_group {:.1} ms; prepare {:.1} ms + install {:.1} ms; classifier alone {:.1} ms (medians of {rounds})",
        median(whole),
        median(prep),
        median(install),
        median(classify),
    );
}
