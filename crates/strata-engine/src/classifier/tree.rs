//! The cut tree: a decision tree over the compiled entry boxes, for
//! priority (ACL) groups of hundreds to tens of thousands of rules.
//!
//! Each internal node cuts one dimension and sends the packet to one child:
//!
//! - **bit cut** (multibit, path-compressed trie step): the child is a slice
//!   of `bits` bits of the value taken at `shift`, placed at the highest bit
//!   where the node's entries differ, so the constant leading bits of IPv4
//!   in IPv6 space, or of a clustered address block, cost nothing;
//! - **range cut** (interval structure): the child is found among up to 255
//!   boundaries chosen from the entries' interval endpoints (equi-dense,
//!   HiCuts style), for arbitrary, overlapping ranges (ports, IP ranges,
//!   clustered prefixes); boundaries sharing their high 96 (64) bits are
//!   searched as 32-bit (64-bit) keys, two blocks of 16 counted at once;
//! - **hash cut**: the child is found by hashing the value, for entries
//!   with exact values on that dimension (host addresses, VNIs).
//!
//! An entry goes to every child its interval overlaps as long as it spans a
//! few children. Entries spanning more (wildcards and short prefixes on the
//! cut dimension) are not replicated but set aside into the node's *wide*
//! subtree, built recursively on the other dimensions (an EffiCuts-style
//! separation by size, applied at every node). A lookup visits the selected
//! child and the wide subtree, the one holding the better rank first.
//!
//! Every subtree reference carries the best rank inside it, so a subtree
//! that cannot beat the best match found so far is skipped without being
//! read. On top of that, the entries are split by rank into chunks of
//! doubling size, each with its own tree, searched best chunk first: the
//! best match of a packet covered by many rules is usually among the better
//! ranks, and once a chunk has matched every later chunk is skipped. A group
//! mixing IPv4 and IPv6 entries gets one tree per family.
//!
//! Leaves hold at most `leaf_size` entries sorted by rank (entries dominated
//! by a better exact entry of the same leaf are dropped), as [`Boxes`]:
//! cache-line boxes with 32-bit intervals where the family allows, checked
//! branch-free. A lookup always finishes with an exact check, so
//! correctness never depends on the shape of the tree. A packet without the
//! cut dimension skips the children (they all require it) and visits only
//! the wide subtree.
//!
//! Building is a single top-down pass: each node evaluates its candidate
//! cuts on a sample of its entries, so a 50k-rule group builds in tens of
//! milliseconds, bounded in memory by a global replication budget.

use super::boxes::{BLOCK_RULES, Block, BoxKey, Boxes};
use super::compile::{Compiled, Key, NONE};
use super::{GroupClassifier, MatchSource, MatchType};
use crate::condition::FieldValues;
use foldhash::fast::RandomState;
use hashbrown::HashMap;

/// Subtree kinds (low byte of [`Ref::meta`]).
/// Leaf kinds first, so that "is an internal node" is one comparison.
const K_NIL: u32 = 0;
const K_ONE: u32 = 1;
const K_LEAF: u32 = 2;
const K_BLOCK: u32 = 3;
const K_BIT: u32 = 4;
const K_HASH: u32 = 5;
const K_RANGE: u32 = 6;
const K_RANGE64: u32 = 7;
const K_RANGE32: u32 = 8;

const NIL: u32 = u32::MAX;
/// Largest number of entries a tree can index.
pub const MAX_ENTRIES: usize = (u32::MAX - 1) as usize;

/// Address families of the entries (IPv4 or not, on up to two address
/// dimensions).
const FAMILIES: usize = 4;
/// Pending subtrees of a walk (one per level at most).
const STACK: usize = 34;
/// Pending subtrees a walk keeps on its first stack.
const WALK_STACK: usize = 16;
/// Range cuts over 128-bit boundaries: at most this many children.
const RANGE_MAX_CHILDREN: usize = 64;
/// Range cuts over 64-bit (32-bit) boundaries, all sharing their high 64
/// (96) bits: IPv6 within a /64, IPv4 in IPv6 space, ports, MACs, …
const RANGE64_MAX_CHILDREN: usize = 256;
const BLOCK64: usize = 16;
const BLOCK32: usize = 16;
/// IPv4 addresses in the IPv6 space.
const V4_LO: u128 = super::compile::V4_MAPPED;
const V4_HI: u128 = V4_LO | 0xffff_ffff;
/// Cost (in entry checks) of a range cut's search over a bit cut's shift:
/// a range cut must save that much to be chosen. (4 rather than 2 since
/// leaves hold up to 24 entries: 4% faster lookups at 10k and 50k rules
/// for 2% more memory; 6 and 8 gain no more and cost more memory.)
const RANGE_PENALTY: f64 = 4.0;
/// Entries sampled to evaluate a range cut.
const RANGE_SAMPLE: usize = 128;

/// Tuning of the cut tree.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TreeConfig {
    /// Largest leaf the builder stops at.
    pub leaf_size: usize,
    /// Largest leaf in trees over at least `large_from` entries (0: as
    /// `leaf_size`): a bigger tree is deeper, and larger leaves take a
    /// level off its walks.
    pub large_leaf_size: usize,
    /// Entries from which a tree takes `large_leaf_size`.
    pub large_from: usize,
    /// Largest leaf of a family whose boxes take more than one line (IPv6
    /// addresses; 0: as the others): each check of such a box reads two
    /// lines, and a packet that misses a leaf's entries checks them all.
    pub wide_leaf_size: usize,
    /// Deepest node (wide subtrees count as a level).
    pub max_depth: usize,
    /// Largest fan-out of a bit or range cut, as a power of two (1..=8);
    /// range cuts over full 128-bit values use at most 64 children.
    pub max_bits: u8,
    /// An entry spanning at most this many children (and at most a quarter
    /// of them) is replicated rather than set aside as wide.
    pub max_replicate: usize,
    /// Replicated entries of a node may total this many times its entries.
    pub space_factor: usize,
    /// All leaves may hold this many times the entry count (plus 4096);
    /// beyond, nodes become leaves.
    pub budget_factor: usize,
    pub hash_cuts: bool,
    pub range_cuts: bool,
    /// Entries sampled per node to choose its cut.
    pub sample: usize,
    /// Entries of the first rank chunk (each next chunk doubles); 0 builds
    /// a single tree.
    pub chunk: usize,
    /// Store leaves of several entries as [`Block`]s checked lane-parallel
    /// (when the family's boxes allow). Off by default: with leaves of a
    /// few entries, one-line boxes checked one by one cost as little.
    pub blocks: bool,
}

impl TreeConfig {
    /// The tuning a tree over `entries` entries is built with: bounds
    /// applied, and the leaf size for its size.
    fn for_entries(self, entries: usize) -> TreeConfig {
        let mut cfg = self;
        cfg.max_bits = cfg.max_bits.clamp(1, 8);
        cfg.max_depth = cfg.max_depth.min(STACK - 2);
        if cfg.large_leaf_size > 0 && entries >= cfg.large_from {
            cfg.leaf_size = cfg.large_leaf_size;
        }
        cfg.leaf_size = cfg.leaf_size.max(1);
        cfg.sample = cfg.sample.max(16);
        cfg
    }

    /// The largest leaf of a family whose boxes take `lines` cache lines.
    fn leaf_size_for(&self, lines: usize) -> usize {
        if self.wide_leaf_size > 0 && lines > 1 {
            self.wide_leaf_size
        } else {
            self.leaf_size
        }
    }
}

impl Default for TreeConfig {
    fn default() -> TreeConfig {
        // Leaves of up to 24 entries and replication across up to 16
        // children (from 8 and 8): shallower trees, fewer wide subtrees to
        // enter (50k ACL: 6.75 -> 4.07 nodes per lookup for 5.97 -> 11.5
        // box checks, which predict better than node steps); 16% faster at
        // 50k and 11% at 1k in alternating runs, and smaller (217 -> 206
        // B/rule). See BENCHMARKS.md, "Tree tuning". Trees of 4,096
        // entries or more take leaves of up to 32 (2026-12-05, seventh
        // session: 10k lookups 4% faster, 50k as fast, 3-5% smaller, 7%
        // faster to build; 1k lookups were 8-10% slower with 32). Families
        // whose boxes take two lines (IPv6) take leaves of up to 12
        // (2026-12-05, eighth session: IPv6 lookups at 50k 17% faster, 31
        // -> 11 box checks each; 2.5% more memory).
        TreeConfig {
            leaf_size: 24,
            large_leaf_size: 32,
            large_from: 4096,
            wide_leaf_size: 12,
            max_depth: 32,
            max_bits: 8,
            max_replicate: 16,
            space_factor: 3,
            budget_factor: 12,
            hash_cuts: true,
            range_cuts: true,
            sample: 512,
            chunk: 8192,
            blocks: false,
        }
    }
}

/// What a lookup carries down the tree.
struct Query<'a> {
    key: &'a Key<'a>,
    fv: &'a FieldValues,
    boxes: &'a Boxes,
    bk: &'a BoxKey,
}

/// A subtree: its kind and, for internal nodes, the node itself (so a level
/// costs one memory access: the child's `Ref` in the parent's children), and
/// the best rank inside it (so a subtree that cannot win is not entered).
///
/// - one entry: `x` = entry;
/// - leaf: `x` = its best entry's box (`min` its rank), so that the first
///   check needs no other line; its other entries are `items[a..]`, by
///   rank, up to a sentinel item of rank [`NONE`] (which ends every scan,
///   as no rank can beat it: no length to carry or check);
/// - bit / range / hash node: `children[a]` is the wide subtree, the
///   children follow (bit, range); `x` is the first boundary (range) or the
///   table (hash); `meta` holds kind, dimension, shift and width (bit) or
///   boundary count (range).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(16))]
struct Ref {
    x: u32,
    min: u32,
    a: u32,
    meta: u32,
}

const NIL_REF: Ref = Ref {
    x: NIL,
    min: NONE,
    a: 0,
    meta: K_NIL,
};

impl Ref {
    #[inline]
    fn kind(&self) -> u32 {
        self.meta & 0xff
    }
    #[inline]
    fn dim(&self) -> usize {
        ((self.meta >> 8) & 0xff) as usize
    }
    #[inline]
    fn shift(&self) -> u32 {
        (self.meta >> 16) & 0xff
    }
    #[inline]
    fn bits(&self) -> u32 {
        self.meta >> 24
    }
    fn node(kind: u32, dim: usize, shift: u32, bits: u32, a: u32, x: u32, min: u32) -> Ref {
        Ref {
            x,
            min,
            a,
            meta: kind
                | ((dim as u32 & 0xff) << 8)
                | ((shift & 0xff) << 16)
                | ((bits & 0xff) << 24),
        }
    }
}

/// Counts of one or more traced lookups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupTrace {
    pub nodes: usize,
    pub checks: usize,
    /// Leaves visited.
    pub leaves: usize,
    /// Rank-chunk trees walked.
    pub trees: usize,
}

trait Probe {
    fn node(&mut self);
    fn check(&mut self);
    fn leaf(&mut self);
    fn tree(&mut self);
}

