//! Rule classification for one group (VFP-15): given a packet's field values,
//! find the group's best matching rule.
//!
//! The engine only sees [`GroupClassifier`], built by [`build`] from a group's
//! rules and match type. The result must always equal the [`linear`]
//! reference:
//! - `MatchType::Priority`: among matching rules, the lowest `priority`
//!   number wins; equal priorities go to the rule listed first.
//! - `MatchType::Lpm(field)`: among matching rules, the one whose matching
//!   value on `field` has the longest prefix wins (exact = full width,
//!   range or no condition on the field = 0); ties as for priority.
//!
//! Group-level conditions are checked by the engine before classifying.
//!
//! Structures (all immutable, `Send + Sync`, built off the datapath):
//! - [`linear`]: the reference scan;
//! - [`compile`]: rules compiled to flat, ranked boxes (shared front end);
//! - [`boxes`]: the same boxes packed on cache lines for the tree's leaves;
//! - [`scan`]: compiled boxes scanned best first (small groups);
//! - [`tree`]: cut tree with bit (multibit trie), range (interval) and hash
//!   cuts and wildcard separation, one per address family and rank chunk
//!   (ACL groups);
//! - [`trie`] and [`lpm`]: path-compressed poptrie for longest-prefix groups
//!   (routes), with a secondary index for their other rules;
//! - [`dir24`]: DIR-24-8 table for the IPv4 routes of large LPM groups;
//! - [`plan`]: the planner choosing among them per group.

pub mod boxes;
pub mod compile;
pub mod dir24;
pub mod linear;
pub mod lpm;
pub mod plan;
pub mod scan;
pub mod tree;
pub mod trie;

use crate::condition::{Condition, Field, FieldValues};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;

/// How a group picks its best rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchType {
    #[default]
    Priority,
    /// Longest prefix on this field wins (routing groups).
    Lpm(Field),
}

/// What a classifier needs of a rule: its conditions and priority. The index
/// of a rule is its position in the slice given to [`build`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleMatch {
    pub priority: u32,
    pub conditions: Vec<Condition>,
}

/// Anything a classifier can be built from: a rule's priority and
/// conditions, borrowed. A port's own rules are one (building a 50k-rule
/// group's classifier copies none of its conditions).
pub trait MatchSource: Sync {
    fn priority(&self) -> u32;
    fn conditions(&self) -> &[Condition];

    /// An owned copy (for the linear reference classifier).
    fn to_rule_match(&self) -> RuleMatch {
        RuleMatch {
            priority: self.priority(),
            conditions: self.conditions().to_vec(),
        }
    }
}

impl MatchSource for RuleMatch {
    fn priority(&self) -> u32 {
        self.priority
    }

    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

/// A built classifier for one group's rules. Immutable once built; shared by
/// readers while a replacement is built off the datapath.
pub trait GroupClassifier: Send + Sync + Debug {
    /// Index of the best matching rule, or `None`.
    fn best_match(&self, fv: &FieldValues) -> Option<usize>;
    /// Short name of the structure(s) used, for traces and stats.
    fn kind(&self) -> &'static str;
    /// Approximate heap bytes used.
    fn memory_bytes(&self) -> usize;
    /// The addresses of the cache lines every lookup reads first, whatever
    /// the packet (for [`crate::policy::LayerPolicy::prime`] to ask for
    /// ahead). None by default.
    fn head_lines(&self, out: &mut Vec<usize>) {
        let _ = out;
    }

    /// The cut tree, when this is one (for [`best_match_many`]).
    fn as_tree(&self) -> Option<&tree::TreeClassifier> {
        None
    }
}

/// Classify one packet against several groups (say, the groups of a layer):
/// `out[i]` becomes what `groups[i].best_match(fv)` returns. At most
/// `out.len()` groups are classified. Allocates nothing.
///
/// Cut trees are walked in lock-step, [`tree::LOCKSTEP`] at a time: each
/// lookup in turn takes one step and starts loading its next node, so the
/// cache misses of different groups can overlap rather than queue (the
/// first packet of a flow through many layers of large groups); other
/// classifiers are called one by one.
///
/// Measured on the 10 × 10 × 5,000-rule bench (`benches/classifier.rs`,
/// `many`), this is not faster than one `best_match` per group: 5–45%
/// slower when it was written, 15–30% since a plain walk prefetches the
/// subtrees it sets aside (2026-12-05), which gives it most of the
/// overlap without the cursors' bookkeeping. It is kept as the batched
/// entry point (see BENCHMARKS.md).
pub fn best_match_many<'a, I>(groups: I, fv: &FieldValues, out: &mut [Option<usize>])
where
    I: IntoIterator<Item = &'a dyn GroupClassifier>,
{
    let mut batch = tree::Batch::new();
    for (i, g) in groups.into_iter().take(out.len()).enumerate() {
        match g.as_tree() {
            Some(t) => batch.push(t, fv, i, out),
            None => out[i] = g.best_match(fv),
        }
    }
    batch.run(fv, out);
}

/// Build the classifier for a group (the planner's entry point, see
/// [`plan`]).
pub fn build<R: MatchSource>(rules: &[R], match_type: MatchType) -> Box<dyn GroupClassifier> {
    plan::build(rules, match_type)
}
