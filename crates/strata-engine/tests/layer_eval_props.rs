//! Layer evaluation (VFP-3): the engine's evaluation order (groups with
//! terminating rules first, then the others from the back, stopping at the
//! first match) must always decide exactly as the letter of VFP-3 — every
//! group of the direction classified in order, a terminating rule applies at
//! once, otherwise the last group with a match wins. Random layers: groups
//! of both directions, group conditions, terminating and non-terminating
//! rules mixed, equal priorities, LPM groups; random packets.

use proptest::prelude::*;
use std::sync::Arc;
use strata_engine::classifier::MatchType;
use strata_engine::policy::{LayerPolicy, Rule};
use strata_engine::{
    ActionRegistry, ActionSpec, Condition, DefaultAction, Direction, Field, FieldValues, Group,
    MatchValue,
};

/// Few fields, few values: rules overlap and packets hit often.
const FIELDS: [Field; 4] = [Field::SrcPort, Field::DstPort, Field::Proto, Field::DstIp];

fn value(f: Field) -> impl Strategy<Value = MatchValue> {
    let w = f.width();
    prop_oneof![
        3 => (0u128..6).prop_map(MatchValue::Exact),
        2 => (0u128..6, 0u128..4).prop_map(|(lo, d)| MatchValue::Range { lo, hi: lo + d }),
        // Prefixes covering 1–8 of the small values (longest prefix wins
        // in LPM groups).
        2 => (0u128..8, 0u8..4).prop_map(move |(v, k)| MatchValue::Prefix { value: v, len: w - k }),
    ]
}

fn condition() -> impl Strategy<Value = Condition> {
    prop::sample::select(FIELDS.to_vec()).prop_flat_map(|field| {
        prop::collection::vec(value(field), 1..3)
            .prop_map(move |values| Condition::new(field, values))
    })
}

/// (priority, conditions, terminating)
fn rule() -> impl Strategy<Value = (u32, Vec<Condition>, bool)> {
    (
        0u32..4,
        prop::collection::vec(condition(), 0..3),
        prop::bool::weighted(0.2),
    )
}

/// (inbound, group conditions, LPM, rules)
type GroupCase = (bool, Vec<Condition>, bool, Vec<(u32, Vec<Condition>, bool)>);

fn group() -> impl Strategy<Value = GroupCase> {
    (
        prop::bool::weighted(0.25),
        prop::collection::vec(condition(), 0..2),
        prop::bool::weighted(0.15),
        prop::collection::vec(rule(), 0..8),
    )
}

fn layer(groups: &[GroupCase]) -> LayerPolicy {
    let registry = ActionRegistry::default();
    let mut n = 0;
    let groups = groups
        .iter()
        .enumerate()
        .map(|(gi, (inbound, conds, lpm, rules))| {
            let d = if *inbound {
                Direction::In
            } else {
                Direction::Out
            };
            let rules = rules
                .iter()
                .map(|(prio, conds, term)| {
                    n += 1;
                    let r = Rule::new(&format!("r{n}"), *prio, conds.clone(), ActionSpec::Allow);
                    if *term { r.terminating() } else { r }
                })
                .collect();
            let mut g = Group::new(&format!("g{gi}"), d)
                .with_rules(rules)
                .with_conditions(conds.clone());
            if *lpm {
                g.match_type = MatchType::Lpm(Field::DstIp);
            }
            let prepared = g.prepare(&registry).expect("valid group");
            Arc::new(prepared.into_compiled())
        })
        .collect();
    LayerPolicy::new(
        "l".into(),
        1,
        DefaultAction::Allow,
        DefaultAction::Allow,
        1,
        0,
    )
    .with_groups(groups)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn evaluation_order_decides_as_vfp3(
        groups in prop::collection::vec(group(), 0..9),
        packets in prop::collection::vec(prop::collection::vec(prop::option::weighted(0.9, 0u128..9), 4), 1..16),
    ) {
        let l = layer(&groups);
        for p in &packets {
            let pairs: Vec<(Field, u128)> = FIELDS
                .iter()
                .zip(p)
                .filter_map(|(f, v)| v.map(|v| (*f, v)))
                .collect();
            let fv = FieldValues::from_pairs(&pairs);
            for d in [Direction::Out, Direction::In] {
                prop_assert_eq!(l.classify(d, &fv), l.classify_in_order(d, &fv), "{:?} {:?}", d, pairs);
            }
        }
    }
}
