//! A table of shared values named by 32-bit ids, each stored once with the
//! number of holders naming it, freed with the last.
//!
//! Flow tables hold millions of entries whose bulkier parts repeat across
//! many of them (header contexts, counter-slot lists); an entry keeps a
//! 4-byte id instead of the value or an 8-byte pointer. Holders take and
//! drop references explicitly ([`SharedTable::acquire`],
//! [`SharedTable::release`]); after a restore, [`SharedTable::rebuild`]
//! recounts them from the holders and refuses ids that name nothing. The
//! values' hash is the owner's (seeded per table with a
//! [`crate::flow_table::TableSeed`]: values come from packets and
//! policies).

use hashbrown::HashTable;
use serde::{Deserialize, Serialize};

/// Shared values by id. Only the values are serialized.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SharedTable<T> {
    /// By id; `None` is a free id.
    entries: Vec<Option<T>>,
    /// Holders of each id (rebuilt on restore).
    #[serde(skip)]
    refs: Vec<u32>,
    #[serde(skip)]
    free: Vec<u32>,
    /// Ids by value hash.
    #[serde(skip)]
    index: HashTable<u32>,
}

impl<T> Default for SharedTable<T> {
    fn default() -> Self {
        SharedTable {
            entries: Vec::new(),
            refs: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
        }
    }
}

impl<T> SharedTable<T> {
    /// A reference on the value equal to the one `is` recognizes (hashing
    /// to `h` under `hash`), stored with `make` if there is none yet.
    pub fn acquire(
        &mut self,
        h: u64,
        is: impl Fn(&T) -> bool,
        make: impl FnOnce() -> T,
        hash: impl Fn(&T) -> u64,
    ) -> u32 {
        let entries = &self.entries;
        if let Some(&id) = self
            .index
            .find(h, |&id| entries[id as usize].as_ref().is_some_and(&is))
        {
            self.refs[id as usize] += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = Some(make());
                self.refs[id as usize] = 1;
                id
            }
            None => {
                self.entries.push(Some(make()));
                self.refs.push(1);
                (self.entries.len() - 1) as u32
            }
        };
        let entries = &self.entries;
        self.index
            .insert_unique(h, id, |&v| value_hash(entries, &hash, v));
        id
    }

    /// Drop one reference on `id` (freeing the value with the last). Ids
    /// not held are ignored.
    pub fn release(&mut self, id: u32, hash: impl Fn(&T) -> u64) {
        let Some(r) = self.refs.get_mut(id as usize).filter(|r| **r > 0) else {
            return;
        };
        *r -= 1;
        if *r > 0 {
            return;
        }
        if let Some(v) = self.entries[id as usize].take()
            && let Ok(e) = self.index.find_entry(hash(&v), |&x| x == id)
        {
            e.remove();
        }
        self.free.push(id);
    }

    #[inline]
    pub fn get(&self, id: u32) -> Option<&T> {
        self.entries.get(id as usize)?.as_ref()
    }

    /// Room for `n` more values: taking them allocates nothing (but what
    /// a value holds beyond itself), nor does freeing them all.
    pub fn reserve(&mut self, n: usize, hash: impl Fn(&T) -> u64) {
        let fresh = n.saturating_sub(self.free.len());
        self.entries.reserve(fresh);
        self.refs.reserve(fresh);
        // Every id may be freed at once.
        let ids = self.entries.len() + fresh;
        self.free.reserve(ids.saturating_sub(self.free.len()));
        let entries = &self.entries;
        self.index.reserve(n, |&v| value_hash(entries, &hash, v));
    }

    /// Heap bytes [`SharedTable::reserve`] takes for `n` values (a bound:
    /// an entry, its count, a free-list place, an index entry at 7/8).
    pub fn reserve_bytes(n: usize) -> usize {
        n.saturating_mul(size_of::<Option<T>>() + 8 + (size_of::<u32>() + 1) * 8 / 7)
    }

    /// Values in use.
    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes used, with `heap` the bytes each value holds beyond
    /// itself.
    pub fn memory_bytes(&self, heap: impl Fn(&T) -> usize) -> usize {
        self.entries.capacity() * size_of::<Option<T>>()
            + self.entries.iter().flatten().map(heap).sum::<usize>()
            + (self.refs.capacity() + self.free.capacity()) * 4
            + self.index.capacity() * (size_of::<u32>() + 1)
    }

    /// After deserialization: count the references of `ids` (one per
    /// holder), refuse an id naming no value (returned as the error), and
    /// free values no holder names.
    pub fn rebuild(
        &mut self,
        ids: impl Iterator<Item = u32>,
        hash: impl Fn(&T) -> u64,
    ) -> Result<(), u32> {
        let mut refs = vec![0u32; self.entries.len()];
        for id in ids {
            match self.entries.get(id as usize) {
                Some(Some(_)) => refs[id as usize] += 1,
                _ => return Err(id),
            }
        }
        let mut free = Vec::new();
        for (id, (e, r)) in self.entries.iter_mut().zip(&refs).enumerate() {
            if *r == 0 {
                *e = None;
                free.push(id as u32);
            }
        }
        let entries = &self.entries;
        let mut index = HashTable::with_capacity(entries.len() - free.len());
        for (id, e) in entries.iter().enumerate() {
            if let Some(v) = e {
                index.insert_unique(hash(v), id as u32, |&x| value_hash(entries, &hash, x));
            }
        }
        self.refs = refs;
        self.free = free;
        self.index = index;
        Ok(())
    }
}

