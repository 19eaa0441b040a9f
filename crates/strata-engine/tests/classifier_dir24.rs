//! The DIR-24-8 IPv4 table of LPM groups must answer exactly like the
//! poptrie it replaces and like the linear reference: random small route
//! sets (overlapping prefixes of every length 0..=32, default routes, the
//! same prefix with several priorities, exact values, ranges, IPv6 prefixes
//! covering the IPv4 block, rules with other conditions) with the table
//! forced on, against packets on and around every prefix boundary.

use proptest::prelude::*;
use strata_engine::classifier::dir24::Dir24;
use strata_engine::classifier::lpm::{DIR24_MIN, V4Index};
use strata_engine::classifier::plan::{Strategy as Plan, build_with};
use strata_engine::classifier::tree::TreeConfig;
use strata_engine::classifier::trie::{NO_RANK, PopTrie};
use strata_engine::classifier::{MatchType, RuleMatch, build, linear};
use strata_engine::condition::{Condition, Field, FieldValues, MatchValue};
use strata_engine::rulegen;

const V4: u128 = 0xffff << 32;

/// IPv4 addresses the random prefixes cluster around.
const BASES: [u32; 6] = [
    0x0000_0000, // 0.0.0.0
    0x0a00_0000, // 10.0.0.0
    0x0a01_0200, // 10.1.2.0
    0x0a01_02ff, // 10.1.2.255
    0xc0a8_0100, // 192.168.1.0
    0xffff_ffff, // 255.255.255.255
];

fn addr() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => (prop::sample::select(BASES.to_vec()), 0u32..1024, any::<bool>())
            .prop_map(|(b, o, up)| if up { b.wrapping_add(o) } else { b.wrapping_sub(o) }),
        1 => any::<u32>(),
    ]
}

fn v4_prefix(a: u32, len: u8) -> MatchValue {
    MatchValue::Prefix {
        value: V4 | u128::from(a),
        len: 96 + len,
    }
}

/// One value on the destination IP.
fn value() -> impl Strategy<Value = MatchValue> {
    prop_oneof![
        12 => (addr(), 0u8..=32).prop_map(|(a, l)| v4_prefix(a, l)),
        2 => Just(v4_prefix(0, 0)),
        1 => Just(MatchValue::Prefix { value: 0, len: 0 }),
        1 => (80u8..=96).prop_map(|len| MatchValue::Prefix { value: V4, len }),
        2 => addr().prop_map(|a| MatchValue::Exact(V4 | u128::from(a))),
        2 => (addr(), 0u32..5000).prop_map(|(a, d)| MatchValue::Range {
            lo: V4 | u128::from(a),
            hi: V4 | u128::from(a.saturating_add(d)),
        }),
        1 => (0u128..300).prop_map(|d| MatchValue::Range {
            lo: V4 - d,
            hi: V4 + d * 1000,
        }),
    ]
}

/// A route (the destination IP only), now and then with another condition.
fn rule() -> impl Strategy<Value = RuleMatch> {
    (
        0u32..4,
        prop::collection::vec(value(), 1..3),
        prop_oneof![6 => Just(None), 1 => (0u128..4).prop_map(Some)],
    )
        .prop_map(|(priority, values, port)| {
            let mut conditions = vec![Condition::new(Field::DstIp, values)];
            if let Some(p) = port {
                conditions.push(Condition::exact(Field::DstPort, p));
            }
            RuleMatch {
                priority,
                conditions,
            }
        })
}

/// Routes plus copies of some of them with another priority.
fn rules() -> impl Strategy<Value = Vec<RuleMatch>> {
    (
        prop::collection::vec(rule(), 0..40),
        prop::collection::vec((any::<prop::sample::Index>(), 0u32..4), 0..6),
    )
        .prop_map(|(mut rules, dups)| {
            if !rules.is_empty() {
                for (i, p) in dups {
                    let mut r = rules[i.index(rules.len())].clone();
                    r.priority = p;
                    rules.push(r);
                }
            }
            rules
        })
}

/// Destination addresses on and around every bound of the rules' values,
/// plus random ones.
fn addresses(rules: &[RuleMatch], extra: &[u32]) -> Vec<u128> {
    let mut out: Vec<u128> = extra.iter().map(|&a| V4 | u128::from(a)).collect();
    for r in rules {
        for c in &r.conditions {
            if c.field != Field::DstIp {
                continue;
            }
            for m in &c.values {
                let (lo, hi) = m.bounds(128);
                for v in [lo, hi] {
                    out.extend([v, v.wrapping_sub(1), v.wrapping_add(1)]);
                }
            }
        }
    }
    out.extend([0, V4 - 1, V4, V4 | 0xffff_ffff, (V4 | 0xffff_ffff) + 1]);
    out
}