impl Probe for () {
    #[inline(always)]
    fn node(&mut self) {}
    #[inline(always)]
    fn check(&mut self) {}
    #[inline(always)]
    fn leaf(&mut self) {}
    #[inline(always)]
    fn tree(&mut self) {}
}

impl Probe for LookupTrace {
    fn node(&mut self) {
        self.nodes += 1;
    }
    fn check(&mut self) {
        self.checks += 1;
    }
    fn leaf(&mut self) {
        self.leaves += 1;
    }
    fn tree(&mut self) {
        self.trees += 1;
    }
}

/// Build statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub nodes: usize,
    pub leaves: usize,
    pub leaf_items: usize,
    pub max_depth: usize,
    pub bit_cuts: usize,
    pub range_cuts: usize,
    pub hash_cuts: usize,
}

/// A cut tree over some entries of a [`Compiled`] group.
///
/// In declaration order, what every lookup reads first (see [`super::boxes::Boxes`]).
#[derive(Debug, Clone)]
#[repr(C)]
pub struct TreeIndex {
    /// Per rank chunk (best first): one root per family (see
    /// [`TreeIndex::family`]).
    roots: Vec<[Ref; FAMILIES]>,
    /// Address fields (by field index) splitting IPv4 from IPv6 entries
    /// (up to two).
    split: [Option<usize>; 2],
    children: Vec<Ref>,
    /// `(rank, box)`.
    items: Vec<(u32, u32)>,
    /// Per 32-bit range cut: the laid-out low halves, starting on a cache
    /// line (a search reads one line, or a summary line and one block line).
    bounds32: Vec<Bounds32>,
    /// The common high 96 bits of 32-bit range cuts (`v >> 32`), shared:
    /// a handful per tree (IPv4 in IPv6 space, zero for ports), indexed by
    /// the node's shift byte, so the node's lines hold boundaries only.
    bases32: Vec<u128>,
    bounds64: Vec<u64>,
    bounds: Vec<u128>,
    /// Leaves checked a block of entries at a time.
    blocks: Vec<Block>,
    tables: Vec<HashMap<u128, Ref, RandomState>>,
    stats: TreeStats,
    /// Entry boxes of each family's trees.
    boxes: [Boxes; FAMILIES],
}

#[derive(Clone, Debug)]
enum CutKind {
    Bit { shift: u8, bits: u8 },
    Range(Vec<u128>),
    Hash,
}

#[derive(Clone, Debug)]
struct Cut {
    dim: usize,
    kind: CutKind,
    cost: f64,
}

/// Children `c_lo..=c_hi` of a bit cut (wrapping when `c_lo > c_hi`) and
/// their number, or `None` if the interval covers every child.
#[inline]
fn bit_span(lo: u128, hi: u128, shift: u32, bits: u32) -> Option<(u32, u32, u32)> {
    let nch = 1u32 << bits;
    let mask = (nch - 1) as u128;
    let period = shift + bits;
    let clo = ((lo >> shift) & mask) as u32;
    let chi = ((hi >> shift) & mask) as u32;
    let wrap = period < 128 && lo >> period != hi >> period;
    if period < 128 && (hi - lo) >> period != 0 {
        return None;
    }
    let span = if wrap {
        (nch - clo) + chi + 1
    } else {
        chi - clo + 1
    };
    (span < nch).then_some((clo, chi, span))
}

/// Children `c_lo..=c_hi` of a range cut over sorted boundaries, with a
/// 32-bit fast path when the boundaries share their
/// high 96 bits (IPv4, ports, …).
struct Spanner<'a> {
    bounds: &'a [u128],
    base: Option<u128>,
    low: Vec<u32>,
}

impl<'a> Spanner<'a> {
    fn new(bounds: &'a [u128]) -> Spanner<'a> {
        let base = bounds.first().map(|&b| b >> 32);
        let base = base.filter(|&b| bounds.iter().all(|&x| x >> 32 == b));
        let low = if base.is_some() {
            bounds.iter().map(|&b| b as u32).collect()
        } else {
            Vec::new()
        };
        Spanner { bounds, base, low }
    }

    #[inline]
    fn index(&self, v: u128) -> u32 {
        match self.base {
            Some(b) => {
                if v >> 32 < b {
                    0
                } else if v >> 32 > b {
                    self.low.len() as u32
                } else {
                    let x = v as u32;
                    self.low.partition_point(|&y| y <= x) as u32
                }
            }
            None => self.bounds.partition_point(|&x| x <= v) as u32,
        }
    }

    #[inline]
    fn span(&self, lo: u128, hi: u128) -> (u32, u32) {
        (self.index(lo), self.index(hi))
    }
}

/// Lay out sorted keys for the two-level search: one block of `blk` keys
/// when they fit, else a summary block (first key of blocks `1..`) followed
/// by the blocks, padded with the maximum.
fn layout<T: Copy>(keys: &[T], blk: usize, pad: T, out: &mut Vec<T>) {
    if keys.len() <= blk {
        out.extend_from_slice(keys);
        out.resize(out.len() + blk - keys.len(), pad);
        return;
    }
    let nb = keys.len().div_ceil(blk);
    let start = out.len();
    for j in 1..nb {
        out.push(keys[j * blk]);
    }
    out.resize(start + blk, pad);
    for j in 0..nb {
        let b = &keys[j * blk..keys.len().min((j + 1) * blk)];
        out.extend_from_slice(b);
        out.resize(out.len() + blk - b.len(), pad);
    }
}

/// Number of keys `<= v` in a block of `B` (independent comparisons, no
/// dependent chain).
#[inline(always)]
fn count_le<T: Copy + PartialOrd, const B: usize>(blk: &[T], v: T) -> usize {
    let blk: &[T; B] = match blk.first_chunk() {
        Some(x) => x,
        None => return 0,
    };
    let mut n = 0;
    for &x in blk {
        n += usize::from(x <= v);
    }
    n
}

/// Number of the `m` keys laid out by [`layout`] that are `<= v`.
#[inline]
fn search<T: Copy + PartialOrd, const B: usize>(b: &[T], m: usize, v: T) -> usize {
    let pos = if m <= B {
        count_le::<T, B>(b, v)
    } else {
        let j = count_le::<T, B>(b, v).min(m.div_ceil(B) - 1);
        j * B + count_le::<T, B>(&b[B * (j + 1)..], v)
    };
    pos.min(m)
}

/// Number of the sorted 128-bit keys `<= v`, among [`RANGE_MAX_CHILDREN`]
/// laid out padded with `u128::MAX` (which no valid value reaches beyond
/// the real keys: the count is capped by the caller): a binary search of
/// fixed length whose steps select rather than branch (the comparisons go
/// either way).
#[inline]
fn rank128(keys: &[u128; RANGE_MAX_CHILDREN], v: u128) -> usize {
    let mut base = 0usize;
    let mut half = RANGE_MAX_CHILDREN / 2;
    while half > 0 {
        base = std::hint::select_unpredictable(keys[base + half - 1] <= v, base + half, base);
        half /= 2;
    }
    base
}

/// [`search`] for 32-bit keys: counts whole blocks (vectorizes well).
#[inline]
fn search32(b: &[Bounds32], m: usize, v: u32) -> usize {
    #[inline(always)]
    fn count(blk: Option<&Bounds32>, v: u32) -> usize {
        let blk: &[u32; BLOCK32] = match blk {
            Some(x) => &x.0,
            None => return 0,
        };
        // Counted in vector lanes: with x86-64-v3 (`.cargo/config.toml`) a
        // few vector compares, a mask and a popcount, fewer instructions
        // than a binary search's four dependent steps (3% faster at 50k).
        let mut n = 0u32;
        for &b in blk {
            n += u32::from(b <= v);
        }
        n as usize
    }
    let pos = if m <= BLOCK32 {
        count(b.first(), v)
    } else {
        let j = count(b.first(), v).min(m.div_ceil(BLOCK32) - 1);
        j * BLOCK32 + count(b.get(j + 1), v)
    };
    pos.min(m)
}

/// One block of 32-bit boundaries, on its own cache line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
struct Bounds32([u32; BLOCK32]);

/// [`layout`] for 32-bit keys, one block per cache line.
fn layout32(keys: &[u32], out: &mut Vec<Bounds32>) {
    let mut laid = Vec::new();
    layout(keys, BLOCK32, u32::MAX, &mut laid);
    out.extend(laid.chunks_exact(BLOCK32).map(|b| {
        let mut blk = Bounds32([u32::MAX; BLOCK32]);
        blk.0.copy_from_slice(b);
        blk
    }));
}

/// How a tree build splits its entries: address families (see
/// [`TreeIndex::family`]) with their box layouts, and rank chunks.
struct ChunkPlan {
    /// Dimensions (of the compiled group) splitting IPv4 from IPv6.
    split: [Option<usize>; 2],
    layouts: [Boxes; FAMILIES],
    /// Per rank chunk (best first), per family: its entries.
    chunks: Vec<[Vec<u32>; FAMILIES]>,
}

impl ChunkPlan {
    fn new(c: &Compiled, ids: &[u32], cfg: TreeConfig) -> ChunkPlan {
        // A group mixing IPv4 and IPv6 entries on an address: one tree per
        // family (entries not bound to a family in both), so that every cut
        // below works on 32-bit IPv4 values or on IPv6 values alone.
        // Address dimensions with both IPv4 and IPv6 entries.
        let mixed = |d: usize, ids: &[u32]| {
            c.dims[d].is_ip() && {
                let (mut v4, mut v6) = (0usize, 0usize);
                for &e in ids {
                    let (lo, hi) = (c.lo(e as usize, d), c.hi(e as usize, d));
                    v4 += usize::from(lo >= V4_LO && hi <= V4_HI);
                    v6 += usize::from(hi < V4_LO || lo > V4_HI);
                }
                v4.min(v6) * 32 >= ids.len()
            }
        };
        let first = (0..c.dims()).find(|&d| mixed(d, ids));
        // A second address dimension only if it is still mixed within the
        // first split's IPv4 side (otherwise its few odd entries are stored
        // as wildcards in that family's boxes).
        let second = first.and_then(|d0| {
            let v4side: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|&e| c.lo(e as usize, d0) <= V4_HI && c.hi(e as usize, d0) >= V4_LO)
                .collect();
            (d0 + 1..c.dims()).find(|&d| mixed(d, &v4side))
        });
        let split = [first, second];
        // Family membership of each entry (bit k of the family: IPv6 on
        // split dimension k), and each family's box layout.
        let side = |e: u32, d: Option<usize>, v6: bool| match d {
            None => !v6,
            Some(d) => {
                let (lo, hi) = (c.lo(e as usize, d), c.hi(e as usize, d));
                if v6 {
                    lo < V4_LO || hi > V4_HI
                } else {
                    lo <= V4_HI && hi >= V4_LO
                }
            }
        };
        let in_fam =
            |e: u32, f: usize| side(e, split[0], f & 1 != 0) && side(e, split[1], f & 2 != 0);
        let used: Vec<usize> = (0..FAMILIES)
            .filter(|&f| (f & 1 == 0 || split[0].is_some()) && (f & 2 == 0 || split[1].is_some()))
            .collect();
        let mut layouts: [Boxes; FAMILIES] = Default::default();
        for &f in &used {
            let members: Vec<u32> = ids.iter().copied().filter(|&e| in_fam(e, f)).collect();
            layouts[f] = Boxes::new(c, &members);
        }
        // Rank chunks of doubling size: a packet's best match is usually
        // among the better ranks of the many rules covering it, and once a
        // chunk yields a match, every later chunk is skipped.
        let mut chunks: Vec<[Vec<u32>; FAMILIES]> = Vec::new();
        let mut start = 0;
        let mut size = if cfg.chunk == 0 {
            usize::MAX
        } else {
            cfg.chunk
        };
        while start < ids.len() {
            let mut end = start.saturating_add(size).min(ids.len());
            // The last chunk takes a small remainder.
            if ids.len() - end < size / 2 {
                end = ids.len();
            }
            let chunk = &ids[start..end];
            let mut members: [Vec<u32>; FAMILIES] = Default::default();
            for &f in &used {
                members[f] = chunk.iter().copied().filter(|&e| in_fam(e, f)).collect();
            }
            chunks.push(members);
            start = end;
            size = size.saturating_mul(2);
        }
        ChunkPlan {
            split,
            layouts,
            chunks,
        }
    }
}

