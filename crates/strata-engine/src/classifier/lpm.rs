//! LPM groups (routing): longest prefix on the group's field wins.
//!
//! Entries whose rule only constrains the LPM field (the routes) are
//! *pure*: they go into a [`PopTrie`] that returns, for a value, the best
//! rank among the pure entries covering it, where the rank already encodes
//! `(longest prefix, priority, index)`. Exact values are full-length
//! prefixes and ranges are split into aligned prefixes that keep the rank of
//! a length-0 match, so any value list is handled exactly.
//!
//! For IP fields, IPv4 addresses live in `::ffff:0:0/96`: they get their own
//! 32-bit trie (IPv6 prefixes covering that block, such as `::/0`, are
//! added to it as `/0` entries keeping their real length in the rank), and
//! the rest of the space a 128-bit trie. A lookup is one direct-table read
//! plus a node per 6 bits. Groups with many IPv4 prefixes (at least
//! [`DIR24_MIN`]) get a [`Dir24`] table instead of the 32-bit trie (same
//! answers, one or two memory reads, 64 MiB and up); [`V4Index`] forces the
//! choice.
//!
//! Entries of rules with other conditions (or anything else the trie cannot
//! decide alone) stay in a [`ScanIndex`] or [`TreeIndex`] searched for a
//! rank better than the trie's, so mixed groups are exact too.

use super::compile::{Compiled, NONE};
use super::dir24::Dir24;
use super::scan::ScanIndex;
use super::tree::{TreeConfig, TreeIndex};
use super::trie::{NO_RANK, PopTrie};
use super::{GroupClassifier, MatchSource, MatchType};
use crate::condition::{Field, FieldValues};

const V4_BASE: u128 = 0xffff << 32;

/// IPv4 prefixes (after splitting ranges) from which [`V4Index::Auto`]
/// picks a [`Dir24`] table over the poptrie.
pub const DIR24_MIN: usize = 1 << 16;

/// The structure holding an IP LPM group's IPv4 prefixes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum V4Index {
    /// [`V4Index::Dir24`] from [`DIR24_MIN`] prefixes on, else the poptrie.
    #[default]
    Auto,
    /// A 32-bit [`PopTrie`].
    PopTrie,
    /// A [`Dir24`] table.
    Dir24,
}

#[derive(Debug, Clone)]
enum V4 {
    /// Not an IP field.
    None,
    Trie(PopTrie),
    Dir24(Dir24),
}

/// Index for the entries the trie does not hold.
#[derive(Debug, Clone)]
enum Rest {
    None,
    Scan(ScanIndex),
    Tree(Box<TreeIndex>),
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct LpmClassifier {
    c: Compiled,
    field: Field,
    max: u128,
    v4: V4,
    main: PopTrie,
    rest: Rest,
    pure: usize,
    other: usize,
    /// The tries hold rule indices instead of ranks (nothing else to merge
    /// with).
    rules_in_trie: bool,
}

/// Split `lo..=hi` (values of a `width`-bit field) into aligned prefixes.
pub fn range_prefixes(lo: u128, hi: u128, width: u32, out: &mut Vec<(u128, u8)>) {
    let mut lo = lo;
    if lo > hi {
        return;
    }
    loop {
        let tz = if lo == 0 { 128 } else { lo.trailing_zeros() };
        let span = hi - lo;
        let fit = if span == u128::MAX {
            128
        } else {
            127 - (span + 1).leading_zeros()
        };
        let b = tz.min(width).min(fit);
        out.push((lo, (width - b) as u8));
        if b >= 128 {
            return;
        }
        let last = lo + ((1u128 << b) - 1);
        if last >= hi {
            return;
        }
        lo = last + 1;
    }
}

#[inline]
fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}

impl LpmClassifier {
    /// Build for an LPM group on `field`.
    pub fn new<R: MatchSource>(rules: &[R], field: Field, cfg: TreeConfig) -> LpmClassifier {
        LpmClassifier::from_compiled(Compiled::new(rules, MatchType::Lpm(field)), field, cfg)
    }

    pub fn from_compiled(c: Compiled, field: Field, cfg: TreeConfig) -> LpmClassifier {
        LpmClassifier::from_compiled_with(c, field, cfg, V4Index::Auto)
    }

    /// Build for an LPM group on `field` with the given IPv4 structure.
    pub fn with_v4<R: MatchSource>(
        rules: &[R],
        field: Field,
        cfg: TreeConfig,
        v4: V4Index,
    ) -> LpmClassifier {
        let c = Compiled::new(rules, MatchType::Lpm(field));
        LpmClassifier::from_compiled_with(c, field, cfg, v4)
    }

