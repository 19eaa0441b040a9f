//! Every classifier, and the planner, must return exactly what the linear
//! reference returns: random rule sets (overlaps, wildcards, equal
//! priorities, IPv4 and IPv6, multi-value conditions, conditions on any
//! field, malformed values) against random packets (hits, boundary values,
//! absent fields, out-of-width values).

use proptest::prelude::*;
use strata_engine::classifier::lpm::{LpmClassifier, range_prefixes};
use strata_engine::classifier::plan::{Strategy as Plan, build_with};
use strata_engine::classifier::scan::ScanClassifier;
use strata_engine::classifier::tree::{self, TreeClassifier, TreeConfig};
use strata_engine::classifier::trie::{NO_RANK, PopTrie};
use strata_engine::classifier::{
    GroupClassifier, MatchType, RuleMatch, best_match_many, build, linear,
};
use strata_engine::condition::{Condition, Field, FieldValues, MatchValue};
use strata_engine::rulegen;

const V4: u128 = 0xffff << 32;

/// Address bases the random values cluster around (so rules overlap and
/// packets hit).
const IP_BASES: [u128; 6] = [
    V4 | 0x0a00_0000,                          // 10.0.0.0
    V4 | 0x0a01_0200,                          // 10.1.2.0
    V4 | 0xc0a8_0100,                          // 192.168.1.0
    0x2001_0db8_0000_0000_0000_0000_0000_0000, // 2001:db8::
    0x2001_0db8_0000_0001_0000_0000_0000_0100, // 2001:db8:0:1::100
    0xfe80_0000_0000_0000_0000_0000_0000_0001, // fe80::1
];

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        3 => prop::sample::select(vec![Field::SrcIp, Field::DstIp]),
        2 => prop::sample::select(vec![Field::SrcPort, Field::DstPort, Field::Proto]),
        2 => (0..Field::COUNT).prop_map(|i| Field::ALL[i]),
    ]
}

/// A value of `f` near the interesting spots.
fn point(f: Field) -> BoxedStrategy<u128> {
    let max = f.max_value();
    if f.is_ip() {
        (prop::sample::select(IP_BASES.to_vec()), 0u128..600)
            .prop_map(|(b, o)| b.wrapping_add(o))
            .boxed()
    } else {
        prop_oneof![
            4 => (0u128..40).prop_map(move |x| x.min(max)),
            1 => Just(max),
            1 => 0..=max,
        ]
        .boxed()
    }
}

fn value(f: Field) -> BoxedStrategy<MatchValue> {
    let w = f.width();
    let max = f.max_value();
    prop_oneof![
        3 => point(f).prop_map(MatchValue::Exact),
        2 => (point(f), 0u128..300).prop_map(move |(lo, d)| MatchValue::Range {
            lo,
            hi: lo.saturating_add(d).min(max),
        }),
        4 => (point(f), 0..=w).prop_map(move |(v, len)| {
            // IPv4 prefixes mostly in the IPv4 block.
            let len = if f.is_ip() && v >> 32 == 0xffff && len < 96 && len % 3 != 0 {
                96 + len % 33
            } else {
                len
            };
            MatchValue::Prefix { value: v, len }
        }),
        // Malformed: never panics, semantics of the reference.
        1 => prop_oneof![
            (max.saturating_add(1)..=max.saturating_add(3)).prop_map(MatchValue::Exact),
            (point(f), 1u128..5).prop_map(|(hi, d)| MatchValue::Range {
                lo: hi.saturating_add(d),
                hi,
            }),
            (point(f), (w + 1)..=255).prop_map(|(value, len)| MatchValue::Prefix { value, len }),
            (0u128..3).prop_map(move |d| MatchValue::Range {
                lo: max.saturating_sub(d),
                hi: u128::MAX,
            }),
        ],
    ]
    .boxed()
}

fn condition() -> impl Strategy<Value = Condition> {
    field().prop_flat_map(|f| {
        prop_oneof![
            30 => prop::collection::vec(value(f), 1..4),
            1 => Just(Vec::new()),
        ]
        .prop_map(move |values| Condition::new(f, values))
    })
}

fn rule() -> impl Strategy<Value = RuleMatch> {
    (0u32..6, prop::collection::vec(condition(), 0..5)).prop_map(|(priority, conditions)| {
        RuleMatch {
            priority,
            conditions,
        }
    })
}

