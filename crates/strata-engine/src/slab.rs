//! [`ChunkedSlab`]: the slot store of the flow tables, a `Vec<Option<T>>`
//! kept in fixed-size chunks.
//!
//! The flow tables hold up to millions of entries by slot number. In one
//! `Vec` that doubles, up to half the capacity is slack, and each growth
//! copies the whole table (~190 MB of connections at 1M) in the slow path
//! of one packet: a latency spike on the datapath. Here the store grows a
//! chunk of [`CHUNK`] slots at a time: the slack is under one chunk, and
//! growing allocates one chunk and copies only the small list of chunk
//! pointers. The first chunk grows as a `Vec` does, so a port with a
//! handful of flows (or a counter arena with a handful of names) does not
//! hold a whole chunk. (Elements never move, but nothing needs stable addresses: the
//! tables name entries by slot number.)
//!
//! Every later chunk asks for huge pages ([`crate::hint::huge_pages`]): a
//! chunk of connections is 6 MiB (32,768 slots of 184 bytes), big enough
//! for two or three whole 2 MiB pages, which at 1M connections cuts the TLB
//! misses of the fast path's scattered lookups.
//!
//! It serializes exactly as a `Vec<Option<T>>` of its slots, so snapshots
//! do not depend on how the store is laid out.

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Index, IndexMut};

/// Slots per chunk. A power of two, so slot `i` is at `i >> CHUNK_BITS`,
/// `i & (CHUNK - 1)`.
pub const CHUNK: usize = 1 << CHUNK_BITS;
const CHUNK_BITS: u32 = 15;
const CHUNK_MASK: usize = CHUNK - 1;

/// Slots `0..len` of `Option<T>`, like a `Vec<Option<T>>`, stored in chunks
/// of [`CHUNK`] slots: every chunk but the last is full.
pub struct ChunkedSlab<T> {
    chunks: Vec<Vec<Option<T>>>,
    /// Slots in use, live or empty (as `Vec::len`).
    len: usize,
    /// Empty chunks allocated ahead by [`ChunkedSlab::reserve`], taken by
    /// pushes before any new one is allocated.
    spare: Vec<Vec<Option<T>>>,
}

