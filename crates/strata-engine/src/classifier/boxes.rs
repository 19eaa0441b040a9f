//! Compact entry boxes for the cut tree's leaves.
//!
//! A [`Compiled`] entry record holds a 128-bit interval per dimension
//! (16 + 32 bytes per dimension). Inside one address family most
//! dimensions need far less: IPv4 addresses (in IPv6 space) share their
//! high 96 bits, ports, protocols, VLANs and the like fit 32 bits. A
//! [`Boxes`] store keeps, per dimension, either a 32-bit interval relative to
//! a common base (the value's high 96 bits) or the full 128-bit interval,
//! and lays each box out on whole cache lines: a 5-tuple IPv4 box is 56
//! bytes, one line, so checking an entry costs one memory access.
//!
//! A dimension is stored narrow when nearly all of the entries' intervals
//! on it lie in one block; the rare others are stored as wildcards there
//! and marked inexact (their rule is checked), so a few IPv6 rules in an
//! IPv4 tree do not widen every box.
//!
//! Per box (32-bit words): `need` (dimensions whose interval lies in the
//! base block: a packet outside the block fails), `req` (dimensions that
//! must be present), the rule, the exactness flag, then the 32-bit
//! intervals, then the 128-bit ones. A packet is turned into a
//! [`BoxKey`] once per lookup; every dimension is read from the packet's
//! `FieldValues` by field index (nothing is copied).
//!
//! Boxes of two lines or more with few narrow dimensions (IPv6 5-tuples)
//! are *line-split*: the first line is laid out and checked like a one-line
//! box, the 128-bit intervals follow two per line, compared as 128-bit
//! numbers without branches; the second line is only loaded when the first
//! passes.

use super::compile::{Compiled, Key};
use crate::condition::FieldValues;

/// One cache line.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Line([u32; 16]);

const HEADER: usize = 4;
/// Narrow dimensions of the one-line layout.
const FAST: usize = 6;
const BIAS: u32 = 0x8000_0000;

/// Blocked dimensions kept inline (a 5-tuple's two addresses).
const BLOCKED_INLINE: usize = 2;

/// Lanes of a [`Block`].
pub const LANES: usize = 4;

/// Up to [`LANES`] entries of a leaf, dimension-major, checked together
/// (one-line layouts only): the bounds of each narrow dimension sit side by
/// side, so a packet is compared with all lanes at once.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub struct Block {
    /// Lower bound and span (`hi - lo`) per narrow dimension and lane: a
    /// value `v` is inside when `v - lo <= span` (wrapping), one unsigned
    /// comparison.
    lo: [[u32; LANES]; FAST],
    span: [[u32; LANES]; FAST],
    need: [u32; LANES],
    req: [u32; LANES],
    /// Ascending; `u32::MAX` in unused lanes.
    rank: [u32; LANES],
    /// Rule, and the exactness flag in the top bit.
    rule: [u32; LANES],
}

/// Rules beyond this index cannot be stored in a [`Block`].
pub const BLOCK_RULES: usize = 1 << 31;

