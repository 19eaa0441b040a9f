//! Rule compilation: the common front end of every fast classifier.
//!
//! A group's rules are turned into flat *entries*. An entry is a box: one
//! inclusive `[lo, hi]` interval per *dimension* (the fields the group's rules
//! reference), a mask of the dimensions that must be present in the packet,
//! and a *rank*. The best rule is always the matching entry of lowest rank:
//!
//! - `MatchType::Priority`: rules are ordered by `(priority, index)`; every
//!   entry of a rule carries that rule's position in the order.
//! - `MatchType::Lpm(field)`: entries are ordered by
//!   `(longest prefix on field, priority, index)`; an entry knows which of
//!   the rule's values on the LPM field it stands for, so its prefix length
//!   is fixed at build time.
//!
//! Values of one condition (OR-ed) are merged into disjoint intervals, the
//! conditions on one field (AND-ed) are intersected, and a rule becomes the
//! cross product of its per-field alternatives. When that product would be
//! too large, the smallest alternative lists are replaced by their hull and
//! the entry is marked *inexact*: its box is then only a filter and the
//! rule's original conditions decide. Exact entries are decided by the box.
//!
//! Boxes are built for *normal* packets, whose field values fit the field's
//! width (what [`FieldValues::from_ufid`] produces). A packet carrying a
//! wider value is classified by a linear scan of the (flattened) original
//! rules, so even malformed input gets the reference answer.
//!
//! In an LPM group, a rule whose LPM values would expand too far is kept as a
//! *residual* rule, checked by the reference semantics on every lookup.

use super::{MatchSource, MatchType};
use crate::condition::{Field, FieldValues, MatchValue};

/// "No entry" rank / id.
pub const NONE: u32 = u32::MAX;

/// Largest number of entries a rule is expanded into before small
/// alternative lists are replaced by their hull.
const EXPAND_CAP: usize = 256;
/// A single field's alternatives are kept (not hulled) up to this count.
const EXPAND_FIELD_CAP: usize = 4096;
/// LPM-field alternatives of one rule beyond this make the rule residual.
const LPM_EXPAND_CAP: usize = 1 << 16;

/// The original rules, flattened (used for inexact entries, residual rules
/// and packets with out-of-width values).
///
/// Values are kept in a compact word stream rather than as `MatchValue`s
/// (48 bytes each): a tag word (kind, encoding, prefix length), then one
/// word per 32-bit number (a number below 2^32, or an IPv4 address in IPv6
/// space) or four (any other). A typical ACL value takes 8–12 bytes, so the
/// copy costs a fifth of the rules' own size. Decoding rebuilds the very
/// `MatchValue`, so the reference semantics apply unchanged.
#[derive(Debug, Clone, Default)]
pub struct FlatRules {
    priority: Vec<u32>,
    /// `rule_conds[i]..rule_conds[i + 1]` are rule `i`'s conditions.
    rule_conds: Vec<u32>,
    cond_field: Vec<Field>,
    /// `cond_vals[c]..cond_vals[c + 1]` are condition `c`'s words.
    cond_vals: Vec<u32>,
    words: Vec<u32>,
}

/// Value kinds and number encodings of a tag word.
const V_EXACT: u32 = 0;
const V_RANGE: u32 = 1;
const V_PREFIX: u32 = 2;
/// Numbers below 2^32: one word.
const N_SMALL: u32 = 0;
/// IPv4 addresses in IPv6 space (`::ffff:a.b.c.d`): one word.
const N_V4: u32 = 1;
/// Anything else: four words, low first.
const N_FULL: u32 = 2;
pub(super) const V4_MAPPED: u128 = 0xffff << 32;

/// The encoding covering every number of a value.
fn encoding(xs: &[u128]) -> u32 {
    if xs.iter().all(|&x| x >> 32 == 0) {
        N_SMALL
    } else if xs.iter().all(|&x| x >> 32 == 0xffff) {
        N_V4
    } else {
        N_FULL
    }
}

fn encode(m: &MatchValue, out: &mut Vec<u32>) {
    let (kind, len, nums): (u32, u8, [u128; 2]) = match *m {
        MatchValue::Exact(x) => (V_EXACT, 0, [x, x]),
        MatchValue::Range { lo, hi } => (V_RANGE, 0, [lo, hi]),
        MatchValue::Prefix { value, len } => (V_PREFIX, len, [value, value]),
    };
    let n = if kind == V_RANGE { 2 } else { 1 };
    let enc = encoding(&nums[..n]);
    out.push(kind | (enc << 2) | (u32::from(len) << 8));
    for &x in &nums[..n] {
        if enc == N_FULL {
            out.extend((0..4).map(|q| (x >> (32 * q)) as u32));
        } else {
            out.push(x as u32);
        }
    }
}

