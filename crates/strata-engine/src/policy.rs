//! Policy objects (VFP-2…4): layers, groups and rules as controllers write
//! them, and their compiled, immutable forms.
//!
//! A group is the unit of atomic update: [`Group::prepare`] validates it and
//! builds its classifier (the expensive part, done off the datapath, on any
//! thread); installing the prepared group into a port is then one pointer
//! swap. The port's whole policy ([`PortPolicy`]) is an immutable value of
//! `Arc`s, replaced as a whole on every change (read-copy-update), so no
//! reader ever sees a half-applied update.

use crate::action::{Action, ActionRegistry, ActionSpec, CompileError};
use crate::classifier::{self, GroupClassifier, MatchType};
use crate::condition::{Condition, FieldValues, all_match};
use crate::error::{ApiError, check_id};
use crate::types::{Direction, DropReason, NANOS_PER_SEC, Time, secs};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, OnceLock};

/// Groups of at least this many rules build their classifier on a second
/// thread while the rules are checked (below, a thread costs more than it
/// saves).
pub const PARALLEL_PREPARE_MIN: usize = 4096;

/// A rule (VFP-4).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// Unique within its layer.
    pub id: String,
    /// Lower number = higher priority; ties go to the rule listed first.
    #[serde(default)]
    pub priority: u32,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    pub action: ActionSpec,
    /// Apply at once, ignoring later groups of the layer.
    #[serde(default)]
    pub terminating: bool,
    /// Create a layer flow pair so the return direction is handled by the
    /// inverse transposition (VFP-6).
    #[serde(default)]
    pub stateful: bool,
    /// Idle timeout of flows created by this rule, seconds (defaults to the
    /// port's per-protocol timeouts).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// The classifier reads a rule where it is (see [`Group::prepare`]).
impl classifier::MatchSource for Rule {
    fn priority(&self) -> u32 {
        self.priority
    }

    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl Rule {
    pub fn new(id: &str, priority: u32, conditions: Vec<Condition>, action: ActionSpec) -> Rule {
        Rule {
            id: id.to_string(),
            priority,
            conditions,
            action,
            terminating: false,
            stateful: false,
            ttl_secs: None,
        }
    }

    pub fn stateful(mut self) -> Rule {
        self.stateful = true;
        self
    }

    pub fn terminating(mut self) -> Rule {
        self.terminating = true;
        self
    }

    pub fn ttl(mut self, secs: u64) -> Rule {
        self.ttl_secs = Some(secs);
        self
    }

    /// Content fingerprint: a layer flow created by a rule stays valid across
    /// policy changes while a rule with the same id and fingerprint still
    /// decides its flow (this is what keeps NAT affinity).
    pub fn fingerprint(&self) -> u64 {
        foldhash::fast::FixedState::with_seed(0x5255_4c45).hash_one(self)
    }
}

/// A group of rules (VFP-3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: String,
    pub direction: Direction,
    /// The group is skipped unless all hold.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub match_type: MatchType,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl Group {
    pub fn new(id: &str, direction: Direction) -> Group {
        Group {
            id: id.to_string(),
            direction,
            conditions: Vec::new(),
            match_type: MatchType::Priority,
            rules: Vec::new(),
        }
    }

    pub fn with_rules(mut self, rules: Vec<Rule>) -> Group {
        self.rules = rules;
        self
    }

    pub fn with_conditions(mut self, conditions: Vec<Condition>) -> Group {
        self.conditions = conditions;
        self
    }

    /// Validate and compile: actions through the registry, the classifier by
    /// the planner. Pure: touches no port.
    pub fn prepare(self, registry: &ActionRegistry) -> Result<PreparedGroup, ApiError> {
        self.prepare_with(registry, |_| ()).map(|(p, ())| p)
    }

