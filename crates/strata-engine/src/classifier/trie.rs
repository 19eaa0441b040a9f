//! A compressed multibit trie (poptrie-style) mapping a value to the best
//! rank among the prefixes containing it.
//!
//! Layout (Asai & Ohara, "Poptrie", SIGCOMM 2015):
//!
//! - a *direct* table indexed by the top `s` bits of the key (`s` grows with
//!   the number of prefixes, up to 18), each slot holding either a rank or
//!   an internal node;
//! - internal nodes of stride 6: 64 slots described by two 64-bit maps.
//!   `vector` marks the slots that continue into a child node; the children
//!   of a node are contiguous, so the child is found with one popcount.
//!   `leafvec` marks where a run of equal leaf values starts among the other
//!   slots; a node's leaves are contiguous and run-length compressed, so the
//!   leaf is also found with one popcount.
//!
//! Prefixes are *leaf-pushed* at build time: a slot stores the best rank of
//! every prefix covering it, so a lookup never backtracks: one direct read,
//! then one node per 6 bits until a leaf. A prefix is any `(value, len)` over
//! a key of `width` bits (1..=128); the rank order is arbitrary (the caller
//! encodes longest-prefix-first, priority, …), the trie just keeps the
//! minimum. 1M IPv4 routes take a few bytes each.

/// "No prefix" rank.
pub const NO_RANK: u32 = u32::MAX >> 1;
const NODE_TAG: u32 = 1 << 31;
const STRIDE: u32 = 6;
/// `base_leaf` of a skip node (path compression): `vector` holds the bits
/// to match, `leafvec` their count (low byte) and the value for keys that
/// differ (high half), `base_node` the node to continue at.
const SKIP: u32 = u32::MAX;
/// Longest skip of one node (bits).
const MAX_SKIP: u32 = 60;

#[derive(Clone, Copy, Debug, Default)]
struct PNode {
    vector: u64,
    leafvec: u64,
    base_leaf: u32,
    base_node: u32,
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct PopTrie {
    width: u32,
    direct_bits: u32,
    direct: Vec<u32>,
    nodes: Vec<PNode>,
    leaves: Vec<u32>,
}

/// Left-align a `width`-bit value in 128 bits.
#[inline]
fn align(v: u128, width: u32) -> u128 {
    v << (128 - width)
}

#[inline]
fn mask(len: u32) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    }
}

struct Build<'a> {
    p: &'a [(u128, u8, u32)],
    nodes: Vec<PNode>,
    leaves: Vec<u32>,
}

impl PopTrie {
    /// Build from `(value, len, rank)` prefixes of a `width`-bit key
    /// (`value` right-aligned, bits past `len` ignored). Ranks must be below
    /// [`NO_RANK`]; larger ones are clamped to it (never reported).
    pub fn new(width: u8, prefixes: &[(u128, u8, u32)]) -> PopTrie {
        let width = u32::from(width.clamp(1, 128));
        let mut p: Vec<(u128, u8, u32)> = prefixes
            .iter()
            .map(|&(v, len, r)| {
                let len = u32::from(len).min(width);
                (align(v, width) & mask(len), len as u8, r.min(NO_RANK))
            })
            .collect();
        p.sort_unstable();
        // Same prefix twice: the first (lowest rank) wins.
        p.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        let n = p.len().max(1);
        let log = usize::BITS - n.leading_zeros();
        let direct_bits = (log + 2).clamp(4, 18).min(width);
        let mut b = Build {
            p: &p,
            nodes: Vec::new(),
            leaves: Vec::new(),
        };
        let ds = 1usize << direct_bits;
        let mut val = vec![NO_RANK; ds];
        for &(k, len, r) in &p {
            let len = u32::from(len);
            if len <= direct_bits {
                let start = (k >> (128 - direct_bits)) as usize;
                let cnt = 1usize << (direct_bits - len);
                for x in &mut val[start..start + cnt] {
                    *x = (*x).min(r);
                }
            }
        }
        let mut direct = val.clone();
        // Children of the direct table.
        let mut i = 0;
        while i < p.len() {
            let slot = (p[i].0 >> (128 - direct_bits)) as usize;
            let mut j = i;
            let mut deeper = false;
            while j < p.len() && (p[j].0 >> (128 - direct_bits)) as usize == slot {
                deeper |= u32::from(p[j].1) > direct_bits;
                j += 1;
            }
            if deeper {
                let id = b.nodes.len();
                b.nodes.push(PNode::default());
                b.node(id, direct_bits, i, j, val[slot]);
                direct[slot] = NODE_TAG | id as u32;
            }
            i = j;
        }
        let Build { nodes, leaves, .. } = b;
        let mut t = PopTrie {
            width,
            direct_bits,
            direct,
            nodes,
            leaves,
        };
        t.nodes.shrink_to_fit();
        t.leaves.shrink_to_fit();
        t
    }