/// Compact boxes of the entries of one family.
///
/// Laid out in declaration order, on lines of its own, with what a lookup
/// reads to build its key and find its first box (layout flags, fields,
/// the boxes) on the first two: a first packet through many large groups
/// meets each group's store cold, and scattered fields cost a miss each
/// (with `Compiled` and `TreeIndex` likewise: 53 fewer simulated misses
/// per 10 × 10 × 5k first packet, see BENCHMARKS.md).
#[derive(Clone, Debug, Default)]
#[repr(C, align(64))]
pub struct Boxes {
    /// The first of `blocked`, inline (see there): one line.
    blocked_inline: [(u8, u128); BLOCKED_INLINE],
    /// One-line layout: header, then the (sign-biased) lower bounds of up
    /// to [`FAST`] narrow dimensions, then their upper bounds, compared
    /// all at once.
    fast: bool,
    /// Line-split layout (boxes of two lines or more with at most
    /// [`FAST`] narrow dimensions, IPv6 above all): the first line as in
    /// the one-line layout (header, biased narrow bounds), then two 128-bit
    /// intervals per line at fixed offsets, each bound read as one 128-bit
    /// number: the whole check is branch-free.
    split: bool,
    /// Narrow fields in layout order (one-line and line-split layouts).
    fast_fields: [u8; FAST],
    blocked_inline_mask: u32,
    data: Vec<Line>,
    /// The narrow dimensions a normal packet's value can lie outside the
    /// base block of (fields wider than 32 bits): `(field index, base)`.
    /// Only these are checked per lookup. The first [`BLOCKED_INLINE`] are
    /// kept inline, as are the fields of the one-line layout's narrow
    /// dimensions: a lookup into a cold group then loads no heap line to
    /// build its [`BoxKey`]. Unused inline slots repeat the first (so
    /// every slot is checked, with no count), and `blocked_inline_mask`
    /// (the inline fields' bits) clears what an unused first slot gives.
    blocked: Vec<(u8, u128)>,
    /// Lines per box.
    lines: usize,
    /// Dimensions stored as 32-bit intervals: `(dimension, field index,
    /// base)`, the base being the values' common `v >> 32`. Lookups read
    /// the packet by field index.
    narrow: Vec<(u8, u8, u128)>,
    /// Dimensions stored as 128-bit intervals: `(dimension, field index)`.
    wide: Vec<(u8, u8)>,
}

/// A packet's values for a [`Boxes`] store (other layouts read the packet's
/// values directly).
#[derive(Clone, Copy, Debug)]
pub struct BoxKey {
    /// The packet lined up against a one-line box's words, so that a check
    /// is a handful of 8-lane operations and one test (no shuffle, no
    /// scalar header work): no word `j` may exceed `lo[j]` (words 4..10 are
    /// the lower bounds, the packet's sign-biased narrow values sit there),
    /// no word `8 + j` be below `hi[j]` (upper bounds in 10..16), and the
    /// header's `need` and `req` (words 0, 1) are AND-ed with `mask` (the
    /// packet's fields outside the base block, and its absent fields).
    /// Padding lanes (rule, exactness) never fail.
    lo: [i32; 16],
    hi: [i32; 8],
    mask: [u32; 8],
    /// Narrow dimensions whose value is outside the base block.
    outside: u32,
}

impl BoxKey {
    /// The sign-biased value of narrow dimension `t` (layout order).
    #[inline(always)]
    fn kb(&self, t: usize) -> i32 {
        self.lo[HEADER + t]
    }
}