    pub fn from_compiled_with(
        mut c: Compiled,
        field: Field,
        cfg: TreeConfig,
        v4_index: V4Index,
    ) -> LpmClassifier {
        let width = field.width();
        let lpm_bit = c.lpm_dim.map_or(0, |d| c.dim_bit(d));
        let pure: Vec<bool> = (0..c.len())
            .map(|e| c.exact(e) && c.req(e) & !lpm_bit == 0)
            .collect();
        let ip = field.is_ip();
        let mut v4p: Vec<(u128, u8, u32)> = Vec::new();
        let mut mainp: Vec<(u128, u8, u32)> = Vec::new();
        let mut pieces: Vec<(u128, u8)> = Vec::new();
        let mut npure = 0;
        for (e, &is_pure) in pure.iter().enumerate() {
            if !is_pure {
                continue;
            }
            npure += 1;
            let (lo, hi) = match c.lpm_dim {
                Some(d) if c.req(e) & lpm_bit != 0 => {
                    (c.lo(e, d), c.hi(e, d).min(field.max_value()))
                }
                _ => (0, field.max_value()),
            };
            let rank = c.rank[e];
            pieces.clear();
            range_prefixes(lo, hi, u32::from(width), &mut pieces);
            for &(v, len) in &pieces {
                if !ip {
                    mainp.push((v, len, rank));
                } else if len >= 96 && v >> 32 == 0xffff {
                    v4p.push((v & 0xffff_ffff, len - 96, rank));
                } else {
                    if V4_BASE & mask128(len) == v {
                        v4p.push((0, 0, rank));
                    }
                    mainp.push((v, len, rank));
                }
            }
        }
        let dir24 = match v4_index {
            V4Index::Auto => v4p.len() >= DIR24_MIN,
            V4Index::PopTrie => false,
            V4Index::Dir24 => true,
        };
        let mut v4 = match ip {
            false => V4::None,
            true if dir24 => V4::Dir24(Dir24::new(&v4p)),
            true => V4::Trie(PopTrie::new(32, &v4p)),
        };
        drop(v4p);
        let mut main = PopTrie::new(width, &mainp);
        drop(mainp);
        c.retain_entries(|e| !pure[e]);
        c.sort_by_rank();
        let rules_in_trie =
            c.is_empty() && c.residual.is_empty() && c.rank_rule.len() < NO_RANK as usize;
        if rules_in_trie {
            let to_rule = |r: u32| c.rank_rule.get(r as usize).copied().unwrap_or(NO_RANK);
            match &mut v4 {
                V4::None => {}
                V4::Trie(t) => t.map_leaves(to_rule),
                V4::Dir24(t) => t.map_leaves(to_rule),
            }
            main.map_leaves(to_rule);
        }
        let other = c.len();
        let rest = match c.len() {
            0 => Rest::None,
            n if n <= super::plan::SCAN_MAX => Rest::Scan(ScanIndex::new(&c, 0..n as u32)),
            n => {
                let ids: Vec<u32> = (0..n as u32).collect();
                let t = TreeIndex::new(&c, &ids, cfg);
                c.drop_entries();
                Rest::Tree(Box::new(t))
            }
        };
        LpmClassifier {
            max: field.max_value(),
            c,
            field,
            v4,
            main,
            rest,
            pure: npure,
            other,
            rules_in_trie,
        }
    }

    /// Entries held by the trie.
    pub fn trie_entries(&self) -> usize {
        self.pure
    }

    /// Entries held by the secondary index.
    pub fn other_entries(&self) -> usize {
        self.other
    }
}

impl GroupClassifier for LpmClassifier {
    #[inline]
    fn best_match(&self, fv: &FieldValues) -> Option<usize> {
        let v = fv.get(self.field)?;
        if v > self.max {
            return self.c.fallback(fv);
        }
        // A view of `fv`, not a copy: cheap enough to take every time.
        let Some(key) = self.c.key(fv) else {
            return self.c.fallback(fv);
        };
        let r = match &self.v4 {
            V4::Dir24(t) if v >> 32 == 0xffff => t.lookup(v as u32),
            V4::Trie(t) if v >> 32 == 0xffff => t.lookup(v & 0xffff_ffff),
            _ => self.main.lookup(v),
        };
        if self.rules_in_trie {
            return (r != NO_RANK).then_some(r as usize);
        }
        let mut best = if r == NO_RANK { NONE } else { r };
        match &self.rest {
            Rest::Scan(s) => s.lookup(&self.c, &key, fv, &mut best),
            Rest::Tree(t) => t.lookup(&self.c, &key, fv, &mut best),
            Rest::None => {}
        }
        self.c.resolve(best, fv)
    }

    fn kind(&self) -> &'static str {
        match (&self.v4, &self.rest) {
            (V4::Dir24(_), Rest::None) => "lpm-dir24",
            (V4::Dir24(_), Rest::Scan(_)) => "lpm-dir24+scan",
            (V4::Dir24(_), Rest::Tree(_)) => "lpm-dir24+cut-tree",
            (_, Rest::None) => "lpm-trie",
            (_, Rest::Scan(_)) => "lpm-trie+scan",
            (_, Rest::Tree(_)) => "lpm-trie+cut-tree",
        }
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.c.memory_bytes()
            + match &self.v4 {
                V4::None => 0,
                V4::Trie(t) => t.memory_bytes(),
                V4::Dir24(t) => t.memory_bytes(),
            }
            + self.main.memory_bytes()
            + match &self.rest {
                Rest::None => 0,
                Rest::Scan(s) => s.memory_bytes(),
                Rest::Tree(t) => t.memory_bytes(),
            }
    }
}