    /// [`Group::prepare`] for installing into `layer` (from a policy
    /// snapshot, [`crate::Port::policy`], on any thread): also checks the
    /// rule ids against the layer's other groups and finds the counter
    /// slots of the rule ids the layer already has, so that
    /// [`crate::Port::install_group`] — on the datapath's thread — only
    /// swaps, as long as the layer has not changed since (else it checks
    /// and looks up again).
    pub fn prepare_for(
        self,
        registry: &ActionRegistry,
        layer: &LayerPolicy,
    ) -> Result<PreparedGroup, ApiError> {
        let (mut prepared, (unique, slots)) = self
            .prepare_with(registry, |g| {
                let unique =
                    crate::port::check_unique_rules(&layer.id, crate::port::with_others(layer, g));
                let mut by_id =
                    hashbrown::HashMap::with_hasher(foldhash::fast::RandomState::default());
                for r in layer.groups().iter().flat_map(|cg| cg.rules.iter()) {
                    by_id.insert(&*r.identity.id, r.counter());
                }
                let slots: Vec<Option<u32>> = g
                    .rules
                    .iter()
                    .map(|r| by_id.get(r.id.as_str()).copied())
                    .collect();
                (unique, slots)
            })
            .map_err(|e| crate::port::with_layer(e, &layer.id))?;
        unique?;
        prepared.1 = Some(PreparedFor {
            layer_uid: layer.uid,
            generation: layer.generation,
            slots,
        });
        Ok(prepared)
    }

    /// [`Group::prepare`], also running `side` on the group: for a large
    /// group, on the calling thread while the classifier is built on
    /// another (work the caller must do anyway and that needs only the
    /// group, e.g. a port's look-ups of the rules' counter slots).
    pub fn prepare_with<T>(
        self,
        registry: &ActionRegistry,
        side: impl FnOnce(&Group) -> T,
    ) -> Result<(PreparedGroup, T), ApiError> {
        check_id(&self.id)?;
        for c in &self.conditions {
            c.validate().map_err(|message| ApiError::InvalidCondition {
                place: format!("group {:?}", self.id),
                message,
            })?;
        }
        if let MatchType::Lpm(f) = self.match_type
            && !(f.is_ip() || f.is_mac())
        {
            return Err(ApiError::BadLpmField {
                group: self.id.clone(),
                field: format!("{f:?}"),
            });
        }
        // The classifier (most of the work for a large group) is built on
        // a second thread while the rules are checked and their actions
        // compiled; a group that fails validation discards it.
        let build_classifier = || classifier::plan::plan(&self.rules, self.match_type);
        let (rules, side, classifier) = if self.rules.len() >= PARALLEL_PREPARE_MIN {
            std::thread::scope(|s| {
                let builder = std::thread::Builder::new()
                    .name("strata-classify".into())
                    .spawn_scoped(s, build_classifier);
                let rules = self.compile_rules(registry);
                let side = side(&self);
                let classifier = match builder {
                    Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                    // No thread to be had: build here.
                    Err(_) => build_classifier(),
                };
                (rules, side, classifier)
            })
        } else {
            (
                self.compile_rules(registry),
                side(&self),
                build_classifier(),
            )
        };
        let rules = rules?;
        let has_terminating = self.rules.iter().any(|r| r.terminating);
        let has_stateful = self.rules.iter().any(|r| r.stateful);
        let may_transpose = rules.iter().any(|r| r.action.may_transpose());
        let prepared = PreparedGroup(
            CompiledGroup {
                group: self,
                rules,
                classifier,
                has_terminating,
                has_stateful,
                may_transpose,
            },
            None,
        );
        Ok((prepared, side))
    }