impl Boxes {
    /// Choose the layout for the given entries of `c`.
    pub fn new(c: &Compiled, entries: &[u32]) -> Boxes {
        let mut narrow = Vec::new();
        let mut wide = Vec::new();
        // Per dimension, the majority high 96 bits of the (non-wildcard)
        // intervals: a Boyer-Moore vote, then a count. Each pass reads the
        // entries once for all dimensions (the records are wide; one pass
        // per dimension read them `dims` times).
        let dims = c.dims();
        let constrained = |e: u32, d: usize| {
            let (lo, hi) = (c.lo(e as usize, d), c.hi(e as usize, d));
            (!(lo == 0 && hi >= c.maxes[d])).then_some((lo, hi))
        };
        // An interval's 96-bit base, if it lies within one.
        let base_of = |lo: u128, hi: u128| (lo >> 32 == hi >> 32).then_some(lo >> 32);
        let mut cand: Vec<Option<u128>> = vec![None; dims];
        let mut votes = vec![0usize; dims];
        // The vote's count pass is needed only when the winner is not the
        // first entry's base: the first pass counts that one (the usual
        // winner: IPv4 addresses share one, ports and protocols another).
        let mut guess: Vec<Option<Option<u128>>> = vec![None; dims];
        let mut count = vec![0usize; dims];
        let mut total = vec![0usize; dims];
        for &e in entries {
            for d in 0..dims {
                let Some((lo, hi)) = constrained(e, d) else {
                    continue;
                };
                let b = base_of(lo, hi);
                let g = *guess[d].get_or_insert(b);
                total[d] += 1;
                count[d] += usize::from(g.is_some() && b == g);
                if votes[d] == 0 {
                    cand[d] = b;
                    votes[d] = 1;
                } else if b == cand[d] {
                    votes[d] += 1;
                } else {
                    votes[d] -= 1;
                }
            }
        }
        let recount: Vec<usize> = (0..dims)
            .filter(|&d| guess[d].is_some_and(|g| g != cand[d]))
            .collect();
        for &d in &recount {
            count[d] = 0;
        }
        if !recount.is_empty() {
            for &e in entries {
                for &d in &recount {
                    let Some((lo, hi)) = constrained(e, d) else {
                        continue;
                    };
                    let b = base_of(lo, hi);
                    count[d] += usize::from(cand[d].is_some() && b == cand[d]);
                }
            }
        }
        for d in 0..dims {
            let base = cand[d].unwrap_or(0);
            // Narrow when nearly all fit: the few others are stored as
            // wildcards on that dimension and checked against their rule.
            let f = c.field_of(d) as u8;
            if count[d] * 32 >= total[d] * 31 {
                narrow.push((d as u8, f, base));
            } else {
                wide.push((d as u8, f));
            }
        }
        let words = HEADER + 2 * narrow.len() + 8 * wide.len();
        let lines = words.div_ceil(16);
        // Only where it costs no extra line.
        let split = lines > 1 && narrow.len() <= FAST && 1 + wide.len().div_ceil(2) == lines;
        let mut blocked: Vec<(u8, u128)> = narrow
            .iter()
            .filter(|&&(d, _, _)| c.dims[usize::from(d)].width() > 32)
            .map(|&(_, f, base)| (f, base))
            .collect();
        let mut blocked_inline = [blocked.first().copied().unwrap_or((0, 0)); BLOCKED_INLINE];
        let inline = blocked.len().min(BLOCKED_INLINE);
        blocked_inline[..inline].copy_from_slice(&blocked[..inline]);
        let blocked_inline_mask = blocked[..inline].iter().fold(0, |m, &(f, _)| m | 1 << f);
        blocked.drain(..inline);
        let mut fast_fields = [0u8; FAST];
        for (x, &(_, f, _)) in fast_fields.iter_mut().zip(&narrow) {
            *x = f;
        }
        Boxes {
            blocked,
            blocked_inline,
            blocked_inline_mask,
            fast_fields,
            fast: wide.is_empty() && narrow.len() <= FAST,
            narrow,
            wide,
            lines,
            split,
            data: Vec::new(),
        }
    }

    /// Append the box of entry `e`; returns its index.
    pub fn push(&mut self, c: &Compiled, e: usize) -> u32 {
        let id = self.data.len() / self.lines;
        // Header, 2 words per narrow and 8 per wide dimension: at most 11 lines.
        let mut buf = [0u32; 16 * 11];
        let w = &mut buf[..self.lines * 16];
        let mut need = 0u32;
        let mut exact = c.exact(e);
        let mut j = HEADER;
        for t in 0..self.narrow.len() {
            // A wildcard, or an interval outside the base block, is no
            // constraint here (and the rule decides if it had one).
            let (lo, hi, constrained, ok) = self.narrow_interval(c, e, t);
            if constrained {
                need |= 1 << self.narrow[t].1;
            }
            exact &= ok;
            w[j] = lo;
            w[j + 1] = hi;
            j += 2;
        }
        for (n, &(d, _)) in self.wide.iter().enumerate() {
            let d = usize::from(d);
            if self.split {
                j = 16 + 8 * n;
            }
            for (k, v) in [c.lo(e, d), c.hi(e, d)].into_iter().enumerate() {
                for q in 0..4 {
                    w[j + 4 * k + q] = (v >> (32 * q)) as u32;
                }
            }
            j += 8;
        }
        w[0] = need;
        w[1] = c.req(e);
        w[2] = c.rule(e) as u32;
        w[3] = u32::from(exact);
        if self.fast || self.split {
            // Regroup as biased lower bounds, then upper bounds; unused
            // slots accept everything.
            let mut lo = [0u32; FAST];
            let mut hi = [u32::MAX; FAST];
            for t in 0..self.narrow.len() {
                lo[t] = w[HEADER + 2 * t];
                hi[t] = w[HEADER + 2 * t + 1];
            }
            for t in 0..FAST {
                w[HEADER + t] = lo[t] ^ BIAS;
                w[HEADER + FAST + t] = hi[t] ^ BIAS;
            }
        }
        self.data.extend(w.chunks_exact(16).map(|l| {
            let mut line = Line::default();
            line.0.copy_from_slice(l);
            line
        }));
        id as u32
    }