fn match_type() -> impl Strategy<Value = MatchType> {
    prop_oneof![
        3 => Just(MatchType::Priority),
        2 => Just(MatchType::Lpm(Field::DstIp)),
        1 => field().prop_map(MatchType::Lpm),
    ]
}

/// Interesting values per field: the rules' endpoints and their
/// neighbours.
fn pools(rules: &[RuleMatch]) -> Vec<Vec<u128>> {
    let mut pools = vec![Vec::new(); Field::COUNT];
    for r in rules {
        for c in &r.conditions {
            for m in &c.values {
                let (lo, hi) = m.bounds(c.field.width());
                let p = &mut pools[c.field.index()];
                p.extend([
                    lo,
                    hi,
                    lo.wrapping_sub(1),
                    hi.wrapping_add(1),
                    lo / 2 + hi / 2,
                ]);
            }
        }
    }
    pools
}

/// A packet from 17 random selectors: absent, a pool value, a random value
/// in range, or (rarely) an out-of-width value.
fn make_packet(pools: &[Vec<u128>], sel: &[(u8, u16, u128)]) -> FieldValues {
    let mut fv = FieldValues::from_pairs(&[]);
    for (i, f) in Field::ALL.iter().enumerate() {
        let (s, k, r) = sel[i];
        let pool = &pools[i];
        let max = f.max_value();
        let v = match s % 16 {
            0 | 1 => continue,
            2 | 3 => r & max,
            4 if max < u128::MAX && s > 250 => max + 1 + (r % 3),
            _ if !pool.is_empty() => pool[k as usize % pool.len()] & max,
            _ => r & max,
        };
        fv.set(*f, v);
    }
    fv
}

fn case() -> impl Strategy<Value = (Vec<RuleMatch>, MatchType, Vec<FieldValues>)> {
    (prop::collection::vec(rule(), 0..48), match_type()).prop_flat_map(|(rules, mt)| {
        let pools = pools(&rules);
        let pk = prop::collection::vec(
            prop::collection::vec(any::<(u8, u16, u128)>(), Field::COUNT),
            1..24,
        )
        .prop_map(move |sels| sels.iter().map(|s| make_packet(&pools, s)).collect());
        (Just(rules), Just(mt), pk)
    })
}

/// Tree tunings that force deep trees and every cut kind on small sets.
fn tiny_trees() -> Vec<TreeConfig> {
    let base = TreeConfig::default();
    vec![
        TreeConfig {
            leaf_size: 1,
            sample: 16,
            ..base
        },
        TreeConfig {
            leaf_size: 2,
            max_bits: 2,
            max_replicate: 4,
            range_cuts: false,
            ..base
        },
        TreeConfig {
            leaf_size: 1,
            max_bits: 3,
            hash_cuts: false,
            ..base
        },
        TreeConfig {
            leaf_size: 1,
            max_depth: 3,
            budget_factor: 0,
            ..base
        },
        TreeConfig {
            leaf_size: 6,
            chunk: 8,
            blocks: true,
            ..base
        },
    ]
}

fn all_classifiers(rules: &[RuleMatch], mt: MatchType) -> Vec<Box<dyn GroupClassifier>> {
    let mut v: Vec<Box<dyn GroupClassifier>> = vec![
        build(rules, mt),
        build_with(rules, mt, Plan::Scan),
        build_with(rules, mt, Plan::Tree(TreeConfig::default())),
    ];
    for cfg in tiny_trees() {
        v.push(Box::new(TreeClassifier::new(rules, mt, cfg)));
        if let MatchType::Lpm(f) = mt {
            v.push(Box::new(LpmClassifier::new(rules, f, cfg)));
        }
    }
    if let MatchType::Lpm(f) = mt {
        v.push(Box::new(LpmClassifier::new(
            rules,
            f,
            TreeConfig::default(),
        )));
    }
    v
}