    /// The best rank of the prefixes containing `v`, or [`NO_RANK`].
    #[inline]
    pub fn lookup(&self, v: u128) -> u32 {
        let k = align(v, self.width);
        let e = self.direct[(k >> (128 - self.direct_bits)) as usize];
        if e & NODE_TAG == 0 {
            return e;
        }
        let mut n = (e & !NODE_TAG) as usize;
        let mut off = self.direct_bits;
        loop {
            let node = &self.nodes[n];
            if node.base_leaf == SKIP {
                let len = (node.leafvec & 0xff) as u32;
                if ((k << off) >> (128 - len)) as u64 != node.vector {
                    return (node.leafvec >> 32) as u32;
                }
                off += len;
                n = node.base_node as usize;
                continue;
            }
            let idx = ((k << off) >> (128 - STRIDE)) as u32;
            let m = u64::MAX >> (63 - idx);
            if (node.vector >> idx) & 1 != 0 {
                n = node.base_node as usize + (node.vector & m).count_ones() as usize - 1;
                off += STRIDE;
            } else {
                return self.leaves
                    [node.base_leaf as usize + (node.leafvec & m).count_ones() as usize - 1];
            }
        }
    }

    /// Replace every stored rank `r` by `f(r)` (for instance the rule it
    /// stands for, saving the caller an indirection). `f` must map into
    /// `0..=NO_RANK`; other values are clamped to [`NO_RANK`].
    pub fn map_leaves(&mut self, f: impl Fn(u32) -> u32) {
        for e in &mut self.direct {
            if *e & NODE_TAG == 0 {
                *e = f(*e).min(NO_RANK);
            }
        }
        for l in &mut self.leaves {
            *l = f(*l).min(NO_RANK);
        }
        for n in &mut self.nodes {
            if n.base_leaf == SKIP {
                let miss = f((n.leafvec >> 32) as u32).min(NO_RANK);
                n.leafvec = (n.leafvec & 0xffff_ffff) | (u64::from(miss) << 32);
            }
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.direct.capacity() * 4
            + self.nodes.capacity() * std::mem::size_of::<PNode>()
            + self.leaves.capacity() * 4
    }

    /// Number of internal nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

impl Build<'_> {
    /// Fill node `id` covering bits `off..off + 6` for prefixes `p[a..b]`
    /// (all sharing the node's leading `off` bits; those of length `<= off`
    /// are already accounted for in `inh`).
    fn node(&mut self, id: usize, off: u32, a: usize, b: usize, inh: u32) {
        // Path compression: while every prefix below continues through the
        // same slot without ending, skip the level.
        let relevant = || self.p[a..b].iter().filter(|x| u32::from(x.1) > off);
        let mut skip = 0u32;
        let mut bits = 0u64;
        while skip + STRIDE <= MAX_SKIP && off + skip + STRIDE < 128 {
            let o = off + skip;
            let slot = |k: u128| ((k << o) >> (128 - STRIDE)) as u64;
            let mut it = relevant();
            let Some(first) = it.next() else { break };
            let s0 = slot(first.0);
            let through = |x: &(u128, u8, u32)| u32::from(x.1) > o + STRIDE && slot(x.0) == s0;
            if !(through(first) && it.all(through)) {
                break;
            }
            bits = (bits << STRIDE) | s0;
            skip += STRIDE;
        }
        if skip > 0 {
            let child = self.nodes.len();
            self.nodes.push(PNode::default());
            self.nodes[id] = PNode {
                vector: bits,
                leafvec: u64::from(skip) | (u64::from(inh) << 32),
                base_leaf: SKIP,
                base_node: child as u32,
            };
            self.node(child, off + skip, a, b, inh);
            return;
        }
        let mut val = [inh; 64];
        let top = off + STRIDE;
        for &(k, len, r) in &self.p[a..b] {
            let len = u32::from(len);
            if len > off && len <= top {
                let start = ((k << off) >> (128 - STRIDE)) as usize;
                let cnt = 1usize << (top - len);
                for x in &mut val[start..start + cnt] {
                    *x = (*x).min(r);
                }
            }
        }
        // Child ranges.
        let mut kids: Vec<(usize, usize, usize)> = Vec::new();
        let mut i = a;
        while i < b {
            let slot = ((self.p[i].0 << off) >> (128 - STRIDE)) as usize;
            let mut j = i;
            let mut deeper = false;
            while j < b && ((self.p[j].0 << off) >> (128 - STRIDE)) as usize == slot {
                deeper |= u32::from(self.p[j].1) > top;
                j += 1;
            }
            if deeper {
                kids.push((slot, i, j));
            }
            i = j;
        }
        let mut vector = 0u64;
        for &(slot, _, _) in &kids {
            vector |= 1 << slot;
        }
        let mut leafvec = 0u64;
        let base_leaf = self.leaves.len() as u32;
        let mut last: Option<u32> = None;
        for (s, &v) in val.iter().enumerate() {
            if vector & (1 << s) != 0 {
                continue;
            }
            if last != Some(v) {
                leafvec |= 1 << s;
                self.leaves.push(v);
                last = Some(v);
            }
        }
        let base_node = self.nodes.len();
        self.nodes.resize(base_node + kids.len(), PNode::default());
        self.nodes[id] = PNode {
            vector,
            leafvec,
            base_leaf,
            base_node: base_node as u32,
        };
        for (k, &(slot, i, j)) in kids.iter().enumerate() {
            self.node(base_node + k, top, i, j, val[slot]);
        }
    }
}