/// Rank chunks with at least this many entries in all are built on
/// several threads (below, a thread costs more than it saves).
pub const PARALLEL_BUILD_MIN: usize = 16_384;
/// Most threads one tree build uses (chunks double in size, so the largest
/// is about half the work whatever the count).
const MAX_BUILD_THREADS: usize = 4;

/// What every rank chunk's build shares.
struct ChunkJob<'a> {
    c: &'a Compiled,
    cfg: TreeConfig,
    /// Each family's box layout (chosen over all its entries).
    layouts: &'a [Boxes; FAMILIES],
    /// Shared 32-bit bases one chunk may add.
    bases_cap: usize,
}

/// One rank chunk's trees, in arrays of their own until
/// [`TreeIndex::absorb`] appends them.
struct ChunkPart {
    t: TreeIndex,
    roots: [Ref; FAMILIES],
    nodes: usize,
}

/// How far each array of a [`ChunkPart`] moves when it is appended, and
/// where its shared bases went.
struct Offsets {
    children: u32,
    items: u32,
    blocks: u32,
    bounds: u32,
    bounds64: u32,
    bounds32: u32,
    tables: u32,
    boxes: [u32; FAMILIES],
    bases: Vec<u32>,
}

impl ChunkJob<'_> {
    /// Build one chunk: per family, the tree over its members.
    fn build(&self, members: &[Vec<u32>; FAMILIES]) -> ChunkPart {
        let c = self.c;
        let n = members.iter().map(Vec::len).max().unwrap_or(0);
        let mut b = Builder {
            c,
            cfg: self.cfg,
            t: TreeIndex {
                // At most a box per member.
                boxes: std::array::from_fn(|f| self.layouts[f].with_room_like(members[f].len())),
                children: Vec::with_capacity(4 * n + 16),
                items: Vec::with_capacity(3 * n + 16),
                ..TreeIndex::empty()
            },
            budget: self
                .cfg
                .budget_factor
                .saturating_mul(n)
                .saturating_add(4096),
            bases_cap: self.bases_cap,
            nodes: 0,
            scratch: Scratch::default(),
            fam: 0,
            leaf_size: self.cfg.leaf_size,
            slots: Default::default(),
        };
        let mut roots = [NIL_REF; FAMILIES];
        for (f, ids) in members.iter().enumerate() {
            if ids.is_empty() {
                continue;
            }
            b.slots[f] = vec![NIL; c.len()];
            b.fam = f;
            b.leaf_size = self.cfg.leaf_size_for(self.layouts[f].lines());
            roots[f] = b.build(ids, 0);
            b.slots[f] = Vec::new();
        }
        ChunkPart {
            t: b.t,
            roots,
            nodes: b.nodes,
        }
    }

    /// Build every chunk, in order; large groups spread the chunks over
    /// threads (largest first, each to the least loaded), the caller's
    /// thread taking a share.
    fn run_all(&self, chunks: &[[Vec<u32>; FAMILIES]]) -> Vec<ChunkPart> {
        let sizes: Vec<usize> = chunks
            .iter()
            .map(|m| m.iter().map(Vec::len).sum())
            .collect();
        let workers = if chunks.len() > 1 && sizes.iter().sum::<usize>() >= PARALLEL_BUILD_MIN {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(chunks.len())
                .min(MAX_BUILD_THREADS)
        } else {
            1
        };
        if workers <= 1 {
            return chunks.iter().map(|m| self.build(m)).collect();
        }
        let mut order: Vec<usize> = (0..chunks.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
        let mut load = vec![0usize; workers];
        let mut plan: Vec<Vec<usize>> = vec![Vec::new(); workers];
        for i in order {
            let w = (0..workers).min_by_key(|&w| load[w]).unwrap_or(0);
            load[w] += sizes[i];
            plan[w].push(i);
        }
        let mut parts: Vec<Option<ChunkPart>> = chunks.iter().map(|_| None).collect();
        std::thread::scope(|s| {
            let spawned: Vec<_> = plan[1..]
                .iter()
                .map(|list| {
                    let h = std::thread::Builder::new()
                        .name("strata-tree".into())
                        .spawn_scoped(s, move || {
                            list.iter()
                                .map(|&i| (i, self.build(&chunks[i])))
                                .collect::<Vec<_>>()
                        });
                    (list, h)
                })
                .collect();
            for &i in &plan[0] {
                parts[i] = Some(self.build(&chunks[i]));
            }
            for (list, h) in spawned {
                match h {
                    Ok(h) => match h.join() {
                        Ok(done) => {
                            for (i, p) in done {
                                parts[i] = Some(p);
                            }
                        }
                        Err(panic) => std::panic::resume_unwind(panic),
                    },
                    // No thread to be had: build its share here.
                    Err(_) => {
                        for &i in list {
                            parts[i] = Some(self.build(&chunks[i]));
                        }
                    }
                }
            }
        });
        parts.into_iter().flatten().collect()
    }
}

struct Builder<'a> {
    c: &'a Compiled,
    cfg: TreeConfig,
    t: TreeIndex,
    budget: usize,
    /// Shared 32-bit bases this builder may add.
    bases_cap: usize,
    nodes: usize,
    scratch: Scratch,
    /// Family whose trees are being built, and the largest leaf there.
    fam: usize,
    leaf_size: usize,
    /// Per family: entry -> box, or NIL.
    slots: [Vec<u32>; FAMILIES],
}

/// Buffers reused by every [`Builder::choose`].
#[derive(Default)]
struct Scratch {
    sample: Vec<usize>,
    counts: Vec<i64>,
    ranges: Vec<(u128, u128)>,
    /// Per entry at the finest slice: (c_lo, c_hi, wraps), or full.
    spans: Vec<(u32, u32, bool)>,
    ends: Vec<u128>,
    vals: Vec<u128>,
    lows: Vec<u32>,
}

/// Sort `v` (and drop repeats if `dedup`). Values sharing their high 96
/// bits (IPv4 addresses, ports, protocols: nearly every cut's) are sorted
/// as 32-bit numbers in `lows`, cheaper than as 128-bit ones (one compare
/// instead of two, a quarter of the bytes moved); the order is the same.
fn sort_values(v: &mut Vec<u128>, lows: &mut Vec<u32>, dedup: bool) {
    let Some(&first) = v.first() else {
        return;
    };
    let high = first >> 32;
    if v.iter().all(|&x| x >> 32 == high) {
        lows.clear();
        lows.extend(v.iter().map(|&x| x as u32));
        lows.sort_unstable();
        if dedup {
            lows.dedup();
        }
        v.clear();
        v.extend(lows.iter().map(|&x| (high << 32) | u128::from(x)));
    } else {
        v.sort_unstable();
        if dedup {
            v.dedup();
        }
    }
}

impl TreeIndex {
    /// Build over the given entries of `c`.
    pub fn new(c: &Compiled, entries: &[u32], cfg: TreeConfig) -> TreeIndex {
        let mut ids: Vec<u32> = entries
            .iter()
            .copied()
            .filter(|&e| (e as usize) < c.len().min(MAX_ENTRIES))
            .collect();
        ids.sort_unstable_by_key(|&e| (c.rank[e as usize], e));
        ids.dedup();
        let cfg = cfg.for_entries(ids.len());
        let plan = ChunkPlan::new(c, &ids, cfg);
        let job = ChunkJob {
            c,
            cfg,
            layouts: &plan.layouts,
            // Each chunk may add this many shared 32-bit bases, so the
            // merged tree never holds more than a node's byte can index.
            bases_cap: 256 / plan.chunks.len().max(1),
        };
        let parts = job.run_all(&plan.chunks);
        let mut t = TreeIndex {
            roots: Vec::with_capacity(parts.len()),
            boxes: plan.layouts,
            ..TreeIndex::empty()
        };
        // Every array at its final size at once (appending the parts would
        // grow it by copies, and trimming it copy it once more), the big
        // ones in huge pages: megabytes written once, in a fraction of the
        // page faults.
        let total = |len: fn(&TreeIndex) -> usize| parts.iter().map(|p| len(&p.t)).sum::<usize>();
        t.children.reserve_exact(total(|t| t.children.len()));
        t.items.reserve_exact(total(|t| t.items.len()));
        t.blocks.reserve_exact(total(|t| t.blocks.len()));
        t.bounds.reserve_exact(total(|t| t.bounds.len()));
        t.bounds64.reserve_exact(total(|t| t.bounds64.len()));
        t.bounds32.reserve_exact(total(|t| t.bounds32.len()));
        t.tables.reserve_exact(total(|t| t.tables.len()));
        crate::hint::huge_pages(&t.children);
        crate::hint::huge_pages(&t.items);
        for (f, bx) in t.boxes.iter_mut().enumerate() {
            bx.reserve_exact(parts.iter().map(|p| &p.t.boxes[f]));
        }
        for part in parts {
            t.absorb(part);
        }
        // Lookups read the packet by field index.
        t.split = plan.split.map(|d| d.map(|d| c.field_of(d)));
        t.children.shrink_to_fit();
        t.items.shrink_to_fit();
        t.blocks.shrink_to_fit();
        for bx in &mut t.boxes {
            bx.shrink();
        }
        t.bounds.shrink_to_fit();
        t.bounds64.shrink_to_fit();
        t.bounds32.shrink_to_fit();
        t.bases32.shrink_to_fit();
        t
    }

    fn empty() -> TreeIndex {
        TreeIndex {
            roots: Vec::new(),
            boxes: Default::default(),
            blocks: Vec::new(),
            split: [None; 2],
            children: Vec::new(),
            items: Vec::new(),
            bounds: Vec::new(),
            bounds64: Vec::new(),
            bounds32: Vec::new(),
            bases32: Vec::new(),
            tables: Vec::new(),
            stats: TreeStats::default(),
        }
    }