/// Decode the value starting at `w[0]`; returns it and its word count.
#[inline]
fn decode(w: &[u32]) -> (MatchValue, usize) {
    let tag = w[0];
    let (kind, enc, len) = (tag & 3, (tag >> 2) & 3, (tag >> 8) as u8);
    let size = if enc == N_FULL { 4 } else { 1 };
    let num = |i: usize| -> u128 {
        let at = 1 + i * size;
        match enc {
            N_SMALL => u128::from(w[at]),
            N_V4 => V4_MAPPED | u128::from(w[at]),
            _ => (0..4).fold(0u128, |a, q| a | (u128::from(w[at + q]) << (32 * q))),
        }
    };
    match kind {
        V_EXACT => (MatchValue::Exact(num(0)), 1 + size),
        V_RANGE => (
            MatchValue::Range {
                lo: num(0),
                hi: num(1),
            },
            1 + 2 * size,
        ),
        _ => (MatchValue::Prefix { value: num(0), len }, 1 + size),
    }
}

/// The values of one condition, decoded.
struct Values<'a>(&'a [u32]);

impl Iterator for Values<'_> {
    type Item = MatchValue;
    #[inline]
    fn next(&mut self) -> Option<MatchValue> {
        if self.0.is_empty() {
            return None;
        }
        let (m, n) = decode(self.0);
        self.0 = &self.0[n..];
        Some(m)
    }
}

impl FlatRules {
    fn with_capacity(rules: usize) -> FlatRules {
        let mut f = FlatRules {
            priority: Vec::with_capacity(rules),
            rule_conds: Vec::with_capacity(rules + 1),
            cond_field: Vec::with_capacity(rules * 4),
            cond_vals: Vec::with_capacity(rules * 4 + 1),
            words: Vec::with_capacity(rules * 8),
        };
        f.rule_conds.push(0);
        f.cond_vals.push(0);
        f
    }

    fn push<R: MatchSource>(&mut self, r: &R) {
        self.priority.push(r.priority());
        for c in r.conditions() {
            self.cond_field.push(c.field);
            for m in &c.values {
                encode(m, &mut self.words);
            }
            self.cond_vals.push(self.words.len() as u32);
        }
        self.rule_conds.push(self.cond_field.len() as u32);
    }

    fn shrink(&mut self) {
        self.priority.shrink_to_fit();
        self.rule_conds.shrink_to_fit();
        self.cond_field.shrink_to_fit();
        self.cond_vals.shrink_to_fit();
        self.words.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.priority.len()
    }

    pub fn is_empty(&self) -> bool {
        self.priority.is_empty()
    }

    #[inline]
    pub fn priority(&self, rule: usize) -> u32 {
        self.priority[rule]
    }

    #[inline]
    fn conds(&self, rule: usize) -> std::ops::Range<usize> {
        self.rule_conds[rule] as usize..self.rule_conds[rule + 1] as usize
    }

    #[inline]
    fn vals(&self, cond: usize) -> Values<'_> {
        Values(&self.words[self.cond_vals[cond] as usize..self.cond_vals[cond + 1] as usize])
    }

    /// Do all of the rule's conditions hold (reference semantics)?
    #[inline]
    pub fn matches(&self, rule: usize, fv: &FieldValues) -> bool {
        self.conds(rule).all(|c| {
            let field = self.cond_field[c];
            match fv.get(field) {
                Some(v) => {
                    let w = field.width();
                    self.vals(c).any(|m| m.matches(v, w))
                }
                None => false,
            }
        })
    }

    /// The reference LPM length of a matching rule on `field`.
    fn lpm_len(&self, rule: usize, field: Field, v: u128) -> u8 {
        let w = field.width();
        let mut best = 0;
        for c in self.conds(rule) {
            if self.cond_field[c] != field {
                continue;
            }
            for m in self.vals(c) {
                if m.matches(v, w) {
                    best = best.max(m.prefix_len(w));
                }
            }
        }
        best
    }

    /// The reference linear scan ([`super::linear::best_match`]) over the
    /// flattened rules, restricted to `only` when given.
    pub fn linear(
        &self,
        match_type: MatchType,
        fv: &FieldValues,
        only: Option<&[u32]>,
    ) -> Option<(u8, u32, usize)> {
        let mut best: Option<(u8, u32, usize)> = None;
        let mut consider = |i: usize| {
            if !self.matches(i, fv) {
                return;
            }
            let plen = match match_type {
                MatchType::Priority => 0,
                MatchType::Lpm(field) => match fv.get(field) {
                    Some(v) => self.lpm_len(i, field, v),
                    None => return,
                },
            };
            let p = self.priority[i];
            if better((plen, p, i), best) {
                best = Some((plen, p, i));
            }
        };
        match only {
            Some(list) => list.iter().for_each(|&i| consider(i as usize)),
            None => (0..self.len()).for_each(consider),
        }
        best
    }

    fn memory_bytes(&self) -> usize {
        self.priority.capacity() * 4
            + self.rule_conds.capacity() * 4
            + self.cond_field.capacity()
            + self.cond_vals.capacity() * 4
            + self.words.capacity() * 4
    }
}

