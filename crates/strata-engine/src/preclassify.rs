//! Layer-major classification of a burst's first packets.
//!
//! A first packet walks the layers one after the other, searching each
//! layer's groups; a burst of first packets (a connection storm, a port's
//! first seconds) then walks every layer's trees once per packet, and the
//! lines of ten large trees do not stay in the first-level cache from one
//! packet to the next. [`Port::process_batch`](crate::Port::process_batch)
//! instead classifies the burst's likely first packets layer by layer
//! before processing them: each layer's trees are searched for all of them
//! in a row, while their upper levels are in cache. The walk then takes
//! each packet's results as it reaches the layer.
//!
//! Only what the walk would compute itself is computed: a layer is
//! classified ahead only while the packet's key is still its own (no
//! earlier layer in walk order may transpose it), only if its rules are
//! all stateless (a stateful layer's existing layer flows decide before its
//! rules, and may decide differently), and only if one of its groups for
//! the burst's direction is indexed: a layer of small scans stays in cache
//! from packet to packet, so classifying it ahead wins nothing and costs
//! the burst a second set of field values per packet (about 140
//! instructions per first packet through the four-layer port,
//! BENCHMARKS.md). A packet's results stop at a layer that drops it (a
//! plain block rule, or no rule and a blocking default).
//! The walk uses a result only when nothing has transposed the packet yet,
//! so a result computed for a packet that turns out to take the fast path,
//! or that an action drops, is merely unused.

use crate::condition::FieldValues;
use crate::policy::{DefaultAction, LayerPolicy, PortPolicy, RuleRef};
use crate::types::Direction;
use strata_packet::Ufid;

/// Layers (in walk order) a burst is classified ahead for.
pub const PRE_LAYERS: usize = 16;

/// Classified ahead: no rule matched.
const NO_RULE: u64 = u64::MAX;

/// One packet's layer results, by walk step.
#[derive(Clone, Copy, Debug)]
pub struct PreClassified {
    /// Bit `s` set when step `s` was classified ahead (so that starting
    /// anew clears two bytes, not the whole record).
    ahead: u16,
    steps: [u64; PRE_LAYERS],
}

impl PreClassified {
    /// Nothing classified ahead.
    pub const NONE: PreClassified = PreClassified {
        ahead: 0,
        steps: [NO_RULE; PRE_LAYERS],
    };

    /// The result for walk step `step`, if it was classified ahead (what
    /// the walk reads, as one value).
    #[cfg(test)]
    fn get(&self, step: usize) -> Option<Option<RuleRef>> {
        (self.steps_ahead() >> step.min(31) & 1 != 0).then(|| self.result(step))
    }

    /// Bit `s` set for each walk step `s` classified ahead (a walk tests
    /// this first: most packets have none).
    #[inline(always)]
    pub fn steps_ahead(&self) -> u32 {
        u32::from(self.ahead)
    }

    /// The result of a step [`PreClassified::steps_ahead`] names.
    #[inline(always)]
    pub fn result(&self, step: usize) -> Option<RuleRef> {
        match self.steps.get(step).copied().unwrap_or(NO_RULE) {
            NO_RULE => None,
            v => Some(RuleRef {
                group: (v >> 32) as usize,
                rule: (v & 0xffff_ffff) as usize,
            }),
        }
    }

    /// Record step `step`'s result (left to the walk if it cannot be
    /// told apart from [`NO_RULE`] or the step is past [`PRE_LAYERS`]).
    fn set(&mut self, step: usize, r: Option<RuleRef>) {
        let v = match r {
            None => NO_RULE,
            Some(r) if r.group < u32::MAX as usize && r.rule <= u32::MAX as usize => {
                (r.group as u64) << 32 | r.rule as u64
            }
            Some(_) => return,
        };
        if let Some(s) = self.steps.get_mut(step) {
            *s = v;
            self.ahead |= 1 << step;
        }
    }
}

/// The scratch of one burst: per packet, its field values (while it is
/// classified) and its results. Kept by the port between bursts.
#[derive(Debug, Default)]
pub struct BurstScratch {
    fields: Vec<FieldValues>,
    results: Vec<PreClassified>,
}