impl<T> SharedTable<T> {
    /// Whether the stored reference counts are exactly those of `ids` (one
    /// per holder), and every free id is empty: a consistency check for
    /// tests and diagnostics.
    pub fn verify(&self, ids: impl Iterator<Item = u32>) -> Result<(), String> {
        let mut refs = vec![0u32; self.entries.len()];
        for id in ids {
            match refs.get_mut(id as usize) {
                Some(r) if self.entries[id as usize].is_some() => *r += 1,
                _ => return Err(format!("id {id} is held but names nothing")),
            }
        }
        for (id, (r, held)) in self.refs.iter().zip(&refs).enumerate() {
            if r != held {
                return Err(format!("id {id} counts {r} holders, has {held}"));
            }
        }
        let live = self.entries.iter().flatten().count();
        if live + self.free.len() != self.entries.len() || self.index.len() != live {
            return Err(format!(
                "{live} live of {} ids, {} free, {} indexed",
                self.entries.len(),
                self.free.len(),
                self.index.len()
            ));
        }
        Ok(())
    }
}

/// Hash of the value with id `v` (for the index's rehashing).
fn value_hash<T>(entries: &[Option<T>], hash: &impl Fn(&T) -> u64, v: u32) -> u64 {
    entries
        .get(v as usize)
        .and_then(Option::as_ref)
        .map_or(0, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &u64) -> u64 {
        v.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn get(t: &mut SharedTable<u64>, v: u64) -> u32 {
        t.acquire(h(&v), |x| *x == v, || v, h)
    }

    /// Equal values share an id; the last release frees it for reuse;
    /// stray releases change nothing.
    #[test]
    fn values_are_shared_counted_and_freed() {
        let mut t = SharedTable::default();
        let (a, b, c) = (get(&mut t, 1), get(&mut t, 1), get(&mut t, 2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(t.len(), 2);
        get(&mut t, 1);
        t.release(a, h);
        t.release(a, h);
        assert_eq!(t.get(a), Some(&1), "one holder left");
        t.release(a, h);
        assert_eq!((t.get(a), t.len()), (None, 1));
        t.release(a, h);
        t.release(99, h);
        assert_eq!(t.len(), 1);
        let d = get(&mut t, 3);
        assert_eq!(d, a, "freed id reused");
        assert_eq!(get(&mut t, 2), c, "found by value");
    }

    /// A restore recounts holders, frees unnamed values, keeps finding
    /// values by content, and refuses ids naming nothing.
    #[test]
    fn rebuild_recounts_and_validates() {
        let mut t = SharedTable::default();
        let ids: Vec<u32> = (0..5).map(|v| get(&mut t, v)).collect();
        let bytes = postcard::to_stdvec(&t).expect("serialize");
        let mut r: SharedTable<u64> = postcard::from_bytes(&bytes).expect("deserialize");
        r.rebuild([ids[1], ids[1], ids[3]].into_iter(), h)
            .expect("valid");
        assert_eq!(r.len(), 2);
        assert_eq!(get(&mut r, 1), ids[1]);
        r.release(ids[1], h);
        r.release(ids[1], h);
        assert_eq!(r.get(ids[1]), Some(&1), "the new holder keeps it");
        let mut r: SharedTable<u64> = postcard::from_bytes(&bytes).expect("deserialize");
        assert_eq!(r.rebuild([ids[0], 77].into_iter(), h), Err(77));
    }
}
