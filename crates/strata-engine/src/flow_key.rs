//! Unified flow keys as the unified flow table stores them.
//!
//! A million connections mean two million keys, and most of what a key
//! holds is the same across many of them: the inner MACs, VLAN and
//! ethertype, and the whole outer header group (outer MACs and addresses,
//! tunnel kind, VNI) are those of the two NICs and hosts a flow runs
//! between. So a [`StoredUfid`] of the IPv4 form keeps only its 16-byte
//! [`TupleV4`] (addresses, ports, protocol, DSCP, ICMP type/code) and the id
//! of a [`HeaderContext`] kept once in the table's [`HeaderContexts`],
//! reference-counted and freed with its last flow. Keys with IPv6 anywhere
//! are kept whole in the table's slab of wide keys. A stored key is 20
//! bytes (4-aligned) instead of 64; comparing one against a packet's UFID
//! reads the context by id, a line every flow with it keeps hot.

use crate::flow_table::TableSeed;
use crate::intern::SharedTable;
use serde::{Deserialize, Serialize};
use strata_packet::flow::Ufid;
use strata_packet::packed::{HeaderContext, TupleV4, join_v4, split_v4};

/// The context id of a key not stored in any table: it matches nothing.
const NO_CONTEXT: u32 = u32::MAX;

/// Set in [`StoredUfid::context`] for a wide key: the rest is its index in
/// the table's slab of wide keys (and the tuple is unused).
const WIDE: u32 = 1 << 31;

/// A unified flow key in storage form; only meaningful with the
/// [`HeaderContexts`] that stored it. IPv4 (or non-IP) keys with no outer
/// group or an IPv4 one are a tuple and a context id; every other key is
/// an index into the table's wide keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredUfid {
    tuple: TupleV4,
    context: u32,
}

impl Default for StoredUfid {
    /// A key that matches no UFID (a flow not yet in a table).
    fn default() -> Self {
        StoredUfid {
            tuple: TupleV4::default(),
            context: NO_CONTEXT,
        }
    }
}

impl StoredUfid {
    fn is_wide(&self) -> bool {
        self.context & WIDE != 0
    }
}

/// The header contexts of one table's keys, each stored once with the
/// number of keys naming it. Bounded by the number of keys: a context is
/// freed (and its id reused) when its last key is released.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HeaderContexts {
    contexts: SharedTable<HeaderContext>,
    /// Randomly seeded: contexts come from packets (hash flooding).
    #[serde(skip)]
    seed: TableSeed,
    /// Wide keys (IPv6 anywhere), one per stored key; `None` is free.
    wide: Vec<Option<Box<Ufid>>>,
    #[serde(skip)]
    wide_free: Vec<u32>,
}

impl HeaderContexts {
    /// The storage form of `u`, taking a reference on its context (or a
    /// wide-key slot of its own).
    pub fn store(&mut self, u: &Ufid) -> StoredUfid {
        match split_v4(u) {
            Some((tuple, c)) => StoredUfid {
                tuple,
                context: self.acquire(&c),
            },
            None => {
                let i = match self.wide_free.pop() {
                    Some(i) => {
                        self.wide[i as usize] = Some(Box::new(*u));
                        i
                    }
                    None => {
                        self.wide.push(Some(Box::new(*u)));
                        (self.wide.len() - 1) as u32
                    }
                };
                StoredUfid {
                    tuple: TupleV4::default(),
                    context: WIDE | i,
                }
            }
        }
    }

    fn wide_key(&self, k: &StoredUfid) -> Option<&Ufid> {
        self.wide.get((k.context & !WIDE) as usize)?.as_deref()
    }

    fn acquire(&mut self, c: &HeaderContext) -> u32 {
        let seed = self.seed.get();
        self.contexts.acquire(
            c.table_hash(seed),
            |x| x == c,
            || *c,
            |x| x.table_hash(seed),
        )
    }

    /// Drop `k`'s reference on its context (freeing it with the last).
    pub fn release(&mut self, k: &StoredUfid) {
        if k.context == NO_CONTEXT {
            return;
        }
        if k.is_wide() {
            let i = k.context & !WIDE;
            if let Some(w) = self.wide.get_mut(i as usize)
                && w.take().is_some()
            {
                self.wide_free.push(i);
            }
            return;
        }
        let seed = self.seed.get();
        self.contexts.release(k.context, |x| x.table_hash(seed));
    }

