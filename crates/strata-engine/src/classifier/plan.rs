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
    build_with(rules, match_type, Strategy::Auto)
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
        Strategy::Auto => {
            let c = Compiled::new(rules, match_type);
            let cfg = TreeConfig::default();
            match match_type {
                _ if c.len() <= SCAN_MAX => Box::new(ScanClassifier::from_compiled(c)),
                MatchType::Lpm(f) => {
                    let lpm_bit = c.lpm_dim.map_or(0, |d| c.dim_bit(d));
                    let pure = (0..c.len())
                        .filter(|&e| c.exact(e) && c.req(e) & !lpm_bit == 0)
                        .count();
                    if pure * 2 >= c.len() {
                        Box::new(LpmClassifier::from_compiled(c, f, cfg))
                    } else {
                        Box::new(TreeClassifier::from_compiled(c, cfg))
                    }
                }
                MatchType::Priority => Box::new(TreeClassifier::from_compiled(c, cfg)),
            }
        }
    }
}
