//! The planner: chooses and builds the classifier of a group from its rule
//! mix.
//!
//! - Groups that compile to at most [`SCAN_MAX`] entries: a [`ScanClassifier`]
//!   (flat boxes, best first; nothing beats it at that size).
//! - `MatchType::Lpm(field)` groups whose entries are mostly routes (rules
//!   constraining only the LPM field): an [`LpmClassifier`] (poptrie over
//!   the routes, or a DIR-24-8 table for their IPv4 part from
//!   [`super::lpm::DIR24_MIN`] IPv4 prefixes on; scan or cut tree over the
//!   other rules).
//! - Everything else: a [`TreeClassifier`] (cut tree, whose nodes pick bit,
//!   range or hash cuts per dimension from the rules they hold).
//!
//! Every structure returns exactly what [`super::linear::best_match`] would;
//! [`build_with`] forces a structure (tests, benches).

use super::compile::Compiled;
use super::linear::LinearClassifier;
use super::lpm::{LpmClassifier, V4Index};
use super::scan::ScanClassifier;
use super::tree::{TreeClassifier, TreeConfig};
use super::{GroupClassifier, MatchSource, MatchType};

/// Groups of at most this many entries are scanned.
pub const SCAN_MAX: usize = 16;

/// Which structure to build.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Strategy {
    /// Let the planner choose.
    #[default]
    Auto,
    /// The reference linear scan.
    Linear,
    /// The compiled scan.
    Scan,
    /// A cut tree with this tuning.
    Tree(TreeConfig),
    /// The LPM trie (LPM groups; priority groups get the default tree).
    Lpm(TreeConfig),
    /// The LPM trie with this IPv4 structure (as [`Strategy::Lpm`]
    /// otherwise).
    LpmV4(TreeConfig, V4Index),
}

/// Build the classifier for a group with the planner's choice.
pub fn build<R: MatchSource>(rules: &[R], match_type: MatchType) -> Box<dyn GroupClassifier> {
    Box::new(plan(rules, match_type))
}

/// The planner's choice as a plain enum: a port classifies through it
/// without a virtual call, so a small group's scan is inlined into the
/// layer's evaluation (most groups of a first packet's layers are scanned).
///
/// The scan is kept inline (the group that owns it is on the heap already:
/// no second pointer to follow for the most common kind of group); the
/// large structures are boxed.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Planned {
    Scan(ScanClassifier),
    Lpm(Box<LpmClassifier>),
    Tree(Box<TreeClassifier>),
}

impl GroupClassifier for Planned {
    #[inline]
    fn best_match(&self, fv: &crate::condition::FieldValues) -> Option<usize> {
        match self {
            Planned::Scan(c) => c.best_match(fv),
            Planned::Lpm(c) => c.best_match(fv),
            Planned::Tree(c) => c.best_match(fv),
        }
    }

    fn kind(&self) -> &'static str {
        self.as_dyn().kind()
    }

    fn head_lines(&self, out: &mut Vec<usize>) {
        self.as_dyn().head_lines(out);
    }

    fn memory_bytes(&self) -> usize {
        self.as_dyn().memory_bytes()
    }

    fn as_tree(&self) -> Option<&TreeClassifier> {
        match self {
            Planned::Tree(c) => Some(c),
            _ => None,
        }
    }
}

impl Planned {
    fn as_dyn(&self) -> &dyn GroupClassifier {
        match self {
            Planned::Scan(c) => c,
            Planned::Lpm(c) => &**c,
            Planned::Tree(c) => &**c,
        }
    }
}

/// The planner's choice for a group (what [`build`] boxes).
pub fn plan<R: MatchSource>(rules: &[R], match_type: MatchType) -> Planned {
    let c = Compiled::new(rules, match_type);
    let cfg = TreeConfig::default();
    match match_type {
        _ if c.len() <= SCAN_MAX => Planned::Scan(ScanClassifier::from_compiled(c)),
        MatchType::Lpm(f) => {
            let lpm_bit = c.lpm_dim.map_or(0, |d| c.dim_bit(d));
            let pure = (0..c.len())
                .filter(|&e| c.exact(e) && c.req(e) & !lpm_bit == 0)
                .count();
            if pure * 2 >= c.len() {
                Planned::Lpm(Box::new(LpmClassifier::from_compiled(c, f, cfg)))
            } else {
                Planned::Tree(Box::new(TreeClassifier::from_compiled(c, cfg)))
            }
        }
        MatchType::Priority => Planned::Tree(Box::new(TreeClassifier::from_compiled(c, cfg))),
    }
}

/// Build the classifier for a group with the given strategy.
pub fn build_with<R: MatchSource>(
    rules: &[R],
    match_type: MatchType,
    strategy: Strategy,
) -> Box<dyn GroupClassifier> {
    match strategy {
        Strategy::Linear => Box::new(LinearClassifier::new(
            rules.iter().map(R::to_rule_match).collect(),
            match_type,
        )),
        Strategy::Scan => Box::new(ScanClassifier::new(rules, match_type)),
        Strategy::Tree(cfg) => Box::new(TreeClassifier::new(rules, match_type, cfg)),
        Strategy::Lpm(cfg) => match match_type {
            MatchType::Lpm(f) => Box::new(LpmClassifier::new(rules, f, cfg)),
            MatchType::Priority => Box::new(TreeClassifier::new(rules, match_type, cfg)),
        },
        Strategy::LpmV4(cfg, v4) => match match_type {
            MatchType::Lpm(f) => Box::new(LpmClassifier::with_v4(rules, f, cfg, v4)),
            MatchType::Priority => Box::new(TreeClassifier::new(rules, match_type, cfg)),
        },
        Strategy::Auto => build(rules, match_type),
    }
}
