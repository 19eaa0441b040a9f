//! Property: for random layered policies and random bursts, a batch
//! (`Port::process_batch`, whose first packets are classified layer by
//! layer ahead of their walks) leaves the port exactly as frame-by-frame
//! processing does: verdicts, bytes, every counter, flow state.
//!
//! Policies mix what decides whether a result classified ahead may be
//! used: stateful and stateless layers, rules that block, rules that move
//! the destination port (so later layers, matching on it, see another
//! value), blocking and allowing defaults. Frames reuse a few ports, so a
//! burst holds the same flow twice, replies to earlier flows and
//! unsolicited packets.

mod common;
use common::*;
use proptest::prelude::*;
use std::net::Ipv4Addr;
use strata_engine::scenario::{VM_GW_MAC, VM_MAC};
use strata_engine::{
    ActionSpec, Condition, DefaultAction, Direction, Field, Group, LayerSpec, Port, PortConfig,
    Rule,
};

const VM: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 9);
/// The ports frames and rules use (few, so that they meet).
const PORTS: [u16; 5] = [79, 80, 81, 443, 8080];

#[derive(Clone, Debug)]
enum Act {
    Allow,
    Block,
    /// Move the destination (outbound) or source (inbound) port.
    Move(u16),
}

/// (priority, port range on the direction's remote port, action)
type RuleGen = (u32, (u16, u16), Act);

#[derive(Clone, Debug)]
struct LayerGen {
    stateful: bool,
    /// Whether each group also holds [`FILLERS`] rules no frame matches,
    /// so the planner indexes it (only layers with an indexed group are
    /// classified ahead; small scans are left to the walk).
    indexed: bool,
    default_out: bool,
    default_in: bool,
    out: Vec<RuleGen>,
    inbound: Vec<RuleGen>,
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        3 => Just(Act::Allow),
        1 => Just(Act::Block),
        1 => prop::sample::select(PORTS.to_vec()).prop_map(Act::Move),
    ]
}

fn rule() -> impl Strategy<Value = RuleGen> {
    let range = (0usize..PORTS.len(), 0usize..3).prop_map(|(i, w)| {
        let lo = PORTS[i];
        let hi = PORTS[(i + w).min(PORTS.len() - 1)];
        (lo, hi)
    });
    (0u32..4, range, act())
}

/// Rules added to a group to make it indexed (more than the planner scans).
const FILLERS: u16 = 20;

fn layer() -> impl Strategy<Value = LayerGen> {
    (
        prop::bool::weighted(0.4),
        prop::bool::weighted(0.7),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.6),
        prop::collection::vec(rule(), 0..4),
        prop::collection::vec(rule(), 0..3),
    )
        .prop_map(
            |(stateful, indexed, default_out, default_in, out, inbound)| LayerGen {
                stateful,
                indexed,
                default_out,
                default_in,
                out,
                inbound,
            },
        )
}

fn build(layers: &[LayerGen]) -> Port {
    let mut p = Port::new("props", PortConfig::default());
    let def = |allow: bool| {
        if allow {
            DefaultAction::Allow
        } else {
            DefaultAction::Block
        }
    };
    for (li, l) in layers.iter().enumerate() {
        let mut spec = LayerSpec::new(&format!("l{li}"), def(l.default_out), def(l.default_in));
        for (d, rules, field) in [
            (Direction::Out, &l.out, Field::DstPort),
            (Direction::In, &l.inbound, Field::SrcPort),
        ] {
            let mut rules: Vec<Rule> = rules
                .iter()
                .enumerate()
                .map(|(i, (prio, (lo, hi), a))| {
                    let action = match a {
                        Act::Allow => ActionSpec::Allow,
                        Act::Block => ActionSpec::Block,
                        Act::Move(to) => ActionSpec::Nat {
                            src_ip: None,
                            dst_ip: None,
                            src_port: (d == Direction::In).then_some(*to),
                            dst_port: (d == Direction::Out).then_some(*to),
                        },
                    };
                    let cond = Condition::range(field, u128::from(*lo), u128::from(*hi));
                    let r = Rule::new(&format!("{d:?}-{i}"), *prio, vec![cond], action);
                    if l.stateful { r.stateful() } else { r }
                })
                .collect();
            if l.indexed {
                rules.extend(unmatched_udp_rules(&format!("{d:?}"), field, FILLERS));
            }
            spec.groups
                .push(Group::new(&format!("{d:?}"), d).with_rules(rules));
        }
        p.add_layer(spec, None).expect("layer");
        if l.indexed
            && let Some(added) = p.policy().layers.last()
        {
            for d in [Direction::Out, Direction::In] {
                assert!(added.indexed(d), "layer {li} should be indexed");
            }
        }
    }
    p
}

/// A frame: outbound SYN from the VM, or inbound from the peer (SYN-ACK
/// or SYN), on ports from the few.
fn frame() -> impl Strategy<Value = (bool, u16, u16, bool)> {
    (
        any::<bool>(),
        prop::sample::select(PORTS.to_vec()),
        40000u16..40004,
        any::<bool>(),
    )
}

fn to_bytes(&(out, remote, local, reply): &(bool, u16, u16, bool)) -> Vec<u8> {
    if out {
        tcp(VM_MAC, VM_GW_MAC, VM, PEER, local, remote, SYN, 1, 0, b"")
    } else {
        let flags = if reply { SYN | ACK } else { SYN };
        tcp(VM_GW_MAC, VM_MAC, PEER, VM, remote, local, flags, 7, 2, b"")
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn batches_with_first_packets_classified_ahead_match_frame_by_frame(
        layers in prop::collection::vec(layer(), 1..5),
        bursts in prop::collection::vec(prop::collection::vec(frame(), 1..40), 1..6),
    ) {
        // Each burst is split by direction (a batch has one), in order.
        let mut runs = Vec::new();
        for burst in &bursts {
            for out in [true, false] {
                let frames: Vec<Vec<u8>> =
                    burst.iter().filter(|f| f.0 == out).map(to_bytes).collect();
                if !frames.is_empty() {
                    let d = if out { Direction::Out } else { Direction::In };
                    runs.push((d, frames));
                }
            }
        }
        bursts_match_one_by_one(|| build(&layers), &runs);
    }
}