/// Is candidate `a = (plen, priority, index)` better than `b`?
#[inline]
pub fn better(a: (u8, u32, usize), b: Option<(u8, u32, usize)>) -> bool {
    match b {
        None => true,
        Some((bl, bp, bi)) => a.0 > bl || (a.0 == bl && (a.1 < bp || (a.1 == bp && a.2 < bi))),
    }
}

/// A packet's values as the indexes read them: a view of its
/// [`FieldValues`], addressed by field index (every structure stores field
/// indices, not dimension positions), so a lookup copies nothing.
#[derive(Clone, Copy, Debug)]
pub struct Key<'a> {
    /// Value per field index (0 when absent).
    pub v: &'a [u128; Field::COUNT],
    /// Bit `f` set when field `f` is present.
    pub present: u32,
}

impl<'a> Key<'a> {
    /// The view of `fv` (no check: see [`Compiled::key`]).
    #[inline(always)]
    pub fn of(fv: &'a FieldValues) -> Key<'a> {
        Key {
            v: fv.values(),
            present: fv.present(),
        }
    }
}

/// An entry record's header word.
fn header(req: u32, rule: u32, exact: bool) -> u128 {
    u128::from(req) | (u128::from(rule) << 32) | (u128::from(exact) << 64)
}

/// One alternative interval of a rule on a dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Alt {
    lo: u128,
    hi: u128,
    plen: u8,
}

/// A group's rules compiled to entries (see the module docs).
///
/// In declaration order, what every lookup reads first (see [`super::boxes::Boxes`]).
#[derive(Debug, Clone)]
#[repr(C)]
pub struct Compiled {
    pub(crate) match_type: MatchType,
    /// The dimensions' fields (bit [`Field::index`]): a packet whose value
    /// on one is wider than the field ([`FieldValues::oversize`]) is
    /// classified by [`Compiled::fallback`].
    pub(crate) dim_fields: u32,
    /// Rank -> rule index.
    pub(crate) rank_rule: Vec<u32>,
    /// Rules matched by the reference semantics on every lookup.
    pub(crate) residual: Vec<u32>,
    /// The fields indexed: addresses first, then the most referenced.
    pub(crate) dims: Vec<Field>,
    pub(crate) maxes: Vec<u128>,
    pub(crate) flat: FlatRules,
    /// Entry records of `stride = 1 + 2 * dims.len()` words: a header
    /// (required-dimension mask, rule index, exactness: the box decides and
    /// the rule need not be re-checked), then `lo, hi` per dimension. One
    /// contiguous record per entry keeps a check to a few adjacent cache
    /// lines.
    pub(crate) recs: Vec<u128>,
    pub(crate) stride: usize,
    pub(crate) rank: Vec<u32>,
    /// Per entry: LPM prefix length (LPM groups only).
    pub(crate) plen: Vec<u8>,
    /// Rank -> LPM prefix length (LPM groups only).
    pub(crate) rank_plen: Vec<u8>,
    /// Index of the LPM field among `dims`, if referenced.
    pub(crate) lpm_dim: Option<usize>,
}

/// Sort and merge intervals (overlapping or adjacent), in place.
fn merge(v: &mut Vec<Alt>) {
    if v.len() < 2 {
        return;
    }
    v.sort_unstable_by_key(|a| (a.lo, a.hi));
    let mut w = 0;
    for i in 1..v.len() {
        let (lo, hi) = (v[i].lo, v[i].hi);
        let last = &mut v[w];
        if lo <= last.hi || lo - last.hi == 1 {
            last.hi = last.hi.max(hi);
        } else {
            w += 1;
            v[w] = Alt { lo, hi, plen: 0 };
        }
    }
    v.truncate(w + 1);
}