fn check(rules: &[RuleMatch], mt: MatchType, packets: &[FieldValues]) -> Result<(), TestCaseError> {
    let cls = all_classifiers(rules, mt);
    let mut many = vec![None; cls.len()];
    for p in packets {
        let want = linear::best_match(rules, mt, p);
        for c in &cls {
            prop_assert_eq!(c.best_match(p), want, "classifier {} on {:?}", c.kind(), p);
        }
        // All of them at once, trees in lock-step.
        best_match_many(cls.iter().map(|c| c.as_ref()), p, &mut many);
        for (c, got) in cls.iter().zip(&many) {
            prop_assert_eq!(*got, want, "best_match_many, {} on {:?}", c.kind(), p);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random rule sets of any shape, every classifier.
    #[test]
    fn classifiers_agree_with_linear((rules, mt, packets) in case()) {
        check(&rules, mt, &packets)?;
    }

    /// Routing tables: prefixes (IPv4 and IPv6, nested, duplicated, with
    /// priorities) plus a few non-route rules, on the LPM classifier.
    #[test]
    fn lpm_routes_agree_with_linear(
        routes in prop::collection::vec(
            (prop::sample::select(IP_BASES.to_vec()), 0u128..1 << 20, 0u8..=128, 0u32..3, any::<bool>()),
            0..64,
        ),
        extra in prop::collection::vec(rule(), 0..6),
        sels in prop::collection::vec(prop::collection::vec(any::<(u8, u16, u128)>(), Field::COUNT), 1..24),
    ) {
        let mut rules: Vec<RuleMatch> = routes
            .iter()
            .map(|&(b, off, len, priority, v4)| {
                let addr = b ^ off;
                let len = if v4 && addr >> 32 == 0xffff { 96 + len % 33 } else { len };
                RuleMatch {
                    priority,
                    conditions: vec![Condition::new(Field::DstIp, vec![MatchValue::Prefix { value: addr, len }])],
                }
            })
            .collect();
        rules.extend(extra);
        let pools = pools(&rules);
        let packets: Vec<FieldValues> = sels.iter().map(|s| make_packet(&pools, s)).collect();
        check(&rules, MatchType::Lpm(Field::DstIp), &packets)?;
    }

    /// The trie returns the minimum rank over the prefixes covering a value
    /// (dense nested prefixes, and sparse long ones that path-compress),
    /// also after its leaves are remapped.
    #[test]
    fn poptrie_is_min_over_covering_prefixes(
        width in prop::sample::select(vec![6u8, 12, 16, 32, 48, 128]),
        sparse in any::<bool>(),
        prefixes in prop::collection::vec((any::<u128>(), any::<u8>(), 0u32..1000), 0..80),
        probes in prop::collection::vec(any::<u128>(), 1..40),
    ) {
        let max = if width == 128 { u128::MAX } else { (1u128 << width) - 1 };
        let prefixes: Vec<(u128, u8, u32)> = prefixes
            .iter()
            .map(|&(v, l, r)| {
                if sparse {
                    // Few prefixes, long, sharing a random top: long chains.
                    let top = (v & max) >> (u32::from(width) / 4) << (u32::from(width) / 4);
                    (top, width / 2 + l % (width / 2 + 1), r)
                } else {
                    // Clustered values so prefixes nest.
                    ((v & max) >> (u32::from(width) / 2) << (u32::from(width) / 2), l % (width + 1), r)
                }
            })
            .collect();
        let t = PopTrie::new(width, &prefixes);
        let mut mapped = t.clone();
        mapped.map_leaves(|r| if r == NO_RANK { NO_RANK } else { r + 7 });
        for &p in &probes {
            let near = prefixes.first().map_or(0, |x| x.0 | (p & 0xff & max));
            for v in [p & max, near, near ^ (1 << (p % u128::from(width)))] {
                let want = prefixes
                    .iter()
                    .filter(|&&(pv, len, _)| MatchValue::Prefix { value: pv, len }.matches(v, width))
                    .map(|x| x.2)
                    .min()
                    .unwrap_or(NO_RANK);
                prop_assert_eq!(t.lookup(v), want);
                prop_assert_eq!(mapped.lookup(v), if want == NO_RANK { NO_RANK } else { want + 7 });
            }
        }
    }

    /// Range to prefix decomposition covers exactly the range.
    #[test]
    fn range_prefixes_cover_exactly(
        width in prop::sample::select(vec![8u8, 16, 32, 128]),
        a in any::<u128>(),
        b in any::<u128>(),
        probes in prop::collection::vec(any::<u128>(), 1..32),
    ) {
        let max = if width == 128 { u128::MAX } else { (1u128 << width) - 1 };
        let (lo, hi) = ((a & max).min(b & max), (a & max).max(b & max));
        let mut out = Vec::new();
        range_prefixes(lo, hi, u32::from(width), &mut out);
        prop_assert!(out.len() <= 2 * usize::from(width));
        for p in probes.iter().map(|p| p & max).chain([lo, hi, lo.saturating_sub(1), hi.saturating_add(1) & max]) {
            let hits = out
                .iter()
                .filter(|&&(v, len)| MatchValue::Prefix { value: v, len }.matches(p, width))
                .count();
            prop_assert_eq!(hits, usize::from(lo <= p && p <= hi));
        }
    }
}

/// Generated ACLs and route tables, several sizes and seeds.
#[test]
fn generated_sets_agree_with_linear() {
    for seed in 0..4u64 {
        for n in [10usize, 200, 1500] {
            let rules = rulegen::acl(n, seed);
            let packets = rulegen::packets(&rules, 400, seed + 1);
            let mt = MatchType::Priority;
            let cls = all_classifiers(&rules, mt);
            let mut many = vec![None; cls.len()];
            for p in &packets {
                let want = linear::best_match(&rules, mt, p);
                for c in &cls {
                    assert_eq!(c.best_match(p), want, "{} n={n} seed={seed}", c.kind());
                }
                best_match_many(cls.iter().map(|c| c.as_ref()), p, &mut many);
                assert!(many.iter().all(|&m| m == want), "many n={n} seed={seed}");
            }
        }
    }
    for (rules, name) in [
        (rulegen::routes_v4(3000, 5), "v4"),
        (rulegen::routes_v6(3000, 5), "v6"),
    ] {
        let mut rules = rules;
        // A few non-route rules in the routing group.
        rules.extend(rulegen::acl(20, 9));
        let mt = MatchType::Lpm(Field::DstIp);
        let packets = rulegen::packets(&rules, 600, 3);
        let cls = all_classifiers(&rules, mt);
        for p in &packets {
            let want = linear::best_match(&rules, mt, p);
            for c in &cls {
                assert_eq!(c.best_match(p), want, "{} {name}", c.kind());
            }
        }
    }
}

/// Large groups build their rank chunks on several threads and append
/// them into one tree: the merged tree answers as the linear scan does,
/// with the default chunking (three chunks of a 40k group, the largest on
/// a thread of its own) and with many small chunks (every array of every
/// chunk moved, including hash tables and shared range bases).
#[test]
fn chunks_built_on_threads_agree_with_linear() {
    let rules = rulegen::acl(40_000, 11);
    let packets = rulegen::packets(&rules, 1500, 12);
    let mt = MatchType::Priority;
    assert!(rules.len() >= tree::PARALLEL_BUILD_MIN);
    let trees = [
        TreeClassifier::new(&rules, mt, TreeConfig::default()),
        TreeClassifier::new(
            &rules,
            mt,
            TreeConfig {
                chunk: 512,
                ..TreeConfig::default()
            },
        ),
    ];
    let single = TreeClassifier::new(
        &rules,
        mt,
        TreeConfig {
            chunk: 0,
            ..TreeConfig::default()
        },
    );
    for t in &trees {
        let s = t.stats();
        assert!(
            s.hash_cuts > 0 && s.range_cuts > 0 && s.bit_cuts > 0,
            "{s:?}"
        );
    }
    for p in &packets {
        let want = linear::best_match(&rules, mt, p);
        assert_eq!(single.best_match(p), want);
        for t in &trees {
            assert_eq!(t.best_match(p), want, "{p:?}");
        }
    }
}

/// The planner picks by rule mix.
#[test]
fn planner_choices() {
    assert_eq!(build::<RuleMatch>(&[], MatchType::Priority).kind(), "scan");
    assert_eq!(
        build(&rulegen::acl(8, 1), MatchType::Priority).kind(),
        "scan"
    );
    assert_eq!(
        build(&rulegen::acl(500, 1), MatchType::Priority).kind(),
        "cut-tree"
    );
    assert_eq!(
        build(&rulegen::routes_v4(500, 1), MatchType::Lpm(Field::DstIp)).kind(),
        "lpm-trie"
    );
    let mut mixed = rulegen::routes_v6(500, 1);
    mixed.extend(rulegen::acl(40, 2));
    assert_eq!(
        build(&mixed, MatchType::Lpm(Field::DstIp)).kind(),
        "lpm-trie+cut-tree"
    );
    // An ACL in an LPM group: not routes, so a tree.
    assert_eq!(
        build(&rulegen::acl(500, 1), MatchType::Lpm(Field::DstIp)).kind(),
        "cut-tree"
    );
}

/// Generators are deterministic and produce what they claim.
#[test]
fn generators_are_deterministic() {
    assert_eq!(rulegen::acl(300, 42), rulegen::acl(300, 42));
    assert_ne!(rulegen::acl(300, 42), rulegen::acl(300, 43));
    let r4 = rulegen::routes_v4(2000, 1);
    assert_eq!(r4.len(), 2000);
    assert_eq!(r4, rulegen::routes_v4(2000, 1));
    let r6 = rulegen::routes_v6(2000, 1);
    assert_eq!(r6.len(), 2000);
    let mut seen = std::collections::HashSet::new();
    for r in r4.iter().chain(&r6) {
        assert!(seen.insert(r.conditions.clone()), "duplicate route");
        for c in &r.conditions {
            c.validate().unwrap();
        }
    }
    let acl = rulegen::acl(2000, 3);
    for r in &acl {
        for c in &r.conditions {
            c.validate().unwrap();
        }
    }
    let pk = rulegen::packets(&acl, 1000, 1);
    assert_eq!(pk, rulegen::packets(&acl, 1000, 1));
    let hits = pk
        .iter()
        .filter(|p| linear::best_match(&acl, MatchType::Priority, p).is_some())
        .count();
    assert!(hits > 300 && hits < 1000, "hits {hits}");
}

/// Malformed rules and packets never panic and follow the reference.
#[test]
fn malformed_inputs() {
    let rules = vec![
        RuleMatch {
            priority: 1,
            conditions: vec![Condition::new(Field::DstPort, vec![])],
        },
        RuleMatch {
            priority: 0,
            conditions: vec![Condition::new(Field::Vlan, vec![MatchValue::Exact(5000)])],
        },
        RuleMatch {
            priority: 0,
            conditions: vec![Condition::new(
                Field::Dscp,
                vec![MatchValue::Range { lo: 9, hi: 3 }],
            )],
        },
        RuleMatch {
            priority: 2,
            conditions: vec![Condition::new(
                Field::DstIp,
                vec![MatchValue::Prefix {
                    value: u128::MAX,
                    len: 255,
                }],
            )],
        },
        RuleMatch {
            priority: 3,
            conditions: vec![Condition::new(
                Field::Vlan,
                vec![MatchValue::Range {
                    lo: 4000,
                    hi: u128::MAX,
                }],
            )],
        },
        RuleMatch {
            priority: 9,
            conditions: vec![],
        },
    ];
    let packets = [
        FieldValues::from_pairs(&[(Field::Vlan, 5000)]),
        FieldValues::from_pairs(&[(Field::Vlan, 4095), (Field::DstIp, u128::MAX)]),
        FieldValues::from_pairs(&[(Field::Dscp, 200), (Field::DstPort, 80)]),
        FieldValues::from_pairs(&[(Field::Vlan, u128::MAX)]),
        FieldValues::from_pairs(&[]),
    ];
    for mt in [
        MatchType::Priority,
        MatchType::Lpm(Field::Vlan),
        MatchType::Lpm(Field::DstIp),
    ] {
        let cls = all_classifiers(&rules, mt);
        for p in &packets {
            let want = linear::best_match(&rules, mt, p);
            for c in &cls {
                assert_eq!(c.best_match(p), want, "{} {mt:?} {p:?}", c.kind());
            }
        }
    }
}

/// Rules whose values multiply beyond the expansion caps (hulls, residual
/// LPM rules).
#[test]
fn huge_value_lists() {
    let many_ports: Vec<MatchValue> = (0..300u128).map(|p| MatchValue::Exact(p * 7)).collect();
    let many_ips: Vec<MatchValue> = (0..300u128)
        .map(|i| MatchValue::Prefix {
            value: V4 | (i << 12),
            len: 116,
        })
        .collect();
    let mut rules = vec![
        RuleMatch {
            priority: 1,
            conditions: vec![
                Condition::new(Field::DstPort, many_ports.clone()),
                Condition::new(Field::DstIp, many_ips.clone()),
                Condition::new(Field::SrcPort, many_ports.clone()),
            ],
        },
        RuleMatch {
            priority: 0,
            conditions: vec![
                Condition::new(Field::DstIp, many_ips.clone()),
                Condition::new(Field::DstIp, many_ips[..250].to_vec()),
                Condition::new(Field::DstIp, many_ips[100..].to_vec()),
            ],
        },
    ];
    rules.extend(rulegen::acl(100, 4));
    let mut packets = rulegen::packets(&rules, 300, 8);
    packets.push(FieldValues::from_pairs(&[
        (Field::DstIp, V4 | (5 << 12) | 9),
        (Field::DstPort, 14),
        (Field::SrcPort, 21),
    ]));
    for mt in [MatchType::Priority, MatchType::Lpm(Field::DstIp)] {
        let cls = all_classifiers(&rules, mt);
        for p in &packets {
            let want = linear::best_match(&rules, mt, p);
            for c in &cls {
                assert_eq!(c.best_match(p), want, "{} {mt:?}", c.kind());
            }
        }
    }
}

/// The compiled scan is also exact on its own.
#[test]
fn scan_classifier_small() {
    let rules = rulegen::acl(50, 11);
    let c = ScanClassifier::new(&rules, MatchType::Priority);
    for p in rulegen::packets(&rules, 500, 2) {
        assert_eq!(
            c.best_match(&p),
            linear::best_match(&rules, MatchType::Priority, &p)
        );
    }
}

/// In an LPM group, a rule that matches through one of its values keeps
/// that value's prefix length: here a range (length 0), so the catch-all
/// rule 0 wins the tie by order. Its other value, an IPv6 address outside
/// the IPv4 block the tree's boxes store narrow, once left its entry
/// unchecked on the LPM field and let the rule claim that address's full
/// 128-bit length (found by `lpm_routes_agree_with_linear`; every tree
/// tuning returned rule 1).
#[test]
fn lpm_rule_matching_through_a_range_keeps_length_zero() {
    let x = V4; // ::ffff:0.0.0.0
    let y = IP_BASES[3]; // 2001:db8::
    let rules = vec![
        RuleMatch {
            priority: 0,
            conditions: vec![],
        },
        RuleMatch {
            priority: 0,
            conditions: vec![Condition::new(
                Field::DstIp,
                vec![MatchValue::Range { lo: x, hi: x }, MatchValue::Exact(y)],
            )],
        },
        // Enough entries near `x` for the boxes to store the field narrow.
        RuleMatch {
            priority: 0,
            conditions: vec![
                Condition::new(
                    Field::SrcIp,
                    vec![
                        MatchValue::Prefix { value: x, len: 3 },
                        MatchValue::Exact(y),
                        MatchValue::Range {
                            lo: u128::MAX,
                            hi: u128::MAX,
                        },
                    ],
                ),
                Condition::new(
                    Field::SrcPort,
                    vec![MatchValue::Exact(0), MatchValue::Exact(2)],
                ),
                Condition::new(
                    Field::OuterDstIp,
                    vec![
                        MatchValue::Prefix {
                            value: 338288524927261089654018896841347695166,
                            len: 116,
                        },
                        MatchValue::Range {
                            lo: y + (1 << 64) + 294,
                            hi: y + (1 << 64) + 492,
                        },
                        MatchValue::Range {
                            lo: y + 23,
                            hi: y + 83,
                        },
                    ],
                ),
                Condition::new(
                    Field::DstIp,
                    vec![
                        MatchValue::Prefix {
                            value: x + 119,
                            len: 116,
                        },
                        MatchValue::Range {
                            lo: x + 311,
                            hi: x + 321,
                        },
                    ],
                ),
            ],
        },
    ];
    let mt = MatchType::Lpm(Field::DstIp);
    for packet in [
        FieldValues::from_pairs(&[(Field::DstIp, x)]),
        FieldValues::from_pairs(&[(Field::DstIp, y)]),
        FieldValues::from_pairs(&[
            (Field::DstIp, x + 5),
            (Field::SrcIp, 7),
            (Field::SrcPort, 2),
        ]),
    ] {
        let want = linear::best_match(&rules, mt, &packet);
        for c in all_classifiers(&rules, mt) {
            assert_eq!(c.best_match(&packet), want, "{} on {packet:?}", c.kind());
        }
    }
    assert_eq!(
        linear::best_match(&rules, mt, &FieldValues::from_pairs(&[(Field::DstIp, x)])),
        Some(0)
    );
}