    /// Check the rules (unique ids, valid conditions, stateful SNAT) and
    /// compile their actions.
    fn compile_rules(&self, registry: &ActionRegistry) -> Result<Vec<CompiledRule>, ApiError> {
        let mut seen = HashSet::with_capacity_and_hasher(
            self.rules.len(),
            foldhash::fast::RandomState::default(),
        );
        let mut rules = Vec::with_capacity(self.rules.len());
        let mut shared: [Option<Arc<dyn Action>>; 2] = [None, None];
        for r in &self.rules {
            check_id(&r.id)?;
            if !seen.insert(r.id.as_str()) {
                return Err(ApiError::DuplicateRule {
                    layer: String::new(),
                    rule: r.id.clone(),
                });
            }
            for c in &r.conditions {
                c.validate().map_err(|message| ApiError::InvalidCondition {
                    place: format!("rule {:?}", r.id),
                    message,
                })?;
            }
            if matches!(r.action, ActionSpec::Snat { .. }) && !r.stateful {
                return Err(ApiError::InvalidAction {
                    rule: r.id.clone(),
                    message:
                        "snat must be stateful: the port is held by the connection's layer flow"
                            .into(),
                });
            }
            // The stateless fixed verdicts (most of a big ACL) share one
            // compiled action: one allocation less per rule to make and,
            // when the group is replaced, to free.
            let fixed = match r.action {
                ActionSpec::Allow => Some(0),
                ActionSpec::Block => Some(1),
                _ => None,
            };
            let action = match fixed.and_then(|i| shared[i].as_ref()) {
                Some(a) => Arc::clone(a),
                None => {
                    let a = registry.compile(&r.action).map_err(|e| match e {
                        CompileError::Unknown(name) => ApiError::UnknownAction(name),
                        CompileError::Invalid(message) => ApiError::InvalidAction {
                            rule: r.id.clone(),
                            message,
                        },
                    })?;
                    if let Some(i) = fixed {
                        shared[i] = Some(Arc::clone(&a));
                    }
                    a
                }
            };
            rules.push(CompiledRule {
                identity: Arc::new(RuleIdentity {
                    id: Arc::from(r.id.as_str()),
                    fingerprint: r.fingerprint(),
                    counter: u32::MAX,
                }),
                brief: RuleBrief {
                    counter: u32::MAX,
                    fixed: action.fixed_verdict(),
                    stateful: r.stateful,
                    ttl: r
                        .ttl_secs
                        .map_or(NO_TTL, |t| t.saturating_mul(NANOS_PER_SEC).min(NO_TTL - 1)),
                },
                action,
            });
        }
        Ok(rules)
    }
}

/// What a layer flow remembers of the rule that created it: id, content
/// fingerprint (to revalidate the flow after policy changes) and counter
/// slot. Shared by the compiled rule and every layer flow it creates, so a
/// flow holds one pointer for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleIdentity {
    pub id: Arc<str>,
    pub fingerprint: u64,
    /// The rule's counter slot in the port's arena.
    pub counter: u32,
}

/// A rule's compiled parts, parallel to `Group::rules`.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub identity: Arc<RuleIdentity>,
    pub action: Arc<dyn Action>,
    brief: RuleBrief,
}

/// What the slow path reads of a rule that matched, beside the rule's
/// action pointer: whether it needs its action called, its counter, its
/// state flag and TTL. The rule itself, its identity and its action are
/// three lines further away, each missed on a first packet through many
/// layers of large groups, whose tree walks push them out of the first
/// level cache (16 bytes a rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RuleBrief {
    counter: u32,
    /// The action's [`Action::fixed_verdict`], asked once.
    fixed: Option<Result<(), DropReason>>,
    stateful: bool,
    /// Flow TTL in nanoseconds ([`NO_TTL`] for none); a TTL past what
    /// nanoseconds hold saturates (below `NO_TTL`).
    ttl: Time,
}

/// [`RuleBrief::ttl`] of a rule without a TTL of its own.
const NO_TTL: Time = Time::MAX;

impl CompiledRule {
    /// The action's [`Action::fixed_verdict`]: the slow path skips the
    /// action call for plain allow and block rules.
    #[inline]
    pub fn fixed(&self) -> Option<Result<(), DropReason>> {
        self.brief.fixed
    }

    /// Whether the rule makes layer flows (its `Rule::stateful`).
    #[inline]
    pub fn stateful(&self) -> bool {
        self.brief.stateful
    }

    /// The idle TTL of the flows the rule decides (its `Rule::ttl_secs`),
    /// if it sets one.
    #[inline]
    pub fn ttl(&self) -> Option<Time> {
        (self.brief.ttl != NO_TTL).then_some(self.brief.ttl)
    }

    /// The rule's id, shared by every layer flow it creates.
    pub fn id(&self) -> &Arc<str> {
        &self.identity.id
    }

    pub fn fingerprint(&self) -> u64 {
        self.identity.fingerprint
    }

    /// The rule's counter slot in the port's arena.
    #[inline]
    pub fn counter(&self) -> u32 {
        self.brief.counter
    }

    /// Assign the counter slot (when the rule joins a port).
    pub fn set_counter(&mut self, counter: u32) {
        Arc::make_mut(&mut self.identity).counter = counter;
        self.brief.counter = counter;
    }
}

