//! A bucketized cuckoo hash index from a 64-bit hash to a `u32` value,
//! built for the unified flow table's fast path.
//!
//! Every bucket is one 64-byte cache line holding [`WAYS`] entries: a
//! 16-bit tag (high hash bits; 0 = empty) and the value. An entry lives in
//! one of two buckets, its home (low hash bits) or the alternate, the home
//! XOR an offset derived from the tag alone — so an entry can be moved
//! between its buckets without knowing its key (partial-key cuckoo hashing,
//! as in MemC3 and DPDK's `rte_hash`). A lookup reads at most two cache
//! lines and usually one: inserts prefer the home bucket, and each bucket
//! counts the entries of its home that live in their alternate, so a
//! lookup that misses (every first packet of a flow) reads the alternate
//! only when that count is not 0 (at the highest load, for about 40% of
//! the buckets). A batch
//! prefetches each packet's home bucket as soon as the packet is hashed
//! ([`FlowIndex::prefetch`]), then compares tags ([`FlowIndex::peek`]) and
//! keys. (Plain loads in a tight loop were used before: they keep misses in
//! flight too, but nothing behind them retires until the data arrives;
//! prefetches let the work on earlier packets overlap the misses, 16–27%
//! faster at 1M connections together with huge pages, see `crate::hint`.)
//! The bucket array asks for huge pages when it spans 2 MiB or more.
//!
//! Why not linear probing: it needs a load factor ≤ ½ for short probes, so
//! 8-byte entries cost 16–32 bytes each; ten-way buckets run to 90% load at
//! 6.4 bytes an entry (two unified flows per connection: about 17 bytes a
//! connection at 1M connections instead of 34). Removal just clears the
//! slot (no tombstones, no shifting). When both buckets are full, an insert
//! moves entries along a short random walk; should even that fail (only
//! with a very full table or a broken hash), the table doubles, and past
//! that the entry goes to a small overflow list, so no hash distribution
//! can make an insert fail or the table grow without bound.
//!
//! The table doubles at 90% load, incrementally: the old buckets stay
//! searchable and each insert moves a few of them into the new table
//! ([`MOVE_STEP`]), so no packet's slow path re-hashes a whole table (at 2M
//! flows a stop-the-world doubling held one packet for a third of a
//! second). Nor does one zero the new table: it is a fresh mapping
//! ([`ZeroedArray`]), its pages zeroed by the kernel as inserts reach them
//! (filling it took one packet 36–56 ms at 590k connections). Moving
//! an entry needs its full hash, which only its flow's key gives
//! ([`Rehash`]): the moves of each insert are done in passes that first
//! ask for every flow, then for every new bucket, so their cache misses
//! overlap.

use crate::hint::ZeroedArray;

/// Entries per bucket: ten 2-byte tags (in three words, two lanes unused)
/// and ten 4-byte values fill one 64-byte cache line.
pub const WAYS: usize = 10;

/// Highest load (entries per slot) before the table doubles.
const MAX_LOAD_NUM: usize = 9;
const MAX_LOAD_DEN: usize = 10;

/// Moves tried by one insert before it gives up on the current size.
const MAX_KICKS: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Bucket {
    /// Four 16-bit tags per word (way `w` in lane `w % 4` of word
    /// `w / 4`), so they load as words. The two lanes past the last way
    /// hold the bucket's away bits and count (see [`Bucket::away`]).
    tags: [u64; 3],
    values: [u32; WAYS],
}

const EMPTY_BUCKET: Bucket = Bucket {
    tags: [0; 3],
    values: [0; WAYS],
};

impl Bucket {
    /// Bit `w` set for every way whose tag is `t`, and possibly for a way
    /// above one of those (the lowest bit set is always a true match, so
    /// callers check the tag or the key of each way they take).
    #[inline]
    fn matches(&self, t: u16) -> u32 {
        // Four 16-bit lanes per word, compared at once (SWAR zero-lane
        // test on `tags ^ t`): a fraction of the instructions of ten
        // scalar compares, with no `unsafe` SIMD.
        let [a, b, c] = self.tags;
        let m = lanes_equal(a, t) | lanes_equal(b, t) << 4 | lanes_equal(c, t) << 8;
        // The two lanes past the last way are padding.
        m & ((1 << WAYS) - 1)
    }

    /// The value of a way tagged `t` for which `eq` holds.
    #[inline(always)]
    fn find(&self, t: u16, eq: &mut impl FnMut(u32) -> bool) -> Option<u32> {
        let mut m = self.matches(t);
        while m != 0 {
            let w = m.trailing_zeros() as usize;
            if self.tag(w) == t && eq(self.values[w]) {
                return Some(self.values[w]);
            }
            m &= m - 1;
        }
        None
    }

    /// How many entries whose home is this bucket live in their alternate
    /// (lane 11), never fewer: while it is 0, a value not in this bucket
    /// is in neither, and a lookup that misses (every first packet) reads
    /// one line, not two. It can only be too high (an entry left without
    /// a slot, a bucket emptied by growth), which costs a read, never an
    /// answer; at `u16::MAX` it stays there.
    #[inline]
    fn away(&self) -> u16 {
        (self.tags[2] >> 48) as u16
    }