    /// Append a separately built rank chunk: its arrays go after this
    /// index's, so every reference in it moves by the lengths they had.
    fn absorb(&mut self, mut part: ChunkPart) {
        let mut bases = Vec::with_capacity(part.t.bases32.len());
        for &b in &part.t.bases32 {
            let i = match self.bases32.iter().position(|&x| x == b) {
                Some(i) => i,
                None => {
                    self.bases32.push(b);
                    self.bases32.len() - 1
                }
            };
            bases.push(i as u32);
        }
        let mut boxes = [0u32; FAMILIES];
        for (f, at) in boxes.iter_mut().enumerate() {
            *at = self.boxes[f].append(&mut part.t.boxes[f]);
        }
        let o = Offsets {
            children: self.children.len() as u32,
            items: self.items.len() as u32,
            blocks: self.blocks.len() as u32,
            bounds: self.bounds.len() as u32,
            bounds64: self.bounds64.len() as u32,
            bounds32: self.bounds32.len() as u32,
            tables: self.tables.len() as u32,
            boxes,
            bases,
        };
        let mut roots = part.roots;
        for (f, r) in roots.iter_mut().enumerate() {
            *r = part.t.relocate(*r, f, &o);
        }
        self.roots.push(roots);
        self.children.append(&mut part.t.children);
        self.items.append(&mut part.t.items);
        self.blocks.append(&mut part.t.blocks);
        self.bounds.append(&mut part.t.bounds);
        self.bounds64.append(&mut part.t.bounds64);
        self.bounds32.append(&mut part.t.bounds32);
        self.tables.append(&mut part.t.tables);
        let (s, p) = (&mut self.stats, part.t.stats);
        s.nodes += part.nodes;
        s.leaves += p.leaves;
        s.leaf_items += p.leaf_items;
        s.max_depth = s.max_depth.max(p.max_depth);
        s.bit_cuts += p.bit_cuts;
        s.range_cuts += p.range_cuts;
        s.hash_cuts += p.hash_cuts;
    }

    /// `r` (a subtree of this index, of family `f`) with every reference
    /// below it moved by `o`; returns `r` moved.
    fn relocate(&mut self, r: Ref, f: usize, o: &Offsets) -> Ref {
        let mut r = r;
        let a = r.a as usize;
        let kind = r.kind();
        match kind {
            K_NIL => return r,
            K_ONE => r.x += o.boxes[f],
            K_LEAF => {
                r.x += o.boxes[f];
                for item in &mut self.items[a..] {
                    if item.0 == NONE {
                        break;
                    }
                    item.1 += o.boxes[f];
                }
                r.a += o.items;
            }
            K_BLOCK => r.a += o.blocks,
            _ => {
                let kids = match kind {
                    K_BIT => 1 + (1usize << r.bits()),
                    K_RANGE | K_RANGE64 | K_RANGE32 => 2 + r.bits() as usize,
                    _ => 1,
                };
                for i in a..a + kids {
                    let k = self.children[i];
                    self.children[i] = self.relocate(k, f, o);
                }
                match kind {
                    K_RANGE32 => {
                        r.x += o.bounds32;
                        let base = o.bases[r.shift() as usize];
                        r.meta = (r.meta & !(0xff << 16)) | (base << 16);
                    }
                    K_RANGE64 => r.x += o.bounds64,
                    K_RANGE => r.x += o.bounds,
                    K_HASH => {
                        let ti = r.x as usize;
                        let mut table = std::mem::take(&mut self.tables[ti]);
                        for v in table.values_mut() {
                            *v = self.relocate(*v, f, o);
                        }
                        self.tables[ti] = table;
                        r.x += o.tables;
                    }
                    _ => {}
                }
                r.a += o.children;
            }
        }
        r
    }

    pub fn stats(&self) -> TreeStats {
        self.stats
    }

    /// Which root of a chunk serves this packet: bit `k` set when the
    /// packet's address on split dimension `k` is present and not IPv4
    /// (an absent address only matches entries without a condition on it,
    /// which are in every family).
    #[inline]
    fn family(&self, key: &Key) -> usize {
        let mut f = 0;
        for (k, d) in self.split.iter().enumerate() {
            if let Some(d) = *d
                && key.present & (1 << d) != 0
                && !(V4_LO..=V4_HI).contains(&key.v[d])
            {
                f |= 1 << k;
            }
        }
        f
    }

    /// Lower `best` to the rank of the best matching entry (every rank
    /// chunk's tree, best first). Always inlined into its callers: as a
    /// call it cost 18-19 instructions a lookup, about 185 a 10 × 10 × 5k
    /// first packet (BENCHMARKS.md, twenty-sixth session).
    #[inline(always)]
    fn search<P: Probe>(
        &self,
        c: &Compiled,
        key: &Key,
        fv: &FieldValues,
        best: &mut u32,
        p: &mut P,
    ) {
        let f = self.family(key);
        let bk = self.boxes[f].key(key);
        let q = Query {
            key,
            fv,
            boxes: &self.boxes[f],
            bk: &bk,
        };
        // One stack for every chunk's walk (initialising it is not free:
        // short, a deeper walk continues on a fresh one, see `visit`).
        let mut stack = [NIL_REF; WALK_STACK];
        for roots in &self.roots {
            // Chunks are in rank order: once one has matched, or cannot
            // beat the best, neither can the rest.
            let r = &roots[f];
            if r.min >= *best && r.kind() != K_NIL {
                break;
            }
            p.tree();
            self.walk(c, *r, &q, best, p, &mut stack);
        }
    }

    /// Lower `best` to the rank of the best matching entry, if better.
    #[inline]
    pub fn lookup(&self, c: &Compiled, key: &Key, fv: &FieldValues, best: &mut u32) {
        self.search(c, key, fv, best, &mut ());
    }

    /// [`TreeIndex::lookup`], also counting the nodes visited and the
    /// entries checked (for traces and tuning).
    pub fn lookup_traced(
        &self,
        c: &Compiled,
        key: &Key,
        fv: &FieldValues,
        best: &mut u32,
        trace: &mut LookupTrace,
    ) {
        self.search(c, key, fv, best, trace);
    }

    /// Depth-first search of one tree, iterative: the subtree not taken
    /// first waits on a fixed stack (one per level: depth is bounded).
    #[inline]
    fn walk<P: Probe>(
        &self,
        c: &Compiled,
        root: Ref,
        q: &Query,
        best: &mut u32,
        p: &mut P,
        stack: &mut [Ref],
    ) {
        let mut sp = 0;
        let mut r = root;
        loop {
            if r.min < *best
                && let Some(next) = self.visit(c, r, q, best, p, stack, &mut sp)
            {
                r = next;
                continue;
            }
            if sp == 0 {
                return;
            }
            sp -= 1;
            r = stack[sp];
        }
    }