/// A validated group with its classifier, ready to install.
#[derive(Debug)]
pub struct CompiledGroup {
    pub group: Group,
    pub rules: Vec<CompiledRule>,
    /// The planner's classifier (an enum: classified without a virtual
    /// call).
    pub classifier: classifier::plan::Planned,
    /// Whether any rule is terminating (only such groups can end a layer's
    /// evaluation early, see [`LayerPolicy::classify`]).
    pub has_terminating: bool,
    /// Whether any rule is stateful (makes layer flows).
    pub has_stateful: bool,
    /// Whether any rule's action may transpose ([`Action::may_transpose`]).
    pub may_transpose: bool,
}

impl CompiledGroup {
    /// The group's best rule for the packet, honouring group conditions.
    pub fn classify(&self, fv: &FieldValues) -> Option<usize> {
        if !all_match(&self.group.conditions, fv) {
            return None;
        }
        self.classifier.best_match(fv)
    }
}

/// A group that passed validation (from [`Group::prepare`] or
/// [`Group::prepare_for`]).
#[derive(Debug)]
pub struct PreparedGroup(pub(crate) CompiledGroup, pub(crate) Option<PreparedFor>);

/// The layer state a group was prepared against ([`Group::prepare_for`]):
/// while the layer is unchanged, the port installs the group with these
/// results instead of working them out on its own thread.
#[derive(Debug)]
pub(crate) struct PreparedFor {
    pub layer_uid: u32,
    pub generation: u64,
    /// Counter slot of rule `i`, for rule ids the layer already had.
    pub slots: Vec<Option<u32>>,
}

impl PreparedGroup {
    pub fn group(&self) -> &Group {
        &self.0.group
    }

    /// The compiled group, for building a [`LayerPolicy`] outside a port
    /// (tests, tools); its rules have no counter slots yet.
    pub fn into_compiled(self) -> CompiledGroup {
        self.0
    }
}

/// A layer's default action for a direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAction {
    #[default]
    Allow,
    Block,
}

/// A layer as written by its controller (groups are added separately or
/// inline).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSpec {
    pub id: String,
    #[serde(default)]
    pub default_out: DefaultAction,
    #[serde(default)]
    pub default_in: DefaultAction,
    #[serde(default)]
    pub groups: Vec<Group>,
}

impl LayerSpec {
    pub fn new(id: &str, default_out: DefaultAction, default_in: DefaultAction) -> LayerSpec {
        LayerSpec {
            id: id.to_string(),
            default_out,
            default_in,
            groups: Vec::new(),
        }
    }
}

/// A compiled layer: immutable, shared by `Arc`.
#[derive(Debug, Clone)]
pub struct LayerPolicy {
    pub id: String,
    /// Stable internal id (layer flow tables and connections refer to it).
    pub uid: u32,
    pub default_out: DefaultAction,
    pub default_in: DefaultAction,
    /// Set through [`LayerPolicy::set_groups`], which keeps `order` in step.
    groups: Vec<Arc<CompiledGroup>>,
    /// Per direction, the evaluation order of [`LayerPolicy::classify`].
    order: [EvalOrder; 2],
    /// Bumped on every change of this layer's groups.
    pub generation: u64,
    pub counter: u32,
    /// Whether a rule of the layer may transpose packets (so its flows
    /// may too): the layers after it may see another key than the
    /// packet's own. Set with the groups.
    may_transpose: bool,
    /// Whether a rule of the layer is stateful. Set with the groups.
    has_stateful: bool,
    /// Per direction, whether a group of the layer has an index (not a
    /// plain scan): only such layers are worth classifying ahead for a
    /// burst (see [`crate::preclassify`]). Set with the groups.
    indexed: [bool; 2],
}

/// The groups of one direction, split for [`LayerPolicy::classify`]: a
/// few contiguous indexes, so deciding which groups to classify does not
/// touch the groups themselves (100 groups of a large policy are 100+
/// cache misses per first packet otherwise).
#[derive(Debug, Clone, Default)]
struct EvalOrder {
    /// Groups holding a terminating rule, in order.
    terminating: Vec<u32>,
    /// The other groups, in order.
    others: Vec<u32>,
    /// Addresses of the lines classifying a packet reads first, whatever
    /// the packet: the group searched first (its conditions and
    /// classifier) and its classifier's head (see
    /// [`LayerPolicy::prime`]). Fixed while the groups are: they are
    /// shared and never move.
    head: [usize; HEAD_LINES],
    head_len: usize,
}