    /// The packet's key for this store (once per lookup: only what the
    /// layout's checks read is computed).
    #[inline]
    pub fn key(&self, key: &Key) -> BoxKey {
        let mut k = BoxKey {
            lo: [i32::MAX; 16],
            hi: [i32::MIN; 8],
            mask: [0; 8],
            outside: 0,
        };
        if self.fast || self.split {
            // All six, used or not: an unused slot's bounds accept any
            // value (see `push`), so the loop has a fixed length.
            for (t, &f) in self.fast_fields.iter().enumerate() {
                let x = (key.v[usize::from(f)] as u32 ^ BIAS) as i32;
                k.lo[HEADER + t] = x;
                k.hi[HEADER + FAST + t - 8] = x;
            }
        }
        // Branch-free: presence and block vary per packet. (Narrower fields
        // of a normal packet always lie in block 0.)
        let outside = |&(f, base): &(u8, u128)| {
            let v = key.v[usize::from(f)];
            ((key.present >> f) & u32::from(v >> 32 != base)) << f
        };
        k.outside = self.blocked_inline.iter().fold(0, |o, b| o | outside(b));
        k.outside &= self.blocked_inline_mask;
        for b in &self.blocked {
            k.outside |= outside(b);
        }
        k.mask[0] = k.outside;
        k.mask[1] = !key.present;
        k
    }

    /// Can leaves be stored as [`Block`]s?
    pub fn blocks(&self) -> bool {
        self.fast
    }

    /// The narrow interval of entry `e` on narrow dimension `t`: `(lo, hi,
    /// constrained, exact)` (an interval outside the base block is stored as
    /// a wildcard and makes the entry inexact).
    fn narrow_interval(&self, c: &Compiled, e: usize, t: usize) -> (u32, u32, bool, bool) {
        let (d, _, base) = self.narrow[t];
        let d = usize::from(d);
        let (lo, hi) = (c.lo(e, d), c.hi(e, d));
        let full = lo == 0 && hi >= c.maxes[d];
        if full || lo >> 32 != base || hi >> 32 != base {
            (0, u32::MAX, false, full)
        } else {
            (lo as u32, hi as u32, true, true)
        }
    }

    /// Blocks for a leaf's `(rank, entry)` items, in order.
    pub fn make_blocks(&self, c: &Compiled, items: &[(u32, u32)], out: &mut Vec<Block>) {
        for chunk in items.chunks(LANES) {
            let mut b = Block {
                lo: [[0; LANES]; FAST],
                span: [[u32::MAX; LANES]; FAST],
                need: [0; LANES],
                req: [0; LANES],
                rank: [u32::MAX; LANES],
                rule: [0; LANES],
            };
            for (l, &(rank, e)) in chunk.iter().enumerate() {
                let e = e as usize;
                let mut exact = c.exact(e);
                for t in 0..self.narrow.len().min(FAST) {
                    let (lo, hi, constrained, ok) = self.narrow_interval(c, e, t);
                    b.lo[t][l] = lo;
                    b.span[t][l] = hi.wrapping_sub(lo);
                    if constrained {
                        b.need[l] |= 1 << self.narrow[t].1;
                    }
                    exact &= ok;
                }
                b.req[l] = c.req(e);
                b.rank[l] = rank;
                b.rule[l] = (c.rule(e) as u32 & !BIAS) | if exact { BIAS } else { 0 };
            }
            out.push(b);
        }
    }

