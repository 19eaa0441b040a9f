//! DIR-24-8 (Gupta, Lin & McKeown, "Routing lookups in hardware at memory
//! access speeds", INFOCOM 1998) for 32-bit keys: the same map as a
//! [`PopTrie`](super::trie::PopTrie) of width 32 (a value to the best rank
//! among the prefixes containing it), traded for memory against one or two
//! memory reads per lookup.
//!
//! - a *direct* table of 2^24 `u32` indexed by the top 24 bits of the key:
//!   either the best rank of the whole /24, or (tag bit set) the number of a
//!   second-level chunk;
//! - *chunks* of 256 `u32`, one per /24 that is not uniform (a prefix longer
//!   than /24, or the edge of a range, falls inside it), indexed by the low 8
//!   bits and holding ranks only.
//!
//! Build: the prefixes are sorted (by start, then length, so an enclosing
//! prefix comes before those it contains) and swept once with a stack of the
//! open prefixes, which turns them into the disjoint runs of equal best rank
//! (leaf pushing); the tables are then written run by run, each slot once.
//! The direct table is 64 MiB whatever the number of prefixes, so the
//! planner only uses this for large IPv4 route sets (see
//! [`super::lpm`]).

use super::trie::NO_RANK;

const TAG: u32 = 1 << 31;
const DIRECT: usize = 1 << 24;
const CHUNK: usize = 256;
const SPACE: u64 = 1 << 32;

/// See the module docs.
#[derive(Clone)]
pub struct Dir24 {
    direct: Box<[u32; DIRECT]>,
    chunks: Vec<u32>,
}

impl std::fmt::Debug for Dir24 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dir24")
            .field("chunks", &self.chunk_count())
            .finish_non_exhaustive()
    }
}

/// Runs of equal best rank: `(start, rank)`, starts strictly increasing from
/// 0, each run lasting until the next start (the last one until 2^32).
fn runs(prefixes: &[(u128, u8, u32)]) -> Vec<(u64, u32)> {
    // (start << 6 | len, rank): by start, then length, then rank.
    let mut p: Vec<(u64, u32)> = prefixes
        .iter()
        .map(|&(v, len, r)| {
            let len = len.min(32);
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            (
                u64::from(v as u32 & m) << 6 | u64::from(len),
                r.min(NO_RANK),
            )
        })
        .collect();
    p.sort_unstable();
    // Same prefix twice: the first (lowest rank) wins.
    p.dedup_by_key(|a| a.0);
    let mut out: Vec<(u64, u32)> = Vec::with_capacity(2 * p.len() + 1);
    let push = |start: u64, end: u64, r: u32, out: &mut Vec<(u64, u32)>| {
        if start < end && out.last().is_none_or(|l| l.1 != r) {
            out.push((start, r));
        }
    };
    // Open prefixes: (end, best rank inside); the root covers everything.
    let mut stack: Vec<(u64, u32)> = vec![(SPACE, NO_RANK)];
    let mut cur = 0u64;
    for &(key, r) in &p {
        let (start, len) = (key >> 6, (key & 63) as u32);
        while let Some(&(end, rr)) = stack.last()
            && end <= start
        {
            push(cur, end, rr, &mut out);
            cur = cur.max(end);
            stack.pop();
        }
        let top = stack.last().map_or(NO_RANK, |t| t.1);
        push(cur, start, top, &mut out);
        cur = cur.max(start);
        stack.push((start + (1u64 << (32 - len)), r.min(top)));
    }
    while let Some((end, rr)) = stack.pop() {
        push(cur, end, rr, &mut out);
        cur = cur.max(end);
    }
    out
}

impl Dir24 {
    /// Build from `(value, len, rank)` prefixes of a 32-bit key (`value`
    /// right-aligned, bits past `len` ignored, `len` above 32 taken as 32).
    /// Ranks must be below [`NO_RANK`]; larger ones are clamped to it (never
    /// reported). Same semantics as `PopTrie::new(32, prefixes)`.
    pub fn new(prefixes: &[(u128, u8, u32)]) -> Dir24 {
        let runs = runs(prefixes);
        let next = |j: usize| runs.get(j + 1).map_or(SPACE, |r| r.0);
        // One chunk per /24 with a run starting inside it (runs are sorted,
        // so equal /24s are adjacent).
        let mut nchunks = 0usize;
        let mut last = u64::MAX;
        for &(start, _) in &runs {
            if start & 0xff != 0 && start >> 8 != last {
                nchunks += 1;
                last = start >> 8;
            }
        }
        let mut direct: Vec<u32> = Vec::with_capacity(DIRECT);
        let mut chunks: Vec<u32> = Vec::with_capacity(nchunks * CHUNK);
        let mut j = 0usize;
        while direct.len() < DIRECT {
            let lo = (direct.len() as u64) << 8;
            let hi = lo + CHUNK as u64;
            while next(j) <= lo {
                j += 1;
            }
            let ns = next(j);
            if ns >= hi {
                // Whole /24s inside run j.
                let upto = ((ns >> 8) as usize).min(DIRECT);
                direct.resize(upto, runs[j].1);
            } else {
                let id = chunks.len() / CHUNK;
                let mut a = lo;
                while a < hi {
                    let e = next(j).min(hi);
                    chunks.resize(chunks.len() + (e - a) as usize, runs[j].1);
                    a = e;
                    if a < hi {
                        j += 1;
                    }
                }
                direct.push(TAG | id as u32);
            }
        }
        debug_assert_eq!(chunks.len(), nchunks * CHUNK);
        let direct: Box<[u32; DIRECT]> = direct
            .into_boxed_slice()
            .try_into()
            .expect("direct table has 2^24 slots");
        Dir24 { direct, chunks }
    }

    /// The best rank of the prefixes containing `v`, or [`NO_RANK`].
    #[inline]
    pub fn lookup(&self, v: u32) -> u32 {
        let e = self.direct[(v >> 8) as usize];
        if e & TAG == 0 {
            e
        } else {
            self.chunks[(((e & !TAG) as usize) << 8) | (v & 0xff) as usize]
        }
    }

    /// Replace every stored rank `r` by `f(r)` (see
    /// `PopTrie::map_leaves`). `f` must map into `0..=NO_RANK`; other values
    /// are clamped to [`NO_RANK`].
    pub fn map_leaves(&mut self, f: impl Fn(u32) -> u32) {
        for e in self.direct.iter_mut() {
            if *e & TAG == 0 {
                *e = f(*e).min(NO_RANK);
            }
        }
        for l in &mut self.chunks {
            *l = f(*l).min(NO_RANK);
        }
    }

    pub fn memory_bytes(&self) -> usize {
        DIRECT * 4 + self.chunks.capacity() * 4
    }

    /// Number of second-level chunks.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len() / CHUNK
    }
}