    /// One step of a walk at `r` (which can beat `best`): an internal node
    /// pushes its second subtree (when it can still win) and returns the
    /// first; a leaf lowers `best` to its best match and returns `None`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn visit<P: Probe>(
        &self,
        c: &Compiled,
        r: Ref,
        q: &Query,
        best: &mut u32,
        p: &mut P,
        stack: &mut [Ref],
        sp: &mut usize,
    ) -> Option<Ref> {
        // Plain comparisons rather than a jump table: internal nodes are the
        // common case, and a two-way branch predicts better than an
        // indirect jump.
        let kind = r.kind();
        if kind >= K_BIT {
            p.node();
            let (first, second) = self.step(&r, q.key);
            if second.min < *best {
                if *sp < stack.len() {
                    // Its first lines arrive while `first` is walked.
                    self.prime::<false>(&second, q.key, q.boxes);
                    stack[*sp] = second;
                    *sp += 1;
                } else {
                    // A cursor's short stack is full (a walk's never is:
                    // depth is bounded); stay exact.
                    let mut more = [NIL_REF; STACK];
                    self.walk(c, second, q, best, p, &mut more);
                }
            }
            return Some(first);
        } else if kind == K_LEAF {
            p.leaf();
            p.check();
            // The best entry's box is named by the reference: its line is
            // read alongside the other items' line, not after it.
            if q.boxes.matches(c, r.x as usize, r.min, q.bk, q.key, q.fv) {
                *best = r.min;
                return None;
            }
            let items = self.items.get(r.a as usize..).unwrap_or_default();
            // Ranks ascend: stop at the first match or at a rank that
            // cannot win (the sentinel at the latest). (Checking every
            // entry branch-free was tried: more work and no fewer
            // mispredictions with leaves this small.)
            if let Some(rk) = q
                .boxes
                .first_match(c, items, q.bk, q.key, q.fv, *best, || p.check())
            {
                *best = rk;
            }
        } else if kind == K_ONE {
            // A leaf's first check, alone (kept apart from the leaf's arm:
            // merged, the walk took 8-12 more instructions per lookup).
            p.leaf();
            p.check();
            if q.boxes.matches(c, r.x as usize, r.min, q.bk, q.key, q.fv) {
                *best = r.min;
            }
        } else if kind == K_BLOCK {
            p.check();
            let a = r.a as usize;
            let blocks = &self.blocks[a..a + r.x as usize];
            if let Some(rk) = q.boxes.match_blocks(c, blocks, q.bk, q.key, q.fv, *best) {
                *best = rk;
            }
        }
        None
    }

    /// The child a packet goes to and the wide subtree, better rank first.
    #[inline(always)]
    fn step(&self, r: &Ref, key: &Key) -> (Ref, Ref) {
        let dim = r.dim();
        let a = r.a as usize;
        let child = if key.present & (1 << dim) == 0 {
            &NIL_REF
        } else {
            let v = key.v[dim];
            match r.kind() {
                K_BIT => {
                    let mask = (1u128 << r.bits()) - 1;
                    &self.children[a + 1 + ((v >> r.shift()) & mask) as usize]
                }
                K_RANGE32 => {
                    let x = r.x as usize;
                    let b = self.bounds32.get(x..).unwrap_or_default();
                    let base = self.bases32.get(r.shift() as usize).copied().unwrap_or(0);
                    let hi = v >> 32;
                    let m = r.bits() as usize;
                    let i = if hi < base {
                        0
                    } else if hi > base {
                        m
                    } else {
                        search32(b, m, v as u32)
                    };
                    &self.children[a + 1 + i]
                }
                K_RANGE64 => {
                    let x = r.x as usize;
                    let base = self.bounds64[x];
                    let hi = (v >> 64) as u64;
                    let m = r.bits() as usize;
                    let i = if hi < base {
                        0
                    } else if hi > base {
                        m
                    } else {
                        search::<u64, BLOCK64>(&self.bounds64[x + 1..], m, v as u64)
                    };
                    &self.children[a + 1 + i]
                }
                K_RANGE => {
                    // At most 63 sorted boundaries (padded to 64): a
                    // branch-free binary search, 6 steps, beats counting
                    // 128-bit keys.
                    let x = r.x as usize;
                    let keys = self.bounds[x..]
                        .first_chunk()
                        .unwrap_or(&[0; RANGE_MAX_CHILDREN]);
                    let i = rank128(keys, v).min(r.bits() as usize);
                    &self.children[a + 1 + i]
                }
                _ => self.tables[r.x as usize].get(&v).unwrap_or(&NIL_REF),
            }
        };
        let wide = &self.children[a];
        if wide.min < child.min {
            (*wide, *child)
        } else {
            (*child, *wide)
        }
    }

    /// A leaf's entries after its best one (off the lookup path: the walk
    /// stops at the sentinel instead of counting).
    fn leaf_rest(&self, r: &Ref) -> &[(u32, u32)] {
        let items = self.items.get(r.a as usize..).unwrap_or_default();
        let n = items
            .iter()
            .position(|i| i.0 == NONE)
            .unwrap_or(items.len());
        &items[..n]
    }

    /// Ask for the lines a visit of `r` will read first, so that they
    /// arrive while other work is done (a hint, see
    /// [`crate::hint::prefetch`]): an internal node's wide subtree and,
    /// when `DEEP`, as far as the key tells without reading the node, its
    /// child or boundaries; a leaf's best box and its other items; a single
    /// entry's box. (A walk's pushed subtrees take the shallow form: at 10k
    /// and 50k rules the deep one's extra instructions cost more than its
    /// lines save, 2-4%; a cursor visits its next node only after the
    /// other cursors' turns, and takes the deep form.)
    #[inline(always)]
    fn prime<const DEEP: bool>(&self, r: &Ref, key: &Key, boxes: &Boxes) {
        use crate::hint::prefetch;
        let a = r.a as usize;
        let x = r.x as usize;
        let kind = r.kind();
        if kind >= K_BIT {
            if let Some(w) = self.children.get(a) {
                prefetch(w);
            }
            if !DEEP {
                return;
            }
            match kind {
                K_BIT => {
                    let mask = (1u128 << r.bits()) - 1;
                    let i = a + 1 + ((key.v[r.dim()] >> r.shift()) & mask) as usize;
                    if let Some(c) = self.children.get(i) {
                        prefetch(c);
                    }
                }
                K_RANGE32 => {
                    // A summary line and a block line at most.
                    for b in self.bounds32.iter().skip(x).take(2) {
                        prefetch(b);
                    }
                }
                K_RANGE64 => {
                    if let Some(b) = self.bounds64.get(x + 1) {
                        prefetch(b);
                    }
                }
                K_RANGE => {
                    if let Some(b) = self.bounds.get(x) {
                        prefetch(b);
                    }
                }
                // Hash cuts: the bucket depends on the value's hash.
                _ => {}
            }
        } else if kind == K_LEAF {
            boxes.prefetch(x);
            if let Some(i) = self.items.get(a) {
                prefetch(i);
            }
        } else if kind == K_ONE {
            boxes.prefetch(x);
        }
    }

    /// A textual outline of the top `levels` levels (debugging aid).
    #[doc(hidden)]
    pub fn outline(&self, levels: usize) -> String {
        let mut out = format!(
            "boxes {:?}, split {:?}\n",
            self.boxes.iter().map(Boxes::layout).collect::<Vec<_>>(),
            self.split
        );
        for (i, r) in self.roots.iter().enumerate() {
            for (f, root) in r.iter().enumerate() {
                self.outline_ref(root, 0, levels, &format!("chunk {i} family {f}"), &mut out);
            }
        }
        out
    }

    fn outline_ref(&self, r: &Ref, depth: usize, levels: usize, label: &str, out: &mut String) {
        use std::fmt::Write;
        let pad = "  ".repeat(depth);
        match r.kind() {
            K_NIL => {}
            K_ONE => {
                let _ = writeln!(out, "{pad}{label}: one min={}", r.min);
            }
            K_LEAF => {
                let n = 1 + self.leaf_rest(r).len();
                let _ = writeln!(out, "{pad}{label}: leaf {n} min={}", r.min);
            }
            K_BLOCK => {
                let _ = writeln!(out, "{pad}{label}: blocks {} min={}", r.x, r.min);
            }
            k => {
                let a = r.a as usize;
                let kids: Vec<Ref> = match k {
                    K_BIT => self.children[a + 1..a + 1 + (1 << r.bits())].to_vec(),
                    K_RANGE | K_RANGE64 | K_RANGE32 => {
                        self.children[a + 1..a + 2 + r.bits() as usize].to_vec()
                    }
                    _ => self.tables[r.x as usize].values().copied().collect(),
                };
                let nonempty = kids.iter().filter(|k| k.kind() != K_NIL).count();
                let _ = writeln!(
                    out,
                    "{pad}{label}: {} dim={} shift={} bits={} kids={}/{} min={}",
                    ["", "", "", "", "bit", "hash", "range", "range64", "range32"][k as usize],
                    r.dim(),
                    r.shift(),
                    r.bits(),
                    nonempty,
                    kids.len(),
                    r.min
                );
                if depth < levels {
                    let mut shown = 0;
                    for (i, kid) in kids.iter().enumerate() {
                        if kid.kind() != K_NIL && shown < 3 {
                            shown += 1;
                            self.outline_ref(kid, depth + 1, levels, &format!("[{i}]"), out);
                        }
                    }
                    self.outline_ref(&self.children[a], depth + 1, levels, "wide", out);
                }
            }
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.children.capacity() * std::mem::size_of::<Ref>()
            + self.roots.capacity() * std::mem::size_of::<[Ref; FAMILIES]>()
            + self.boxes.iter().map(Boxes::memory_bytes).sum::<usize>()
            + self.blocks.capacity() * std::mem::size_of::<Block>()
            + self.items.capacity() * 8
            + self.bounds.capacity() * 16
            + self.bounds64.capacity() * 8
            + self.bounds32.capacity() * 64
            + self.bases32.capacity() * 16
            + self
                .tables
                .iter()
                .map(|t| t.capacity() * (16 + 16 + 1) + 64)
                .sum::<usize>()
    }
}

