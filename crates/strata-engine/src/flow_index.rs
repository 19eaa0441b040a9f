//! An open-addressing hash index from a 64-bit hash to a `u32` slot number,
//! built for the unified flow table's fast path.
//!
//! Each bucket is one `u64`: the low 32 bits of the entry's hash (which also
//! fix its home bucket) and the value + 1 (0 = empty). Linear probing at a
//! load factor ≤ 1/2 keeps probes short and inside one or two cache lines;
//! deletion shifts followers back, so there are no tombstones and lookups
//! never slow down with churn. Because a bucket carries the hash bits, the
//! caller can read the home bucket of every packet in a batch first (all
//! loads independent, so the CPU overlaps the cache misses) and compare keys
//! afterwards — see [`FlowIndex::peek`].

const EMPTY: u64 = 0;

#[derive(Clone, Debug)]
pub struct FlowIndex {
    buckets: Vec<u64>,
    mask: usize,
    len: usize,
}

impl Default for FlowIndex {
    fn default() -> Self {
        FlowIndex::with_capacity(0)
    }
}

/// Buckets [`FlowIndex::peek`] looks at.
const PEEK_STEPS: usize = 8;

#[inline]
fn pack(hash: u64, value: u32) -> u64 {
    (hash & 0xffff_ffff) << 32 | (u64::from(value) + 1)
}

#[inline]
fn tag(b: u64) -> u64 {
    b >> 32
}

#[inline]
fn value(b: u64) -> u32 {
    ((b & 0xffff_ffff) - 1) as u32
}

impl FlowIndex {
    /// An index sized for `n` entries without growing.
    pub fn with_capacity(n: usize) -> FlowIndex {
        let buckets = (n.max(8) * 2).next_power_of_two();
        FlowIndex {
            buckets: vec![EMPTY; buckets],
            mask: buckets - 1,
            len: 0,
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
        self.buckets.len() * size_of::<u64>()
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        (hash as usize) & self.mask
    }

    /// The first value of `hash`'s probe run whose hash bits match (a
    /// candidate, not yet key-checked), looking at most `PEEK_STEPS`
    /// buckets — one or two cache lines. Used to start the memory loads
    /// of a whole batch before any key comparison; stopping at the home
    /// bucket would leave every packet whose home holds another flow to a
    /// miss of its own later.
    #[inline]
    pub fn peek(&self, hash: u64) -> Option<u32> {
        let t = hash & 0xffff_ffff;
        let mut i = self.home(hash);
        for _ in 0..PEEK_STEPS {
            let b = self.buckets[i];
            if b == EMPTY {
                return None;
            }
            if tag(b) == t {
                return Some(value(b));
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// The value whose hash is `hash` and for which `eq` holds.
    #[inline]
    pub fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let t = hash & 0xffff_ffff;
        let mut i = self.home(hash);
        loop {
            let b = self.buckets[i];
            if b == EMPTY {
                return None;
            }
            if tag(b) == t && eq(value(b)) {
                return Some(value(b));
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Insert `value` under `hash` (duplicates are the caller's concern).
    /// `rehash` gives the hash of any stored value, for growing.
    pub fn insert(&mut self, hash: u64, value: u32, rehash: impl Fn(u32) -> u64) {
        if (self.len + 1) * 2 > self.buckets.len() {
            self.grow(&rehash);
        }
        let mut i = self.home(hash);
        while self.buckets[i] != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.buckets[i] = pack(hash, value);
        self.len += 1;
    }

    fn grow(&mut self, rehash: &impl Fn(u32) -> u64) {
        let old = std::mem::take(&mut self.buckets);
        let n = (old.len() * 2).max(16);
        self.buckets = vec![EMPTY; n];
        self.mask = n - 1;
        for b in old {
            if b != EMPTY {
                let v = value(b);
                let h = rehash(v);
                let mut i = self.home(h);
                while self.buckets[i] != EMPTY {
                    i = (i + 1) & self.mask;
                }
                self.buckets[i] = pack(h, v);
            }
        }
    }

    /// Remove the entry `value` stored under `hash`; returns whether found.
    pub fn remove(&mut self, hash: u64, value_wanted: u32) -> bool {
        let t = hash & 0xffff_ffff;
        let mut i = self.home(hash);
        loop {
            let b = self.buckets[i];
            if b == EMPTY {
                return false;
            }
            if tag(b) == t && value(b) == value_wanted {
                break;
            }
            i = (i + 1) & self.mask;
        }
        // Backward-shift deletion: move later entries of the probe run into
        // the hole when their home allows it.
        let mut hole = i;
        let mut j = (i + 1) & self.mask;
        loop {
            let b = self.buckets[j];
            if b == EMPTY {
                break;
            }
            let home = (tag(b) as usize) & self.mask;
            // Distance from home to j vs. home to hole (cyclic).
            let dist_j = j.wrapping_sub(home) & self.mask;
            let dist_hole = hole.wrapping_sub(home) & self.mask;
            if dist_hole <= dist_j {
                self.buckets[hole] = b;
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        self.buckets[hole] = EMPTY;
        self.len -= 1;
        true
    }

    pub fn clear(&mut self) {
        self.buckets.iter_mut().for_each(|b| *b = EMPTY);
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn h(v: u32) -> u64 {
        // Deliberately clustered hashes to exercise probing and shifting.
        u64::from(v % 97).wrapping_mul(0x9e37_79b9) ^ (u64::from(v) << 40)
    }

    #[test]
    fn matches_a_hashmap_under_random_churn() {
        let mut idx = FlowIndex::default();
        let mut model: HashMap<u32, ()> = HashMap::new();
        let mut x = 12345u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x % 5000) as u32;
            if model.remove(&v).is_some() {
                assert!(idx.remove(h(v), v));
            } else {
                idx.insert(h(v), v, h);
                model.insert(v, ());
            }
            assert_eq!(idx.len(), model.len());
        }
        for v in 0..5000u32 {
            assert_eq!(
                idx.find(h(v), |c| c == v).is_some(),
                model.contains_key(&v),
                "{v}"
            );
        }
        assert!(!idx.remove(h(6000), 6000));
    }

    /// At the highest load the index runs at (just under 1/2), a value is
    /// often not in its home bucket; `peek` must still name it as the
    /// candidate for nearly every present value, or batches lose their
    /// early loads for those packets.
    #[test]
    fn peek_finds_values_displaced_from_home() {
        let mut idx = FlowIndex::default();
        let hash = |v: u32| {
            let x = u64::from(v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            x ^ x >> 29
        };
        let n = (1u32 << 17) - 2; // one below the next growth
        for v in 0..n {
            idx.insert(hash(v), v, hash);
        }
        assert_eq!(idx.buckets.len(), 1 << 18);
        let at_home = (0..n)
            .filter(|&v| idx.buckets[idx.home(hash(v))] == pack(hash(v), v))
            .count();
        let peeked = (0..n).filter(|&v| idx.peek(hash(v)) == Some(v)).count();
        let share = |k: usize| k as f64 / f64::from(n);
        eprintln!(
            "home bucket {:.3}, peek {:.3}",
            share(at_home),
            share(peeked)
        );
        assert!(share(at_home) < 0.8, "displacement expected at this load");
        assert!(share(peeked) > 0.99);
    }
}