/// Lines a layer asks for ahead, at most.
const HEAD_LINES: usize = 12;

/// Which rule of a layer decided, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleRef {
    pub group: usize,
    pub rule: usize,
}

impl LayerPolicy {
    /// A layer without groups.
    pub fn new(
        id: String,
        uid: u32,
        default_out: DefaultAction,
        default_in: DefaultAction,
        generation: u64,
        counter: u32,
    ) -> LayerPolicy {
        LayerPolicy {
            id,
            uid,
            default_out,
            default_in,
            groups: Vec::new(),
            order: Default::default(),
            generation,
            counter,
            may_transpose: false,
            has_stateful: false,
            indexed: [false; 2],
        }
    }

    /// The layer with these groups, in evaluation order.
    pub fn with_groups(mut self, groups: Vec<Arc<CompiledGroup>>) -> LayerPolicy {
        self.set_groups(groups);
        self
    }

    /// The layer's groups, in evaluation order.
    pub fn groups(&self) -> &[Arc<CompiledGroup>] {
        &self.groups
    }

    /// Replace the groups (and the evaluation order derived from them).
    pub fn set_groups(&mut self, groups: Vec<Arc<CompiledGroup>>) {
        let mut order: [EvalOrder; 2] = Default::default();
        for (gi, g) in groups.iter().enumerate() {
            let o = &mut order[g.group.direction.index()];
            let gi = gi as u32;
            if g.has_terminating {
                o.terminating.push(gi);
            } else {
                o.others.push(gi);
            }
        }
        for o in &mut order {
            let first = o.terminating.first().or(o.others.last());
            let Some(g) = first.and_then(|&gi| groups.get(gi as usize)) else {
                continue;
            };
            let mut lines = vec![
                &g.group.conditions as *const _ as usize,
                &g.classifier as *const _ as usize,
            ];
            g.classifier.head_lines(&mut lines);
            if lines.len() == 2 {
                // A small classifier (a scan, held in the group): its lines
                // stay in cache from packet to packet; asking costs more.
                continue;
            }
            o.head_len = lines.len().min(HEAD_LINES);
            o.head[..o.head_len].copy_from_slice(&lines[..o.head_len]);
            // Unused slots repeat the first line: `prime` then asks for all
            // of them, with no count to loop on.
            let repeat = o.head[0];
            o.head[o.head_len..].fill(repeat);
        }
        self.may_transpose = groups.iter().any(|g| g.may_transpose);
        self.has_stateful = groups.iter().any(|g| g.has_stateful);
        self.indexed = [Direction::Out, Direction::In].map(|d| {
            groups.iter().any(|g| {
                g.group.direction == d
                    && !matches!(g.classifier, classifier::plan::Planned::Scan(_))
            })
        });
        self.groups = groups;
        self.order = order;
    }

    /// Whether a rule of the layer may transpose packets (see
    /// [`Action::may_transpose`]); `false` means every packet leaves the
    /// layer with the key it came in with.
    pub fn may_transpose(&self) -> bool {
        self.may_transpose
    }

    /// Whether a rule of the layer is stateful (so new packets may make
    /// layer flows in it).
    pub fn has_stateful(&self) -> bool {
        self.has_stateful
    }

    /// Whether a group of the layer for direction `d` is indexed (a tree
    /// or an LPM trie, not a scan of at most [`classifier::plan::SCAN_MAX`]
    /// entries).
    pub fn indexed(&self, d: Direction) -> bool {
        self.indexed[d.index()]
    }

    pub fn default_for(&self, d: Direction) -> DefaultAction {
        match d {
            Direction::Out => self.default_out,
            Direction::In => self.default_in,
        }
    }