    /// One more entry of this home away.
    fn more_away(&mut self) {
        self.set_away_count(self.away().saturating_add(1));
    }

    /// One entry of this home back or gone (a count at `u16::MAX` may
    /// have missed increments: it stays).
    fn fewer_away(&mut self) {
        let n = self.away();
        if n != u16::MAX {
            self.set_away_count(n.saturating_sub(1));
        }
    }

    fn set_away_count(&mut self, n: u16) {
        self.tags[2] = self.tags[2] & !(0xffff << 48) | u64::from(n) << 48;
    }

    /// Whether way `w` holds an entry away from its home (lane 10, a bit
    /// per way).
    #[inline]
    fn is_away(&self, w: usize) -> bool {
        self.tags[2] >> (32 + w) & 1 != 0
    }

    fn set_away(&mut self, w: usize, away: bool) {
        let bit = 1u64 << (32 + w);
        self.tags[2] = if away {
            self.tags[2] | bit
        } else {
            self.tags[2] & !bit
        };
    }

    /// Put an entry in free or taken way `w`, `away` from its home or not.
    fn put(&mut self, w: usize, t: u16, v: u32, away: bool) {
        self.set_tag(w, t);
        self.values[w] = v;
        self.set_away(w, away);
    }

    /// This bucket emptied of its entries, keeping its away count (growth:
    /// entries of this home still in other, unmoved buckets must stay
    /// findable).
    fn emptied(&self) -> Bucket {
        let mut b = EMPTY_BUCKET;
        b.tags[2] = self.tags[2] & 0xffff << 48;
        b
    }

    #[inline]
    fn free_way(&self) -> Option<usize> {
        // Tag 0 marks a free way; the lowest match is exact.
        let m = self.matches(0);
        (m != 0).then(|| m.trailing_zeros() as usize)
    }

    #[inline]
    fn tag(&self, w: usize) -> u16 {
        (self.tags[w / 4] >> (16 * (w % 4))) as u16
    }

    #[inline]
    fn set_tag(&mut self, w: usize, t: u16) {
        let shift = 16 * (w % 4);
        let word = &mut self.tags[w / 4];
        *word = *word & !(0xffff << shift) | u64::from(t) << shift;
    }
}

#[derive(Clone, Debug)]
pub struct FlowIndex {
    buckets: ZeroedArray<Bucket>,
    mask: usize,
    /// While the table grows: the previous buckets, emptied into
    /// `buckets` a few at a time by later inserts (empty otherwise), their
    /// mask, and how many have been moved.
    old: ZeroedArray<Bucket>,
    old_mask: usize,
    moved: usize,
    len: usize,
    /// Entries that found no slot (full hash, value); empty unless the
    /// hash distribution is broken.
    overflow: Vec<(u64, u32)>,
    /// State of the victim choice in random walks (xorshift).
    rng: u64,
}

/// The hash a stored value was inserted under, which growing needs (the
/// index keeps only 16 bits of it). Any `Fn(u32) -> u64` is one; a table
/// whose hashes come from cold memory also says how to start loading it.
pub trait Rehash {
    /// The hash `v` was inserted under.
    fn rehash(&self, v: u32) -> u64;
    /// Start loading what [`Rehash::rehash`] of `v` reads (a hint).
    #[inline]
    fn prefetch(&self, _v: u32) {}
}

impl<F: Fn(u32) -> u64> Rehash for F {
    #[inline]
    fn rehash(&self, v: u32) -> u64 {
        self(v)
    }
}

/// Old buckets moved to the new table per insert while the table grows:
/// bounded work per insert (at most 80 entries re-hashed), and the move
/// ends long before the new table could fill.
pub const MOVE_STEP: usize = 8;

/// Home bucket of `hash` in a table with `mask`.
#[inline]
fn home_in(mask: usize, hash: u64) -> usize {
    (hash as usize) & mask
}

