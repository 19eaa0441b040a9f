//! Property: a port saved mid-traffic and restored into a fresh port is the
//! same port. For random policies (every built-in action, stateful and
//! terminating rules, SNAT from a pool, meters) and random traffic both
//! ways (a VM's packets and its peers' answers to them), with some flows
//! idled out before the save, the restored port's flow state
//! checks out, it saves the very bytes it was restored from, and it then
//! treats the next packets (established flows and new ones, SNAT ports
//! included) exactly as the original does — before and after the same
//! policy change on both — verdicts, bytes, every counter, flow counts,
//! pool use, and what a later expiry retires.

mod common;
#[path = "common/random_policy.rs"]
mod random_policy;

use common::run;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use random_policy::{error_about, random_frame, random_port, reply};
use strata_engine::{ActionRegistry, Direction, Port, secs};

/// The two ports hold the same state, as far as the API shows it.
fn assert_alike(a: &Port, b: &Port, seed: u64, when: &str) {
    for d in [Direction::Out, Direction::In] {
        assert_eq!(
            a.direction_counters(d),
            b.direction_counters(d),
            "seed {seed} {when}: {d:?} counters"
        );
    }
    let (ca, cb) = (a.counters(), b.counters());
    assert_eq!(ca.drops, cb.drops, "seed {seed} {when}: drops");
    assert_eq!(ca.flows, cb.flows, "seed {seed} {when}: flow counters");
    assert_eq!(
        a.icmp_error_counters(),
        b.icmp_error_counters(),
        "seed {seed} {when}: ICMP error counters"
    );
    assert_eq!(
        ca.arena.all(),
        cb.arena.all(),
        "seed {seed} {when}: rule, layer and meter counters"
    );
    assert_eq!(
        a.connection_count(),
        b.connection_count(),
        "seed {seed} {when}"
    );
    assert_eq!(
        a.unified_flow_count(),
        b.unified_flow_count(),
        "seed {seed} {when}"
    );
    for l in a.layer_ids() {
        assert_eq!(
            a.layer_flow_count(&l),
            b.layer_flow_count(&l),
            "seed {seed} {when}: layer {l} flows"
        );
    }
    assert_eq!(
        a.resources().port_pools["pool"].in_use(),
        b.resources().port_pools["pool"].in_use(),
        "seed {seed} {when}: SNAT ports in use"
    );
}

fn check(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut a = random_port(&mut rng);
    let seen: Vec<Vec<u8>> = (0..rng.random_range(1..40))
        .map(|_| random_frame(&mut rng))
        .collect();
    let mut now = secs(1);
    for f in &seen {
        now += secs(rng.random_range(0..3));
        let (v, sent) = run(&mut a, Direction::Out, f, now);
        if v.is_forward()
            && rng.random_bool(0.5)
            && let Some(answer) = reply(&sent)
        {
            run(&mut a, Direction::In, &answer, now);
        }
        if v.is_forward() && rng.random_bool(0.3) {
            let err = error_about(&sent, rng.random_bool(0.5), rng.random_bool(0.5));
            run(&mut a, Direction::In, &err, now);
        }
    }
    // Half the time some flows idle out first, so the save holds freed
    // slots, returned SNAT ports and retired counters too.
    if rng.random_bool(0.5) {
        now += secs(rng.random_range(1..120));
        a.expire(now);
    }
    a.verify_flow_state()
        .unwrap_or_else(|e| panic!("seed {seed}: flow state before the save: {e}"));
    let bytes = a.snapshot().expect("snapshot");
    let mut b = Port::restore(&bytes, ActionRegistry::default()).expect("restore");
    b.verify_flow_state()
        .unwrap_or_else(|e| panic!("seed {seed}: restored flow state: {e}"));
    assert!(
        b.snapshot().expect("snapshot of the restored port") == bytes,
        "seed {seed}: the restored port saves other bytes"
    );
    assert_alike(&a, &b, seed, "after the restore");

    let traffic = |a: &mut Port, b: &mut Port, rng: &mut StdRng, now: &mut u64, when| {
        both(a, b, &seen, rng, now, seed, when);
    };
    traffic(&mut a, &mut b, &mut rng, &mut now, "after the restore");

    // A policy change reaches both alike: each layer flow of the removed
    // group is reconciled (dropped or re-made) as its next packet comes.
    let layers = a.layer_ids();
    let layer = &layers[rng.random_range(0..layers.len())];
    a.remove_group(layer, "g0").expect("every layer has g0");
    b.remove_group(layer, "g0").expect("every layer has g0");
    traffic(&mut a, &mut b, &mut rng, &mut now, "after a change");

    // Both retire the same flows and give back the same ports.
    now += secs(rng.random_range(1..400));
    a.expire(now);
    b.expire(now);
    assert_alike(&a, &b, seed, "after an expiry");
}

/// Send the same packets through both ports (mostly `seen` ones again,
/// some new; half of those forwarded answered by their peer), asserting
/// the same verdicts and bytes, then the same state, and sound flow
/// tables on both.
fn both(
    a: &mut Port,
    b: &mut Port,
    seen: &[Vec<u8>],
    rng: &mut StdRng,
    now: &mut u64,
    seed: u64,
    when: &str,
) {
    for i in 0..60 {
        let f = if rng.random_bool(0.6) {
            seen[rng.random_range(0..seen.len())].clone()
        } else {
            random_frame(rng)
        };
        *now += secs(rng.random_range(0..2));
        let (va, fa) = run(a, Direction::Out, &f, *now);
        let (vb, fb) = run(b, Direction::Out, &f, *now);
        assert_eq!(va, vb, "seed {seed} {when}, packet {i}: verdicts");
        assert_eq!(fa, fb, "seed {seed} {when}, packet {i}: bytes");
        if va.is_forward()
            && rng.random_bool(0.5)
            && let Some(answer) = reply(&fa)
        {
            let (va, fa) = run(a, Direction::In, &answer, *now);
            let (vb, fb) = run(b, Direction::In, &answer, *now);
            assert_eq!(va, vb, "seed {seed} {when}, answer {i}: verdicts");
            assert_eq!(fa, fb, "seed {seed} {when}, answer {i}: bytes");
        }
        // An ICMP error about what left: both ports relay it (or the
        // policy decides it) alike, with valid checksums, and make no
        // flow for it.
        if va.is_forward() && rng.random_bool(0.3) {
            let err = error_about(&fa, rng.random_bool(0.5), rng.random_bool(0.5));
            let flows = (a.unified_flow_count(), b.unified_flow_count());
            let (va, ea) = run(a, Direction::In, &err, *now);
            let (vb, eb) = run(b, Direction::In, &err, *now);
            assert_eq!(va, vb, "seed {seed} {when}, error {i}: verdicts");
            assert_eq!(ea, eb, "seed {seed} {when}, error {i}: bytes");
            if va.is_forward() {
                crate::common::decode(&ea);
            }
            assert_eq!(
                (a.unified_flow_count(), b.unified_flow_count()),
                flows,
                "seed {seed} {when}, error {i}: no flow for an error"
            );
        }
    }
    assert_alike(a, b, seed, when);
    for p in [a, b] {
        p.verify_flow_state()
            .unwrap_or_else(|e| panic!("seed {seed} {when}: flow state: {e}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn a_restored_port_is_the_same_port(seed in any::<u64>()) {
        check(seed);
    }
}