    /// VFP-3 layer evaluation: groups of the direction in order; each gives
    /// its best rule; a terminating rule applies at once; otherwise the last
    /// group with a match wins.
    ///
    /// Evaluated without classifying every group: only groups holding a
    /// terminating rule can stop the evaluation, so they are classified
    /// first, in order; if none of them ends it, the answer is the last
    /// group with a match, found by classifying the other groups from the
    /// back and stopping at the first match (or at the last terminating-rule
    /// group that matched). With broad rule sets most layers then cost one
    /// group's classification instead of all of them; the result is always
    /// that of [`LayerPolicy::classify_in_order`] (property-tested).
    pub fn classify(&self, d: Direction, fv: &FieldValues) -> Option<RuleRef> {
        let order = &self.order[d.index()];
        // The last group with a terminating rule that matched without
        // terminating.
        let mut floor: Option<RuleRef> = None;
        for &gi in &order.terminating {
            match self.group_match(gi as usize, fv) {
                Some((r, true)) => return Some(r),
                Some((r, false)) => floor = Some(r),
                None => {}
            }
        }
        let below = floor.map_or(0, |r| r.group + 1);
        for &gi in order.others.iter().rev() {
            let gi = gi as usize;
            if gi < below {
                break;
            }
            if let Some((r, _)) = self.group_match(gi, fv) {
                return Some(r);
            }
        }
        floor
    }

    /// Start loading the lines classifying a packet in direction `d`
    /// reads first, whatever the packet (the group searched first and its
    /// classifier's head). The slow path asks two layers ahead of the one
    /// it classifies: those lines, cold after the walks of the layers
    /// between (a first packet through many large groups), then arrive
    /// during the walks rather than at the start of that layer's. A hint:
    /// the lines themselves are not read.
    #[inline]
    pub fn prime(&self, d: Direction) {
        let o = &self.order[d.index()];
        if o.head_len == 0 {
            return;
        }
        for &a in &o.head {
            crate::hint::prefetch_ptr(a as *const u8);
        }
    }

    /// [`LayerPolicy::classify`] by the letter of VFP-3: every group of the
    /// direction classified, in order (the reference the property test
    /// compares [`LayerPolicy::classify`] with).
    pub fn classify_in_order(&self, d: Direction, fv: &FieldValues) -> Option<RuleRef> {
        let mut chosen = None;
        for (gi, g) in self.groups.iter().enumerate() {
            if g.group.direction != d {
                continue;
            }
            match self.group_match(gi, fv) {
                Some((r, true)) => return Some(r),
                Some((r, false)) => chosen = Some(r),
                None => {}
            }
        }
        chosen
    }

    /// Group `gi`'s best rule for the packet, and whether it terminates.
    #[inline]
    fn group_match(&self, gi: usize, fv: &FieldValues) -> Option<(RuleRef, bool)> {
        let g = self.groups.get(gi)?;
        let ri = g.classify(fv)?;
        let terminating = g.group.rules.get(ri).is_some_and(|r| r.terminating);
        Some((
            RuleRef {
                group: gi,
                rule: ri,
            },
            terminating,
        ))
    }

    /// The compiled part of rule `r` (what the slow path decides most
    /// rules with, without reading the rule).
    #[inline]
    pub fn compiled_rule(&self, r: RuleRef) -> Option<&CompiledRule> {
        self.groups.get(r.group)?.rules.get(r.rule)
    }

    pub fn rule(&self, r: RuleRef) -> Option<(&Rule, &CompiledRule, &Group)> {
        let g = self.groups.get(r.group)?;
        Some((g.group.rules.get(r.rule)?, g.rules.get(r.rule)?, &g.group))
    }

    /// The layer as a spec again (for snapshots and export).
    pub fn spec(&self) -> LayerSpec {
        LayerSpec {
            id: self.id.clone(),
            default_out: self.default_out,
            default_in: self.default_in,
            groups: self.groups.iter().map(|g| g.group.clone()).collect(),
        }
    }
}

/// The whole policy of a port: its layers, VM side first.
#[derive(Debug, Default)]
pub struct PortPolicy {
    pub layers: Vec<Arc<LayerPolicy>>,
    /// Worked out from `layers` on first use. A clone starts without it:
    /// policies are changed on a clone, then shared.
    shape: OnceLock<LayerShape>,
}

/// Which of a policy's first 64 layers (bit = position, VM side first)
/// hold a stateful rule, and which may transpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerShape {
    pub stateful: u64,
    pub transposing: u64,
}

impl Clone for PortPolicy {
    fn clone(&self) -> PortPolicy {
        PortPolicy::new(self.layers.clone())
    }
}