/// The other bucket of an entry tagged `t` that is in bucket `b` of a
/// table with `mask`.
#[inline]
fn alternate_in(mask: usize, b: usize, t: u16) -> usize {
    // Odd offset: the two buckets always differ.
    let off = (u64::from(t).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize | 1;
    b ^ (off & mask)
}

/// The first value tagged `t` in `hash`'s two buckets of `table`.
#[inline]
fn peek_in(table: &[Bucket], mask: usize, hash: u64, t: u16) -> Option<u32> {
    let b = home_in(mask, hash);
    let first = table.get(b)?;
    let m = first.matches(t);
    if m != 0 {
        return Some(first.values[m.trailing_zeros() as usize]);
    }
    if first.away() == 0 {
        return None;
    }
    let second = table.get(alternate_in(mask, b, t))?;
    let m = second.matches(t);
    (m != 0).then(|| second.values[m.trailing_zeros() as usize])
}

/// The value tagged `t` in `hash`'s two buckets of `table` for which `eq`
/// holds.
#[inline]
fn find_in(
    table: &[Bucket],
    mask: usize,
    hash: u64,
    t: u16,
    eq: &mut impl FnMut(u32) -> bool,
) -> Option<u32> {
    let home = home_in(mask, hash);
    let first = table.get(home)?;
    if let Some(v) = first.find(t, eq) {
        return Some(v);
    }
    if first.away() == 0 {
        return None;
    }
    table.get(alternate_in(mask, home, t))?.find(t, eq)
}

/// Clear the way of `hash`'s two buckets of `table` that holds `value`;
/// whether there was one.
fn remove_in(table: &mut [Bucket], mask: usize, hash: u64, t: u16, value: u32) -> bool {
    let home = home_in(mask, hash);
    for b in [home, alternate_in(mask, home, t)] {
        let Some(bucket) = table.get_mut(b) else {
            return false;
        };
        let mut m = bucket.matches(t);
        while m != 0 {
            let w = m.trailing_zeros() as usize;
            if bucket.tag(w) == t && bucket.values[w] == value {
                let away = bucket.is_away(w);
                bucket.put(w, 0, 0, false);
                if away && let Some(h) = table.get_mut(home) {
                    h.fewer_away();
                }
                return true;
            }
            m &= m - 1;
        }
    }
    false
}

impl Default for FlowIndex {
    fn default() -> Self {
        FlowIndex::with_capacity(0)
    }
}

/// Bit `i` (0..4) set when lane `i` of `word` is `t` (see
/// [`Bucket::matches`] for the false positives allowed above a match).
#[inline]
fn lanes_equal(word: u64, t: u16) -> u32 {
    const LO: u64 = 0x0001_0001_0001_0001;
    const HI: u64 = 0x8000_8000_8000_8000;
    let x = word ^ (u64::from(t) * LO);
    let zero = x.wrapping_sub(LO) & !x & HI;
    // Lane flags at bits 15, 31, 47, 63 gathered into bits 45..48 by one
    // multiply (the partial products never overlap, so nothing carries).
    (((zero >> 15).wrapping_mul(0x0000_2000_4000_8001) >> 45) & 0xf) as u32
}

/// The entry tag of `hash`: its top 16 bits, never 0 (0 marks an empty way).
#[inline]
fn tag(hash: u64) -> u16 {
    ((hash >> 48) as u16).max(1)
}

/// `n` empty buckets, in huge pages when the array is big enough.
///
/// An empty bucket is all zeros, so a big array is a fresh mapping
/// ([`ZeroedArray`]) whose pages the kernel zeroes when an insert first
/// writes them. Filling it here instead put the whole cost in the one
/// packet whose insert doubled the table: 16 MiB took 36–56 ms on this VM
/// (a first touch of a huge page costs it about 5 ms), one packet's slow
/// path at 590k connections.
fn bucket_array(n: usize) -> ZeroedArray<Bucket> {
    ZeroedArray::new(n)
}

/// Buckets needed for `n` entries at the highest load, a power of two ≥ 2.
fn buckets_for(n: usize) -> usize {
    (n * MAX_LOAD_DEN)
        .div_ceil(MAX_LOAD_NUM * WAYS)
        .next_power_of_two()
        .max(2)
}

impl FlowIndex {
    /// Heap bytes of an index sized for `n` entries.
    pub fn bytes_for(n: usize) -> usize {
        buckets_for(n).saturating_mul(size_of::<Bucket>())
    }

    /// An index sized for `n` entries without growing.
    pub fn with_capacity(n: usize) -> FlowIndex {
        let buckets = buckets_for(n);
        FlowIndex {
            buckets: bucket_array(buckets),
            mask: buckets - 1,
            old: ZeroedArray::default(),
            old_mask: 0,
            moved: 0,
            len: 0,
            overflow: Vec::new(),
            rng: 0x2545_f491_4f6c_dd1d,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes used.
    pub fn memory_bytes(&self) -> usize {
        self.buckets.memory_bytes()
            + self.old.memory_bytes()
            + self.overflow.capacity() * size_of::<(u64, u32)>()
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        home_in(self.mask, hash)
    }

    #[inline]
    fn alternate(&self, b: usize, t: u16) -> usize {
        alternate_in(self.mask, b, t)
    }

    /// Start loading `hash`'s home bucket (a prefetch hint: the lookup
    /// that follows finds the line in cache).
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        if let Some(b) = self.buckets.get(self.home(hash)) {
            crate::hint::prefetch(b);
        }
    }

    /// The first value stored under `hash`'s tag in its home bucket, else
    /// in its alternate (a candidate, not yet key-checked). Used to start
    /// the memory loads of a whole batch before any key comparison.
    #[inline]
    pub fn peek(&self, hash: u64) -> Option<u32> {
        let t = tag(hash);
        peek_in(&self.buckets, self.mask, hash, t).or_else(|| {
            if self.old.is_empty() {
                None
            } else {
                peek_in(&self.old, self.old_mask, hash, t)
            }
        })
    }

    /// The value whose hash is `hash` and for which `eq` holds.
    #[inline]
    pub fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let t = tag(hash);
        if let Some(v) = find_in(&self.buckets, self.mask, hash, t, &mut eq) {
            return Some(v);
        }
        if self.old.is_empty() && self.overflow.is_empty() {
            return None;
        }
        self.find_elsewhere(hash, t, eq)
    }

    /// [`FlowIndex::find`] in the table being moved and the overflow list.
    #[cold]
    fn find_elsewhere(&self, hash: u64, t: u16, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        if !self.old.is_empty()
            && let Some(v) = find_in(&self.old, self.old_mask, hash, t, &mut eq)
        {
            return Some(v);
        }
        self.overflow
            .iter()
            .find(|&&(h, v)| h == hash && eq(v))
            .map(|&(_, v)| v)
    }

    /// Insert `value` under `hash` (duplicates are the caller's concern).
    /// `rehash` gives the hash of any stored value, for growing. (Always
    /// inlined: left to itself the compiler called it out of line from a
    /// new layer flow's insert once the table gained a second caller, 24
    /// instructions more per first packet.)
    #[inline(always)]
    pub fn insert(&mut self, hash: u64, value: u32, rehash: impl Rehash) {
        if !self.old.is_empty() {
            self.move_some(MOVE_STEP, &rehash);
        }
        if (self.len + 1) * MAX_LOAD_DEN > self.slots() * MAX_LOAD_NUM {
            self.grow(&rehash);
        }
        self.len += 1;
        if let Some((t, v)) = self.place(hash, value) {
            // Homeless after the walk: double the table (once per insert;
            // at low load a failure means a broken hash, kept in overflow).
            let homeless = if v == value { hash } else { rehash.rehash(v) };
            debug_assert_eq!(tag(homeless), t);
            if self.old.is_empty() && self.len * MAX_LOAD_DEN * 2 > self.slots() * MAX_LOAD_NUM {
                self.grow(&rehash);
            }
            self.place_or_overflow(homeless, v, &rehash);
        }
    }

    fn slots(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Put `(hash, value)` in a free way of its buckets, moving entries
    /// along a random walk if both are full. Returns the entry left without
    /// a slot, if any (not always the one given).
    fn place(&mut self, hash: u64, value: u32) -> Option<(u16, u32)> {
        let t = tag(hash);
        let home = self.home(hash);
        let alt = self.alternate(home, t);
        if let Some(w) = self.buckets[home].free_way() {
            self.buckets[home].put(w, t, value, false);
            return None;
        }
        if let Some(w) = self.buckets[alt].free_way() {
            self.buckets[alt].put(w, t, value, true);
            self.buckets[home].more_away();
            return None;
        }
        // A random walk. The entry in hand is `away` from its home when it
        // goes into `b`; every entry moving into its alternate counts in
        // its home, every entry leaving it uncounts.
        let (mut t, mut v) = (t, value);
        let (mut b, mut away) = if self.next_random() & 1 == 0 {
            (home, false)
        } else {
            self.buckets[home].more_away();
            (alt, true)
        };
        for _ in 0..MAX_KICKS {
            let w = (self.next_random() % WAYS as u64) as usize;
            let bucket = &mut self.buckets[b];
            let (out_t, out_v, out_away) = (bucket.tag(w), bucket.values[w], bucket.is_away(w));
            bucket.put(w, t, v, away);
            (t, v) = (out_t, out_v);
            let next = self.alternate(b, t);
            if out_away {
                // Back home (`next`).
                self.buckets[next].fewer_away();
            } else {
                // Out of its home (`b`).
                self.buckets[b].more_away();
            }
            (b, away) = (next, !out_away);
            if let Some(w) = self.buckets[b].free_way() {
                self.buckets[b].put(w, t, v, away);
                return None;
            }
        }
        // Left without a slot: if it was counted away, the count stays one
        // too high (safe).
        Some((t, v))
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// Start doubling: the current buckets become the old table, moved
    /// into a new one of twice the size by later inserts
    /// ([`FlowIndex::move_some`]), so no single insert re-hashes the whole
    /// table (at 2M flows that took a third of a second in one packet).
    fn grow(&mut self, rehash: &impl Rehash) {
        // A growth before the previous one has finished (not expected:
        // each insert moves several buckets) finishes it first.
        self.move_some(usize::MAX, rehash);
        let n = (self.buckets.len() * 2).max(2);
        self.old = std::mem::replace(&mut self.buckets, bucket_array(n));
        self.old_mask = self.mask;
        self.mask = n - 1;
        self.moved = 0;
    }

    /// Make room for `n` entries in all, so that inserts up to that many
    /// neither grow the index nor fault its pages in: the entries are
    /// moved to a table of that size at once (a control-plane call, not a
    /// packet's) and every page of the bucket array is written now.
    pub fn reserve(&mut self, n: usize, rehash: impl Rehash) {
        self.move_some(usize::MAX, &rehash);
        let want = buckets_for(n.max(self.len));
        if want > self.buckets.len() {
            self.old = std::mem::replace(&mut self.buckets, bucket_array(want));
            self.old_mask = self.mask;
            self.mask = want - 1;
            self.moved = 0;
            self.move_some(usize::MAX, &rehash);
        }
        self.buckets.prefault();
    }

    /// Move up to `step` buckets of the old table into the current one.
    fn move_some(&mut self, step: usize, rehash: &impl Rehash) {
        let end = self.moved.saturating_add(step).min(self.old.len());
        // In runs of MOVE_STEP buckets, three passes: re-hashing reads each
        // entry's key from its flow, and placing writes a random bucket of
        // the new table, both cold in a table big enough to grow; asking
        // for all of a run's lines first lets their misses overlap instead
        // of following one another (the packets right after a doubling
        // took 62% less time, `WINDOW=16384 examples/growth`).
        let mut moving = [(0u64, 0u32); MOVE_STEP * WAYS];
        for run in (self.moved..end).step_by(MOVE_STEP) {
            let run = run..(run + MOVE_STEP).min(end);
            for b in &self.old[run.clone()] {
                for w in 0..WAYS {
                    if b.tag(w) != 0 {
                        rehash.prefetch(b.values[w]);
                    }
                }
            }
            let mut n = 0;
            for b in run {
                let bucket = self.old[b];
                self.old[b] = bucket.emptied();
                for w in 0..WAYS {
                    if bucket.tag(w) != 0 {
                        let v = bucket.values[w];
                        let h = rehash.rehash(v);
                        self.prefetch(h);
                        moving[n] = (h, v);
                        n += 1;
                    }
                }
            }
            for &(h, v) in &moving[..n] {
                self.place_or_overflow(h, v, rehash);
            }
        }
        self.moved = end;
        if self.moved == self.old.len() {
            self.old = ZeroedArray::default();
            self.moved = 0;
        }
    }

    /// [`FlowIndex::place`], keeping whatever entry it leaves without a
    /// slot in the overflow list.
    fn place_or_overflow(&mut self, hash: u64, value: u32, rehash: &impl Rehash) {
        if let Some((_, left)) = self.place(hash, value) {
            let h = if left == value {
                hash
            } else {
                rehash.rehash(left)
            };
            self.overflow.push((h, left));
        }
    }

    /// Remove the entry `value` stored under `hash`; returns whether found.
    pub fn remove(&mut self, hash: u64, value_wanted: u32) -> bool {
        let t = tag(hash);
        let found = remove_in(&mut self.buckets, self.mask, hash, t, value_wanted)
            || (!self.old.is_empty()
                && remove_in(&mut self.old, self.old_mask, hash, t, value_wanted))
            || match self
                .overflow
                .iter()
                .position(|&(h, v)| h == hash && v == value_wanted)
            {
                Some(i) => {
                    self.overflow.swap_remove(i);
                    true
                }
                None => false,
            };
        if found {
            self.len -= 1;
        }
        found
    }

    /// Check the structure against `rehash` (the hash of every stored
    /// value): each entry sits in its home or alternate bucket of its
    /// table (or the overflow list) under its hash's tag, and the count is
    /// right.
    pub fn verify(&self, rehash: impl Fn(u32) -> u64) -> Result<(), String> {
        let mut n = 0;
        for (table, mask) in [(&self.buckets, self.mask), (&self.old, self.old_mask)] {
            // Entries away from each home bucket, to check its count.
            let mut away = vec![0usize; table.len()];
            for (b, bucket) in table.iter().enumerate() {
                for w in (0..WAYS).filter(|&w| bucket.tag(w) != 0) {
                    n += 1;
                    let (t, v) = (bucket.tag(w), bucket.values[w]);
                    let h = rehash(v);
                    if tag(h) != t {
                        return Err(format!(
                            "value {v}: tag {t:#x}, its hash gives {:#x}",
                            tag(h)
                        ));
                    }
                    let home = home_in(mask, h);
                    if b != home && b != alternate_in(mask, home, t) {
                        return Err(format!("value {v} in bucket {b}, neither of its two"));
                    }
                    if bucket.is_away(w) != (b != home) {
                        return Err(format!("value {v} in bucket {b}: wrong away bit"));
                    }
                    if b != home {
                        away[home] += 1;
                    }
                }
            }
            for (b, bucket) in table.iter().enumerate() {
                if usize::from(bucket.away()) < away[b].min(usize::from(u16::MAX)) {
                    return Err(format!(
                        "bucket {b} counts {} entries away, {} are",
                        bucket.away(),
                        away[b]
                    ));
                }
            }
        }
        for &(h, v) in &self.overflow {
            n += 1;
            if rehash(v) != h {
                return Err(format!("value {v} overflowed under another hash"));
            }
        }
        if n != self.len {
            return Err(format!("{n} entries stored, length says {}", self.len));
        }
        Ok(())
    }

    pub fn clear(&mut self) {
        self.buckets.iter_mut().for_each(|b| *b = EMPTY_BUCKET);
        self.old = ZeroedArray::default();
        self.moved = 0;
        self.overflow.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A well-mixed hash (as the flow tables' seeded hashes are).
    fn mixed(v: u32) -> u64 {
        let x = u64::from(v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^ x >> 29
    }

    /// Deliberately clustered hashes: 7 home buckets and 3 tags, so at most
    /// 28 buckets are usable: buckets fill, walks fail, entries overflow.
    fn clustered(v: u32) -> u64 {
        u64::from(v % 7).wrapping_mul(0x9e37_79b9) ^ (u64::from(v % 3) << 52)
    }

    /// A new table is all zeros (a fresh mapping when big, a zeroed vector
    /// when small), which must read as empty buckets.
    #[test]
    fn a_zeroed_bucket_is_empty() {
        assert_eq!(<Bucket as bytemuck::Zeroable>::zeroed(), EMPTY_BUCKET);
        let big = bucket_array(1 << 16);
        assert!(big.iter().all(|b| *b == EMPTY_BUCKET));
        let idx = FlowIndex::with_capacity(500_000);
        assert_eq!((idx.len(), idx.find(mixed(7), |_| true)), (0, None));
    }

    /// A reservation moves what the index holds to a table of its size at
    /// once, mid-growth too; inserts up to it then never grow the table.
    #[test]
    fn inserts_up_to_a_reservation_never_grow_the_index() {
        let mut idx = FlowIndex::default();
        // Stop right after a doubling began (old buckets still to move).
        let mut v = 0;
        while idx.old.is_empty() || v < 1000 {
            idx.insert(mixed(v), v, mixed);
            v += 1;
        }
        idx.reserve(200_000, mixed);
        assert!(idx.old.is_empty());
        assert_eq!(idx.verify(mixed), Ok(()));
        let buckets = idx.buckets.len();
        while v < 200_000 {
            idx.insert(mixed(v), v, mixed);
            v += 1;
        }
        assert_eq!(idx.buckets.len(), buckets, "grew");
        assert!(idx.old.is_empty());
        assert_eq!(idx.len(), 200_000);
        assert_eq!(idx.verify(mixed), Ok(()));
        assert!((0..200_000).all(|v| idx.find(mixed(v), |c| c == v) == Some(v)));
        // Reserving less than it holds keeps everything.
        idx.reserve(10, mixed);
        assert_eq!((idx.len(), idx.buckets.len()), (200_000, buckets));
    }

    fn churn(hash: fn(u32) -> u64, values: u32, steps: usize) -> FlowIndex {
        let mut idx = FlowIndex::default();
        let mut model: HashMap<u32, ()> = HashMap::new();
        let mut x = 12345u64;
        for _ in 0..steps {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x % u64::from(values)) as u32;
            if model.remove(&v).is_some() {
                assert!(idx.remove(hash(v), v));
            } else {
                idx.insert(hash(v), v, hash);
                model.insert(v, ());
            }
            assert_eq!(idx.len(), model.len());
        }
        for v in 0..values {
            assert_eq!(
                idx.find(hash(v), |c| c == v).is_some(),
                model.contains_key(&v),
                "{v}"
            );
        }
        assert!(!idx.remove(hash(values + 1), values + 1));
        assert_eq!(idx.verify(hash), Ok(()));
        idx
    }

    #[test]
    fn verify_finds_misplaced_and_lost_entries() {
        let mut idx = FlowIndex::default();
        for v in 0..1000 {
            idx.insert(mixed(v), v, mixed);
        }
        // Finish any growth still under way, so the entries are where the
        // mutations below expect them.
        idx.move_some(usize::MAX, &mixed);
        assert_eq!(idx.verify(mixed), Ok(()));
        // An entry moved to a bucket that is neither of its two.
        let mut moved = idx.clone();
        let h = mixed(7);
        let (home, t) = (moved.home(h), tag(h));
        let alt = moved.alternate(home, t);
        let from = if moved.buckets[home].find(t, &mut |v| v == 7).is_some() {
            home
        } else {
            alt
        };
        let w = (0..WAYS)
            .find(|&w| moved.buckets[from].values[w] == 7 && moved.buckets[from].tag(w) == t);
        let w = w.expect("stored");
        moved.buckets[from].set_tag(w, 0);
        let other = (0..moved.buckets.len())
            .find(|&b| b != home && b != alt && moved.buckets[b].free_way().is_some())
            .expect("a bucket with room");
        let free = moved.buckets[other].free_way().expect("room");
        moved.buckets[other].set_tag(free, t);
        moved.buckets[other].values[free] = 7;
        assert!(moved.verify(mixed).is_err());
        // An entry dropped without the count.
        let mut lost = idx.clone();
        lost.buckets[from].set_tag(w, 0);
        assert!(lost.verify(mixed).unwrap_err().contains("length"));
        // A home whose entries away are not all counted: lookups of them
        // would stop at the home bucket.
        let mut under = idx.clone();
        let b = (0..under.buckets.len())
            .find(|&b| under.buckets[b].away() > 0)
            .expect("some entry away at this load");
        under.buckets[b].fewer_away();
        assert!(under.verify(mixed).unwrap_err().contains("away"));
    }

    /// A miss reads the alternate bucket only when its home has entries
    /// away: the counts stay exact under churn with a well-mixed hash
    /// (never drifting up, which would cost reads), and even at the
    /// highest load most buckets have none away.
    #[test]
    fn misses_read_the_alternate_only_when_entries_are_away() {
        let exact = |idx: &FlowIndex| {
            let mut away = vec![0u16; idx.buckets.len()];
            for (b, bucket) in idx.buckets.iter().enumerate() {
                for w in (0..WAYS).filter(|&w| bucket.tag(w) != 0) {
                    let home = idx.home(mixed(bucket.values[w]));
                    if home != b {
                        away[home] += 1;
                    }
                }
            }
            idx.buckets.iter().map(|b| b.away()).eq(away)
        };
        let mut idx = churn(mixed, 50_000, 300_000);
        idx.move_some(usize::MAX, &mixed);
        assert!(exact(&idx));
        let mut idx = FlowIndex::default();
        let top = (16_384 * WAYS * MAX_LOAD_NUM / MAX_LOAD_DEN) as u32;
        for v in 0..top {
            idx.insert(mixed(v), v, mixed);
        }
        assert_eq!(idx.buckets.len(), 1 << 14);
        assert!(exact(&idx));
        let quiet = idx.buckets.iter().filter(|b| b.away() == 0).count();
        let share = quiet as f64 / idx.buckets.len() as f64;
        eprintln!("90% load: {share:.3} of homes have no entry away");
        assert!(share > 0.5, "{share}");
        // Every value is still found, and absent ones are not.
        for v in 0..top {
            assert_eq!(idx.find(mixed(v), |c| c == v), Some(v));
            assert!(idx.peek(mixed(v)).is_some());
        }
        for v in top..top + 1000 {
            assert_eq!(idx.find(mixed(v), |c| c == v), None);
        }
        // Removing every entry away brings every count back to 0.
        for v in 0..top {
            let h = mixed(v);
            if idx.buckets[idx.home(h)]
                .find(tag(h), &mut |c| c == v)
                .is_none()
            {
                assert!(idx.remove(h, v));
            }
        }
        assert!(idx.buckets.iter().all(|b| b.away() == 0));
        assert_eq!(idx.verify(mixed), Ok(()));
    }

    #[test]
    fn matches_a_hashmap_under_random_churn() {
        let idx = churn(mixed, 50_000, 300_000);
        assert!(idx.overflow.is_empty(), "a mixed hash never overflows");
    }

    #[test]
    fn clustered_hashes_stay_correct_and_bounded() {
        let idx = churn(clustered, 3000, 20_000);
        // Growing cannot help a hash with 7 home buckets: the entries that
        // find no slot overflow instead of doubling the table again and
        // again.
        assert!(!idx.overflow.is_empty());
        assert!(
            idx.buckets.len() <= 4 * buckets_for(3000),
            "{}",
            idx.buckets.len()
        );
    }

    #[test]
    fn fills_to_the_highest_load_before_doubling() {
        let mut idx = FlowIndex::default();
        let n = 1 << 17;
        for v in 0..n {
            idx.insert(mixed(v), v, mixed);
        }
        let load = |i: &FlowIndex| i.len() as f64 / i.slots() as f64;
        // 2^17 entries in 2^14 ten-way buckets: 80% full, no overflow.
        assert_eq!(idx.buckets.len(), 1 << 14, "load {:.3}", load(&idx));
        assert!(idx.overflow.is_empty());
        for v in 0..n {
            assert_eq!(idx.find(mixed(v), |c| c == v), Some(v));
        }
        // Up to 90%: still no doubling and no overflow.
        let top = (idx.slots() * MAX_LOAD_NUM / MAX_LOAD_DEN) as u32;
        for v in n..top {
            idx.insert(mixed(v), v, mixed);
        }
        assert_eq!(idx.buckets.len(), 1 << 14, "load {:.3}", load(&idx));
        assert!(idx.overflow.is_empty());
        idx.insert(mixed(top), top, mixed);
        assert_eq!(idx.buckets.len(), 1 << 15);
        for v in 0..=top {
            assert_eq!(idx.find(mixed(v), |c| c == v), Some(v));
        }
    }

    /// At the highest load, many values are not in their home bucket;
    /// `peek` must still name nearly every present value as its candidate,
    /// or batches lose their early loads for those packets.
    #[test]
    fn peek_finds_values_displaced_from_home() {
        let mut idx = FlowIndex::default();
        let top = (16_384 * WAYS * MAX_LOAD_NUM / MAX_LOAD_DEN) as u32;
        for v in 0..top {
            idx.insert(mixed(v), v, mixed);
        }
        assert_eq!(idx.buckets.len(), 1 << 14);
        let at_home = (0..top)
            .filter(|&v| {
                let h = mixed(v);
                let b = &idx.buckets[idx.home(h)];
                b.matches(tag(h)) != 0 && b.values.contains(&v)
            })
            .count();
        let peeked = (0..top).filter(|&v| idx.peek(mixed(v)) == Some(v)).count();
        let share = |k: usize| k as f64 / f64::from(top);
        eprintln!(
            "home bucket {:.3}, peek {:.3}",
            share(at_home),
            share(peeked)
        );
        assert!(share(at_home) < 0.95, "displacement expected at this load");
        assert!(share(peeked) > 0.99);
    }

    #[test]
    fn lane_matches_are_exact_at_the_lowest_bit() {
        let mut b = EMPTY_BUCKET;
        let tags = [7u16, 6, 7, 0x8007, 1, 7, 0xffff, 7, 3, 7];
        for (w, &t) in tags.iter().enumerate() {
            b.set_tag(w, t);
        }
        let m = b.matches(7);
        let exact: u32 = (0..WAYS).filter(|&w| tags[w] == 7).map(|w| 1 << w).sum();
        // Every true match is flagged; anything else flagged lies above one.
        assert_eq!(m & exact, exact);
        assert_eq!(m.trailing_zeros(), exact.trailing_zeros());
        assert_eq!(b.matches(0x1234), 0);
        assert_eq!(b.matches(0xffff), 1 << 6);
        for t in [1u16, 2, 0x8000, 0xfffe] {
            for w in 0..WAYS {
                let mut b = EMPTY_BUCKET;
                b.set_tag(w, t);
                let m = b.matches(t);
                assert_eq!(m.trailing_zeros() as usize, w, "tag {t:#x} way {w}");
                assert!(m < 1 << WAYS);
            }
        }
    }

    /// A growing table asks for each moved entry's flow (`Rehash::prefetch`)
    /// before it re-hashes it, so that a run's misses overlap.
    #[test]
    fn growth_asks_for_each_moved_entry_before_rehashing_it() {
        use std::cell::{Cell, RefCell};
        use std::collections::HashSet;
        /// Records prefetches; counts re-hashes of values not asked for.
        struct Watch {
            asked: RefCell<HashSet<u32>>,
            rehashed: Cell<usize>,
            unasked: Cell<usize>,
        }
        impl Rehash for &Watch {
            fn rehash(&self, v: u32) -> u64 {
                self.rehashed.set(self.rehashed.get() + 1);
                if !self.asked.borrow_mut().remove(&v) {
                    self.unasked.set(self.unasked.get() + 1);
                }
                mixed(v)
            }
            fn prefetch(&self, v: u32) {
                self.asked.borrow_mut().insert(v);
            }
        }
        let watch = Watch {
            asked: RefCell::default(),
            rehashed: Cell::new(0),
            unasked: Cell::new(0),
        };
        let mut idx = FlowIndex::default();
        for v in 0..100_000u32 {
            idx.insert(mixed(v), v, &watch);
        }
        // Every doubling moved every entry; only entries a full bucket
        // displaces (re-hashed to be kept) were not asked for first.
        let (rehashed, unasked) = (watch.rehashed.get(), watch.unasked.get());
        assert!(rehashed > 100_000, "{rehashed} re-hashes");
        assert!(
            unasked * 100 < rehashed,
            "{unasked} of {rehashed} not prefetched"
        );
        assert!(watch.asked.borrow().is_empty());
        assert_eq!(idx.verify(mixed), Ok(()));
        for v in 0..100_000u32 {
            assert_eq!(idx.find(mixed(v), |c| c == v), Some(v));
        }
    }

    /// Growing moves the old buckets a few per insert: no insert re-hashes
    /// more than `MOVE_STEP` buckets' worth of entries, every entry stays
    /// findable (and removable) while the move is under way, and the old
    /// table is freed when it is done.
    #[test]
    fn growth_is_incremental() {
        use std::cell::Cell;
        let rehashes = Cell::new(0usize);
        let counted = |v: u32| {
            rehashes.set(rehashes.get() + 1);
            mixed(v)
        };
        let mut idx = FlowIndex::default();
        let mut worst = 0;
        let mut saw_move = false;
        let n = 200_000u32;
        for v in 0..n {
            rehashes.set(0);
            idx.insert(mixed(v), v, counted);
            worst = worst.max(rehashes.get());
            if !idx.old.is_empty() {
                saw_move = true;
                // Mid-move: an early value, the newest, and one removed
                // and put back are all found.
                assert_eq!(idx.find(mixed(0), |c| c == 0), Some(0));
                assert_eq!(idx.peek(mixed(v)), Some(v));
                assert!(idx.remove(mixed(v / 2), v / 2));
                assert_eq!(idx.find(mixed(v / 2), |c| c == v / 2), None);
                idx.insert(mixed(v / 2), v / 2, mixed);
            }
        }
        assert!(saw_move);
        // A walk's homeless entry can cost one more.
        assert!(
            worst <= MOVE_STEP * WAYS + 1,
            "{worst} re-hashes in one insert"
        );
        assert_eq!(idx.verify(mixed), Ok(()));
        for v in 0..n {
            assert_eq!(idx.find(mixed(v), |c| c == v), Some(v));
        }
        // Enough inserts finish any move under way.
        let before = idx.len();
        for v in n..n + 100_000 {
            idx.insert(mixed(v), v, mixed);
        }
        assert_eq!(idx.len(), before + 100_000);
        assert_eq!(idx.verify(mixed), Ok(()));
    }

    /// A saturated away count stays saturated (it may have missed
    /// increments), and a count never goes below 0.
    #[test]
    fn away_counts_saturate_and_stay() {
        let mut b = EMPTY_BUCKET;
        b.fewer_away();
        assert_eq!(b.away(), 0);
        b.set_away_count(u16::MAX - 1);
        b.more_away();
        b.more_away();
        assert_eq!(b.away(), u16::MAX);
        b.fewer_away();
        assert_eq!(b.away(), u16::MAX);
        // The count's lane leaves the tags and away bits alone.
        b.put(9, 0xbeef, 7, true);
        assert_eq!((b.tag(9), b.is_away(9), b.away()), (0xbeef, true, u16::MAX));
        assert_eq!(b.matches(0xbeef), 1 << 9);
    }

    #[test]
    fn buckets_are_one_cache_line() {
        assert_eq!(size_of::<Bucket>(), 64);
        assert_eq!(align_of::<Bucket>(), 64);
    }
}