    /// `k`'s tuple and context, for a key of the IPv4 form this table
    /// stored (`None` for a wide key or one it did not store).
    #[inline]
    pub fn split_of<'a>(&'a self, k: &'a StoredUfid) -> Option<(&'a TupleV4, &'a HeaderContext)> {
        if k.is_wide() {
            return None;
        }
        self.contexts.get(k.context).map(|c| (&k.tuple, c))
    }

    /// Whether `k` is the stored form of `u` (without unpacking).
    #[inline(always)]
    pub fn matches(&self, k: &StoredUfid, u: &Ufid) -> bool {
        if k.is_wide() {
            return self.wide_key(k).is_some_and(|w| w == u);
        }
        k.tuple.matches(u) && self.contexts.get(k.context).is_some_and(|c| c.matches(u))
    }

    /// The IP protocol of the inner groups of `k` (0 for a key this table
    /// did not store).
    #[inline]
    pub fn proto(&self, k: &StoredUfid) -> u8 {
        if k.is_wide() {
            self.wide_key(k).map_or(0, |w| w.inner.proto)
        } else {
            k.tuple.proto()
        }
    }

    /// The full key `k` stands for (`None` for a key this table did not
    /// store).
    pub fn unpack(&self, k: &StoredUfid) -> Option<Ufid> {
        if k.is_wide() {
            return self.wide_key(k).copied();
        }
        self.contexts.get(k.context).map(|c| join_v4(&k.tuple, c))
    }

    /// Contexts in use.
    pub fn len(&self) -> usize {
        self.contexts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes used.
    pub fn memory_bytes(&self) -> usize {
        self.wide.capacity() * 8
            + self.wide.iter().flatten().count() * size_of::<Ufid>()
            + self.wide_free.capacity() * 4
            + self.contexts.memory_bytes(|_| 0)
    }

    /// Which wide keys `keys` hold, and the context ids of the others; a
    /// wide key missing or held twice is an error.
    fn partition<'a>(
        &self,
        keys: impl Iterator<Item = &'a StoredUfid>,
    ) -> Result<(Vec<bool>, Vec<u32>), String> {
        let mut wide = vec![false; self.wide.len()];
        let mut narrow = Vec::new();
        for k in keys {
            if !k.is_wide() {
                narrow.push(k.context);
                continue;
            }
            let i = (k.context & !WIDE) as usize;
            match (self.wide.get(i), wide.get_mut(i)) {
                (Some(Some(_)), Some(used @ false)) => *used = true,
                _ => {
                    return Err(format!(
                        "a flow key names wide key {i}, which is missing or taken"
                    ));
                }
            }
        }
        Ok((wide, narrow))
    }

    /// Whether the references are exactly those of `keys` (every key the
    /// table holds): see [`SharedTable::verify`].
    pub fn verify<'a>(&self, keys: impl Iterator<Item = &'a StoredUfid>) -> Result<(), String> {
        let (wide, narrow) = self.partition(keys)?;
        let held = wide.iter().filter(|u| **u).count();
        if held + self.wide_free.len() != self.wide.len() {
            return Err(format!(
                "{held} wide keys held, {} free of {}",
                self.wide_free.len(),
                self.wide.len()
            ));
        }
        self.contexts
            .verify(narrow.into_iter())
            .map_err(|e| format!("header contexts: {e}"))
    }

    /// After deserialization: count the references of `keys` (every key
    /// the table holds), refuse keys naming a missing context or wide key
    /// (or a wide key twice), and free what no key names.
    pub fn rebuild<'a>(
        &mut self,
        keys: impl Iterator<Item = &'a StoredUfid>,
    ) -> Result<(), String> {
        let (wide_used, narrow) = self.partition(keys)?;
        self.wide_free.clear();
        for (i, (w, used)) in self.wide.iter_mut().zip(&wide_used).enumerate() {
            if !used {
                *w = None;
                self.wide_free.push(i as u32);
            }
        }
        let seed = self.seed.get();
        self.contexts
            .rebuild(narrow.into_iter(), |c| c.table_hash(seed))
            .map_err(|id| format!("a flow key names header context {id}, which is missing"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use strata_packet::flow::{FlowKey, MacAddr, OuterKey, TunnelKind};

    fn key(port: u16, peer_mac: u8, tunnel_src: Option<u8>) -> Ufid {
        Ufid {
            outer: tunnel_src.map(|s| OuterKey {
                src_mac: MacAddr([2, 0, 0, 0, 1, s]),
                dst_mac: MacAddr([2, 0, 0, 0, 1, 0]),
                src_ip: IpAddr::V4(Ipv4Addr::new(192, 168, 0, s)),
                dst_ip: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1)),
                tunnel: TunnelKind::Vxlan,
                vni: 5001,
            }),
            inner: FlowKey {
                src_mac: MacAddr([2, 0, 0, 0, 0, peer_mac]),
                dst_mac: MacAddr([2, 0, 0, 0, 0, 1]),
                ether_type: 0x0800,
                src_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                dst_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                proto: 6,
                src_port: port,
                dst_port: 80,
                ..FlowKey::EMPTY
            },
        }
    }

    /// Keys of one context share it; each key matches exactly its own UFID
    /// and unpacks to it; the context is freed with its last key and its id
    /// reused.
    #[test]
    fn contexts_are_shared_counted_and_freed() {
        let mut t = HeaderContexts::default();
        let a = key(1000, 7, Some(9));
        let b = key(1001, 7, Some(9));
        let c = key(1000, 8, Some(9));
        let (sa, sb, sc) = (t.store(&a), t.store(&b), t.store(&c));
        assert_eq!(t.len(), 2, "a and b share a context, c has its own");
        for (s, u) in [(&sa, a), (&sb, b), (&sc, c)] {
            assert_eq!(t.unpack(s), Some(u));
            for other in [a, b, c, key(1000, 7, None), key(1000, 7, Some(3))] {
                assert_eq!(t.matches(s, &other), other == u);
            }
        }
        t.release(&sa);
        assert_eq!(t.len(), 2);
        assert!(t.matches(&sb, &b), "b's context outlives a");
        t.release(&sb);
        assert_eq!(t.len(), 1);
        assert!(!t.matches(&sb, &b), "a freed context matches nothing");
        let sd = t.store(&key(5, 1, None));
        assert!(!sd.is_wide() && !sa.is_wide(), "IPv4 keys stored narrow");
        assert_eq!(sd.context, sa.context, "freed id reused");
        assert_eq!(t.len(), 2);
        // Releasing a key never stored changes nothing.
        t.release(&StoredUfid::default());
        assert_eq!(t.len(), 2);
        assert!(!t.matches(&StoredUfid::default(), &key(0, 0, None)));
    }

    /// IPv6 keys are kept whole and take no context.
    #[test]
    fn wide_keys_are_boxed() {
        let mut t = HeaderContexts::default();
        let mut u = key(1, 1, Some(2));
        u.inner.src_ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let s = t.store(&u);
        assert!(s.is_wide());
        assert_eq!(t.len(), 0);
        assert!(t.matches(&s, &u));
        assert_eq!(t.unpack(&s), Some(u));
        assert_eq!(t.proto(&s), u.inner.proto);
        // Its slot is freed with it and reused.
        t.release(&s);
        assert!(!t.matches(&s, &u));
        let mut v = u;
        v.inner.src_port = 2;
        let s2 = t.store(&v);
        assert_eq!(s2.context, s.context);
        assert!(t.matches(&s2, &v) && !t.matches(&s2, &u));
    }

    /// Restoring recounts references, frees unnamed contexts and refuses a
    /// key naming a missing one.
    #[test]
    fn rebuild_recounts_and_validates() {
        let mut t = HeaderContexts::default();
        let keys = [key(1, 1, None), key(2, 1, None), key(3, 2, Some(4))];
        let stored: Vec<StoredUfid> = keys.iter().map(|k| t.store(k)).collect();
        let bytes = postcard::to_stdvec(&t).expect("serialize");
        let mut r: HeaderContexts = postcard::from_bytes(&bytes).expect("deserialize");
        r.rebuild(stored[..2].iter()).expect("valid keys");
        assert_eq!(r.len(), 1, "the third key's context is no longer named");
        assert!(r.matches(&stored[0], &keys[0]));
        r.release(&stored[0]);
        assert!(r.matches(&stored[1], &keys[1]), "still one reference");
        // Interning after a restore finds the restored context.
        let again = r.store(&keys[1]);
        assert_eq!(again, stored[1]);

        let mut r: HeaderContexts = postcard::from_bytes(&bytes).expect("deserialize");
        let bad = StoredUfid {
            tuple: TupleV4::default(),
            context: 17,
        };
        let err = r
            .rebuild([&stored[0], &bad].into_iter())
            .expect_err("missing context");
        assert!(err.contains("header context 17"), "{err}");
    }
}
