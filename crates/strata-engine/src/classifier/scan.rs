//! The compiled list: entries sorted by rank, scanned until the first match.
//!
//! The structure for small groups (and for the "rest" of a group whose bulk
//! is indexed elsewhere): no index at all, but the boxes are flat and sorted
//! best-first, so a hit stops the scan and every check is a few integer
//! comparisons instead of a walk over nested vectors.

use super::compile::{Compiled, Key, NONE};
use super::{GroupClassifier, MatchSource, MatchType};
use crate::condition::FieldValues;

/// Entries sorted by rank.
#[derive(Debug, Clone, Default)]
pub struct ScanIndex {
    /// `(rank, entry)`, ascending rank.
    items: Vec<(u32, u32)>,
}

impl ScanIndex {
    /// Index the given entries of `c`.
    pub fn new(c: &Compiled, entries: impl IntoIterator<Item = u32>) -> ScanIndex {
        let mut items: Vec<(u32, u32)> = entries
            .into_iter()
            .map(|e| (c.rank[e as usize], e))
            .collect();
        items.sort_unstable();
        ScanIndex { items }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Lower `best` to the rank of the best matching entry, if better.
    #[inline(always)]
    pub fn lookup(&self, c: &Compiled, key: &Key, fv: &FieldValues, best: &mut u32) {
        for &(r, e) in &self.items {
            if r >= *best {
                return;
            }
            if c.entry_matches(e as usize, key, fv) {
                *best = r;
                return;
            }
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.items.capacity() * 8
    }
}

/// A group classified by scanning its compiled entries.
#[derive(Debug, Clone)]
pub struct ScanClassifier {
    c: Compiled,
    idx: ScanIndex,
}

impl ScanClassifier {
    pub fn new<R: MatchSource>(rules: &[R], match_type: MatchType) -> ScanClassifier {
        ScanClassifier::from_compiled(Compiled::new(rules, match_type))
    }

    pub fn from_compiled(c: Compiled) -> ScanClassifier {
        let idx = ScanIndex::new(&c, 0..c.len() as u32);
        ScanClassifier { c, idx }
    }
}

impl GroupClassifier for ScanClassifier {
    #[inline]
    fn best_match(&self, fv: &FieldValues) -> Option<usize> {
        if self.c.lpm_absent(fv) {
            return None;
        }
        let Some(key) = self.c.key(fv) else {
            return self.c.fallback(fv);
        };
        let mut best = NONE;
        self.idx.lookup(&self.c, &key, fv, &mut best);
        self.c.resolve(best, fv)
    }

    fn kind(&self) -> &'static str {
        "scan"
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.c.memory_bytes() + self.idx.memory_bytes()
    }
}