/// Intersect two sorted lists of disjoint intervals into `out`.
fn intersect(a: &[Alt], b: &[Alt], out: &mut Vec<Alt>) {
    out.clear();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let lo = a[i].lo.max(b[j].lo);
        let hi = a[i].hi.min(b[j].hi);
        if lo <= hi {
            out.push(Alt { lo, hi, plen: 0 });
        }
        if a[i].hi < b[j].hi {
            i += 1;
        } else {
            j += 1;
        }
    }
}

/// The interval and prefix length of a value, for normal packets (`None` if
/// it can never match a value that fits the field).
fn value_interval(m: &MatchValue, field: Field) -> Option<(u128, u128, u8)> {
    let w = field.width();
    let max = field.max_value();
    match *m {
        MatchValue::Exact(x) => (x <= max).then_some((x, x, w)),
        MatchValue::Range { lo, hi } => (lo <= hi && lo <= max).then_some((lo, hi.min(max), 0)),
        MatchValue::Prefix { .. } => {
            let (lo, hi) = m.bounds(w);
            Some((lo, hi, m.prefix_len(w)))
        }
    }
}

impl Compiled {
    /// Compile a group's rules.
    pub fn new<R: MatchSource>(rules: &[R], match_type: MatchType) -> Compiled {
        let lpm_field = match match_type {
            MatchType::Lpm(f) => Some(f),
            MatchType::Priority => None,
        };
        // Dimensions: referenced fields, most referenced first.
        let mut uses = [0usize; Field::COUNT];
        // Room for the entries the rules expand to, so the records are
        // reserved once rather than grown by copying: a rule's are at most
        // the product of its conditions' value counts (merging,
        // intersecting and hulling only shrink it), counted up to
        // EXPAND_FIELD_CAP per rule (an LPM rule may expand further; its
        // records then grow).
        let mut bound = 0usize;
        for r in rules {
            let mut seen = 0u32;
            bound = bound.saturating_add(
                r.conditions()
                    .iter()
                    .fold(1usize, |p, c| p.saturating_mul(c.values.len().max(1)))
                    .min(EXPAND_FIELD_CAP),
            );
            for c in r.conditions() {
                if seen & (1 << c.field.index()) == 0 {
                    seen |= 1 << c.field.index();
                    uses[c.field.index()] += 1;
                }
            }
        }
        let mut dims: Vec<Field> = Field::ALL
            .iter()
            .copied()
            .filter(|f| uses[f.index()] > 0)
            .collect();
        // Addresses first (most selective), then by use.
        dims.sort_by_key(|f| (!f.is_ip(), std::cmp::Reverse(uses[f.index()])));
        let d = dims.len();
        let mut dim_of = [usize::MAX; Field::COUNT];
        for (i, f) in dims.iter().enumerate() {
            dim_of[f.index()] = i;
        }
        let lpm_dim = lpm_field.and_then(|f| dims.iter().position(|&x| x == f));

        let mut c = Compiled {
            match_type,
            maxes: dims.iter().map(|f| f.max_value()).collect(),
            dim_fields: dims.iter().fold(0, |m, f| m | 1 << f.index()),
            dims,
            flat: FlatRules::with_capacity(rules.len()),
            recs: Vec::new(),
            stride: 1 + 2 * d,
            rank: Vec::new(),
            plen: Vec::new(),
            rank_rule: Vec::new(),
            rank_plen: Vec::new(),
            residual: Vec::new(),
            lpm_dim,
        };

        let mut per_dim: Vec<Vec<Alt>> = vec![Vec::new(); d];
        let mut tmp: Vec<Alt> = Vec::new();
        let mut tmp2: Vec<Alt> = Vec::new();
        let mut idx: Vec<usize> = vec![0; d];
        c.recs
            .reserve(bound.min(rules.len().saturating_mul(4)) * c.stride);
        // Megabytes for a big group, written once: in 2 MiB pages, a
        // fraction of the page faults (a third of the compile's time in
        // 4 KiB pages on a VM).
        crate::hint::huge_pages(&c.recs);
        // Per rule: its first entry (rules expand to 0 or more entries, in
        // order).
        let mut first_entry: Vec<usize> = Vec::with_capacity(rules.len() + 1);
        // Rules in the order given: their conditions were most likely
        // allocated in that order, so reading them streams.
        'rules: for (ri, r) in rules.iter().enumerate() {
            first_entry.push(c.recs.len() / c.stride);
            c.flat.push(r);
            for p in per_dim.iter_mut() {
                p.clear();
            }
            // Required dimensions, by position (here) and by field index
            // (the entry's header: what lookups compare with the packet's
            // presence mask).
            let mut req = 0u32;
            let mut req_fields = 0u32;
            for cond in r.conditions() {
                let di = dim_of[cond.field.index()];
                let first = req & (1 << di) == 0;
                req |= 1 << di;
                req_fields |= 1 << cond.field.index();
                tmp.clear();
                tmp.extend(
                    cond.values
                        .iter()
                        .filter_map(|m| value_interval(m, cond.field))
                        .map(|(lo, hi, plen)| Alt { lo, hi, plen }),
                );
                if Some(di) == lpm_dim {
                    // Same interval twice: keep the longest prefix.
                    if tmp.len() > 1 {
                        tmp.sort_unstable_by(|a, b| {
                            (a.lo, a.hi, b.plen).cmp(&(b.lo, b.hi, a.plen))
                        });
                        tmp.dedup_by(|a, b| a.lo == b.lo && a.hi == b.hi);
                    }
                    if first {
                        per_dim[di].extend_from_slice(&tmp);
                    } else {
                        if per_dim[di].len().saturating_mul(tmp.len()) > LPM_EXPAND_CAP {
                            c.residual.push(ri as u32);
                            continue 'rules;
                        }
                        tmp2.clear();
                        for a in &per_dim[di] {
                            for b in &tmp {
                                let lo = a.lo.max(b.lo);
                                let hi = a.hi.min(b.hi);
                                if lo <= hi {
                                    tmp2.push(Alt {
                                        lo,
                                        hi,
                                        plen: a.plen.max(b.plen),
                                    });
                                }
                            }
                        }
                        std::mem::swap(&mut per_dim[di], &mut tmp2);
                    }
                } else {
                    merge(&mut tmp);
                    if first {
                        per_dim[di].extend_from_slice(&tmp);
                    } else {
                        intersect(&per_dim[di], &tmp, &mut tmp2);
                        std::mem::swap(&mut per_dim[di], &mut tmp2);
                    }
                }
                if per_dim[di].is_empty() {
                    continue 'rules; // never matches a normal packet
                }
            }
            if let Some(di) = lpm_dim
                && per_dim[di].len() > LPM_EXPAND_CAP
            {
                c.residual.push(ri as u32);
                continue 'rules;
            }
            for (di, p) in per_dim.iter_mut().enumerate() {
                if req & (1 << di) == 0 {
                    p.push(Alt {
                        lo: 0,
                        hi: u128::MAX,
                        plen: 0,
                    });
                }
            }
            // Hull the smallest lists until the product is acceptable.
            let mut exact = true;
            let mut product = per_dim
                .iter()
                .fold(1usize, |p, a| p.saturating_mul(a.len()));
            if product > EXPAND_CAP {
                let biggest = per_dim
                    .iter()
                    .enumerate()
                    .filter(|(di, _)| Some(*di) != lpm_dim)
                    .map(|(_, a)| a.len())
                    .max()
                    .unwrap_or(1);
                let lpm_n = lpm_dim.map_or(1, |di| per_dim[di].len());
                let allowed = EXPAND_CAP.max(biggest.min(EXPAND_FIELD_CAP)).max(lpm_n);
                while product > allowed {
                    let victim = per_dim
                        .iter()
                        .enumerate()
                        .filter(|(di, a)| Some(*di) != lpm_dim && a.len() > 1)
                        .min_by_key(|(_, a)| a.len())
                        .map(|(di, _)| di);
                    let Some(v) = victim else { break };
                    let lo = per_dim[v].iter().map(|a| a.lo).min().unwrap_or(0);
                    let hi = per_dim[v].iter().map(|a| a.hi).max().unwrap_or(0);
                    per_dim[v].clear();
                    per_dim[v].push(Alt { lo, hi, plen: 0 });
                    exact = false;
                    product = per_dim
                        .iter()
                        .fold(1usize, |p, a| p.saturating_mul(a.len()));
                }
            }
            // Cross product.
            for x in idx.iter_mut() {
                *x = 0;
            }
            let header = header(req_fields, ri as u32, exact);
            loop {
                let mut plen = 0u8;
                c.recs.push(header);
                for di in 0..d {
                    let a = per_dim[di][idx[di]];
                    c.recs.push(a.lo);
                    c.recs.push(a.hi);
                    if Some(di) == lpm_dim {
                        plen = a.plen;
                    }
                }
                c.plen.push(plen);
                // Odometer.
                let mut di = 0;
                while di < d {
                    idx[di] += 1;
                    if idx[di] < per_dim[di].len() {
                        break;
                    }
                    idx[di] = 0;
                    di += 1;
                }
                if di == d {
                    break;
                }
            }
        }
        first_entry.push(c.recs.len() / c.stride);
        c.flat.shrink();
        match match_type {
            MatchType::Priority => c.rank_by_priority(&first_entry),
            MatchType::Lpm(_) => {
                c.recs.shrink_to_fit();
                c.plen.shrink_to_fit();
                c.assign_lpm_ranks();
            }
        }
        c
    }

    /// Rank a priority group's entries by their rules' `(priority, index)`
    /// and renumber them in rank order, so that every index walks them (and
    /// their records) in address order. A rule's entries are consecutive
    /// (`first_entry[r]..first_entry[r + 1]`), so the records move rule by
    /// rule, without sorting entries.
    fn rank_by_priority(&mut self, first_entry: &[usize]) {
        let n = self.flat.len();
        // One u64 key per rule sorts several times faster than a key
        // function reading the priorities.
        let mut keys: Vec<u64> = (0..n)
            .map(|i| (u64::from(self.flat.priority(i)) << 32) | i as u64)
            .collect();
        keys.sort_unstable();
        let order: Vec<u32> = keys.into_iter().map(|k| k as u32).collect();
        let entries = |r: usize| first_entry[r]..first_entry[r + 1];
        let mut rank = Vec::with_capacity(self.len());
        if order.iter().enumerate().all(|(i, &r)| i == r as usize) {
            for r in 0..n {
                rank.extend(std::iter::repeat_n(r as u32, entries(r).len()));
            }
            self.recs.shrink_to_fit();
        } else {
            let st = self.stride;
            let mut recs = Vec::with_capacity(self.recs.len());
            crate::hint::huge_pages(&recs);
            // Rules in rank order are scattered over the records: the
            // first lines of a rule a few ahead are asked for early.
            const AHEAD: usize = 8;
            for (k, &r) in order.iter().enumerate() {
                if let Some(&next) = order.get(k + AHEAD) {
                    let at = first_entry[next as usize] * st;
                    if let Some(Ok(lines)) = self.recs.get(at..at + 16).map(<&[u128; 16]>::try_from)
                    {
                        crate::hint::prefetch(lines);
                    }
                }
                let e = entries(r as usize);
                rank.extend(std::iter::repeat_n(k as u32, e.len()));
                recs.extend_from_slice(&self.recs[e.start * st..e.end * st]);
            }
            self.recs = recs;
        }
        self.rank = rank;
        self.rank_rule = order;
        self.plen = Vec::new();
    }

    /// Renumber the entries in rank order, so that every index walks them
    /// (and their records) in address order. LPM groups sort only what
    /// their secondary index holds.
    pub(crate) fn sort_by_rank(&mut self) {
        let n = self.len();
        if self.rank.windows(2).all(|w| w[0] <= w[1]) {
            return;
        }
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by_key(|&e| self.rank[e as usize]);
        let st = self.stride;
        let mut recs = Vec::with_capacity(self.recs.len());
        for &e in &order {
            recs.extend_from_slice(&self.recs[e as usize * st..(e as usize + 1) * st]);
        }
        self.recs = recs;
        self.rank = order.iter().map(|&e| self.rank[e as usize]).collect();
        if !self.plen.is_empty() {
            self.plen = order.iter().map(|&e| self.plen[e as usize]).collect();
        }
    }

    /// Rank every entry of an LPM group (see module docs).
    fn assign_lpm_ranks(&mut self) {
        let n = self.len();
        let keys: Vec<(u8, u32, u32)> = (0..n)
            .map(|e| {
                let r = self.rule(e);
                (u8::MAX - self.plen[e], self.flat.priority(r), r as u32)
            })
            .collect();
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_unstable_by_key(|&e| keys[e as usize]);
        self.rank = vec![0; n];
        let mut prev = None;
        for &e in &order {
            let k = keys[e as usize];
            if prev != Some(k) {
                self.rank_rule.push(k.2);
                self.rank_plen.push(self.plen[e as usize]);
                prev = Some(k);
            }
            self.rank[e as usize] = (self.rank_rule.len() - 1) as u32;
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.recs.len() / self.stride
    }

    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    #[inline]
    fn header(&self, e: usize) -> u128 {
        self.recs[e * self.stride]
    }

    /// Dimensions entry `e` requires present.
    #[inline]
    pub fn req(&self, e: usize) -> u32 {
        self.header(e) as u32
    }

    /// The rule of entry `e`.
    #[inline]
    pub fn rule(&self, e: usize) -> usize {
        (self.header(e) >> 32) as u32 as usize
    }

    /// Does entry `e`'s box decide alone?
    #[inline]
    pub fn exact(&self, e: usize) -> bool {
        (self.header(e) >> 64) & 1 != 0
    }

    /// Number of dimensions.
    #[inline]
    pub fn dims(&self) -> usize {
        self.dims.len()
    }

    #[inline]
    pub fn lo(&self, e: usize, dim: usize) -> u128 {
        self.recs[e * self.stride + 1 + 2 * dim]
    }

    #[inline]
    pub fn hi(&self, e: usize, dim: usize) -> u128 {
        self.recs[e * self.stride + 2 + 2 * dim]
    }

    /// Keep only the entries for which `keep` holds (ranks are unchanged).
    pub(crate) fn retain_entries(&mut self, keep: impl Fn(usize) -> bool) {
        let st = self.stride;
        let mut w = 0;
        for e in 0..self.len() {
            if !keep(e) {
                continue;
            }
            if w != e {
                self.recs.copy_within(e * st..(e + 1) * st, w * st);
                self.rank[w] = self.rank[e];
                if !self.plen.is_empty() {
                    self.plen[w] = self.plen[e];
                }
            }
            w += 1;
        }
        self.recs.truncate(st * w);
        self.recs.shrink_to_fit();
        self.rank.truncate(w);
        self.rank.shrink_to_fit();
        self.plen.truncate(w.min(self.plen.len()));
        self.plen.shrink_to_fit();
    }

    /// Forget the entries (an index holding its own copy of what it needs
    /// was built); ranks, rules and dimensions stay.
    pub(crate) fn drop_entries(&mut self) {
        self.recs = Vec::new();
        self.rank = Vec::new();
        self.plen = Vec::new();
    }

    /// The packet's key, or `None` if a value is wider than its field (the
    /// caller then falls back to [`Compiled::fallback`]). Nothing is
    /// copied, and the widths were checked as the values were set.
    #[inline(always)]
    pub fn key<'a>(&self, fv: &'a FieldValues) -> Option<Key<'a>> {
        (fv.oversize() & self.dim_fields == 0).then(|| Key::of(fv))
    }

    /// The presence bit of dimension `d` (entry headers and every index
    /// use field indices).
    #[inline]
    pub fn dim_bit(&self, d: usize) -> u32 {
        1 << self.dims[d].index()
    }

    /// The field index of dimension `d`.
    #[inline]
    pub fn field_of(&self, d: usize) -> usize {
        self.dims[d].index()
    }

    /// Does entry `e` match?
    #[inline]
    pub fn entry_matches(&self, e: usize, key: &Key, fv: &FieldValues) -> bool {
        let rec = &self.recs[e * self.stride..(e + 1) * self.stride];
        let h = rec[0];
        if (h as u32) & !key.present != 0 {
            return false;
        }
        for (&f, lh) in self.dims.iter().zip(rec[1..].chunks_exact(2)) {
            let v = key.v[f.index()];
            if v < lh[0] || v > lh[1] {
                return false;
            }
        }
        (h >> 64) & 1 != 0 || self.flat.matches((h >> 32) as u32 as usize, fv)
    }

    /// Does an inexact entry (of `rule`, at `rank`) match? Its rule's
    /// conditions must all hold, and in an LPM group the rule's longest
    /// prefix matching the packet must be at least the entry's: a box may
    /// leave the LPM interval unchecked (an interval outside the store's
    /// base block, see [`super::boxes::Boxes`]), and the rule matching
    /// through another of its values must not claim this entry's longer
    /// prefix. (An entry claiming less than the rule's own is harmless:
    /// the entry of the rule's longest matching prefix ranks better and
    /// is found too.) Out of line: most entries are exact, and inlined
    /// into every box check it cost each ACL lookup 14 instructions.
    #[inline(never)]
    pub fn inexact_matches(&self, rule: usize, rank: u32, fv: &FieldValues) -> bool {
        self.flat.matches(rule, fv)
            && match self.match_type {
                MatchType::Priority => true,
                MatchType::Lpm(f) => fv.get(f).is_some_and(|v| {
                    self.flat.lpm_len(rule, f, v)
                        >= self.rank_plen.get(rank as usize).copied().unwrap_or(0)
                }),
            }
    }

    /// The rule of the best rank found by an index, merged with the
    /// residual rules.
    #[inline]
    pub fn resolve(&self, best_rank: u32, fv: &FieldValues) -> Option<usize> {
        let found = self.rank_rule.get(best_rank as usize).map(|&r| r as usize);
        if self.residual.is_empty() {
            return found;
        }
        let cand = found.map(|r| {
            let plen = self.rank_plen.get(best_rank as usize).copied().unwrap_or(0);
            (plen, self.flat.priority(r), r)
        });
        match self.flat.linear(self.match_type, fv, Some(&self.residual)) {
            Some(res) if better(res, cand) => Some(res.2),
            _ => found,
        }
    }

    /// Reference answer (for packets with out-of-width values).
    pub fn fallback(&self, fv: &FieldValues) -> Option<usize> {
        self.flat.linear(self.match_type, fv, None).map(|b| b.2)
    }

    /// Is the LPM field required and absent?
    #[inline]
    pub fn lpm_absent(&self, fv: &FieldValues) -> bool {
        match self.match_type {
            MatchType::Lpm(f) => fv.get(f).is_none(),
            MatchType::Priority => false,
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.flat.memory_bytes()
            + self.recs.capacity() * 16
            + self.rank.capacity() * 4
            + self.plen.capacity()
            + self.rank_rule.capacity() * 4
            + self.rank_plen.capacity()
            + self.residual.capacity() * 4
            + self.maxes.capacity() * 16
            + self.dims.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value decodes to itself, whatever encoding its numbers take.
    #[test]
    fn value_stream_round_trips() {
        let v4 = |a: u32| V4_MAPPED | u128::from(a);
        let values = [
            MatchValue::Exact(0),
            MatchValue::Exact(443),
            MatchValue::Exact(u128::from(u32::MAX)),
            MatchValue::Exact(1 << 32),
            MatchValue::Exact(v4(0x0a00_0001)),
            MatchValue::Exact(u128::MAX),
            MatchValue::Range {
                lo: 1024,
                hi: 65535,
            },
            MatchValue::Range {
                lo: v4(0),
                hi: v4(u32::MAX),
            },
            // Mixed encodings fall back to full width.
            MatchValue::Range { lo: 5, hi: v4(7) },
            MatchValue::Range {
                lo: 0,
                hi: u128::MAX,
            },
            MatchValue::Prefix {
                value: v4(0x0a01_0000),
                len: 112,
            },
            MatchValue::Prefix {
                value: 0x2001_0db8 << 96,
                len: 32,
            },
            MatchValue::Prefix { value: 7, len: 0 },
        ];
        let mut words = Vec::new();
        for m in &values {
            encode(m, &mut words);
        }
        let decoded: Vec<MatchValue> = Values(&words).collect();
        assert_eq!(decoded, values);
        // Small numbers and IPv4 addresses take one word each.
        let mut w = Vec::new();
        encode(&values[4], &mut w);
        encode(&values[6], &mut w);
        assert_eq!(w.len(), 2 + 3);
    }

    /// A priority group's entries come out numbered in rank order: the
    /// ranks follow the rules' `(priority, index)` order, and each rule's
    /// entries are exactly those it compiles to alone. Both the moved
    /// (shuffled priorities) and the in-place (sorted) cases.
    #[test]
    fn entries_are_numbered_in_rank_order() {
        let shuffled = crate::rulegen::acl(3000, 5);
        let mut sorted = shuffled.clone();
        sorted.sort_by_key(|r| r.priority);
        // Per entry: (field, lo, hi) on every field, wildcards included.
        let boxes = |c: &Compiled, e: usize| -> Vec<(Field, u128, u128)> {
            let mut b: Vec<(Field, u128, u128)> = Field::ALL
                .iter()
                .map(|&f| match c.dims.iter().position(|&x| x == f) {
                    Some(d) => (f, c.lo(e, d), c.hi(e, d)),
                    None => (f, 0, u128::MAX),
                })
                .collect();
            b.sort_by_key(|x| x.0.index());
            b
        };
        for rules in [&shuffled, &sorted] {
            let c = Compiled::new(rules, MatchType::Priority);
            let mut want: Vec<u32> = (0..rules.len() as u32).collect();
            want.sort_by_key(|&i| (rules[i as usize].priority, i));
            assert_eq!(c.rank_rule, want);
            assert_eq!(c.rank.len(), c.len());
            let mut e = 0;
            let mut moved = 0;
            for (k, &r) in want.iter().enumerate() {
                let r = r as usize;
                moved += usize::from(k != r);
                let alone = Compiled::new(&rules[r..=r], MatchType::Priority);
                let mut got = Vec::new();
                let mut expect: Vec<_> = (0..alone.len()).map(|a| boxes(&alone, a)).collect();
                for _ in 0..alone.len() {
                    assert_eq!((c.rank[e], c.rule(e)), (k as u32, r), "entry {e}");
                    got.push(boxes(&c, e));
                    e += 1;
                }
                got.sort();
                expect.sort();
                assert_eq!(got, expect, "rule {r}");
            }
            assert_eq!(e, c.len());
            assert_eq!(moved > 0, std::ptr::eq(rules, &shuffled));
        }
    }
}