fn packet(ip: u128, port: Option<u128>) -> FieldValues {
    let mut fv = FieldValues::from_pairs(&[]);
    fv.set(Field::DstIp, ip);
    if let Some(p) = port {
        fv.set(Field::DstPort, p);
    }
    fv
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The forced DIR-24-8 classifier (and the forced poptrie one) against
    /// the linear reference.
    #[test]
    fn dir24_matches_linear(
        rules in rules(),
        extra in prop::collection::vec(any::<u32>(), 0..16),
    ) {
        let mt = MatchType::Lpm(Field::DstIp);
        let cfg = TreeConfig::default();
        let d = build_with(&rules, mt, Plan::LpmV4(cfg, V4Index::Dir24));
        let t = build_with(&rules, mt, Plan::LpmV4(cfg, V4Index::PopTrie));
        prop_assert!(d.kind().starts_with("lpm-dir24"), "{}", d.kind());
        prop_assert!(t.kind().starts_with("lpm-trie"), "{}", t.kind());
        for ip in addresses(&rules, &extra) {
            for port in [None, Some(0), Some(2)] {
                let p = packet(ip, port);
                let want = linear::best_match(&rules, mt, &p);
                prop_assert_eq!(d.best_match(&p), want, "dir24 ip {:#x} port {:?}", ip, port);
                prop_assert_eq!(t.best_match(&p), want, "trie ip {:#x} port {:?}", ip, port);
            }
        }
    }

    /// The bare table against the 32-bit poptrie, with ranks in any order
    /// (not only longest-first), duplicates and out-of-range lengths.
    #[test]
    fn dir24_matches_poptrie(
        p in prop::collection::vec(
            (addr(), prop_oneof![8 => 0u8..=32, 1 => 33u8..=40], 0u32..64),
            0..64,
        ),
        extra in prop::collection::vec(any::<u32>(), 0..32),
    ) {
        let p: Vec<(u128, u8, u32)> =
            p.into_iter().map(|(a, l, r)| (u128::from(a), l, r)).collect();
        let d = Dir24::new(&p);
        let t = PopTrie::new(32, &p);
        let mut probe: Vec<u32> = extra;
        for &(v, l, _) in &p {
            let l = u32::from(l.min(32));
            let lo = v as u32 & if l == 0 { 0 } else { u32::MAX << (32 - l) };
            let hi = lo | if l == 32 { 0 } else { u32::MAX >> l };
            for x in [lo, hi] {
                probe.extend([x, x.wrapping_sub(1), x.wrapping_add(1)]);
            }
        }
        probe.extend([0, u32::MAX]);
        for a in probe {
            prop_assert_eq!(d.lookup(a), t.lookup(u128::from(a)), "addr {:#x}", a);
        }
    }
}

/// Empty table: nothing anywhere; a rank past `NO_RANK` is never reported.
#[test]
fn dir24_empty_and_clamped() {
    let d = Dir24::new(&[]);
    assert_eq!(d.lookup(0), NO_RANK);
    assert_eq!(d.lookup(u32::MAX), NO_RANK);
    assert_eq!(d.chunk_count(), 0);
    let d = Dir24::new(&[(0, 0, u32::MAX), (0x0a00_0001, 32, 7)]);
    assert_eq!(d.lookup(0x0a00_0000), NO_RANK);
    assert_eq!(d.lookup(0x0a00_0001), 7);
    assert_eq!(d.chunk_count(), 1);
}

/// The planner switches to the table for large IPv4 route sets only, and
/// the answers do not change on a realistic table.
#[test]
fn planner_uses_dir24_for_large_v4_groups() {
    let mt = MatchType::Lpm(Field::DstIp);
    assert_eq!(build(&rulegen::routes_v4(5_000, 1), mt).kind(), "lpm-trie");
    let rules = rulegen::routes_v4(DIR24_MIN + 10_000, 3);
    let c = build(&rules, mt);
    assert_eq!(c.kind(), "lpm-dir24");
    let t = build_with(
        &rules,
        mt,
        Plan::LpmV4(TreeConfig::default(), V4Index::PopTrie),
    );
    assert_eq!(t.kind(), "lpm-trie");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for p in rulegen::packets(&rules, 4096, 4) {
        assert_eq!(c.best_match(&p), t.best_match(&p));
    }
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = packet(V4 | u128::from(x as u32), None);
        assert_eq!(c.best_match(&p), t.best_match(&p), "{:#x}", x as u32);
    }
    // Spot checks against the reference.
    for p in rulegen::packets(&rules, 64, 5) {
        assert_eq!(c.best_match(&p), linear::best_match(&rules, mt, &p));
    }
}