impl<T> ChunkedSlab<T> {
    pub const fn new() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
            spare: Vec::new(),
        }
    }

    /// Number of slots in use, live or empty.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots allocated (spare chunks included).
    pub fn capacity(&self) -> usize {
        self.chunks
            .iter()
            .chain(&self.spare)
            .map(Vec::capacity)
            .sum()
    }

    /// Heap bytes of the chunks holding `n` slots.
    pub fn bytes_for(n: usize) -> usize {
        n.div_ceil(CHUNK)
            .saturating_mul(CHUNK)
            .saturating_mul(size_of::<Option<T>>())
    }

    /// Heap bytes: the chunks and the lists of chunk pointers.
    pub fn memory_bytes(&self) -> usize {
        self.capacity() * size_of::<Option<T>>()
            + (self.chunks.capacity() + self.spare.capacity()) * size_of::<Vec<Option<T>>>()
    }

    /// Make room for `n` slots in all: the chunks are allocated and every
    /// page of them written now, so pushes up to `n` slots neither
    /// allocate nor wait for a page's first touch (a control-plane call:
    /// see `Port::reserve`).
    pub fn reserve(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if self.chunks.is_empty() {
            self.chunks.push(Vec::new());
        }
        let first = n.min(CHUNK);
        if let [only] = self.chunks.as_mut_slice()
            && only.capacity() < first
        {
            only.reserve_exact(first - only.len());
        }
        self.chunks
            .reserve(n.div_ceil(CHUNK).saturating_sub(self.chunks.len()));
        if let Some(last) = self.chunks.last_mut() {
            prefault(last);
        }
        let mut room = self.capacity();
        while room < n {
            let mut chunk = Vec::with_capacity(CHUNK);
            crate::hint::huge_pages(&chunk);
            prefault(&mut chunk);
            self.spare.push(chunk);
            room += CHUNK;
        }
    }

    /// Slot `i`, or `None` past the end.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&Option<T>> {
        self.chunks.get(i >> CHUNK_BITS)?.get(i & CHUNK_MASK)
    }

    /// Slot `i` mutably, or `None` past the end.
    #[inline]
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Option<T>> {
        self.chunks
            .get_mut(i >> CHUNK_BITS)?
            .get_mut(i & CHUNK_MASK)
    }

    /// Append a slot, starting a chunk if the last one is full (the
    /// first grows from small; later ones are allocated whole).
    pub fn push(&mut self, v: Option<T>) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(v),
            _ => {
                let mut chunk = if self.chunks.is_empty() {
                    Vec::new()
                } else if let Some(spare) = self.spare.pop() {
                    spare
                } else {
                    let chunk = Vec::with_capacity(CHUNK);
                    crate::hint::huge_pages(&chunk);
                    chunk
                };
                chunk.push(v);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    /// Start bringing in the slot the next [`ChunkedSlab::push`] writes
    /// (a prefetch hint; nothing is read): the room past the last chunk's
    /// end, or the first of a spare chunk.
    #[inline]
    pub fn prefetch_next_push(&self) {
        let chunk = match self.chunks.last() {
            Some(last) if last.len() < last.capacity() => last,
            _ => match self.spare.last() {
                Some(spare) => spare,
                None => return,
            },
        };
        // Within the chunk's allocation: its length is below its capacity.
        crate::hint::prefetch_ptr(chunk.as_ptr().wrapping_add(chunk.len()));
    }

    /// Keep the first `n` slots, dropping the rest (and the chunks that
    /// held only those).
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len {
            return;
        }
        let keep = n.div_ceil(CHUNK);
        self.chunks.truncate(keep);
        if let Some(last) = self.chunks.last_mut() {
            last.truncate(n - (keep - 1) * CHUNK);
        }
        self.len = n;
    }

    /// Drop every slot.
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Whether `free` (a free list read from a snapshot) names only empty
    /// slots, each once. A damaged or forged list would have the next new
    /// entry index past the end or overwrite a live one.
    pub fn check_free_list(&self, free: &[u32]) -> Result<(), String> {
        let mut listed = vec![false; self.len];
        for &s in free {
            match (self.get(s as usize), listed.get_mut(s as usize)) {
                (Some(None), Some(seen)) if !*seen => *seen = true,
                (None, _) => return Err(format!("free slot {s} is past the {} slots", self.len)),
                (Some(Some(_)), _) => return Err(format!("free slot {s} is in use")),
                _ => return Err(format!("free slot {s} is listed twice")),
            }
        }
        Ok(())
    }

    /// Every slot in order.
    pub fn iter(&self) -> impl Iterator<Item = &Option<T>> + Clone {
        self.chunks.iter().flatten()
    }

    /// Every slot in order, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Option<T>> {
        self.chunks.iter_mut().flatten()
    }
}

/// A copy of the slots; a reservation is not copied (a clone of an empty
/// spare chunk would have no room: pushes would grow it as a vector).
impl<T: Clone> Clone for ChunkedSlab<T> {
    fn clone(&self) -> Self {
        Self {
            chunks: self.chunks.clone(),
            len: self.len,
            spare: Vec::new(),
        }
    }
}

/// Write every page of `chunk`'s unused capacity (with empty slots,
/// dropped again), so that pushes into it fault no page in.
fn prefault<T>(chunk: &mut Vec<Option<T>>) {
    let len = chunk.len();
    chunk.resize_with(chunk.capacity(), || None);
    chunk.truncate(len);
}

impl<T> Default for ChunkedSlab<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Index<usize> for ChunkedSlab<T> {
    type Output = Option<T>;

    /// Slot `i`; panics past the end, as a `Vec` does.
    #[inline]
    fn index(&self, i: usize) -> &Option<T> {
        let len = self.len;
        self.get(i)
            .unwrap_or_else(|| panic!("slot {i} out of range for a slab of {len}"))
    }
}

impl<T> IndexMut<usize> for ChunkedSlab<T> {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut Option<T> {
        let len = self.len;
        self.get_mut(i)
            .unwrap_or_else(|| panic!("slot {i} out of range for a slab of {len}"))
    }
}