    /// The rank of the first entry of `blocks` matching with a rank below
    /// `best`.
    // Indexed lane loops: the shape the vectorizer turns into SIMD.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    pub fn match_blocks(
        &self,
        c: &Compiled,
        blocks: &[Block],
        bk: &BoxKey,
        key: &Key,
        fv: &FieldValues,
        best: u32,
    ) -> Option<u32> {
        for b in blocks {
            if b.rank[0] >= best {
                return None;
            }
            // Failures counted per lane (0/1 terms, so they vectorize).
            let mut bad = [0u32; LANES];
            for l in 0..LANES {
                bad[l] = u32::from((b.req[l] & !key.present) | (b.need[l] & bk.outside) != 0)
                    + u32::from(b.rank[l] >= best);
            }
            for t in 0..FAST {
                let k = bk.kb(t) as u32 ^ BIAS;
                for l in 0..LANES {
                    bad[l] += u32::from(k.wrapping_sub(b.lo[t][l]) > b.span[t][l]);
                }
            }
            for l in 0..LANES {
                if bad[l] == 0 {
                    let r = b.rule[l];
                    if r & BIAS != 0 || c.inexact_matches((r & !BIAS) as usize, b.rank[l], fv) {
                        return Some(b.rank[l]);
                    }
                }
            }
        }
        None
    }

    /// The rank of the first of a leaf's `(rank, box)` items that matches,
    /// scanning while ranks stay below `best` (ranks ascend; a leaf ends
    /// with a sentinel rank). `on_check` is called per box checked. The
    /// one-line layout gets its own loop with the store's fields read
    /// once: inside the tree walk, the general [`Boxes::matches`] reloads
    /// them from the stack for every box.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub fn first_match(
        &self,
        c: &Compiled,
        items: &[(u32, u32)],
        bk: &BoxKey,
        key: &Key,
        fv: &FieldValues,
        best: u32,
        mut on_check: impl FnMut(),
    ) -> Option<u32> {
        if self.fast {
            let data = self.data.as_slice();
            for &(rk, bx) in items {
                if rk >= best {
                    break;
                }
                on_check();
                let Some(line) = data.get(bx as usize) else {
                    continue;
                };
                let w = &line.0;
                if !first_line_bad(w, bk) && (w[3] != 0 || c.inexact_matches(w[2] as usize, rk, fv))
                {
                    return Some(rk);
                }
            }
        } else {
            for &(rk, bx) in items {
                if rk >= best {
                    break;
                }
                on_check();
                if self.matches(c, bx as usize, rk, bk, key, fv) {
                    return Some(rk);
                }
            }
        }
        None
    }

    /// Ask for box `i`'s first line (a hint, see [`crate::hint::prefetch`]).
    #[inline(always)]
    pub fn prefetch(&self, i: usize) {
        if let Some(l) = self.data.get(i * self.lines) {
            crate::hint::prefetch(l);
        }
    }

    /// Does box `i` (of an entry at `rank`) match?
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub fn matches(
        &self,
        c: &Compiled,
        i: usize,
        rank: u32,
        bk: &BoxKey,
        key: &Key,
        fv: &FieldValues,
    ) -> bool {
        if self.fast {
            let w = &self.data[i].0;
            // (The caller branches on the result anyway; the exactness
            // test after it is all but always taken the same way.)
            if first_line_bad(w, bk) {
                return false;
            }
            w[3] != 0 || c.inexact_matches(w[2] as usize, rank, fv)
        } else if self.lines == 1 {
            // Branch-free: which entries match differs from packet to
            // packet, so early exits would mostly be mispredicted.
            let w = &self.data[i].0;
            let mut bad = (w[1] & !key.present) | (w[0] & bk.outside);
            let mut j = HEADER;
            for &(_, f, _) in &self.narrow {
                let v = key.v[usize::from(f)] as u32;
                bad |= u32::from(v < w[j]) | u32::from(v > w[j + 1]);
                j += 2;
            }
            for &(_, f) in &self.wide {
                let v = key.v[usize::from(f)];
                bad |= u32::from(v < word128(w, j)) | u32::from(v > word128(w, j + 4));
                j += 8;
            }
            let ok = bad == 0;
            if ok & (w[3] == 0) {
                return c.inexact_matches(w[2] as usize, rank, fv);
            }
            ok
        } else if self.split {
            let Some(lines) = self.data.get(i * self.lines..(i + 1) * self.lines) else {
                return false;
            };
            let w = &lines[0].0;
            // One branch between the lines: a box failing on its first line
            // (most do) does not load the second, a likely cache miss that
            // costs more than the occasional misprediction.
            if first_line_bad(w, bk) {
                return false;
            }
            let mut bad = 0;
            for (line, pair) in lines[1..].iter().zip(self.wide.chunks(2)) {
                for (k, &(_, f)) in pair.iter().enumerate() {
                    let v = key.v[usize::from(f)];
                    // 128-bit comparisons, no branch (a compare and a
                    // subtract with borrow each).
                    let (lo, hi) = (word128(&line.0, 8 * k), word128(&line.0, 8 * k + 4));
                    bad |= u32::from(v < lo) | u32::from(v > hi);
                }
            }
            let ok = bad == 0;
            if ok & (w[3] == 0) {
                return c.inexact_matches(w[2] as usize, rank, fv);
            }
            ok
        } else {
            let lines = &self.data[i * self.lines..(i + 1) * self.lines];
            let w = |j: usize| lines[j >> 4].0[j & 15];
            if w(1) & !key.present != 0 || w(0) & bk.outside != 0 {
                return false;
            }
            let mut j = HEADER;
            for &(_, f, _) in &self.narrow {
                let v = key.v[usize::from(f)] as u32;
                if v < w(j) || v > w(j + 1) {
                    return false;
                }
                j += 2;
            }
            for &(_, f) in &self.wide {
                let v = key.v[usize::from(f)];
                let lo = (0..4).fold(0u128, |a, q| a | (u128::from(w(j + q)) << (32 * q)));
                let hi = (0..4).fold(0u128, |a, q| a | (u128::from(w(j + 4 + q)) << (32 * q)));
                if v < lo || v > hi {
                    return false;
                }
                j += 8;
            }
            w(3) != 0 || c.inexact_matches(w(2) as usize, rank, fv)
        }
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.lines.max(1)
    }

    /// The words of box `i` (tests compare stores by content).
    #[cfg(test)]
    pub(crate) fn words(&self, i: usize) -> Vec<u32> {
        let l = self.lines.max(1);
        self.data[i * l..(i + 1) * l]
            .iter()
            .flat_map(|line| line.0)
            .collect()
    }

    /// The same layout with no boxes yet but room for `boxes` of them
    /// (huge pages when that is megabytes): the store of a builder working
    /// in parallel, written once.
    pub fn with_room_like(&self, boxes: usize) -> Boxes {
        let b = Boxes {
            narrow: self.narrow.clone(),
            wide: self.wide.clone(),
            blocked: self.blocked.clone(),
            blocked_inline: self.blocked_inline,
            blocked_inline_mask: self.blocked_inline_mask,
            fast_fields: self.fast_fields,
            lines: self.lines,
            split: self.split,
            fast: self.fast,
            data: Vec::with_capacity(boxes * self.lines),
        };
        crate::hint::huge_pages(&b.data);
        b
    }

    /// Move the boxes of `other` (same layout) to the end; returns the
    /// index its first box now has.
    pub fn append(&mut self, other: &mut Boxes) -> u32 {
        debug_assert_eq!(self.layout(), other.layout());
        let at = self.len() as u32;
        self.data.append(&mut other.data);
        at
    }

    /// `(narrow dimensions, wide dimensions, lines per box)`.
    pub fn layout(&self) -> (usize, usize, usize) {
        (self.narrow.len(), self.wide.len(), self.lines)
    }

    /// Cache lines per box.
    pub fn lines(&self) -> usize {
        self.lines
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn shrink(&mut self) {
        self.data.shrink_to_fit();
    }

    /// Room for exactly the boxes of `parts` (to be appended), in huge
    /// pages when that is megabytes.
    pub fn reserve_exact<'b>(&mut self, parts: impl Iterator<Item = &'b Boxes>) {
        self.data
            .reserve_exact(parts.map(|p| p.data.len()).sum::<usize>());
        crate::hint::huge_pages(&self.data);
    }

    pub fn memory_bytes(&self) -> usize {
        self.data.capacity() * 64
            + self.narrow.capacity() * 32
            + self.wide.capacity() * 2
            + self.blocked.capacity() * 32
    }
}