impl Builder<'_> {
    fn build(&mut self, ids: &[u32], depth: usize) -> Ref {
        if ids.is_empty() {
            return NIL_REF;
        }
        self.t.stats.max_depth = self.t.stats.max_depth.max(depth);
        if ids.len() <= self.leaf_size
            || depth >= self.cfg.max_depth
            || self.t.items.len() + ids.len() > self.budget
        {
            return self.leaf(ids);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let cut = self.choose(ids, &mut scratch);
        self.scratch = scratch;
        let Some(cut) = cut else {
            return self.leaf(ids);
        };
        let n = ids.len();
        let dim = cut.dim;
        let c = self.c;
        let min = c.rank[ids[0] as usize];
        let mut wide: Vec<u32> = Vec::new();
        // (flat child lists, offsets) or hash groups.
        let mut flat: Vec<u32> = Vec::new();
        let mut offs: Vec<usize> = Vec::new();
        let mut hash_vals: Vec<u128> = Vec::new();
        match &cut.kind {
            CutKind::Bit { shift, bits } => {
                let nch = 1usize << bits;
                let (sh, bt) = (u32::from(*shift), u32::from(*bits));
                let mut spans: Vec<(u32, u32)> = Vec::with_capacity(n);
                for &e in ids {
                    let (lo, hi) = (c.lo(e as usize, dim), c.hi(e as usize, dim));
                    match bit_span(lo, hi, sh, bt) {
                        Some((clo, chi, span)) if self.narrow(span as usize, nch) => {
                            spans.push((clo, chi));
                        }
                        _ => {
                            wide.push(e);
                            spans.push((NIL, NIL));
                        }
                    }
                }
                (flat, offs) = scatter(ids, &spans, nch);
            }
            CutKind::Range(bounds) => {
                let nch = bounds.len() + 1;
                let mut spans: Vec<(u32, u32)> = Vec::with_capacity(n);
                let spanner = Spanner::new(bounds);
                for &e in ids {
                    let (lo, hi) = (c.lo(e as usize, dim), c.hi(e as usize, dim));
                    let (clo, chi) = spanner.span(lo, hi);
                    let span = (chi - clo + 1) as usize;
                    if span < nch && self.narrow(span, nch) {
                        spans.push((clo, chi));
                    } else {
                        wide.push(e);
                        spans.push((NIL, NIL));
                    }
                }
                (flat, offs) = scatter(ids, &spans, nch);
            }
            CutKind::Hash => {
                let mut exact: Vec<(u128, u32)> = Vec::new();
                for &e in ids {
                    let (lo, hi) = (c.lo(e as usize, dim), c.hi(e as usize, dim));
                    if lo == hi {
                        exact.push((lo, e));
                    } else {
                        wide.push(e);
                    }
                }
                // Stable: keeps rank order within a value.
                exact.sort_by_key(|x| x.0);
                for (k, &(v, e)) in exact.iter().enumerate() {
                    if k == 0 || exact[k - 1].0 != v {
                        offs.push(k);
                        hash_vals.push(v);
                    }
                    flat.push(e);
                }
                offs.push(exact.len());
            }
        }
        let largest = offs.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        if wide.len() == n || largest == n {
            return self.leaf(ids);
        }
        self.nodes += 1;
        let parts = offs.len() - 1;
        let r = match cut.kind {
            CutKind::Bit { shift, bits } => {
                let start = self.t.children.len();
                self.t.children.resize(start + 1 + parts, NIL_REF);
                for i in 0..parts {
                    let r = self.build(&flat[offs[i]..offs[i + 1]], depth + 1);
                    self.t.children[start + 1 + i] = r;
                }
                self.t.stats.bit_cuts += 1;
                Ref::node(
                    K_BIT,
                    c.field_of(dim),
                    u32::from(shift),
                    u32::from(bits),
                    start as u32,
                    0,
                    min,
                )
            }
            CutKind::Range(bounds) => {
                let start = self.t.children.len();
                self.t.children.resize(start + 1 + parts, NIL_REF);
                let base = bounds[0] >> 64;
                let base96 = bounds[0] >> 32;
                // The shared base's index (at most 256 per tree; beyond,
                // the 64-bit layout serves: the boundaries share their high
                // 64 bits too).
                let base32 = if bounds.iter().all(|&b| b >> 32 == base96) {
                    match self.t.bases32.iter().position(|&b| b == base96) {
                        Some(i) => Some(i),
                        None if self.t.bases32.len() < self.bases_cap => {
                            self.t.bases32.push(base96);
                            Some(self.t.bases32.len() - 1)
                        }
                        None => None,
                    }
                } else {
                    None
                };
                let r = if let Some(bi) = base32 {
                    let x = self.t.bounds32.len();
                    let lows: Vec<u32> = bounds.iter().map(|&b| b as u32).collect();
                    layout32(&lows, &mut self.t.bounds32);
                    Ref::node(
                        K_RANGE32,
                        c.field_of(dim),
                        bi as u32,
                        bounds.len() as u32,
                        start as u32,
                        x as u32,
                        min,
                    )
                } else if bounds.iter().all(|&b| b >> 64 == base) {
                    let x = self.t.bounds64.len();
                    self.t.bounds64.push(base as u64);
                    let lows: Vec<u64> = bounds.iter().map(|&b| b as u64).collect();
                    layout(&lows, BLOCK64, u64::MAX, &mut self.t.bounds64);
                    Ref::node(
                        K_RANGE64,
                        c.field_of(dim),
                        0,
                        bounds.len() as u32,
                        start as u32,
                        x as u32,
                        min,
                    )
                } else {
                    let x = self.t.bounds.len();
                    self.t.bounds.extend_from_slice(&bounds);
                    // Padded for `rank128`'s fixed-length search.
                    self.t.bounds.resize(x + RANGE_MAX_CHILDREN, u128::MAX);
                    Ref::node(
                        K_RANGE,
                        c.field_of(dim),
                        0,
                        bounds.len() as u32,
                        start as u32,
                        x as u32,
                        min,
                    )
                };
                for i in 0..parts {
                    let r = self.build(&flat[offs[i]..offs[i + 1]], depth + 1);
                    self.t.children[start + 1 + i] = r;
                }
                self.t.stats.range_cuts += 1;
                r
            }
            CutKind::Hash => {
                let start = self.t.children.len();
                self.t.children.push(NIL_REF);
                let mut table: HashMap<u128, Ref, RandomState> =
                    HashMap::with_capacity_and_hasher(parts, RandomState::default());
                for i in 0..parts {
                    let r = self.build(&flat[offs[i]..offs[i + 1]], depth + 1);
                    table.insert(hash_vals[i], r);
                }
                let ti = self.t.tables.len();
                self.t.tables.push(table);
                self.t.stats.hash_cuts += 1;
                Ref::node(K_HASH, c.field_of(dim), 0, 0, start as u32, ti as u32, min)
            }
        };
        drop(flat);
        let w = self.build(&wide, depth + 1);
        self.t.children[r.a as usize] = w;
        r
    }

    #[inline]
    fn narrow(&self, span: usize, nch: usize) -> bool {
        span == 1 || (span <= self.cfg.max_replicate && span * 4 <= nch)
    }

    fn leaf(&mut self, ids: &[u32]) -> Ref {
        let c = self.c;
        let d = c.dims();
        let mut keep: Vec<u32> = Vec::with_capacity(ids.len());
        // Drop entries dominated by a better exact entry of the leaf.
        'outer: for &e in ids {
            if ids.len() <= 256 {
                let (eu, re) = (e as usize, c.req(e as usize));
                for &k in &keep {
                    let ku = k as usize;
                    if !c.exact(ku) || c.req(ku) & !re != 0 {
                        continue;
                    }
                    if (0..d).all(|i| c.lo(ku, i) <= c.lo(eu, i) && c.hi(eu, i) <= c.hi(ku, i)) {
                        continue 'outer;
                    }
                }
            }
            keep.push(e);
        }
        let min = c.rank[keep[0] as usize];
        self.t.stats.leaves += 1;
        self.t.stats.leaf_items += keep.len();
        let fam = self.fam;
        if self.cfg.blocks
            && keep.len() > 1
            && self.t.boxes[fam].blocks()
            && c.flat.len() < BLOCK_RULES
        {
            let items: Vec<(u32, u32)> = keep.iter().map(|&e| (c.rank[e as usize], e)).collect();
            let a = self.t.blocks.len() as u32;
            self.t.boxes[fam].make_blocks(c, &items, &mut self.t.blocks);
            return Ref {
                x: self.t.blocks.len() as u32 - a,
                min,
                a,
                meta: K_BLOCK,
            };
        }
        let (slots, boxes) = (&mut self.slots, &mut self.t.boxes);
        let mut box_of = |e: u32| {
            let s = &mut slots[fam][e as usize];
            if *s == NIL {
                *s = boxes[fam].push(c, e as usize);
            }
            *s
        };
        if keep.len() == 1 {
            return Ref {
                x: box_of(keep[0]),
                min,
                a: 0,
                meta: K_ONE,
            };
        }
        let first = box_of(keep[0]);
        let a = self.t.items.len() as u32;
        for &e in &keep[1..] {
            let bx = box_of(e);
            self.t.items.push((c.rank[e as usize], bx));
        }
        self.t.items.push((NONE, 0));
        Ref {
            x: first,
            min,
            a,
            meta: K_LEAF,
        }
    }

    /// Pick the cheapest cut, if any beats a leaf.
    fn choose(&self, ids: &[u32], scratch: &mut Scratch) -> Option<Cut> {
        let c = self.c;
        let n = ids.len();
        let step = n.div_ceil(self.cfg.sample);
        let Scratch {
            sample,
            counts,
            ranges,
            spans,
            ends,
            vals,
            lows,
        } = scratch;
        sample.clear();
        sample.extend(ids.iter().step_by(step).map(|&e| e as usize));
        let s = sample.len();
        let scale = n as f64 / s as f64;
        let mut best: Option<Cut> = None;
        let mut consider = |cut: Cut| {
            if best.as_ref().is_none_or(|b| cut.cost < b.cost) {
                best = Some(cut);
            }
        };
        for dim in 0..c.dims() {
            let max = c.maxes[dim];
            ranges.clear();
            for &e in sample.iter() {
                let (lo, hi) = (c.lo(e, dim), c.hi(e, dim));
                if !(lo == 0 && hi >= max) {
                    ranges.push((lo, hi));
                }
            }
            let Some(&(rl, rh)) = ranges.first() else {
                continue;
            };
            let diff = ranges
                .iter()
                .fold(0u128, |d, &(lo, hi)| d | (lo ^ rl) | (hi ^ rh));
            if diff == 0 {
                continue;
            }
            let full = (s - ranges.len()) as f64;
            // Bit cuts at the highest differing bit: the period (shift +
            // bits) is the same for every width, so spans are computed once
            // at the widest slice and narrowed by shifting.
            let h = 127 - diff.leading_zeros();
            // No wider than a few children per entry.
            let fit = usize::BITS - (4 * ranges.len()).leading_zeros();
            let kmax = u32::from(self.cfg.max_bits).min(h + 1).min(fit);
            let period = h + 1;
            let shift0 = period - kmax;
            let mmax = (1u128 << kmax) - 1;
            spans.clear();
            for &(lo, hi) in ranges.iter() {
                if period < 128 && (hi - lo) >> period != 0 {
                    spans.push((NIL, NIL, false));
                } else {
                    let clo = ((lo >> shift0) & mmax) as u32;
                    let chi = ((hi >> shift0) & mmax) as u32;
                    spans.push((clo, chi, period < 128 && lo >> period != hi >> period));
                }
            }
            // Every other width from the widest: the costs vary smoothly.
            for bits in (1..=kmax).rev().step_by(2) {
                let down = kmax - bits;
                let nch = 1u32 << bits;
                counts.clear();
                counts.resize(nch as usize + 1, 0);
                let mut wide = full;
                let mut total = 0usize;
                for &(clo, chi, wrap) in spans.iter() {
                    if clo == NIL {
                        wide += 1.0;
                        continue;
                    }
                    let (l, h2) = (clo >> down, chi >> down);
                    let span = if wrap { nch - l + h2 + 1 } else { h2 - l + 1 };
                    if span >= nch || !self.narrow(span as usize, nch as usize) {
                        wide += 1.0;
                        continue;
                    }
                    total += span as usize;
                    if wrap {
                        counts[l as usize] += 1;
                        counts[nch as usize] -= 1;
                        counts[0] += 1;
                        counts[h2 as usize + 1] -= 1;
                    } else {
                        counts[l as usize] += 1;
                        counts[h2 as usize + 1] -= 1;
                    }
                }
                if total > self.cfg.space_factor * s {
                    continue;
                }
                let cost = cost(
                    &counts[..nch as usize],
                    total,
                    wide,
                    scale,
                    nch as usize,
                    n,
                    0.0,
                );
                consider(Cut {
                    dim,
                    kind: CutKind::Bit {
                        shift: (period - bits) as u8,
                        bits: bits as u8,
                    },
                    cost,
                });
            }
            // Hash cut on exact values.
            let n_exact = ranges.iter().filter(|r| r.0 == r.1).count();
            if self.cfg.hash_cuts && n_exact * 2 >= s && n_exact >= 16 {
                vals.clear();
                vals.extend(ranges.iter().filter(|r| r.0 == r.1).map(|r| r.0));
                sort_values(vals, lows, false);
                let mut sumsq = 0f64;
                let mut distinct = 0usize;
                for run in vals.chunk_by(|a, b| a == b) {
                    sumsq += (run.len() as f64).powi(2);
                    distinct += 1;
                }
                if distinct > 1 && vals.len() * 32 >= s {
                    let avg = sumsq / vals.len() as f64 * scale;
                    let wide = (s - vals.len()) as f64 * scale;
                    consider(Cut {
                        dim,
                        kind: CutKind::Hash,
                        cost: avg + wide + 2.0,
                    });
                }
            }
            // Range cut on interval endpoints.
            if self.cfg.range_cuts {
                // On a smaller sample: endpoints sorting and span searches
                // dominate the build otherwise.
                let rstep = ranges.len().div_ceil(RANGE_SAMPLE);
                let rs = ranges.len().div_ceil(rstep);
                let rscale = scale * ranges.len() as f64 / rs as f64;
                ends.clear();
                for &(lo, hi) in ranges.iter().step_by(rstep) {
                    if lo > 0 {
                        ends.push(lo);
                    }
                    if hi < max {
                        ends.push(hi + 1);
                    }
                }
                sort_values(ends, lows, true);
                if ends.is_empty() {
                    continue;
                }
                // 64-bit boundaries when they share their high half.
                let narrow64 = ends[0] >> 64 == ends[ends.len() - 1] >> 64;
                let cap = if narrow64 {
                    RANGE64_MAX_CHILDREN
                } else {
                    RANGE_MAX_CHILDREN
                };
                let maxb = (1usize << self.cfg.max_bits).min(cap) - 1;
                let bounds: Vec<u128> = if ends.len() <= maxb {
                    ends.clone()
                } else {
                    let mut b: Vec<u128> = (1..=maxb)
                        .map(|i| ends[i * ends.len() / (maxb + 1)])
                        .collect();
                    b.dedup();
                    b
                };
                let nch = bounds.len() + 1;
                counts.clear();
                counts.resize(nch + 1, 0);
                let mut wide = full * (rs as f64 / ranges.len() as f64);
                let mut total = 0usize;
                let spanner = Spanner::new(&bounds);
                for &(lo, hi) in ranges.iter().step_by(rstep) {
                    let (clo, chi) = spanner.span(lo, hi);
                    let span = (chi - clo + 1) as usize;
                    if span < nch && self.narrow(span, nch) {
                        total += span;
                        counts[clo as usize] += 1;
                        counts[chi as usize + 1] -= 1;
                    } else {
                        wide += 1.0;
                    }
                }
                if total > self.cfg.space_factor * rs {
                    continue;
                }
                let cost = cost(&counts[..nch], total, wide, rscale, nch, n, RANGE_PENALTY);
                consider(Cut {
                    dim,
                    kind: CutKind::Range(bounds),
                    cost,
                });
            }
        }
        best.filter(|b| b.cost < n as f64 * 0.9)
    }
}