/// Equal when the slots in use are (however many chunks each holds).
impl<T: PartialEq> PartialEq for ChunkedSlab<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<T: Eq> Eq for ChunkedSlab<T> {}

impl<T: fmt::Debug> fmt::Debug for ChunkedSlab<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T> FromIterator<Option<T>> for ChunkedSlab<T> {
    fn from_iter<I: IntoIterator<Item = Option<T>>>(iter: I) -> Self {
        let mut s = Self::new();
        for v in iter {
            s.push(v);
        }
        s
    }
}

/// The slots, by value, in order.
impl<T> IntoIterator for ChunkedSlab<T> {
    type Item = Option<T>;
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Vec<Option<T>>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.chunks.into_iter().flatten()
    }
}

/// As a `Vec<Option<T>>`: a sequence of the `len` slots.
impl<T: Serialize> Serialize for ChunkedSlab<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len))?;
        for s in self.iter() {
            seq.serialize_element(s)?;
        }
        seq.end()
    }
}

/// From a sequence, as a `Vec<Option<T>>`. Chunks are allocated as
/// elements arrive, never up front from the length the input claims.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for ChunkedSlab<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SlabVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for SlabVisitor<T> {
            type Value = ChunkedSlab<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of slots")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut slab = ChunkedSlab::new();
                while let Some(v) = seq.next_element()? {
                    slab.push(v);
                }
                Ok(slab)
            }
        }

        deserializer.deserialize_seq(SlabVisitor(PhantomData))
    }
}

/// Entries of one kind named by a `u32` index, each taken and given back
/// on its own: a [`ChunkedSlab`] and its free list. For the parts only
/// some flows have (a layer flow's own key, its extra parts, a long
/// reference list's blocks): an index into a pool costs 4 bytes where a
/// map entry or a box costs an allocation or a re-hash of every entry as
/// it doubles, and the pool grows a chunk at a time with nothing moved.
#[derive(Clone, Debug)]
pub struct SlabPool<T> {
    slots: ChunkedSlab<T>,
    free: Vec<u32>,
}

impl<T> Default for SlabPool<T> {
    fn default() -> Self {
        Self {
            slots: ChunkedSlab::new(),
            free: Vec::new(),
        }
    }
}