/// The one-line check of a box's first line (header and up to [`FAST`]
/// biased narrow intervals, all compared): true when it fails.
#[inline(always)]
fn first_line_bad(w: &[u32; 16], bk: &BoxKey) -> bool {
    const _: () = assert!(HEADER == 4 && FAST == 6);
    // Lane-wise on the two half-lines (see `BoxKey::lo`): every term is 0
    // or all ones but the header's, OR-ed, then one test; this vectorizes.
    let mut acc = [0u32; 8];
    for (i, x) in acc.iter_mut().enumerate() {
        let (a, b) = (w[i], w[8 + i]);
        *x = (a & bk.mask[i])
            | 0u32.wrapping_sub(u32::from(a as i32 > bk.lo[i]))
            | 0u32.wrapping_sub(u32::from(b as i32 > bk.lo[8 + i]))
            | 0u32.wrapping_sub(u32::from(bk.hi[i] > b as i32));
    }
    acc.iter().fold(0, |o, &x| o | x) != 0
}

/// Words `j` (lowest) to `j + 3` of a line as one 128-bit number.
#[inline]
fn word128(w: &[u32; 16], j: usize) -> u128 {
    (0..4).fold(0u128, |a, q| a | (u128::from(w[j + q]) << (32 * q)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::{MatchType, RuleMatch};
    use crate::condition::{Condition, Field, MatchValue};

    /// IPv6 5-tuple boxes (two 128-bit and three narrow dimensions) take
    /// the line-split layout, and its branch-free check agrees with the
    /// compiled entries for packets on, inside and just outside every
    /// bound (the property tests check whole classifiers).
    #[test]
    fn line_split_boxes_agree_with_entries() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let net = |x: u64| (0x2001_0db8u128 << 96) | (u128::from(x & 0xf) << 64);
        let rules: Vec<RuleMatch> = (0..300)
            .map(|i| {
                let (sp, dp) = ((rnd() % 2000) as u128, (rnd() % 2000) as u128);
                RuleMatch {
                    priority: i,
                    conditions: vec![
                        Condition::new(
                            Field::SrcIp,
                            vec![MatchValue::Prefix {
                                value: net(rnd()),
                                len: 60 + (rnd() % 8) as u8,
                            }],
                        ),
                        Condition::new(
                            Field::DstIp,
                            vec![MatchValue::Exact(net(rnd()) | u128::from(rnd() % 4))],
                        ),
                        Condition::new(Field::Proto, vec![MatchValue::Exact(6)]),
                        Condition::new(
                            Field::SrcPort,
                            vec![MatchValue::Range {
                                lo: sp,
                                hi: sp + 50,
                            }],
                        ),
                        Condition::new(
                            Field::DstPort,
                            vec![MatchValue::Range { lo: dp, hi: dp + 9 }],
                        ),
                    ],
                }
            })
            .collect();
        let c = Compiled::new(&rules, MatchType::Priority);
        let entries: Vec<u32> = (0..c.len() as u32).collect();
        let mut boxes = Boxes::new(&c, &entries);
        assert!(boxes.split && !boxes.fast, "layout {:?}", boxes.layout());
        assert_eq!(boxes.layout(), (3, 2, 2));
        let ids: Vec<u32> = entries
            .iter()
            .map(|&e| boxes.push(&c, e as usize))
            .collect();
        let (mut hits, mut checks) = (0, 0);
        for _ in 0..3000 {
            // Values near a random entry's bounds.
            let e = (rnd() as usize) % c.len();
            let mut pairs = Vec::new();
            for (d, &f) in c.dims.iter().enumerate() {
                let pick = [c.lo(e, d), c.hi(e, d)][(rnd() % 2) as usize];
                let v = match rnd() % 3 {
                    0 => pick.wrapping_sub(1),
                    1 => pick.wrapping_add(1),
                    _ => pick,
                };
                pairs.push((f, v.min(f.max_value())));
            }
            let fv = FieldValues::from_pairs(&pairs);
            let key = c.key(&fv).expect("in width");
            let bk = boxes.key(&key);
            for (&e, &bx) in entries.iter().zip(&ids) {
                let want = c.entry_matches(e as usize, &key, &fv);
                assert_eq!(
                    boxes.matches(&c, bx as usize, c.rank[e as usize], &bk, &key, &fv),
                    want
                );
                hits += usize::from(want);
                checks += 1;
            }
        }
        assert!(hits >= 50 && hits < checks, "{hits} of {checks}");
    }

    /// The narrow dimensions and their bases are those a plain count
    /// gives: the dimensions on which at least 31/32 of the constrained
    /// entries share one 96-bit base (all dimensions without any). Cases:
    /// generated ACLs, a first entry whose base is not the majority's (the
    /// vote's recount), and no majority at all.
    #[test]
    fn narrow_dimensions_are_the_counted_majorities() {
        let reference = |c: &Compiled, entries: &[u32]| -> Vec<(u8, u128)> {
            let mut out = Vec::new();
            for d in 0..c.dims() {
                let mut counts: std::collections::HashMap<u128, usize> = Default::default();
                let mut total = 0;
                for &e in entries {
                    let (lo, hi) = (c.lo(e as usize, d), c.hi(e as usize, d));
                    if lo == 0 && hi >= c.maxes[d] {
                        continue;
                    }
                    total += 1;
                    if lo >> 32 == hi >> 32 {
                        *counts.entry(lo >> 32).or_default() += 1;
                    }
                }
                let best = counts.into_iter().max_by_key(|&(_, n)| n);
                match best {
                    _ if total == 0 => out.push((d as u8, 0)),
                    Some((b, n)) if n * 32 >= total * 31 => out.push((d as u8, b)),
                    _ => {}
                }
            }
            out
        };
        let v4 = |a: u32| MatchValue::Exact(crate::classifier::compile::V4_MAPPED | u128::from(a));
        let rule = |i: u32, dst: MatchValue, port: u128| RuleMatch {
            priority: i,
            conditions: vec![
                Condition::new(Field::DstIp, vec![dst]),
                Condition::new(Field::DstPort, vec![MatchValue::Exact(port)]),
            ],
        };
        // An IPv6 host first, then IPv4 hosts: the first base loses.
        let odd_first: Vec<RuleMatch> = std::iter::once(rule(0, MatchValue::Exact(7 << 100), 80))
            .chain((1..200).map(|i| rule(i, v4(i), 80 + u128::from(i))))
            .collect();
        // Half IPv6 hosts in one /96, half IPv4: neither is narrow.
        let split: Vec<RuleMatch> = (0..200)
            .map(|i| {
                let dst = if i % 2 == 0 {
                    MatchValue::Exact((7 << 100) | u128::from(i))
                } else {
                    v4(i)
                };
                rule(i, dst, 443)
            })
            .collect();
        let acl = crate::rulegen::acl(2000, 9);
        let mut narrow_ip = Vec::new();
        for rules in [&odd_first, &split, &acl] {
            let c = Compiled::new(rules, MatchType::Priority);
            let entries: Vec<u32> = (0..c.len() as u32).collect();
            let boxes = Boxes::new(&c, &entries);
            let got: Vec<(u8, u128)> = boxes.narrow.iter().map(|&(d, _, b)| (d, b)).collect();
            assert_eq!(got, reference(&c, &entries));
            let ip = c
                .dims
                .iter()
                .position(|&f| f == Field::DstIp)
                .expect("dst ip");
            narrow_ip.push(got.iter().any(|&(d, _)| usize::from(d) == ip));
        }
        assert_eq!(narrow_ip[..2], [true, false]);
    }
}