/// Start offsets of consecutive groups of the given sizes (plus the end).
/// Calls `f` on each child `lo..=hi` covers, wrapping past the last of
/// `nch` children (a bit cut's span of a prefix may wrap; a range cut's
/// never does).
#[inline]
fn for_span((lo, hi): (u32, u32), nch: usize, mut f: impl FnMut(usize)) {
    let mut x = lo as usize;
    loop {
        f(x);
        if x == hi as usize {
            break;
        }
        x = if x + 1 == nch { 0 } else { x + 1 };
    }
}

/// Counting sort of entries into the children their spans cover (`(NIL,
/// NIL)`: not placed): child `x` holds `flat[offs[x]..offs[x + 1]]`, in
/// input (rank) order.
fn scatter(ids: &[u32], spans: &[(u32, u32)], nch: usize) -> (Vec<u32>, Vec<usize>) {
    let mut counts = vec![0usize; nch];
    for &s in spans.iter().filter(|s| s.0 != NIL) {
        for_span(s, nch, |x| counts[x] += 1);
    }
    let offs = prefix_offsets(&counts);
    let mut pos = offs.clone();
    let mut flat = vec![0u32; offs[nch]];
    for (&e, &s) in ids.iter().zip(spans).filter(|(_, s)| s.0 != NIL) {
        for_span(s, nch, |x| {
            flat[pos[x]] = e;
            pos[x] += 1;
        });
    }
    (flat, offs)
}

fn prefix_offsets(counts: &[usize]) -> Vec<usize> {
    let mut offs = Vec::with_capacity(counts.len() + 1);
    let mut acc = 0;
    for &k in counts {
        offs.push(acc);
        acc += k;
    }
    offs.push(acc);
    offs
}

/// Estimated lookup cost of a cut: the expected size of the child of a
/// (rule-distributed) packet, plus the wide entries, plus penalties for the
/// cut's own lookup and memory.
fn cost(
    diffs: &[i64],
    total: usize,
    wide: f64,
    scale: f64,
    nch: usize,
    n: usize,
    penalty: f64,
) -> f64 {
    let mut run = 0i64;
    let mut sumsq = 0f64;
    let mut largest = 0i64;
    for &d in diffs {
        run += d;
        largest = largest.max(run);
        sumsq += (run as f64) * (run as f64);
    }
    // No progress: everything wide, or everything in one child.
    let sampled = n as f64 / scale;
    if wide >= 0.97 * sampled || largest as f64 >= 0.97 * sampled {
        return f64::INFINITY;
    }
    let avg = if total == 0 {
        0.0
    } else {
        sumsq / total as f64 * scale
    };
    let mem = 0.5 * (total as f64 * scale + nch as f64) / n as f64;
    avg + wide * scale + penalty + mem
}

/// A group classified by a cut tree.
#[derive(Debug, Clone)]
pub struct TreeClassifier {
    c: Compiled,
    idx: TreeIndex,
}

impl TreeClassifier {
    pub fn new<R: MatchSource>(
        rules: &[R],
        match_type: MatchType,
        cfg: TreeConfig,
    ) -> TreeClassifier {
        TreeClassifier::from_compiled(Compiled::new(rules, match_type), cfg)
    }

    pub fn from_compiled(mut c: Compiled, cfg: TreeConfig) -> TreeClassifier {
        c.sort_by_rank();
        let ids: Vec<u32> = (0..c.len() as u32).collect();
        let idx = TreeIndex::new(&c, &ids, cfg);
        // The tree's boxes replace the full-width records.
        c.drop_entries();
        TreeClassifier { c, idx }
    }

    pub fn stats(&self) -> TreeStats {
        self.idx.stats()
    }

    /// A textual outline of the tree's top levels (debugging aid).
    #[doc(hidden)]
    pub fn outline(&self, levels: usize) -> String {
        self.idx.outline(levels)
    }

    /// Heap bytes by part (debugging aid).
    #[doc(hidden)]
    pub fn memory_parts(&self) -> Vec<(&'static str, usize)> {
        let t = &self.idx;
        vec![
            ("compiled", self.c.memory_bytes()),
            (
                "children",
                t.children.capacity() * std::mem::size_of::<Ref>(),
            ),
            ("items", t.items.capacity() * 8),
            (
                "boxes",
                t.boxes.iter().map(Boxes::memory_bytes).sum::<usize>(),
            ),
            (
                "bounds",
                t.bounds.capacity() * 16 + t.bounds64.capacity() * 8 + t.bounds32.capacity() * 64,
            ),
            (
                "tables",
                t.tables
                    .iter()
                    .map(|t| t.capacity() * (16 + 16 + 1) + 64)
                    .sum::<usize>(),
            ),
        ]
    }

    /// Classify, counting the work done into `trace`.
    pub fn best_match_traced(&self, fv: &FieldValues, trace: &mut LookupTrace) -> Option<usize> {
        if self.c.lpm_absent(fv) {
            return None;
        }
        let Some(key) = self.c.key(fv) else {
            return self.c.fallback(fv);
        };
        let mut best = NONE;
        self.idx.lookup_traced(&self.c, &key, fv, &mut best, trace);
        self.c.resolve(best, fv)
    }
}

impl GroupClassifier for TreeClassifier {
    // Always: a first packet's walk calls it once per layer, and the call
    // and its spills cost 30 instructions (inlining stopped being chosen
    // once layers were also classified ahead, see `crate::preclassify`).
    #[inline(always)]
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
        "cut-tree"
    }

    /// The first two lines of the compiled group, of the index and of the
    /// first family's boxes (their leading fields are what a lookup reads
    /// first), the first chunk's roots, and the first family's root node's
    /// wide subtree (every walk of that family reads it first).
    fn head_lines(&self, out: &mut Vec<usize>) {
        fn head<T>(r: &T, out: &mut Vec<usize>) {
            let a = r as *const T as usize;
            out.push(a);
            if size_of::<T>() > 64 {
                out.push(a + 64);
            }
        }
        head(&self.c, out);
        head(&self.idx, out);
        head(&self.idx.boxes[0], out);
        if let Some(roots) = self.idx.roots.first() {
            out.push(roots.as_ptr() as usize);
            let root = roots[0];
            if root.kind() >= K_BIT
                && let Some(wide) = self.idx.children.get(root.a as usize)
            {
                out.push(wide as *const Ref as usize);
            }
        }
    }

    fn as_tree(&self) -> Option<&TreeClassifier> {
        Some(self)
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.c.memory_bytes() + self.idx.memory_bytes()
    }
}

/// Lookups a `Batch` walks in lock-step: enough independent loads in
/// flight to overlap several cache misses, few enough that the cursors'
/// state stays in L1.
pub const LOCKSTEP: usize = 8;
/// Pending subtrees of a cursor (a deeper walk continues on a full stack,
/// see [`TreeIndex::visit`]).
const CURSOR_STACK: usize = 16;
/// Boxes of a leaf a cursor starts loading before checking them (the best
/// few: a leaf's check usually stops early).
const LEAF_PRIME: usize = 3;

/// One tree lookup in progress: what [`TreeIndex::search`] keeps on the
/// call stack, kept here so that several lookups can advance in turn.
struct Cursor<'a> {
    t: &'a TreeClassifier,
    bk: BoxKey,
    fam: usize,
    best: u32,
    /// Next rank chunk to start.
    chunk: usize,
    r: Ref,
    sp: usize,
    stack: [Ref; CURSOR_STACK],
    /// The current leaf's boxes are on their way.
    primed: bool,
    /// Output slot.
    slot: usize,
}

impl<'a> Cursor<'a> {
    /// A lookup of `fv` in `t`, or its answer when the tree is not needed.
    fn start(
        t: &'a TreeClassifier,
        fv: &FieldValues,
        slot: usize,
    ) -> Result<Cursor<'a>, Option<usize>> {
        if t.c.lpm_absent(fv) {
            return Err(None);
        }
        let Some(key) = t.c.key(fv) else {
            return Err(t.c.fallback(fv));
        };
        let fam = t.idx.family(&key);
        let bk = t.idx.boxes[fam].key(&key);
        Ok(Cursor {
            t,
            bk,
            fam,
            best: NONE,
            chunk: 0,
            r: NIL_REF,
            sp: 0,
            stack: [NIL_REF; CURSOR_STACK],
            primed: false,
            slot,
        })
    }

    /// Do one step (a node or a leaf) and start loading what the next one
    /// needs; `false` once the lookup is complete.
    #[inline]
    fn advance(&mut self, fv: &FieldValues) -> bool {
        let idx = &self.t.idx;
        let c = &self.t.c;
        let boxes = &idx.boxes[self.fam];
        // Checked by `start`.
        let key = Key::of(fv);
        if self.r.min < self.best {
            let r = self.r;
            if r.kind() == K_LEAF && !self.primed {
                // Its items are here (primed with the leaf): start loading
                // the first few boxes, check them on the next turn.
                boxes.prefetch(r.x as usize);
                for &(_, bx) in idx.leaf_rest(&r).iter().take(LEAF_PRIME - 1) {
                    boxes.prefetch(bx as usize);
                }
                self.primed = true;
                return true;
            }
            let q = Query {
                key: &key,
                fv,
                boxes,
                bk: &self.bk,
            };
            if let Some(next) = idx.visit(
                c,
                r,
                &q,
                &mut self.best,
                &mut (),
                &mut self.stack,
                &mut self.sp,
            ) {
                // (A subtree it set aside is on its way too: `visit`
                // primed it.)
                idx.prime::<true>(&next, &key, boxes);
                self.r = next;
                self.primed = false;
                return true;
            }
        }
        self.primed = false;
        while self.sp > 0 {
            self.sp -= 1;
            let r = self.stack[self.sp];
            if r.min < self.best {
                self.r = r;
                return true;
            }
        }
        // The next rank chunk (as in `TreeIndex::search`).
        while let Some(roots) = idx.roots.get(self.chunk) {
            self.chunk += 1;
            let r = roots[self.fam];
            if r.min < self.best {
                idx.prime::<true>(&r, &key, boxes);
                self.r = r;
                return true;
            }
            if r.kind() != K_NIL {
                break;
            }
        }
        self.r = NIL_REF;
        false
    }
}

/// Up to [`LOCKSTEP`] tree lookups of one packet, walked in lock-step: each
/// cursor in turn does one step and issues the load of its next node, so
/// the cache misses of different groups overlap instead of queueing (a
/// plain load acts as the prefetch; no `unsafe` intrinsics).
pub(crate) struct Batch<'a> {
    cur: [Option<Cursor<'a>>; LOCKSTEP],
    n: usize,
}