impl<T> SlabPool<T> {
    /// Store `v`; returns its index. `None` when every `u32` index below
    /// [`SlabPool::MAX`] is taken (the value is not stored).
    pub fn take(&mut self, v: T) -> Option<u32> {
        match self.free.pop() {
            Some(i) => {
                if let Some(slot) = self.slots.get_mut(i as usize) {
                    *slot = Some(v);
                }
                Some(i)
            }
            None => {
                let i = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|&i| i < Self::MAX)?;
                self.slots.push(Some(v));
                Some(i)
            }
        }
    }

    /// Indexes stay below this: the top bit is free for the owner's use,
    /// and with it set no index makes `u32::MAX` (free for a sentinel).
    pub const MAX: u32 = u32::MAX >> 1;

    /// Give entry `i` back; returns its value (`None` if it was not taken).
    pub fn give(&mut self, i: u32) -> Option<T> {
        let v = self.slots.get_mut(i as usize)?.take()?;
        self.free.push(i);
        Some(v)
    }

    #[inline]
    pub fn get(&self, i: u32) -> Option<&T> {
        self.slots.get(i as usize)?.as_ref()
    }

    #[inline]
    pub fn get_mut(&mut self, i: u32) -> Option<&mut T> {
        self.slots.get_mut(i as usize)?.as_mut()
    }

    /// Entries taken.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Entries ever made: taken or free.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every taken entry with its index.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| (i as u32, v)))
    }

    pub fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
    }

    /// Heap bytes [`SlabPool::reserve`] holds for `n` entries (with their
    /// free-list room).
    pub fn bytes_for(n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        ChunkedSlab::<T>::bytes_for(n).saturating_add(n.saturating_mul(size_of::<u32>()))
    }

    /// Make room for `n` entries in all, written now (see `Port::reserve`):
    /// taking and giving back up to `n` allocates nothing.
    pub fn reserve(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.slots.reserve(n);
        self.free.reserve(n.saturating_sub(self.free.len()));
    }

    /// Heap bytes used.
    pub fn memory_bytes(&self) -> usize {
        self.slots.memory_bytes() + self.free.capacity() * size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` slots, every seventh empty.
    fn sample(n: usize) -> Vec<Option<u64>> {
        (0..n as u64)
            .map(|i| (i % 7 != 3).then_some(i * 3))
            .collect()
    }

    #[test]
    fn push_get_and_index_across_chunks() {
        let want = sample(2 * CHUNK + 5);
        let mut s = ChunkedSlab::new();
        assert!(s.is_empty());
        for v in &want {
            s.push(*v);
        }
        assert_eq!(s.len(), want.len());
        for (i, v) in want.iter().enumerate() {
            assert_eq!(s.get(i), Some(v), "slot {i}");
            assert_eq!(&s[i], v, "slot {i}");
        }
        // Past the end, including where the last chunk would go on.
        assert_eq!(s.get(want.len()), None);
        assert_eq!(s.get(3 * CHUNK - 1), None);
        assert_eq!(s.get(3 * CHUNK), None);
        assert_eq!(s.get_mut(want.len()), None);
        assert_eq!(s.get(usize::MAX), None);

        for i in [0, CHUNK - 1, CHUNK, 2 * CHUNK + 4] {
            *s.get_mut(i).expect("in range") = Some(1_000_000);
            assert_eq!(s[i], Some(1_000_000));
            s[i] = None;
            assert_eq!(s.get(i), Some(&None));
        }
        // Neighbours across a chunk boundary are untouched.
        assert_eq!(s[CHUNK - 2], want[CHUNK - 2]);
        assert_eq!(s[CHUNK + 1], want[CHUNK + 1]);
    }

    /// Reserved chunks are the ones later pushes fill: the capacity does
    /// not move, the slots read back in order, a reserve on a slab in use
    /// keeps its slots.
    #[test]
    fn pushes_fill_what_reserve_allocated() {
        let want = sample(2 * CHUNK + 5);
        let mut s = ChunkedSlab::new();
        for v in &want[..10] {
            s.push(*v);
        }
        s.reserve(want.len());
        let room = s.capacity();
        assert!((want.len()..want.len() + CHUNK).contains(&room), "{room}");
        assert!(s.iter().eq(want[..10].iter()));
        // A copy has the slots, not the reservation.
        let copy = s.clone();
        assert_eq!(copy, s);
        assert!(copy.capacity() < CHUNK);
        let bytes = s.memory_bytes();
        for v in &want[10..] {
            s.push(*v);
        }
        assert_eq!(s.capacity(), room);
        assert_eq!(s.memory_bytes(), bytes);
        assert!(s.iter().eq(want.iter()));
        // Less than one chunk: the first chunk takes exactly that.
        let mut small: ChunkedSlab<u64> = ChunkedSlab::new();
        small.reserve(100);
        assert_eq!(small.capacity(), 100);
        assert!(small.is_empty());
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn index_past_the_end_panics() {
        let s: ChunkedSlab<u8> = [Some(1)].into_iter().collect();
        let _ = s[1];
    }

    #[test]
    fn iterates_in_order() {
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let want = sample(n);
            let mut s: ChunkedSlab<u64> = want.iter().copied().collect();
            assert_eq!(s.iter().count(), n);
            assert!(s.iter().eq(want.iter()), "{n} slots");
            for v in s.iter_mut().flatten() {
                *v += 1;
            }
            let bumped: Vec<_> = want.iter().map(|v| v.map(|v| v + 1)).collect();
            assert!(s.iter().eq(bumped.iter()), "{n} slots, mutated");
            assert_eq!(s.clone().into_iter().collect::<Vec<_>>(), bumped);
        }
    }

    #[test]
    fn first_chunk_grows_then_one_chunk_at_a_time() {
        let mut s = ChunkedSlab::new();
        assert_eq!((s.capacity(), s.memory_bytes()), (0, 0));
        // A few slots take a few slots' room, not a chunk.
        for i in 0..10 {
            s.push(Some(i as u64));
        }
        assert!(s.capacity() < 64, "{}", s.capacity());
        for i in 10..3 * CHUNK {
            s.push(Some(i as u64));
            let chunks = i / CHUNK + 1;
            if i >= CHUNK {
                assert_eq!(s.capacity(), chunks * CHUNK);
            }
            let pointers = s.chunks.capacity() * size_of::<Vec<Option<u64>>>();
            assert_eq!(
                s.memory_bytes(),
                s.capacity() * size_of::<Option<u64>>() + pointers
            );
        }
        assert_eq!(s.capacity(), 3 * CHUNK);
    }

    #[test]
    fn truncate_and_clear_drop_slots_and_spare_chunks() {
        let mut s: ChunkedSlab<u64> = sample(CHUNK + 10).into_iter().collect();
        s.truncate(CHUNK + 20);
        assert_eq!(s.len(), CHUNK + 10);
        s.truncate(5);
        assert_eq!(s.len(), 5);
        assert_eq!(s.capacity(), CHUNK);
        assert_eq!(s.get(5), None);
        s.push(None);
        assert_eq!(s[5], None);
        assert_eq!(s, sample(5).into_iter().chain([None]).collect());
        s.truncate(CHUNK);
        assert_eq!(s.len(), 6);
        s.clear();
        assert!(s.is_empty());
        assert_eq!(s.capacity(), 0);
        assert_eq!(s, ChunkedSlab::new());
        // Filling again across a boundary after a truncation.
        let want = sample(2 * CHUNK + 3);
        for v in &want {
            s.push(*v);
        }
        assert!(s.iter().eq(want.iter()));
    }

    /// Snapshots must not change: the slab's bytes are the `Vec`'s.
    #[test]
    fn serializes_as_a_vec() {
        let v = sample(5000);
        let s: ChunkedSlab<u64> = v.iter().copied().collect();
        let bytes = postcard::to_allocvec(&s).expect("serialize");
        assert_eq!(bytes, postcard::to_allocvec(&v).expect("serialize"));
        let back: ChunkedSlab<u64> = postcard::from_bytes(&bytes).expect("deserialize");
        assert_eq!(back, s);
        let as_vec: Vec<Option<u64>> = postcard::from_bytes(&bytes).expect("deserialize");
        assert_eq!(as_vec, v);
        let empty: ChunkedSlab<u64> = ChunkedSlab::new();
        assert_eq!(
            postcard::to_allocvec(&empty).expect("serialize"),
            postcard::to_allocvec(&Vec::<Option<u64>>::new()).expect("serialize")
        );
    }

    #[test]
    fn a_pool_reuses_what_is_given_back() {
        let mut p = SlabPool::default();
        let a = p.take("a").expect("room");
        let b = p.take("b").expect("room");
        assert_eq!((a, b), (0, 1));
        assert_eq!(p.give(a), Some("a"));
        assert_eq!(p.give(a), None, "given back twice");
        assert_eq!(p.get(a), None);
        assert_eq!(p.len(), 1);
        let c = p.take("c").expect("room");
        assert_eq!(c, a, "the free entry is taken first");
        assert_eq!(p.get(c), Some(&"c"));
        assert_eq!(p.get(7), None);
        assert_eq!(p.give(7), None);
        assert_eq!(p.iter().collect::<Vec<_>>(), vec![(0, &"c"), (1, &"b")]);
    }

    #[test]
    fn a_reserved_pool_takes_and_gives_within_its_room() {
        let mut p = SlabPool::default();
        p.reserve(CHUNK + 10);
        let room = p.memory_bytes();
        assert!(room >= SlabPool::<u64>::bytes_for(CHUNK + 10));
        let taken: Vec<u32> = (0..CHUNK as u64 + 10)
            .map(|v| p.take(v).expect("room"))
            .collect();
        for &i in &taken {
            p.give(i);
        }
        assert_eq!(p.memory_bytes(), room, "nothing grew");
        assert!(p.is_empty());
    }
}