impl PortPolicy {
    /// The layer a walk in direction `d` reaches at step `step` (VM side
    /// first outbound, network side first inbound), if any.
    #[inline]
    pub fn layer_at(&self, d: Direction, step: usize) -> Option<&LayerPolicy> {
        let li = match d {
            Direction::Out => step,
            Direction::In => self.layers.len().checked_sub(step + 1)?,
        };
        self.layers.get(li).map(|l| &**l)
    }

    pub fn new(layers: Vec<Arc<LayerPolicy>>) -> PortPolicy {
        PortPolicy {
            layers,
            shape: OnceLock::new(),
        }
    }

    /// The layers' [`LayerShape`].
    #[inline]
    pub fn shape(&self) -> LayerShape {
        *self.shape.get_or_init(|| {
            let mut s = LayerShape::default();
            for (i, l) in self.layers.iter().take(64).enumerate() {
                s.stateful |= u64::from(l.has_stateful()) << i;
                s.transposing |= u64::from(l.may_transpose()) << i;
            }
            s
        })
    }

    /// The layer with id `layer`.
    pub fn layer(&self, layer: &str) -> Option<&Arc<LayerPolicy>> {
        self.layers.iter().find(|l| l.id == layer)
    }

    pub fn position(&self, layer: &str) -> Option<usize> {
        self.layers.iter().position(|l| l.id == layer)
    }
}

/// Per-port timeouts and limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    /// Most connections (unified-flow pairs) the port keeps; beyond it the
    /// eviction policy makes room. At most [`crate::port::MAX_CONNECTIONS`]
    /// (2^31) take effect.
    pub max_connections: usize,
    pub tcp_established_idle: Time,
    pub tcp_half_open_idle: Time,
    pub tcp_time_wait: Time,
    /// How long a reset connection lingers.
    pub tcp_closed_linger: Time,
    pub udp_idle: Time,
    pub other_idle: Time,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            max_connections: 1 << 20,
            tcp_established_idle: secs(300),
            tcp_half_open_idle: secs(10),
            tcp_time_wait: secs(60),
            tcp_closed_linger: secs(1),
            udp_idle: secs(120),
            other_idle: secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::GroupClassifier;
    use crate::condition::{Condition, Field, MatchValue};

    fn compiled(id: &str, rules: Vec<Rule>) -> Arc<CompiledGroup> {
        let g = Group::new(id, Direction::Out).with_rules(rules);
        let prepared = g.prepare(&ActionRegistry::default()).expect("valid group");
        Arc::new(prepared.into_compiled())
    }

    /// A layer asks ahead for the lines of the group it searches first
    /// (the last one of the direction): that group's own, then its cut
    /// tree's head; a layer whose first group is a scan asks for none, and
    /// neither does a direction without groups.
    #[test]
    fn a_layer_primes_the_group_it_searches_first() {
        let acl = crate::rulegen::acl(2000, 7)
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                Rule::new(
                    &format!("r{i}"),
                    m.priority,
                    m.conditions,
                    ActionSpec::Allow,
                )
            })
            .collect();
        let one = vec![Rule::new(
            "only",
            1,
            vec![Condition::new(Field::DstPort, vec![MatchValue::Exact(80)])],
            ActionSpec::Allow,
        )];
        let (small, large) = (compiled("small", one), compiled("large", acl));
        assert_eq!(large.classifier.kind(), "cut-tree");
        assert_ne!(small.classifier.kind(), "cut-tree");

        let layer = |groups| {
            LayerPolicy::new(
                "l".into(),
                1,
                DefaultAction::Allow,
                DefaultAction::Allow,
                1,
                0,
            )
            .with_groups(groups)
        };
        let tree_last = layer(vec![Arc::clone(&small), Arc::clone(&large)]);
        let o = &tree_last.order[Direction::Out.index()];
        assert!(o.head_len > 2, "{:?}", o.head);
        assert_eq!(o.head[0], &large.group.conditions as *const _ as usize);
        assert_eq!(o.head[1], &large.classifier as *const _ as usize);
        let mut tree_lines = Vec::new();
        large.classifier.head_lines(&mut tree_lines);
        assert_eq!(&o.head[2..o.head_len], &tree_lines[..o.head_len - 2]);
        assert_eq!(tree_last.order[Direction::In.index()].head_len, 0);

        let scan_last = layer(vec![large, small]);
        assert_eq!(scan_last.order[Direction::Out.index()].head_len, 0);
    }
}