impl BurstScratch {
    /// Room for `n` packets (nothing allocated past the first burst).
    pub fn reserve(&mut self, n: usize) {
        if self.results.len() < n {
            self.fields.resize(n, FieldValues::EMPTY);
            self.results.resize(n, PreClassified::NONE);
        }
    }

    /// Packet `i`'s results.
    #[inline]
    pub fn results(&self, i: usize) -> &PreClassified {
        self.results.get(i).unwrap_or(&PreClassified::NONE)
    }

    /// Classify the packets `keys[i]` for which `ahead(i)` holds, layer by
    /// layer (see the module docs), in direction `d`: their results go to
    /// slot `i`, and every other slot up to `keys.len()` is emptied.
    pub fn classify(
        &mut self,
        policy: &PortPolicy,
        d: Direction,
        keys: &[Option<&Ufid>],
        mut ahead: impl FnMut(usize) -> bool,
    ) {
        let n = keys.len();
        self.reserve(n);
        // Packets still walking, as a bit mask (a burst is at most 64).
        let mut alive: u64 = 0;
        for (i, k) in keys.iter().enumerate() {
            self.results[i].ahead = 0;
            if let Some(u) = k
                && i < 64
                && ahead(i)
            {
                self.fields[i].fill_from_ufid(u);
                alive |= 1 << i;
            }
        }
        for step in 0..PRE_LAYERS {
            if alive == 0 {
                break;
            }
            let Some(layer) = policy.layer_at(d, step) else {
                break;
            };
            if classified_ahead(layer, d) {
                let mut todo = alive;
                while todo != 0 {
                    let i = todo.trailing_zeros() as usize;
                    todo &= todo - 1;
                    let r = layer.classify(d, &self.fields[i]);
                    self.results[i].set(step, r);
                    let dropped = match r {
                        None => layer.default_for(d) == DefaultAction::Block,
                        Some(r) => layer
                            .compiled_rule(r)
                            .and_then(|cr| cr.fixed())
                            .is_some_and(|v| v.is_err()),
                    };
                    if dropped {
                        alive &= !(1 << i);
                    }
                }
            }
            // Past a layer that may transpose, keys are the walk's to make.
            if layer.may_transpose() {
                break;
            }
        }
    }
}

/// Whether a layer is classified ahead for a burst in direction `d`: its
/// rules are all stateless and one of its groups for `d` is indexed (see
/// the module docs). One test for [`BurstScratch::classify`] and
/// [`worthwhile`], which must agree.
fn classified_ahead(layer: &LayerPolicy, d: Direction) -> bool {
    !layer.has_stateful() && layer.indexed(d)
}