impl<'a> Batch<'a> {
    pub(crate) fn new() -> Batch<'a> {
        Batch {
            cur: Default::default(),
            n: 0,
        }
    }

    /// Queue a lookup of `fv` in `t` answering `out[slot]` (answered at
    /// once when it needs no walk); runs the batch first when it is full.
    #[inline]
    pub(crate) fn push(
        &mut self,
        t: &'a TreeClassifier,
        fv: &FieldValues,
        slot: usize,
        out: &mut [Option<usize>],
    ) {
        if self.n == LOCKSTEP {
            self.run(fv, out);
        }
        match Cursor::start(t, fv, slot) {
            Ok(cu) => {
                self.cur[self.n] = Some(cu);
                self.n += 1;
            }
            Err(res) => out[slot] = res,
        }
    }

    /// Finish every queued lookup.
    pub(crate) fn run(&mut self, fv: &FieldValues, out: &mut [Option<usize>]) {
        let mut live = self.n;
        while live > 0 {
            for slot in self.cur[..self.n].iter_mut() {
                if let Some(cu) = slot
                    && !cu.advance(fv)
                {
                    out[cu.slot] = cu.t.c.resolve(cu.best, fv);
                    *slot = None;
                    live -= 1;
                }
            }
        }
        self.n = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything a lookup can read below `r`, by value (box contents, not
    /// box indexes; bases, not base indexes): equal for a subtree and its
    /// moved copy.
    fn shape(t: &TreeIndex, r: Ref, f: usize, out: &mut Vec<u128>) {
        let (a, x) = (r.a as usize, r.x as usize);
        let kind = r.kind();
        out.extend([u128::from(kind), u128::from(r.min)]);
        match kind {
            K_NIL => {}
            K_ONE => out.extend(t.boxes[f].words(x).into_iter().map(u128::from)),
            K_LEAF => {
                out.extend(t.boxes[f].words(x).into_iter().map(u128::from));
                for &(rank, bx) in t.leaf_rest(&r) {
                    out.push(u128::from(rank));
                    out.extend(t.boxes[f].words(bx as usize).into_iter().map(u128::from));
                }
            }
            K_BLOCK => out.push(x as u128),
            _ => {
                out.extend([r.dim() as u128, u128::from(r.bits())]);
                let kids = match kind {
                    K_BIT => {
                        out.push(u128::from(r.shift()));
                        1 + (1usize << r.bits())
                    }
                    K_RANGE32 => {
                        out.push(t.bases32[r.shift() as usize]);
                        let m = r.bits() as usize;
                        let lines = if m <= BLOCK32 {
                            1
                        } else {
                            1 + m.div_ceil(BLOCK32)
                        };
                        for b in &t.bounds32[x..x + lines] {
                            out.extend(b.0.iter().map(|&v| u128::from(v)));
                        }
                        2 + r.bits() as usize
                    }
                    K_RANGE64 => {
                        let n = r.bits() as usize;
                        let laid = if n <= BLOCK64 {
                            BLOCK64
                        } else {
                            BLOCK64 * (1 + n.div_ceil(BLOCK64))
                        };
                        out.extend(t.bounds64[x..x + 1 + laid].iter().map(|&v| u128::from(v)));
                        2 + n
                    }
                    K_RANGE => {
                        out.extend_from_slice(&t.bounds[x..x + RANGE_MAX_CHILDREN]);
                        2 + r.bits() as usize
                    }
                    _ => {
                        let mut entries: Vec<(u128, Ref)> =
                            t.tables[x].iter().map(|(&k, &v)| (k, v)).collect();
                        entries.sort_by_key(|e| e.0);
                        for (k, v) in entries {
                            out.push(k);
                            shape(t, v, f, out);
                        }
                        1
                    }
                };
                for &k in &t.children[a..a + kids] {
                    shape(t, k, f, out);
                }
            }
        }
    }

    /// A generated ACL compiled and ranked, and all its entries.
    fn ranked_acl(n: usize, seed: u64) -> (Compiled, Vec<u32>) {
        let rules = crate::rulegen::acl(n, seed);
        let mut c = Compiled::new(&rules, crate::classifier::MatchType::Priority);
        c.sort_by_rank();
        let ids: Vec<u32> = (0..c.len() as u32).collect();
        (c, ids)
    }

    /// A tree built in rank chunks on threads and appended into one holds,
    /// chunk by chunk, exactly the trees each chunk's builder made.
    #[test]
    fn appended_chunks_keep_their_trees() {
        let (c, ids) = ranked_acl(20_000, 3);
        let cfg = TreeConfig {
            chunk: 1024,
            ..TreeConfig::default()
        };
        let merged = TreeIndex::new(&c, &ids, cfg);
        let cfg = cfg.for_entries(ids.len());
        assert!(merged.roots.len() > 3 && merged.stats.hash_cuts > 0);
        assert!(merged.stats.range_cuts > 0 && !merged.bases32.is_empty());
        // The same chunks, built alone.
        let plan = ChunkPlan::new(&c, &ids, cfg);
        let job = ChunkJob {
            c: &c,
            cfg,
            layouts: &plan.layouts,
            bases_cap: 256 / plan.chunks.len(),
        };
        assert_eq!(plan.chunks.len(), merged.roots.len());
        for (i, members) in plan.chunks.iter().enumerate() {
            let part = job.build(members);
            for f in 0..FAMILIES {
                let (mut want, mut got) = (Vec::new(), Vec::new());
                shape(&part.t, part.roots[f], f, &mut want);
                shape(&merged, merged.roots[i][f], f, &mut got);
                assert!(want == got, "chunk {i} family {f}");
            }
        }
    }

    /// Trees of `large_from` entries or more are built with the large leaf
    /// size; smaller ones, or any with it set to 0, with `leaf_size`.
    #[test]
    fn large_trees_take_large_leaves() {
        let d = TreeConfig::default();
        assert!(d.large_leaf_size > d.leaf_size);
        assert_eq!(d.for_entries(d.large_from - 1).leaf_size, d.leaf_size);
        assert_eq!(d.for_entries(d.large_from).leaf_size, d.large_leaf_size);
        let off = TreeConfig {
            large_leaf_size: 0,
            ..d
        };
        assert_eq!(off.for_entries(1 << 20).leaf_size, d.leaf_size);
    }

    /// The number of entries of every leaf below `r`.
    fn leaf_sizes(t: &TreeIndex, r: Ref, out: &mut Vec<u128>) {
        let a = r.a as usize;
        match r.kind() {
            K_NIL | K_BLOCK => {}
            K_ONE => out.push(1),
            K_LEAF => out.push(1 + t.leaf_rest(&r).len() as u128),
            K_HASH => {
                for &v in t.tables[r.x as usize].values() {
                    leaf_sizes(t, v, out);
                }
                leaf_sizes(t, t.children[a], out);
            }
            k => {
                let kids = match k {
                    K_BIT => 1 + (1usize << r.bits()),
                    _ => 2 + r.bits() as usize,
                };
                for &child in &t.children[a..a + kids] {
                    leaf_sizes(t, child, out);
                }
            }
        }
    }

    /// Families whose boxes take more than one line (IPv6 addresses) are
    /// built with `wide_leaf_size`; the one-line family's trees are exactly
    /// those built without it.
    #[test]
    fn wide_boxes_take_small_leaves() {
        let (c, ids) = ranked_acl(20_000, 1);
        let d = TreeConfig::default();
        assert!(d.wide_leaf_size > 0 && d.wide_leaf_size < d.large_leaf_size);
        let with = TreeIndex::new(&c, &ids, d);
        let without = TreeIndex::new(
            &c,
            &ids,
            TreeConfig {
                wide_leaf_size: 0,
                ..d
            },
        );
        assert_eq!(with.roots.len(), without.roots.len());
        let mut wide_families = 0;
        for f in 0..FAMILIES {
            let (mut got, mut base) = (Vec::new(), Vec::new());
            let wide = with.boxes[f].lines() > 1;
            for (rw, ro) in with.roots.iter().zip(&without.roots) {
                if wide {
                    leaf_sizes(&with, rw[f], &mut got);
                    leaf_sizes(&without, ro[f], &mut base);
                } else {
                    shape(&with, rw[f], f, &mut got);
                    shape(&without, ro[f], f, &mut base);
                }
            }
            if !wide {
                assert!(got == base, "family {f} changed");
                continue;
            }
            wide_families += 1;
            let over = |sizes: &[u128]| {
                sizes
                    .iter()
                    .filter(|&&n| n > d.wide_leaf_size as u128)
                    .count()
            };
            // Without it, these trees have larger leaves; with it, only a
            // few that no cut could split.
            assert!(over(&base) > 0, "family {f}: {base:?}");
            assert!(over(&got) * 100 <= got.len(), "family {f}: {got:?}");
        }
        assert!(wide_families > 0);
    }

    /// Values sorted as 32-bit numbers come out exactly as a 128-bit sort
    /// (and dedup) gives them, whatever their high bits.
    #[test]
    fn sorted_values_match_a_plain_sort() {
        let v4 = |a: u32| (0xffffu128 << 32) | u128::from(a);
        let cases: Vec<Vec<u128>> = vec![
            vec![],
            vec![443, 80, 80, 8080, 0, 65535],
            vec![v4(0x0a00_0001), v4(7), v4(u32::MAX), v4(7), v4(0)],
            vec![v4(5), 5, 1 << 100, v4(5), u128::MAX, 0],
        ];
        let mut lows = Vec::new();
        for case in cases {
            for dedup in [false, true] {
                let mut want = case.clone();
                want.sort_unstable();
                if dedup {
                    want.dedup();
                }
                let mut got = case.clone();
                sort_values(&mut got, &mut lows, dedup);
                assert_eq!(got, want, "{case:x?} dedup {dedup}");
            }
        }
    }

    /// The boundary searches count exactly the keys `<= v` (the reference
    /// is `partition_point` on the sorted keys), whatever the key count
    /// (partial, full and several blocks, duplicates) and wherever `v`
    /// falls (below, on, between and above the keys, and at the extremes).
    #[test]
    fn boundary_searches_count_keys_le() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for m in [1usize, 2, 15, 16, 17, 31, 32, 33, 100, 255] {
            for spread in [3u64, 1000, u64::from(u32::MAX)] {
                let mut keys: Vec<u32> = (0..m).map(|_| (rnd() % spread) as u32).collect();
                keys.sort_unstable();
                let mut laid = Vec::new();
                layout32(&keys, &mut laid);
                let keys64: Vec<u64> = keys.iter().map(|&k| u64::from(k)).collect();
                let mut laid64 = Vec::new();
                layout(&keys64, BLOCK64, u64::MAX, &mut laid64);
                let mut probes: Vec<u32> = vec![0, 1, u32::MAX, u32::MAX - 1];
                for &k in &keys {
                    probes.extend([k, k.wrapping_sub(1), k.wrapping_add(1)]);
                }
                probes.extend((0..64).map(|_| (rnd() % spread.saturating_add(2)) as u32));
                for &v in &probes {
                    let want = keys.partition_point(|&k| k <= v);
                    assert_eq!(search32(&laid, m, v), want, "32-bit, m={m} v={v}");
                    assert_eq!(
                        search::<u64, BLOCK64>(&laid64, m, u64::from(v)),
                        want,
                        "64-bit, m={m} v={v}"
                    );
                    if m < RANGE_MAX_CHILDREN {
                        let mut k128 = [u128::MAX; RANGE_MAX_CHILDREN];
                        for (x, &k) in k128.iter_mut().zip(&keys) {
                            *x = u128::from(k) << 64;
                        }
                        let v128 = u128::from(v) << 64;
                        assert_eq!(rank128(&k128, v128).min(m), want, "128-bit, m={m}");
                    }
                }
            }
        }
    }
}
