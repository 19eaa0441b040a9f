//! The layer flows a connection holds: its list of references, kept in
//! the connection's slot for the first two (the usual stateful ACL and NAT
//! pair) and in overflow blocks of its table's pool past that.
//!
//! A list on the heap of its own would cost a connection through three
//! stateful layers or more an allocation on its first packet and a free
//! when it ends, reserved port or not; two more inline references would
//! cost every connection 8 bytes. The pool's blocks are taken and given
//! back on the control path of connections, and reserved with the port
//! ([`RefBlocks::reserve`]) when its policy needs them.
//!
//! A list is only read or changed through its table's [`RefBlocks`]
//! (which owns the blocks); snapshots store each list as a plain sequence,
//! as the inline list type before it did.

use crate::slab::SlabPool;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Reference from a connection to a layer flow it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerFlowRef {
    pub layer_uid: u32,
    pub slot: u32,
}

/// References kept in the connection itself.
pub const INLINE_REFS: usize = 2;
/// References per overflow block (a block is 60 bytes).
pub const BLOCK_REFS: usize = 7;
const NO_BLOCK: u32 = u32::MAX;

/// The layer flows a connection holds: a list whose first
/// [`INLINE_REFS`] entries are inline and the rest in blocks of a
/// [`RefBlocks`] pool (24 bytes, like the inline vector it replaced).
///
/// A handle into its pool: copies name the same blocks (only the pool's
/// owner copies one, to hand it back to the pool), and equality is that of
/// handles; compare contents through [`RefBlocks::iter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerFlowRefs {
    inline: [LayerFlowRef; INLINE_REFS],
    len: u32,
    /// The first overflow block, or `NO_BLOCK`.
    more: u32,
}