/// Whether classifying ahead can serve a walk in direction `d` through
/// `policy`: some stateless, indexed layer comes before (or is) the first
/// that may transpose.
pub fn worthwhile(policy: &PortPolicy, d: Direction) -> bool {
    for step in 0..PRE_LAYERS {
        let Some(layer) = policy.layer_at(d, step) else {
            break;
        };
        if classified_ahead(layer, d) {
            return true;
        }
        if layer.may_transpose() {
            break;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::ActionSpec;
    use crate::condition::{Condition, Field};
    use crate::policy::{Group, LayerSpec, PortConfig, Rule};
    use crate::port::Port;
    use strata_packet::FlowKey;

    #[test]
    fn results_keep_rule_no_rule_and_not_ahead_apart() {
        let mut p = PreClassified::NONE;
        assert_eq!(p.get(0), None);
        p.set(0, None);
        p.set(
            1,
            Some(RuleRef {
                group: 3,
                rule: 70_000,
            }),
        );
        // Past what a result can name: left to the walk.
        p.set(
            2,
            Some(RuleRef {
                group: u32::MAX as usize,
                rule: 0,
            }),
        );
        p.set(PRE_LAYERS, None);
        assert_eq!(p.get(0), Some(None));
        assert_eq!(
            p.get(1),
            Some(Some(RuleRef {
                group: 3,
                rule: 70_000
            }))
        );
        assert_eq!(p.get(2), None);
        assert_eq!(p.get(PRE_LAYERS), None);
    }

    /// Layers, walk order outbound: stateless (blocks port 22), stateful
    /// (skipped), stateless, transposing (the last classified ahead), then
    /// stateless again (left to the walk). With `indexed`, each group
    /// holds 20 more rules (ports 1000–1019, matched by no test key), so
    /// the planner indexes it; without, each is a scan.
    fn port(indexed: bool) -> Port {
        let allow = DefaultAction::Allow;
        let mut p = Port::new("pre", PortConfig::default());
        let layer = |id: &str, rule: Rule| {
            let mut l = LayerSpec::new(id, allow, allow);
            let mut rules = vec![rule];
            if indexed {
                rules.extend((0..20u16).map(|i| {
                    Rule::new(
                        &format!("filler{i}"),
                        5,
                        vec![Condition::exact(Field::DstPort, u128::from(1000 + i))],
                        ActionSpec::Allow,
                    )
                }));
            }
            l.groups
                .push(Group::new("g", Direction::Out).with_rules(rules));
            l
        };
        let ssh = Rule::new(
            "ssh",
            1,
            vec![Condition::exact(Field::DstPort, 22)],
            ActionSpec::Block,
        );
        let all = |id: &str| Rule::new(id, 1, vec![], ActionSpec::Allow);
        let nat = Rule::new(
            "nat",
            1,
            vec![],
            ActionSpec::Nat {
                src_ip: None,
                dst_ip: None,
                src_port: None,
                dst_port: Some(80),
            },
        );
        for l in [
            layer("screen", ssh),
            layer("acl", all("acl").stateful()),
            layer("count", all("count")),
            layer("nat", nat),
            layer("after", all("after")),
        ] {
            p.add_layer(l, None).expect("layer");
        }
        p
    }

    fn key(dport: u16) -> Ufid {
        Ufid::plain(FlowKey {
            ether_type: 0x0800,
            src_ip: "10.0.0.5".parse().expect("ip"),
            dst_ip: "10.1.0.9".parse().expect("ip"),
            proto: 6,
            src_port: 40000,
            dst_port: dport,
            ..FlowKey::EMPTY
        })
    }

    #[test]
    fn layers_are_classified_ahead_up_to_the_first_that_may_transpose() {
        let p = port(true);
        let policy = p.policy();
        assert!(policy.layers.iter().all(|l| l.indexed(Direction::Out)));
        assert!(worthwhile(policy, Direction::Out));
        let (web, ssh, skipped) = (key(443), key(22), key(443));
        let mut s = BurstScratch::default();
        let keys = [Some(&web), Some(&ssh), Some(&skipped), None];
        s.classify(policy, Direction::Out, &keys, |i| i != 2);
        let steps =
            |s: &BurstScratch, i: usize| (0..6).map(|k| s.results(i).get(k)).collect::<Vec<_>>();
        let hit = Some(Some(RuleRef { group: 0, rule: 0 }));
        // screen, acl (stateful: left to the walk), count, nat (may
        // transpose: the last), after (left to the walk).
        assert_eq!(steps(&s, 0), [Some(None), None, hit, hit, None, None]);
        // Blocked by the screen: nothing further.
        assert_eq!(steps(&s, 1), [hit, None, None, None, None, None]);
        // Not asked for, and no frame.
        assert_eq!(steps(&s, 2), [None; 6]);
        assert_eq!(steps(&s, 3), [None; 6]);
        // Inbound: no group of that direction, so nothing to index and
        // nothing classified ahead.
        assert!(policy.layers.iter().all(|l| !l.indexed(Direction::In)));
        assert!(!worthwhile(policy, Direction::In));
        s.classify(policy, Direction::In, &keys, |_| true);
        assert_eq!(steps(&s, 0), [None; 6]);
    }

    #[test]
    fn layers_that_only_scan_are_left_to_the_walk() {
        // The same layers as small scans: their rules stay in cache from
        // packet to packet, so there is no locality to win by classifying
        // them ahead, only the work of doing it twice.
        let p = port(false);
        let policy = p.policy();
        assert!(policy.layers.iter().all(|l| !l.indexed(Direction::Out)));
        assert!(!worthwhile(policy, Direction::Out));
        let web = key(443);
        let mut s = BurstScratch::default();
        s.classify(policy, Direction::Out, &[Some(&web)], |_| true);
        assert_eq!(s.results(0).steps_ahead(), 0);
    }
}