impl Default for LayerFlowRefs {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerFlowRefs {
    pub const fn new() -> LayerFlowRefs {
        LayerFlowRefs {
            inline: [LayerFlowRef {
                layer_uid: 0,
                slot: 0,
            }; INLINE_REFS],
            len: 0,
            more: NO_BLOCK,
        }
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One overflow block: up to [`BLOCK_REFS`] references and the next block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RefBlock {
    refs: [LayerFlowRef; BLOCK_REFS],
    next: u32,
}

const EMPTY_BLOCK: RefBlock = RefBlock {
    refs: [LayerFlowRef {
        layer_uid: 0,
        slot: 0,
    }; BLOCK_REFS],
    next: NO_BLOCK,
};

/// The overflow blocks of a table's reference lists, with their free list.
#[derive(Clone, Debug, Default)]
pub struct RefBlocks {
    blocks: SlabPool<RefBlock>,
}

impl RefBlocks {
    /// The references of `refs`, in the order they were added.
    pub fn iter<'a>(&'a self, refs: &'a LayerFlowRefs) -> RefsIter<'a> {
        RefsIter {
            pool: self,
            refs,
            i: 0,
            block: refs.more,
        }
    }

    /// The references of `refs`, copied out (inline up to eight: no
    /// allocation for a list the caller changes the table while reading).
    pub fn collect(&self, refs: &LayerFlowRefs) -> SmallVec<[LayerFlowRef; 8]> {
        self.iter(refs).collect()
    }

    pub fn contains(&self, refs: &LayerFlowRefs, r: &LayerFlowRef) -> bool {
        self.iter(refs).any(|x| x == *r)
    }

    /// Append `r` to `refs`, taking a block when the last is full.
    pub fn push(&mut self, refs: &mut LayerFlowRefs, r: LayerFlowRef) {
        let i = refs.len as usize;
        if i < INLINE_REFS {
            refs.inline[i] = r;
        } else {
            let k = i - INLINE_REFS;
            // The block for reference `k`: a new one linked after the last
            // when the last is full, else the last (one walk of the chain).
            let block = if k.is_multiple_of(BLOCK_REFS) {
                let b = self.take();
                if k == 0 {
                    refs.more = b;
                } else if let Some(last) = self.block_at(refs, k / BLOCK_REFS - 1)
                    && let Some(l) = self.blocks.get_mut(last)
                {
                    l.next = b;
                }
                Some(b)
            } else {
                self.block_at(refs, k / BLOCK_REFS)
            };
            if let Some(b) = block
                && let Some(block) = self.blocks.get_mut(b)
            {
                block.refs[k % BLOCK_REFS] = r;
            }
        }
        refs.len += 1;
    }

    /// Keep only the references `keep` accepts (in order).
    pub fn retain(
        &mut self,
        refs: &mut LayerFlowRefs,
        mut keep: impl FnMut(&LayerFlowRef) -> bool,
    ) {
        let all = self.collect(refs);
        self.clear(refs);
        for r in all.iter().filter(|r| keep(r)) {
            self.push(refs, *r);
        }
    }

    /// Empty `refs`, giving its blocks back.
    pub fn clear(&mut self, refs: &mut LayerFlowRefs) {
        let mut b = refs.more;
        while b != NO_BLOCK {
            let next = self.blocks.give(b).map_or(NO_BLOCK, |block| block.next);
            b = next;
        }
        *refs = LayerFlowRefs::new();
    }

    /// Blocks in use.
    pub fn in_use(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks a list of `refs` references takes.
    pub fn blocks_for(refs: usize) -> usize {
        refs.saturating_sub(INLINE_REFS).div_ceil(BLOCK_REFS)
    }

    /// Heap bytes of `blocks` blocks (with their free-list room).
    pub fn bytes_for(blocks: usize) -> usize {
        SlabPool::<RefBlock>::bytes_for(blocks)
    }

    /// Make room for `blocks` blocks in all, written now (see
    /// `Port::reserve`).
    pub fn reserve(&mut self, blocks: usize) {
        self.blocks.reserve(blocks);
    }

    pub fn memory_bytes(&self) -> usize {
        self.blocks.memory_bytes()
    }

    /// An empty block for a list (`NO_BLOCK` past the pool's numbering).
    fn take(&mut self) -> u32 {
        self.blocks.take(EMPTY_BLOCK).unwrap_or(NO_BLOCK)
    }

    /// The `n`th overflow block of `refs`.
    fn block_at(&self, refs: &LayerFlowRefs, n: usize) -> Option<u32> {
        let mut b = refs.more;
        for _ in 0..n {
            b = self.blocks.get(b)?.next;
        }
        (b != NO_BLOCK).then_some(b)
    }
}

/// The references of a list (see [`RefBlocks::iter`]).
pub struct RefsIter<'a> {
    pool: &'a RefBlocks,
    refs: &'a LayerFlowRefs,
    i: usize,
    /// The block holding reference `i` once past the inline ones.
    block: u32,
}

impl Iterator for RefsIter<'_> {
    type Item = LayerFlowRef;

    fn next(&mut self) -> Option<LayerFlowRef> {
        let i = self.i;
        if i >= self.refs.len as usize {
            return None;
        }
        self.i += 1;
        if i < INLINE_REFS {
            return self.refs.inline.get(i).copied();
        }
        let k = (i - INLINE_REFS) % BLOCK_REFS;
        let block = self.pool.blocks.get(self.block)?;
        let r = block.refs[k];
        if k == BLOCK_REFS - 1 {
            self.block = block.next;
        }
        Some(r)
    }
}

/// A list as snapshots store it: a plain sequence of references.
pub struct RefsWire<'a> {
    pub pool: &'a RefBlocks,
    pub refs: &'a LayerFlowRefs,
}

impl Serialize for RefsWire<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.refs.len()))?;
        for r in self.pool.iter(self.refs) {
            seq.serialize_element(&r)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(i: u32) -> LayerFlowRef {
        LayerFlowRef {
            layer_uid: i,
            slot: 1000 + i,
        }
    }

    #[test]
    fn lists_of_any_length_read_back_in_order() {
        let mut pool = RefBlocks::default();
        let mut lists = [LayerFlowRefs::new(); 5];
        // Interleaved pushes, so blocks of different lists alternate.
        for n in 0..20u32 {
            for (j, l) in lists.iter_mut().enumerate() {
                if (n as usize) < j * 5 {
                    pool.push(l, r(n * 10 + j as u32));
                }
            }
        }
        for (j, l) in lists.iter().enumerate() {
            let want: Vec<_> = (0..(j * 5) as u32).map(|n| r(n * 10 + j as u32)).collect();
            assert_eq!(pool.iter(l).collect::<Vec<_>>(), want, "list {j}");
            assert_eq!(l.len(), want.len());
            assert!(want.iter().all(|x| pool.contains(l, x)));
        }
        assert_eq!(
            pool.in_use(),
            (0..5).map(|j| RefBlocks::blocks_for(j * 5)).sum::<usize>()
        );
        // Retain, then clear: blocks go back and are taken again.
        let mut l = lists[4];
        pool.retain(&mut l, |x| x.layer_uid % 20 != 4);
        let kept: Vec<_> = (0..20u32)
            .map(|n| r(n * 10 + 4))
            .filter(|x| x.layer_uid % 20 != 4)
            .collect();
        assert_eq!(pool.iter(&l).collect::<Vec<_>>(), kept);
        let used = pool.in_use();
        pool.clear(&mut l);
        assert!(l.is_empty() && pool.iter(&l).next().is_none());
        assert_eq!(pool.in_use(), used - RefBlocks::blocks_for(kept.len()));
        let total = pool.blocks.slots();
        let mut again = LayerFlowRefs::new();
        for n in 0..kept.len() as u32 {
            pool.push(&mut again, r(n));
        }
        assert_eq!(pool.blocks.slots(), total, "freed blocks are reused");
        assert_eq!(pool.iter(&again).count(), kept.len());
    }

    #[test]
    fn a_list_of_two_takes_no_block() {
        let mut pool = RefBlocks::default();
        let mut l = LayerFlowRefs::new();
        pool.push(&mut l, r(1));
        pool.push(&mut l, r(2));
        assert_eq!(pool.in_use(), 0);
        assert_eq!(pool.memory_bytes(), 0);
        assert_eq!(size_of::<LayerFlowRefs>(), 24);
        pool.push(&mut l, r(3));
        assert_eq!(pool.in_use(), 1);
    }
}
