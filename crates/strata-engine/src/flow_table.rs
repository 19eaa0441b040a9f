//! Flow state of a port:
//!
//! - [`LayerFlowTable`]: per-layer stateful flows (VFP-6). A stateful rule
//!   creates one [`LayerFlow`] holding a *pair* of keys — the layer-local key
//!   in the originating direction and the reversed post-transposition key in
//!   the other — with the rule's transposition and its inverse.
//! - [`UnifiedFlowTable`]: the UFT (VFP-12). Each [`Connection`] pairs the
//!   outbound and inbound [`UnifiedFlow`]s of one connection (paired on the VM
//!   side, VFP-14) with its TCP state and the layer flows it holds.
//!
//! Both tables keep entries in a slab ([`ChunkedSlab`]) and index them
//! with a hash table of slot numbers, so a key is stored once, lookups hash
//! the key once, and eviction and expiry walk slots without touching the
//! index.
//!
//! Memory per connection is what decides how many a host holds, so the
//! parts many flows repeat are stored once per table and named by 4-byte
//! ids: header contexts of keys ([`crate::flow_key`]), counter-slot lists
//! ([`CounterLists`]); flow actions are shared `Arc`s the fast path reads
//! directly. A connection is 184 bytes; a connection-tracking layer flow
//! takes one index entry for both its keys ([`LayerFlow::one_entry`]).

use crate::flow_index::{FlowIndex, Rehash};
use crate::flow_key::{HeaderContexts, StoredUfid};
use crate::intern::SharedTable;
use crate::layer_refs::{RefBlocks, RefsIter, RefsWire};
use crate::policy::RuleIdentity;
use crate::resource::ActionState;
use crate::slab::{CHUNK, ChunkedSlab, SlabPool};
use crate::tcp::TcpConn;
use crate::types::{Direction, Time, Verdict};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::net::IpAddr;
use std::sync::Arc;
use strata_packet::emit::EmitPlan;
use strata_packet::flow::{MacAddr, Ufid};
use strata_packet::packed::{PackedUfid, table_hash_split, table_hash_split_without_macs};
use strata_packet::transposition::{OuterOp, PortRewrite, Transposition};

/// A stateful flow of one layer. 24 bytes: the key is not stored here
/// (see [`LayerFlow::key_conn`]), the rule is shared with the policy (see
/// [`LayerFlow::rule`]), and what only some rules leave (a transposition,
/// action state, a TTL) is in the table's extras by slot: read a flow
/// through [`LayerFlowTable::get`] ([`LayerFlowView`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerFlow {
    /// Direction of the packet whose rule created the flow.
    pub origin: Direction,
    /// Removed from the index (its rule no longer decides) but still held.
    pub detached: bool,
    /// Both keys are found through one index entry: the reverse key is the
    /// origin key reversed (the rule transposes nothing, as for connection
    /// tracking) and the two hash alike ([`Ufid::reversible_hash`]). Half
    /// the index entries for the most common layer flows.
    #[serde(default)]
    pub one_entry: bool,
    /// Where the layer-local key of the originating packet (the *origin
    /// key*) is stored: side `key_side` of connection `key_conn` when that
    /// connection's unified flow has exactly this key — the usual case, as
    /// layers above a stateful one seldom transform — else, with
    /// [`OWN_BIT`] set, in the table's own key store (entry `key_conn &
    /// !OWN_BIT`; [`OWN_KEY`] while not stored yet). The reverse key (looked
    /// up in the opposite direction) is derived from it: the reversed
    /// post-transposition key. Serialized as [`OWN_KEY`] for every own key
    /// (the store's numbering is not part of a snapshot).
    #[serde(serialize_with = "serialize_key_conn")]
    pub key_conn: u32,
    pub key_side: Direction,
    /// Connections holding this flow.
    pub refs: u32,
    /// Low half of the layer generation when the flow was last validated
    /// (0 = revalidate; see `Port::bump`).
    pub layer_generation: u32,
    /// The deciding rule's id, fingerprint and counter (shared with the
    /// policy, not copied per flow).
    pub rule: Arc<RuleIdentity>,
}

/// Set in [`LayerFlow::key_conn`] when the flow's origin key is in the
/// table's own store, not a connection's (connection numbers stay below
/// it: see `port::MAX_CONNECTIONS`).
pub const OWN_BIT: u32 = 1 << 31;

/// [`LayerFlow::key_conn`] of a flow whose origin key is its own but not in
/// the store: a new flow's, kept aside until it settles (see
/// `LayerFlowTable::fresh`).
pub const OWN_KEY: u32 = u32::MAX;

/// Whether a [`LayerFlow::key_conn`] names the table's own store.
#[inline]
fn is_own(key_conn: u32) -> bool {
    key_conn & OWN_BIT != 0
}

/// The own key store entry a [`LayerFlow::key_conn`] names, if any.
#[inline]
fn own_entry(key_conn: u32) -> Option<u32> {
    (is_own(key_conn) && key_conn != OWN_KEY).then_some(key_conn & !OWN_BIT)
}

/// The [`LayerFlow::key_conn`] naming own key store entry `entry`
/// ([`OWN_KEY`], no key, for none).
fn own_key_conn(entry: Option<u32>) -> u32 {
    entry.map_or(OWN_KEY, |i| OWN_BIT | i)
}

fn serialize_key_conn<S: serde::Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(if is_own(*v) { OWN_KEY } else { *v })
}

/// The parts of a layer flow that only some rules produce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerFlowExtra {
    /// The rule's transposition; its inverse is derived for the reverse side.
    pub transposition: Transposition,
    /// Action contexts (counter slots) of the originating side.
    pub counters: Box<[u32]>,
    pub state: ActionState,
    pub ttl: Option<Time>,
}

/// The extra parts of a table's flows: each in a pool entry, found by its
/// flow's slot. No box per flow (a NAT'd connection's layer flow used to
/// cost an allocation and a free), and the map holds 4-byte indexes.
#[derive(Clone, Debug, Default)]
struct ExtraParts {
    by_slot: hashbrown::HashMap<u32, u32>,
    pool: SlabPool<LayerFlowExtra>,
}

impl ExtraParts {
    #[inline]
    fn get(&self, slot: u32) -> Option<&LayerFlowExtra> {
        // Most tables have no extra parts: no hashing.
        if self.by_slot.is_empty() {
            return None;
        }
        self.pool.get(*self.by_slot.get(&slot)?)
    }

    /// Keep `e` for the flow in `slot` (replacing any it had). Past
    /// [`SlabPool::MAX`] parts the pool takes no more: the flow keeps none.
    fn insert(&mut self, slot: u32, e: LayerFlowExtra) {
        self.remove(slot);
        if let Some(i) = self.pool.take(e) {
            self.by_slot.insert(slot, i);
        }
    }

    fn remove(&mut self, slot: u32) -> Option<LayerFlowExtra> {
        let i = self.by_slot.remove(&slot)?;
        self.pool.give(i)
    }

    /// Heap bytes [`ExtraParts::reserve`] holds for `flows` flows.
    fn reserve_bytes(flows: usize) -> usize {
        crate::counters::hash_table_bytes(flows, size_of::<(u32, u32)>())
            .saturating_add(SlabPool::<LayerFlowExtra>::bytes_for(flows.min(CHUNK)))
    }

    /// Room in the map for `flows` flows, and in the pool for its first
    /// chunk: the one that grows as a vector does (copied at each
    /// doubling). Past it the pool grows a chunk at a time with nothing
    /// moved; a part held for every connection would cost 152 bytes each
    /// for connections a layer may never NAT.
    fn reserve(&mut self, flows: usize) {
        self.by_slot
            .reserve(flows.saturating_sub(self.by_slot.len()));
        self.pool.reserve(flows.min(CHUNK));
    }

    fn memory_bytes(&self) -> usize {
        self.by_slot.capacity() * (size_of::<(u32, u32)>() + 1)
            + self.pool.memory_bytes()
            + self
                .pool
                .iter()
                .map(|(_, e)| e.counters.len() * size_of::<u32>())
                .sum::<usize>()
    }
}

/// Shared "no state" for flows without extra parts.
static NO_STATE: ActionState = ActionState::None;

impl LayerFlow {
    fn dir_of(&self, side: usize) -> Direction {
        if side == 0 {
            self.origin
        } else {
            self.origin.opposite()
        }
    }
}

/// A layer flow with its extra parts, owned: made by [`OwnedLayerFlow::new`],
/// or taken out of a table by [`LayerFlowTable::release`] (to release its
/// state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedLayerFlow {
    pub flow: LayerFlow,
    pub extra: Option<LayerFlowExtra>,
}

impl OwnedLayerFlow {
    /// A flow made by a rule, with its extra parts if the rule left
    /// something besides connection tracking. Both go in with
    /// [`LayerFlowTable::insert`].
    pub fn new(
        origin: Direction,
        rule: Arc<RuleIdentity>,
        layer_generation: u32,
        transposition: &Transposition,
        counters: &[u32],
        state: ActionState,
        ttl: Option<Time>,
    ) -> OwnedLayerFlow {
        let plain = transposition.is_identity()
            && counters.is_empty()
            && state == ActionState::None
            && ttl.is_none();
        OwnedLayerFlow {
            flow: LayerFlow {
                origin,
                detached: false,
                one_entry: false,
                key_conn: OWN_KEY,
                key_side: origin,
                refs: 0,
                layer_generation,
                rule,
            },
            extra: (!plain).then(|| LayerFlowExtra {
                transposition: transposition.clone(),
                counters: counters.into(),
                state,
                ttl,
            }),
        }
    }

    pub fn view(&self) -> LayerFlowView<'_> {
        LayerFlowView {
            flow: &self.flow,
            extra: self.extra.as_ref(),
        }
    }

    /// Resource state to release when the flow ends.
    pub fn state(&self) -> &ActionState {
        self.extra.as_ref().map_or(&NO_STATE, |e| &e.state)
    }
}

impl std::ops::Deref for OwnedLayerFlow {
    type Target = LayerFlow;
    fn deref(&self) -> &LayerFlow {
        &self.flow
    }
}

/// A layer flow and its extra parts, as a table holds them.
#[derive(Clone, Copy, Debug)]
pub struct LayerFlowView<'a> {
    flow: &'a LayerFlow,
    extra: Option<&'a LayerFlowExtra>,
}

impl std::ops::Deref for LayerFlowView<'_> {
    type Target = LayerFlow;
    fn deref(&self) -> &LayerFlow {
        self.flow
    }
}

impl<'a> LayerFlowView<'a> {
    /// The extra parts, if the rule left any.
    pub fn extra(&self) -> Option<&'a LayerFlowExtra> {
        self.extra
    }

    /// The rule's transposition (origin side).
    pub fn transposition(&self) -> &'a Transposition {
        self.extra
            .map_or(&Transposition::IDENTITY, |e| &e.transposition)
    }

    /// The key of the reverse side for origin key `origin`: the origin's
    /// result reversed (most flows transpose nothing: no work to apply).
    fn reverse_key(&self, origin: &Ufid) -> Ufid {
        match self.extra {
            Some(e) if !e.transposition.is_identity() => {
                e.transposition.apply_to_ufid(origin).reversed()
            }
            _ => origin.reversed(),
        }
    }

    /// The transposition of side `side` for origin key `origin`: the
    /// rule's, or its inverse.
    pub fn side_transposition(&self, side: usize, origin: &Ufid) -> Transposition {
        if side == 0 {
            self.transposition().clone()
        } else {
            self.transposition().reverse_for(origin)
        }
    }

    /// Resource state to release when the flow ends.
    pub fn state(&self) -> &'a ActionState {
        self.extra.map_or(&NO_STATE, |e| &e.state)
    }

    pub fn ttl(&self) -> Option<Time> {
        self.extra.and_then(|e| e.ttl)
    }

    /// Counter slots of side `side`.
    pub fn side_counters(&self, side: usize) -> &'a [u32] {
        match self.extra {
            Some(e) if side == 0 => &e.counters,
            _ => &[],
        }
    }
}

/// The identity a layer flow is keyed by: the UFID without MAC addresses.
/// Connection tracking follows L3/L4 identity, so return traffic matches
/// whatever MACs the underlay or a peer put on it.
#[inline]
pub fn layer_flow_key(u: &Ufid) -> Ufid {
    let mut k = *u;
    k.inner.src_mac = MacAddr::ZERO;
    k.inner.dst_mac = MacAddr::ZERO;
    if let Some(o) = k.outer.as_mut() {
        o.src_mac = MacAddr::ZERO;
        o.dst_mac = MacAddr::ZERO;
    }
    k
}

/// A flow table's hash seed, random per table (drawn when the table is
/// created or restored; never stored). Flow keys come from the network:
/// with a seed known in advance a sender could pick keys that all land in
/// one probe chain and turn every lookup into a scan (hash flooding).
#[derive(Clone, Copy, Debug)]
pub struct TableSeed(u64);

impl Default for TableSeed {
    fn default() -> Self {
        use std::hash::BuildHasher;
        // std's RandomState is keyed from the OS's randomness.
        TableSeed(std::collections::hash_map::RandomState::new().hash_one(0x5345_4544_u64))
    }
}

impl TableSeed {
    /// The seed, for hashes a table computes itself.
    #[inline]
    pub(crate) fn get(self) -> u64 {
        self.0
    }
}

/// The index hash of layer key `k` in direction `d`: the same for `(d, k)`
/// and `(d.opposite(), k.reversed())` (see [`LayerFlow::one_entry`])
/// unless the two orientations cannot be told apart. MACs are ignored (the
/// reversible hash leaves them out; the rare fallback hashes the identity
/// key), so `k` need not be an identity key.
#[inline(always)]
fn lf_hash(seed: TableSeed, d: Direction, k: &Ufid) -> u64 {
    lf_hash_of(seed, d, k).value
}

/// A layer key's index hash ([`lf_hash`]), and whether it is the reversible
/// one (then also the hash of the key reversed, the other way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerFlowHash {
    value: u64,
    reversible: bool,
}

/// Up to [`EarlyHashes::CAP`] layer-flow hashes, one per walk step: a
/// first packet's walk hashes its key for the layers ahead of it before it
/// starts (see `Port::simulate`). Plain words and two masks rather than an
/// array of options: the walk starts with an empty set in a few stores.
#[derive(Clone, Copy, Default)]
pub struct EarlyHashes {
    values: [u64; EarlyHashes::CAP],
    present: u16,
    reversible: u16,
}

impl EarlyHashes {
    pub const CAP: usize = 16;

    /// Keep `h` for step `step` (ignored past [`EarlyHashes::CAP`]).
    #[inline]
    pub fn set(&mut self, step: usize, h: LayerFlowHash) {
        if let Some(v) = self.values.get_mut(step) {
            *v = h.value;
            self.present |= 1 << step;
            self.reversible = self.reversible & !(1 << step) | u16::from(h.reversible) << step;
        }
    }

    /// Whether no step has a hash.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.present == 0
    }

    /// The hash kept for step `step`, if any.
    #[inline]
    pub fn get(&self, step: usize) -> Option<LayerFlowHash> {
        let bit = 1u16.checked_shl(step as u32)?;
        if self.present & bit == 0 {
            return None;
        }
        Some(LayerFlowHash {
            value: *self.values.get(step)?,
            reversible: self.reversible & bit != 0,
        })
    }
}

#[inline(always)]
fn lf_hash_of(seed: TableSeed, d: Direction, k: &Ufid) -> LayerFlowHash {
    match lf_reversible_hash(seed, d, k) {
        Some(value) => LayerFlowHash {
            value,
            reversible: true,
        },
        None => LayerFlowHash {
            value: layer_flow_key(k).table_hash(seed.0 ^ 0x4c46_0001 ^ (d.index() as u64) << 8),
            reversible: false,
        },
    }
}

/// [`lf_hash`] when the two orientations can be told apart (then it is
/// also the hash of `(d.opposite(), k.reversed())`).
#[inline(always)]
fn lf_reversible_hash(seed: TableSeed, d: Direction, k: &Ufid) -> Option<u64> {
    k.reversible_hash(seed.0 ^ 0x4c46_0000, d == Direction::Out)
}

/// Whether `a` and `b` have the same identity ([`layer_flow_key`]), without
/// building either identity key (two 112-byte copies on every layer flow
/// lookup).
#[inline]
pub fn same_layer_key(a: &Ufid, b: &Ufid) -> bool {
    let (x, y) = (&a.inner, &b.inner);
    let inner = x.src_ip == y.src_ip
        && x.dst_ip == y.dst_ip
        && x.src_port == y.src_port
        && x.dst_port == y.dst_port
        && x.proto == y.proto
        && x.ether_type == y.ether_type
        && x.vlan == y.vlan
        && x.dscp == y.dscp
        && x.icmp_type == y.icmp_type
        && x.icmp_code == y.icmp_code;
    inner
        && match (&a.outer, &b.outer) {
            (None, None) => true,
            (Some(o), Some(p)) => {
                o.src_ip == p.src_ip
                    && o.dst_ip == p.dst_ip
                    && o.vni == p.vni
                    && o.tunnel == p.tunnel
            }
            _ => false,
        }
}

/// Where a layer table reads the keys it does not store: the origin keys
/// of flows that share them with a connection, and its own store for the
/// rest.
#[derive(Clone, Copy)]
struct Keys<'a> {
    own: &'a SlabPool<PackedUfid>,
    fresh: Option<&'a (u32, Ufid)>,
    extras: &'a ExtraParts,
    conns: &'a UnifiedFlowTable,
    seed: TableSeed,
}

impl Keys<'_> {
    /// The origin key of the flow in `slot`.
    fn origin(&self, slot: u32, f: &LayerFlow) -> Option<Ufid> {
        if is_own(f.key_conn) {
            if let Some(&(s, k)) = self.fresh
                && s == slot
            {
                return Some(k);
            }
            return own_entry(f.key_conn)
                .and_then(|i| self.own.get(i))
                .map(PackedUfid::unpack);
        }
        self.conns.side_key(f.key_conn, f.key_side)
    }

    /// The key of side `side` (0 = origin, 1 = reverse).
    fn side(&self, slot: u32, f: &LayerFlow, side: usize) -> Option<Ufid> {
        let key = self.origin(slot, f)?;
        Some(if side == 0 {
            key
        } else {
            self.reverse_key(slot, f, &key)
        })
    }

    /// The reverse key of the flow in `slot` for origin key `origin`.
    fn reverse_key(&self, slot: u32, f: &LayerFlow, origin: &Ufid) -> Ufid {
        LayerFlowView {
            flow: f,
            extra: self.extras.get(slot),
        }
        .reverse_key(origin)
    }

    /// Hash of index value `v` (`slot << 1 | side`).
    fn hash(&self, slots: &ChunkedSlab<LayerFlow>, v: u32) -> u64 {
        indexed(slots, v)
            .and_then(|(slot, side, f)| {
                let k = self.side(slot, f, side)?;
                Some(lf_hash(self.seed, f.dir_of(side), &k))
            })
            .unwrap_or(0)
    }

    /// Whether index value `v` finds the flow side keyed `(d, k)` (MACs
    /// ignored).
    fn is(&self, slots: &ChunkedSlab<LayerFlow>, v: u32, d: Direction, k: &Ufid) -> bool {
        self.matching_origin(slots, v, d, k).is_some()
    }

    /// The side and origin key of index value `v`'s flow if `v` finds the
    /// flow side keyed `(d, k)`: its own side, or for a
    /// [`LayerFlow::one_entry`] flow either.
    fn matching_origin(
        &self,
        slots: &ChunkedSlab<LayerFlow>,
        v: u32,
        d: Direction,
        k: &Ufid,
    ) -> Option<(usize, Ufid)> {
        let (slot, side, f) = indexed(slots, v)?;
        let side = if f.one_entry {
            usize::from(f.origin != d)
        } else if f.dir_of(side) == d {
            side
        } else {
            return None;
        };
        let origin = self.origin(slot, f)?;
        let key = if side == 0 {
            origin
        } else {
            self.reverse_key(slot, f, &origin)
        };
        same_layer_key(&key, k).then_some((side, origin))
    }
}

/// A layer flow index's [`Rehash`] for growing: each value's hash from
/// its flow's key, the flow prefetched first.
struct LayerHashes<'a> {
    keys: &'a Keys<'a>,
    slots: &'a ChunkedSlab<LayerFlow>,
}

impl Rehash for LayerHashes<'_> {
    fn rehash(&self, v: u32) -> u64 {
        self.keys.hash(self.slots, v)
    }

    fn prefetch(&self, v: u32) {
        if let Some(slot) = self.slots.get((v >> 1) as usize) {
            crate::hint::prefetch(slot);
        }
    }
}

/// The slot, side and flow an index value (`slot << 1 | side`) names.
fn indexed(slots: &ChunkedSlab<LayerFlow>, v: u32) -> Option<(u32, usize, &LayerFlow)> {
    let slot = v >> 1;
    let side = (v & 1) as usize;
    let f = slots.get(slot as usize)?.as_ref()?;
    Some((slot, side, f))
}

/// The flow table of one layer: flows in a slab, both keys of each flow in
/// a hash table of slot numbers. Keys are stored once: most flows' origin
/// keys are their connection's (the table is handed the unified flow
/// table, `conns`, to read them), the rest are in the table's own store.
#[derive(Clone, Debug, Default)]
pub struct LayerFlowTable {
    slots: ChunkedSlab<LayerFlow>,
    free: Vec<u32>,
    /// Origin keys of flows with [`OWN_BIT`] (serialized by slot, with
    /// `fresh` among them): a pool, so a table with many such flows (the
    /// tracking flows of connections that arrive encapsulated) grows a
    /// chunk at a time, never re-hashing them all inside one packet.
    own_keys: SlabPool<PackedUfid>,
    /// The origin key of the flow inserted last, while it waits for
    /// [`LayerFlowTable::share_key`] (most keys move to their connection
    /// right after the insert: kept here, they cost no map insert, removal,
    /// packing and unpacking). Only set during a port call:
    /// [`LayerFlowTable::settle`] moves it to `own_keys` by the end of one,
    /// so a port's snapshots never see it; a table serialized on its own
    /// writes it with the other own keys.
    fresh: Option<(u32, Ufid)>,
    /// Extra parts of the flows that have them, by slot (most flows, the
    /// connection-tracking ones, have none: they stay 24 bytes).
    extras: ExtraParts,
    /// Entries are `slot << 1 | side`. The same cuckoo index as the UFT's:
    /// dense (6.4 bytes an entry at up to 9/10), and it grows a few
    /// buckets per insert, so no packet's slow path re-hashes a
    /// million-flow layer at once.
    index: FlowIndex,
    seed: TableSeed,
    /// Index entries (`slot << 1 | side`, ascending) whose key another
    /// flow held when their flow came: two flows wanting one key, as when
    /// a static NAT maps two connections onto one tuple and the answers to
    /// both look alike. The holder keeps the key; when it lets go, the
    /// lowest entry here with that key takes it (see
    /// [`LayerFlowTable::detach`]). Saved with the port, apart from the
    /// table (format version 8), so a restored table indexes exactly the
    /// flows this one does. Nearly always empty.
    shadowed: Vec<u32>,
}

/// [`LayerFlowTable`]'s serialized form: its flows by slot, the free
/// slots, and the own keys and extra parts by slot (the fresh key written
/// among the own keys, as [`LayerFlowTable::settle`] would store it), so a
/// table reads back the same either way and the pools' numbering is not
/// part of a snapshot.
impl Serialize for LayerFlowTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        use std::borrow::Cow;
        struct OwnKeys<'a>(&'a LayerFlowTable);
        impl Serialize for OwnKeys<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let t = self.0;
                let stored = t.iter().filter_map(|(slot, f)| {
                    let k = t.own_keys.get(own_entry(f.key_conn)?)?;
                    Some((slot, Cow::Borrowed(k)))
                });
                let fresh = t
                    .unsettled()
                    .map(|&(slot, k)| (slot, Cow::Owned(PackedUfid::pack(&k))));
                map_of_known_length(s, stored.chain(fresh))
            }
        }
        struct Extras<'a>(&'a LayerFlowTable);
        impl Serialize for Extras<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                // By slot, as the own keys (not in the map's order, which
                // differs from table to table): the same flows are the
                // same bytes.
                let t = self.0;
                map_of_known_length(
                    s,
                    t.iter()
                        .filter_map(|(slot, _)| Some((slot, t.extras.get(slot)?))),
                )
            }
        }
        let mut st = s.serialize_struct("LayerFlowTable", 4)?;
        st.serialize_field("slots", &self.slots)?;
        st.serialize_field("free", &self.free)?;
        st.serialize_field("own_keys", &OwnKeys(self))?;
        st.serialize_field("extras", &Extras(self))?;
        st.end()
    }
}

/// A map of the entries of `entries`, counted first: the snapshot format
/// (postcard) writes a map's length before its entries, and a filtered
/// iterator does not know it.
fn map_of_known_length<S, K, V, I>(s: S, entries: I) -> Result<S::Ok, S::Error>
where
    S: serde::Serializer,
    K: Serialize,
    V: Serialize,
    I: Iterator<Item = (K, V)> + Clone,
{
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(entries.clone().count()))?;
    for (k, v) in entries {
        m.serialize_entry(&k, &v)?;
    }
    m.end()
}

/// [`LayerFlowTable`] as a snapshot holds it (see its `Serialize`).
#[derive(Deserialize)]
#[serde(rename = "LayerFlowTable")]
struct LayerFlowTableWire {
    slots: ChunkedSlab<LayerFlow>,
    free: Vec<u32>,
    own_keys: hashbrown::HashMap<u32, PackedUfid>,
    extras: hashbrown::HashMap<u32, LayerFlowExtra>,
}

impl<'de> Deserialize<'de> for LayerFlowTable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let LayerFlowTableWire {
            mut slots,
            free,
            mut own_keys,
            mut extras,
        } = LayerFlowTableWire::deserialize(d)?;
        let mut t = LayerFlowTable::default();
        // Own keys and extra parts go into the pools for the flows there
        // (a slot reused later must not inherit one); a flow whose own key
        // is missing keeps none (it is found by no key, as before).
        for (slot, f) in slots.iter_mut().enumerate() {
            let Some(f) = f else { continue };
            let slot = slot as u32;
            if is_own(f.key_conn) {
                f.key_conn = own_key_conn(own_keys.remove(&slot).and_then(|k| t.own_keys.take(k)));
            }
            if let Some(e) = extras.remove(&slot) {
                t.extras.insert(slot, e);
            }
        }
        t.slots = slots;
        t.free = free;
        Ok(t)
    }
}

impl LayerFlowTable {
    /// Heap bytes [`LayerFlowTable::reserve`] holds for `flows` flows: the
    /// slots, the free list, the index of both keys and the own keys'
    /// first chunk.
    pub fn reserve_bytes(flows: usize) -> usize {
        ChunkedSlab::<LayerFlow>::bytes_for(flows)
            .saturating_add(flows.saturating_mul(size_of::<u32>()))
            .saturating_add(FlowIndex::bytes_for(flows.saturating_mul(2)))
            .saturating_add(SlabPool::<PackedUfid>::bytes_for(flows.min(CHUNK)))
    }

    /// Heap bytes [`LayerFlowTable::reserve_extras`] holds for `flows`
    /// flows (the room of the map from slots to extra parts).
    pub fn extras_reserve_bytes(flows: usize) -> usize {
        ExtraParts::reserve_bytes(flows)
    }

    /// Room in the map of extra parts for `flows` flows in all (a layer
    /// whose rules transpose: its NAT'd flows have extra parts), so the map
    /// does not double, re-hashing every entry, inside a packet.
    pub fn reserve_extras(&mut self, flows: usize) {
        self.extras.reserve(flows);
    }

    /// Make room for `flows` layer flows (two index entries each) without
    /// allocating or faulting a page in as they come (see
    /// `Port::reserve`). `conns` is the port's unified flow table, which
    /// holds most flows' keys.
    ///
    /// The own key store gets its first chunk (the one that grows as a
    /// vector does, copied at each doubling); past it the store grows a
    /// chunk at a time with nothing moved, and a key held for every flow
    /// would cost 64 bytes each for flows that share their connection's.
    pub fn reserve(&mut self, flows: usize, conns: &UnifiedFlowTable) {
        self.slots.reserve(flows);
        self.free.reserve(flows.saturating_sub(self.free.len()));
        self.own_keys.reserve(flows.min(CHUNK));
        let (index, keys, slots) = self.index_and_keys(conns);
        index.reserve(flows.saturating_mul(2), LayerHashes { keys: &keys, slots });
    }

    /// The index beside the keys and flows it is kept by (borrowed apart,
    /// so the index can change while they are read).
    fn index_and_keys<'a>(
        &'a mut self,
        conns: &'a UnifiedFlowTable,
    ) -> (&'a mut FlowIndex, Keys<'a>, &'a ChunkedSlab<LayerFlow>) {
        let keys = Keys {
            own: &self.own_keys,
            fresh: self.fresh.as_ref(),
            extras: &self.extras,
            conns,
            seed: self.seed,
        };
        (&mut self.index, keys, &self.slots)
    }

    fn keys<'a>(&'a self, conns: &'a UnifiedFlowTable) -> Keys<'a> {
        Keys {
            own: &self.own_keys,
            fresh: self.fresh.as_ref(),
            extras: &self.extras,
            conns,
            seed: self.seed,
        }
    }

    /// `(slot, side)` of the flow keyed `(d, key)`.
    pub fn lookup(
        &self,
        d: Direction,
        key: &Ufid,
        conns: &UnifiedFlowTable,
    ) -> Option<(u32, usize)> {
        self.lookup_with_origin(d, key, conns)
            .map(|(slot, side, _)| (slot, side))
    }

    /// Like [`LayerFlowTable::lookup`], also giving the flow's origin key
    /// (read anyway to compare keys; a hit then needs no second read for
    /// [`LayerFlowView::side_transposition`]).
    pub fn lookup_with_origin(
        &self,
        d: Direction,
        key: &Ufid,
        conns: &UnifiedFlowTable,
    ) -> Option<(u32, usize, Ufid)> {
        self.lookup_hashed(d, key, self.hash(d, key), conns)
    }

    /// The index hash of `(d, key)`: given to
    /// [`LayerFlowTable::lookup_hashed`] and, after a miss, to
    /// [`LayerFlowTable::insert_hashed`] for a flow originating there, so
    /// a new flow's key is hashed once.
    #[inline]
    pub fn hash(&self, d: Direction, key: &Ufid) -> LayerFlowHash {
        lf_hash_of(self.seed, d, key)
    }

    /// [`LayerFlowTable::hash`], and start loading the index bucket it
    /// lands in (a prefetch hint). Kept out of line: inlined into a loop
    /// over layers, the key's packing is hoisted out of the loop and paid
    /// by every walk, even one that hashes nothing.
    #[inline(never)]
    pub fn hash_and_prefetch(&self, d: Direction, key: &Ufid) -> LayerFlowHash {
        let h = self.hash(d, key);
        self.index.prefetch(h.value);
        h
    }

    /// [`LayerFlowTable::lookup_with_origin`] with the key's
    /// [`LayerFlowTable::hash`].
    pub fn lookup_hashed(
        &self,
        d: Direction,
        key: &Ufid,
        hash: LayerFlowHash,
        conns: &UnifiedFlowTable,
    ) -> Option<(u32, usize, Ufid)> {
        debug_assert_eq!(hash, self.hash(d, key));
        let keys = self.keys(conns);
        let slots = &self.slots;
        let mut found = None;
        let v = self.index.find(hash.value, |v| {
            found = keys.matching_origin(slots, v, d, key);
            found.is_some()
        })?;
        let (side, origin) = found?;
        Some((v >> 1, side, origin))
    }

    pub fn get(&self, slot: u32) -> Option<LayerFlowView<'_>> {
        let flow = self.slots.get(slot as usize)?.as_ref()?;
        Some(LayerFlowView {
            flow,
            extra: self.extras.get(slot),
        })
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut LayerFlow> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// Insert a flow with origin key `key` (kept in the table's own store
    /// until [`LayerFlowTable::share_key`]) and index both keys. A key
    /// already indexed (two flows whose reverse keys collide, e.g.
    /// many-to-one static NAT) keeps its first owner.
    pub fn insert(&mut self, new: OwnedLayerFlow, key: &Ufid, conns: &UnifiedFlowTable) -> u32 {
        self.insert_hashed(new, key, None, conns)
    }

    /// [`LayerFlowTable::insert`] with the origin key's
    /// [`LayerFlowTable::hash`] in the flow's origin direction, when the
    /// caller has it from the lookup that missed.
    pub fn insert_hashed(
        &mut self,
        new: OwnedLayerFlow,
        key: &Ufid,
        hash: Option<LayerFlowHash>,
        conns: &UnifiedFlowTable,
    ) -> u32 {
        let OwnedLayerFlow { flow: mut f, extra } = new;
        f.key_conn = OWN_KEY;
        let view = LayerFlowView {
            flow: &f,
            extra: extra.as_ref(),
        };
        // Each side's identity and hash, computed once.
        let keys = [*key, view.reverse_key(key)];
        let dirs = [f.dir_of(0), f.dir_of(1)];
        debug_assert!(hash.is_none_or(|h| h == lf_hash_of(self.seed, dirs[0], &keys[0])));
        let origin = hash.unwrap_or_else(|| lf_hash_of(self.seed, dirs[0], &keys[0]));
        // A flow that transposes nothing has the origin key reversed as its
        // reverse key (in the opposite direction), which a reversible hash
        // hashes alike: one hash.
        let identity = view.transposition().is_identity();
        let hashes = if origin.reversible && identity {
            [origin.value; 2]
        } else {
            [origin.value, lf_hash(self.seed, dirs[1], &keys[1])]
        };
        debug_assert_eq!(hashes[1], lf_hash(self.seed, dirs[1], &keys[1]));
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        // The slot the next new flow takes starts loading now (as in
        // `UnifiedFlowTable::alloc`).
        match self.free.last() {
            Some(&s) => {
                if let Some(next) = self.slots.get(s as usize) {
                    crate::hint::prefetch(next);
                }
            }
            None => self.slots.prefetch_next_push(),
        }
        // One entry for both keys when the reverse key is the origin's
        // reversed and both hash alike — unless an earlier flow owns either
        // key (it keeps it; this flow must answer for exactly the other).
        let mirror = identity && hashes[0] == hashes[1];
        // In place first: growing the index while the second side goes in
        // rehashes the first, which reads this flow's key.
        self.slots[slot as usize] = Some(f);
        if let Some(e) = extra {
            self.extras.insert(slot, e);
        }
        self.settle();
        self.fresh = Some((slot, *key));
        // Both keys share a probe chain: one probe checks both.
        if mirror
            && self.index_unless_taken(
                slot,
                0,
                hashes[0],
                &[(dirs[0], &keys[0]), (dirs[1], &keys[1])],
                conns,
            )
        {
            if let Some(f) = self.slots[slot as usize].as_mut() {
                f.one_entry = true;
            }
            return slot;
        }
        // One probe per side: find an earlier flow with the key, or the
        // place to put it.
        for side in 0..2 {
            if !self.index_unless_taken(
                slot,
                side,
                hashes[side],
                &[(dirs[side], &keys[side])],
                conns,
            ) {
                self.shadow(slot << 1 | side as u32);
            }
        }
        slot
    }

    /// Record index entry `v` as wanting a key another flow holds.
    #[cold]
    #[inline(never)]
    fn shadow(&mut self, v: u32) {
        if let Err(at) = self.shadowed.binary_search(&v) {
            self.shadowed.insert(at, v);
        }
    }

    /// The index entries waiting for a key another flow holds (see
    /// `shadowed`), ascending.
    pub fn shadowed(&self) -> &[u32] {
        &self.shadowed
    }

    /// Give the key `(d, key)` (hash `hash`), which its holder let go of,
    /// to the lowest shadowed entry wanting it, if any.
    fn promote(&mut self, d: Direction, key: &Ufid, hash: u64, conns: &UnifiedFlowTable) {
        let keys = self.keys(conns);
        let Some(at) = self
            .shadowed
            .iter()
            .position(|&v| keys.is(&self.slots, v, d, key))
        else {
            return;
        };
        let v = self.shadowed.remove(at);
        self.index_waiting(hash, v, conns);
    }

    /// Index entry `v` (a waiting one) under `hash`. Out of line: the
    /// insert of every new flow, `index_unless_taken`'s, stays inlined.
    #[cold]
    #[inline(never)]
    fn index_waiting(&mut self, hash: u64, v: u32, conns: &UnifiedFlowTable) {
        let (index, keys, slots) = self.index_and_keys(conns);
        index.insert(hash, v, LayerHashes { keys: &keys, slots });
    }

    /// Index side `side` of the flow in `slot` under `hash`, unless another
    /// flow already answers for one of the `(direction, key)` pairs
    /// `wanted` (it keeps them). Returns whether the entry went in.
    fn index_unless_taken(
        &mut self,
        slot: u32,
        side: usize,
        hash: u64,
        wanted: &[(Direction, &Ufid)],
        conns: &UnifiedFlowTable,
    ) -> bool {
        let k = Keys {
            own: &self.own_keys,
            fresh: self.fresh.as_ref(),
            extras: &self.extras,
            conns,
            seed: self.seed,
        };
        let slots = &self.slots;
        let taken = self
            .index
            .find(hash, |v| {
                v >> 1 != slot && wanted.iter().any(|&(d, key)| k.is(slots, v, d, key))
            })
            .is_some();
        if !taken {
            let hashes = LayerHashes { keys: &k, slots };
            self.index.insert(hash, slot << 1 | side as u32, hashes);
        }
        !taken
    }

    /// Let the flow in `slot` read its origin key from side `side` of
    /// connection `conn` instead of storing it, if that flow's key is the
    /// same (the connection must hold the flow; call
    /// [`LayerFlowTable::own_key`] before it lets go of it or of that key).
    /// Returns whether the key is now shared.
    pub fn share_key(
        &mut self,
        slot: u32,
        conn: u32,
        side: Direction,
        conns: &UnifiedFlowTable,
    ) -> bool {
        let Some(f) = self.slots.get_mut(slot as usize).and_then(|f| f.as_mut()) else {
            return false;
        };
        if !is_own(f.key_conn) || f.origin != side {
            return f.key_conn == conn && f.key_side == side;
        }
        let stored = own_entry(f.key_conn);
        let fresh = self.fresh.as_ref().filter(|(s, _)| *s == slot);
        let same = match fresh {
            Some((_, key)) => conns.side_key_is(conn, side, key),
            None => match (
                stored.and_then(|i| self.own_keys.get(i)),
                conns.side_key(conn, side),
            ) {
                (Some(own), Some(key)) => own.matches(&key),
                _ => false,
            },
        };
        if same {
            f.key_conn = conn;
            f.key_side = side;
            if fresh.is_some() {
                self.fresh = None;
            } else if let Some(i) = stored {
                self.own_keys.give(i);
            }
        }
        same
    }

    /// Store the last inserted flow's key with the other own keys if no
    /// connection took it (see `fresh`).
    #[inline]
    pub fn settle(&mut self) {
        // Most tables have nothing pending: no call.
        if self.fresh.is_some() {
            self.settle_fresh();
        }
    }

    fn settle_fresh(&mut self) {
        if let Some(&(slot, key)) = self.unsettled() {
            let stored = self.store_own_key(&key);
            if let Some(f) = self.get_mut(slot) {
                f.key_conn = stored;
            }
        }
        self.fresh = None;
    }

    /// Put `key` in the own key store; returns the [`LayerFlow::key_conn`]
    /// naming it ([`OWN_KEY`], no key, if the store is full).
    fn store_own_key(&mut self, key: &Ufid) -> u32 {
        own_key_conn(self.own_keys.take(PackedUfid::pack(key)))
    }

    /// The fresh key, if its flow still keeps its own key (no connection
    /// took it).
    fn unsettled(&self) -> Option<&(u32, Ufid)> {
        self.fresh.as_ref().filter(|&&(slot, _)| {
            self.slots
                .get(slot as usize)
                .and_then(|f| f.as_ref())
                .is_some_and(|f| f.key_conn == OWN_KEY)
        })
    }

    /// Whether a last inserted flow's key waits to be settled (never
    /// between port calls).
    pub fn has_fresh_key(&self) -> bool {
        self.fresh.is_some()
    }

    /// Store the origin key of the flow in `slot` in the table again if it
    /// is shared with side `side` of connection `conn` (which is about to
    /// let go of the flow or change that key).
    pub fn own_key(&mut self, slot: u32, conn: u32, side: Direction, conns: &UnifiedFlowTable) {
        let Some(f) = self.slots.get_mut(slot as usize).and_then(|f| f.as_mut()) else {
            return;
        };
        if f.key_conn != conn || f.key_side != side {
            return;
        }
        let Some(key) = conns.side_key(conn, side) else {
            return;
        };
        let stored = self.store_own_key(&key);
        if let Some(f) = self.get_mut(slot) {
            f.key_conn = stored;
        }
    }

    /// Take a flow out of the index (it stays in its slot while held).
    pub fn detach(&mut self, slot: u32, conns: &UnifiedFlowTable) {
        if self.shadowed.is_empty() {
            self.unindex(slot, conns);
        } else {
            self.detach_handing_over(slot, conns);
        }
    }

    /// [`LayerFlowTable::detach`] while some flow waits for a key (rare):
    /// the keys this flow held go to the flows waiting for them, and its
    /// own waiting entries are forgotten.
    #[cold]
    #[inline(never)]
    fn detach_handing_over(&mut self, slot: u32, conns: &UnifiedFlowTable) {
        let keys = self.keys(conns);
        let Some(f) = self.slots.get(slot as usize).and_then(|s| s.as_ref()) else {
            return;
        };
        if f.detached {
            return;
        }
        // An entry that waits holds nothing; a flow of one entry holds
        // both its keys through it.
        let mut freed: [Option<(Direction, Ufid, u64)>; 2] = [None, None];
        for (side, freed) in freed.iter_mut().enumerate() {
            let v = slot << 1 | if f.one_entry { 0 } else { side as u32 };
            if self.shadowed.binary_search(&v).is_ok() {
                continue;
            }
            *freed = keys.side(slot, f, side).map(|k| {
                let d = f.dir_of(side);
                (d, k, lf_hash(self.seed, d, &k))
            });
        }
        self.unindex(slot, conns);
        self.shadowed.retain(|&v| v >> 1 != slot);
        for (d, k, h) in freed.into_iter().flatten() {
            self.promote(d, &k, h, conns);
        }
    }

    /// Take the flow in `slot` out of the index and mark it detached.
    #[inline]
    fn unindex(&mut self, slot: u32, conns: &UnifiedFlowTable) {
        let seed = self.seed;
        let (index, keys, slots) = self.index_and_keys(conns);
        let Some(f) = slots.get(slot as usize).and_then(|s| s.as_ref()) else {
            return;
        };
        if f.detached {
            return;
        }
        for side in 0..if f.one_entry { 1 } else { 2 } {
            let v = slot << 1 | side as u32;
            let Some(k) = keys.side(slot, f, side) else {
                continue;
            };
            let h = lf_hash(seed, f.dir_of(side), &k);
            index.remove(h, v);
        }
        if let Some(f) = self.slots.get_mut(slot as usize).and_then(|s| s.as_mut()) {
            f.detached = true;
        }
    }

    /// Drop one reference; returns the flow (with its extra parts) if it
    /// was the last.
    pub fn release(&mut self, slot: u32, conns: &UnifiedFlowTable) -> Option<OwnedLayerFlow> {
        let f = self.slots.get_mut(slot as usize)?.as_mut()?;
        f.refs = f.refs.saturating_sub(1);
        if f.refs > 0 {
            return None;
        }
        self.detach(slot, conns);
        let flow = self.slots.get_mut(slot as usize)?.take()?;
        if self.fresh.as_ref().is_some_and(|(s, _)| *s == slot) {
            self.fresh = None;
        }
        if let Some(i) = own_entry(flow.key_conn) {
            self.own_keys.give(i);
        }
        self.free.push(slot);
        Some(OwnedLayerFlow {
            flow,
            extra: self.extras.remove(slot),
        })
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots made, holding a flow or free.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &LayerFlow)> + Clone {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|f| (i as u32, f)))
    }

    /// Every flow, mutably (for sweeps that leave keys alone).
    pub fn flows_mut(&mut self) -> impl Iterator<Item = &mut LayerFlow> {
        self.slots.iter_mut().flatten()
    }

    #[cfg(test)]
    pub(crate) fn free_list_mut(&mut self) -> &mut Vec<u32> {
        &mut self.free
    }

    /// Every flow (with its extra parts), emptying the table.
    pub fn drain(&mut self) -> Vec<OwnedLayerFlow> {
        self.index.clear();
        self.free.clear();
        self.own_keys.clear();
        self.fresh = None;
        let mut extras = std::mem::take(&mut self.extras);
        std::mem::take(&mut self.slots)
            .into_iter()
            .enumerate()
            .filter_map(|(slot, f)| {
                f.map(|flow| OwnedLayerFlow {
                    flow,
                    extra: extras.remove(slot as u32),
                })
            })
            .collect()
    }

    /// Mark every flow for revalidation (generation stamps wrapped).
    pub fn expire_stamps(&mut self) {
        for f in self.slots.iter_mut().flatten() {
            f.layer_generation = 0;
        }
    }

    /// Heap bytes used.
    pub fn memory_bytes(&self) -> usize {
        self.slots.memory_bytes()
            + self.extras.memory_bytes()
            + self.index.memory_bytes()
            + self.own_keys.memory_bytes()
            + self.free.capacity() * 4
    }

    /// Whether the table read from a snapshot is one this build can use:
    /// its free list names only empty slots, each once.
    pub fn check(&self) -> Result<(), String> {
        self.slots.check_free_list(&self.free)
    }

    /// Whether every attached flow answers for its keys: each side is
    /// found under its key by its own entry, but for the shadowed ones,
    /// whose key another flow holds (see `shadowed`). O(flows).
    pub fn verify_index(&self, conns: &UnifiedFlowTable) -> Result<(), String> {
        let keys = self.keys(conns);
        let slots = &self.slots;
        self.check_waiting(&self.shadowed)?;
        for (slot, f) in self.iter() {
            if f.detached {
                continue;
            }
            for side in 0..2 {
                let Some(k) = keys.side(slot, f, side) else {
                    continue;
                };
                let d = f.dir_of(side);
                let own = slot << 1 | if f.one_entry { 0 } else { side as u32 };
                let found = self
                    .index
                    .find(lf_hash(self.seed, d, &k), |v| keys.is(slots, v, d, &k));
                let waits = self.shadowed.binary_search(&own).is_ok();
                match found {
                    Some(v) if v == own && !waits => {}
                    Some(v) if v >> 1 != slot && waits => {}
                    None if waits => {
                        return Err(format!(
                            "flow {slot} side {side} waits for a key no flow holds"
                        ));
                    }
                    other => {
                        return Err(format!("flow {slot} side {side}: its key finds {other:?}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Rebuild the index after deserialization (`conns` restored first),
    /// leaving out the entries `shadowed` names (ascending, as saved: see
    /// [`LayerFlowTable::shadowed`]), which must name sides of flows the
    /// index holds. (A snapshot from before version 8 names none: of two
    /// flows wanting one key, the lower slot's gets it.)
    pub fn reindex(&mut self, conns: &UnifiedFlowTable, shadowed: Vec<u32>) -> Result<(), String> {
        self.check_waiting(&shadowed)?;
        let mut index = FlowIndex::with_capacity(self.len() * 2);
        let keys = self.keys(conns);
        let slots = &self.slots;
        // Index `v` (flow side `(slot, side)` of `f`) unless its key is
        // held already; whether it went in (or has no key to find).
        let place = |index: &mut FlowIndex, slot: u32, side: usize, f: &LayerFlow| {
            let Some(k) = keys.side(slot, f, side) else {
                return true;
            };
            let d = f.dir_of(side);
            let h = lf_hash(self.seed, d, &k);
            if index.find(h, |v| keys.is(slots, v, d, &k)).is_some() {
                return false;
            }
            let v = slot << 1 | side as u32;
            index.insert(h, v, LayerHashes { keys: &keys, slots });
            true
        };
        let mut waiting = Vec::new();
        for (slot, f) in slots.iter().enumerate() {
            let Some(f) = f else { continue };
            if f.detached {
                continue;
            }
            let slot = slot as u32;
            for side in 0..if f.one_entry { 1 } else { 2 } {
                let v = slot << 1 | side as u32;
                if shadowed.binary_search(&v).is_err() && !place(&mut index, slot, side, f) {
                    waiting.push(v);
                }
            }
        }
        // The saved waiting entries wait on, but for one whose key no flow
        // holds (a damaged snapshot): it takes it, rather than leave its
        // flow unfound.
        for v in shadowed {
            if let Some((slot, side, f)) = indexed(slots, v)
                && !place(&mut index, slot, side, f)
            {
                waiting.push(v);
            }
        }
        waiting.sort_unstable();
        self.index = index;
        self.shadowed = waiting;
        Ok(())
    }

    /// Whether `waiting` (a `shadowed` list) is ascending and names sides
    /// of attached flows of two entries.
    fn check_waiting(&self, waiting: &[u32]) -> Result<(), String> {
        if !waiting.is_sorted_by(|a, b| a < b) {
            return Err("shadowed entries out of order".into());
        }
        for &v in waiting {
            let live = self
                .slots
                .get((v >> 1) as usize)
                .and_then(|f| f.as_ref())
                .is_some_and(|f| !f.detached && !f.one_entry);
            if !live {
                return Err(format!("shadowed entry {v} names no attached flow side"));
            }
        }
        Ok(())
    }
}

/// What a unified flow does to its packets: verdict and composed
/// transposition (without its port rewrite). Interned: every flow with the
/// same result — typically all the connections through one NAT and tunnel,
/// or to one peer — shares one, so a flow entry holds a pointer instead of
/// the whole thing, and the fast path reads a line every such flow keeps
/// hot. (The counter slots are not part of it: per-destination meters
/// make them differ per peer, see [`CounterLists`].)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowAction {
    pub verdict: Verdict,
    /// The composed transposition with its port rewrite cleared (the port
    /// rewrite is per flow: [`UnifiedFlow::ports`]), prepared for the
    /// emitter once for every flow sharing it. Compares, hashes and
    /// serializes as the transposition.
    pub plan: EmitPlan,
    /// Which ports the flows sharing this action rewrite (the values are
    /// each flow's own).
    pub port_shape: PortShape,
}

/// Which of the source and destination ports a flow's transposition
/// rewrites. Part of the shared [`FlowAction`], so a flow keeps only the
/// values ([`PortValues`], 4 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortShape {
    pub src: bool,
    pub dst: bool,
}

impl PortShape {
    /// The shape of `p`.
    pub fn of(p: &PortRewrite) -> PortShape {
        PortShape {
            src: p.src.is_some(),
            dst: p.dst.is_some(),
        }
    }
}

/// A flow's own port rewrite values (0 where its action's [`PortShape`]
/// rewrites nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortValues {
    pub src: u16,
    pub dst: u16,
}

impl PortValues {
    pub fn of(p: &PortRewrite) -> PortValues {
        PortValues {
            src: p.src.unwrap_or(0),
            dst: p.dst.unwrap_or(0),
        }
    }
}

impl FlowAction {
    /// The port rewrite of a flow with port values `v`.
    #[inline]
    pub fn port_rewrite(&self, v: PortValues) -> PortRewrite {
        PortRewrite {
            src: self.port_shape.src.then_some(v.src),
            dst: self.port_shape.dst.then_some(v.dst),
        }
    }
}

impl std::hash::Hash for FlowAction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(action_digest(
            &self.verdict,
            self.plan.transposition(),
            self.port_shape,
        ));
    }
}

/// A borrowed [`FlowAction`], to look one up in the intern set without
/// building it. Hashes exactly as the owned form.
pub struct FlowActionRef<'a> {
    pub verdict: &'a Verdict,
    pub transposition: &'a Transposition,
    pub port_shape: PortShape,
}

impl std::hash::Hash for FlowActionRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(action_digest(
            self.verdict,
            self.transposition,
            self.port_shape,
        ));
    }
}

/// A digest of the fields that tell flow actions apart in practice: the
/// verdict, address and port rewrites, and the tunnel's VNI and far end.
/// Equal actions digest alike; the intern set compares in full when
/// digests match. Interning runs once per new unified flow, and hashing the
/// whole transposition field by field cost more than the rest of the
/// lookup.
fn action_digest(v: &Verdict, t: &Transposition, shape: PortShape) -> u64 {
    fn ip(a: Option<IpAddr>) -> u64 {
        match a {
            None => 0,
            Some(IpAddr::V4(x)) => u64::from(u32::from(x)) | 1 << 40,
            Some(IpAddr::V6(x)) => {
                let b = u128::from(x);
                (b as u64) ^ (b >> 64) as u64 ^ 2 << 40
            }
        }
    }
    fn port(p: Option<u16>) -> u64 {
        p.map_or(0, |p| u64::from(p) | 1 << 16)
    }
    fn mix(h: u64, w: u64) -> u64 {
        (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
    }
    let verdict = match v {
        Verdict::Forward => u64::from(shape.src) << 40 | u64::from(shape.dst) << 41,
        Verdict::Drop { reason, layer } => {
            1 | (reason.index() as u64) << 1 | layer.map_or(0, |l| u64::from(l) + 1) << 16
        }
        // (No flow holds a packet.)
        Verdict::Held => 2,
    };
    let outer = match &t.outer {
        OuterOp::Ignore => 0,
        OuterOp::Pop => 1,
        OuterOp::Push(e) => 2 | u64::from(e.vni) << 8 ^ ip(Some(e.dst_ip)) << 3,
        OuterOp::Replace(e) => 3 | u64::from(e.vni) << 8 ^ ip(Some(e.dst_ip)) << 3,
    };
    let mut h = mix(verdict, outer);
    h = mix(h, ip(t.src_ip));
    h = mix(h, ip(t.dst_ip));
    h = mix(h, port(t.src_port) | port(t.dst_port) << 20);
    mix(h, t.dscp.map_or(0, |d| u64::from(d) | 0x100))
}

impl hashbrown::Equivalent<Arc<FlowAction>> for FlowActionRef<'_> {
    fn equivalent(&self, a: &Arc<FlowAction>) -> bool {
        *self.verdict == a.verdict
            && self.port_shape == a.port_shape
            && self.transposition == a.plan.transposition()
    }
}

/// The counter-slot lists unified flows count towards (forward: layers,
/// rules, meters; drop: the deciding layer and rule), each stored once and
/// named by a 4-byte id in the flow. Kept apart from [`FlowAction`]: only
/// flushing counters reads them, never the per-packet path.
///
/// A list of up to [`INLINE_COUNTERS`] slots (a four-layer stack's layers,
/// rules and a meter bucket) is held inline in its entry, so that a new
/// list, as every new meter bucket brings, takes no allocation once room
/// is reserved ([`UnifiedFlowTable::reserve_counter_lists`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CounterLists {
    lists: SharedTable<CounterList>,
    #[serde(skip)]
    seed: TableSeed,
}

/// Counter slots a list holds without a heap allocation of its own.
pub const INLINE_COUNTERS: usize = 10;

/// One counter-slot list (encoded as a plain sequence, as before).
type CounterList = smallvec::SmallVec<[u32; INLINE_COUNTERS]>;

fn list_hash(seed: u64, slots: &[u32]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(seed).hash_one(slots)
}

impl CounterLists {
    /// A reference on the list equal to `slots`.
    pub fn acquire(&mut self, slots: &[u32]) -> u32 {
        let seed = self.seed.get();
        self.lists.acquire(
            list_hash(seed, slots),
            |l| **l == *slots,
            || CounterList::from_slice(slots),
            |l| list_hash(seed, l),
        )
    }

    /// Room for `n` more lists of up to [`INLINE_COUNTERS`] slots.
    fn reserve(&mut self, n: usize) {
        let seed = self.seed.get();
        self.lists.reserve(n, |l| list_hash(seed, l));
    }

    pub fn release(&mut self, id: u32) {
        let seed = self.seed.get();
        self.lists.release(id, |l| list_hash(seed, l));
    }

    /// The slots of list `id` (none for an id not held).
    #[inline]
    pub fn get(&self, id: u32) -> &[u32] {
        self.lists.get(id).map_or(&[], |l| l)
    }

    /// Lists in use.
    pub fn len(&self) -> usize {
        self.lists.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    fn memory_bytes(&self) -> usize {
        self.lists
            .memory_bytes(|l| if l.spilled() { l.capacity() * 4 } else { 0 })
    }
}

/// The cached result for one UFID in one direction (VFP-12): the shared
/// [`FlowAction`] plus what is the flow's own. 48 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnifiedFlow {
    /// The flow's UFID in storage form: set by the table when the flow goes
    /// in (see [`UnifiedFlowTable::set_side`]), compared and unpacked
    /// through the table.
    pub key: StoredUfid,
    /// Low 32 bits of the port generation the flow was compiled at
    /// (VFP-13). Never 0 for a current flow: when the port generation's low
    /// half wraps, the port sets every stamp to 0 (see `Port::bump`), so a
    /// stamp equals the current generation's only if the flow was compiled
    /// at it.
    pub generation: u32,
    /// The per-flow part of the transposition (which ports it rewrites is
    /// the action's [`FlowAction::port_shape`]).
    pub ports: PortValues,
    pub action: Arc<FlowAction>,
    /// Id of the flow's counter-slot list in its table's [`CounterLists`]
    /// (a reference the flow holds).
    pub counters: u32,
    /// Packets and bytes not yet added to the action's counters (the fast
    /// path counts here, in the entry it already has in cache; flushed
    /// lazily, and before either would overflow — at worst every 4 GiB).
    #[serde(default)]
    pub packets: u32,
    #[serde(default)]
    pub bytes: u32,
}

impl UnifiedFlow {
    #[inline]
    pub fn verdict(&self) -> Verdict {
        self.action.verdict
    }

    /// The whole transposition (shared part and port rewrite), built for
    /// diagnostics; the datapath applies the parts without building it.
    pub fn transposition(&self) -> Transposition {
        self.action
            .plan
            .transposition()
            .with_ports(self.port_rewrite())
    }

    /// The flow's port rewrite.
    #[inline]
    pub fn port_rewrite(&self) -> PortRewrite {
        self.action.port_rewrite(self.ports)
    }

    /// The UDP source port of the tunnel header the flow pushes, if it
    /// pushes one ([`EmitPlan::tunnel_port`]); `key` is the flow's UFID.
    pub fn tunnel_port(&self, key: &Ufid) -> Option<u16> {
        self.action
            .plan
            .tunnel_port(&self.port_rewrite(), &key.inner)
    }

    /// Count one packet of `bytes` bytes, flushing first if a pending count
    /// would overflow.
    #[inline]
    pub fn count(
        &mut self,
        bytes: u32,
        lists: &CounterLists,
        arena: &mut crate::counters::CounterArena,
    ) {
        if self.packets == u32::MAX || self.bytes.checked_add(bytes).is_none() {
            self.flush(lists, arena);
        }
        self.packets += 1;
        self.bytes += bytes;
    }

    /// Add pending packets/bytes to the counter slots (as drops for a drop
    /// flow) and zero them.
    pub fn flush(&mut self, lists: &CounterLists, arena: &mut crate::counters::CounterArena) {
        self.add_pending(lists, arena);
        self.packets = 0;
        self.bytes = 0;
    }

    /// Add the pending packets/bytes to the counter slots without taking
    /// them (a read of exact counters, see `Port::counters`).
    pub fn add_pending(&self, lists: &CounterLists, arena: &mut crate::counters::CounterArena) {
        if self.packets == 0 {
            return;
        }
        let (packets, bytes) = (u64::from(self.packets), u64::from(self.bytes));
        let forward = self.action.verdict.is_forward();
        for &slot in lists.get(self.counters) {
            if forward {
                arena.add(slot, packets, bytes);
            } else {
                arena.add_drops(slot, packets);
            }
        }
    }
}

pub use crate::layer_refs::{LayerFlowRef, LayerFlowRefs};

/// Heap bytes of a port's flow state, by part ([`crate::Port::flow_memory`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowMemory {
    /// The connection slab: both unified flows, TCP state, layer-flow
    /// references.
    pub connections: usize,
    /// The unified flow table's hash index.
    pub uft_index: usize,
    /// Parts stored once for many flows: header contexts, counter-slot
    /// lists, compiled flow actions.
    pub shared: usize,
    /// Each layer's flow table (flows, index, extra parts), by layer id.
    pub layer_flows: Vec<(String, usize)>,
}

impl FlowMemory {
    pub fn total(&self) -> usize {
        self.connections
            + self.uft_index
            + self.shared
            + self.layer_flows.iter().map(|(_, b)| b).sum::<usize>()
    }
}

/// A pair of unified flows and their shared state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Indexed by `Direction::index()`.
    pub sides: [Option<UnifiedFlow>; 2],
    pub initiator: Direction,
    pub tcp: Option<TcpConn>,
    /// The layer flows it holds (read and changed through its table:
    /// [`UnifiedFlowTable::layer_refs`], [`UnifiedFlowTable::add_refs`]).
    layer_flows: LayerFlowRefs,
    /// When the first packet was seen, in whole seconds (see
    /// [`Connection::created`]).
    created_secs: u32,
    pub last_seen: Time,
    /// Idle timeout from the deciding rules, if any set one.
    idle_ttl: OptSecs,
    /// Second-chance bit for eviction (set on every hit).
    pub referenced: bool,
    /// The UDP source port of the tunnel header the connection's one
    /// tunnel-pushing side writes ([`EmitPlan::tunnel_port`]), kept so its
    /// packets are not hashed again; 0 when no side or both sides push one.
    /// Kept true by the table whenever a side changes
    /// (`UnifiedFlowTable::refresh_tunnel_port`). In the struct's padding,
    /// so it costs no memory; not in snapshots (worked out on restore).
    tunnel_port: u16,
}

/// An optional TTL in 4 bytes, as whole seconds (rule TTLs are whole
/// seconds); `u32::MAX` is `None`, longer TTLs are capped just below it
/// (136 years).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct OptSecs(u32);

/// Whole seconds of `t`, capped below `u32::MAX`.
fn whole_secs(t: Time) -> u32 {
    (t / 1_000_000_000).min(u64::from(u32::MAX - 1)) as u32
}

impl From<Option<Time>> for OptSecs {
    fn from(t: Option<Time>) -> OptSecs {
        OptSecs(t.map_or(u32::MAX, whole_secs))
    }
}

impl OptSecs {
    fn get(self) -> Option<Time> {
        (self.0 != u32::MAX).then(|| crate::types::secs(u64::from(self.0)))
    }
}

impl Connection {
    /// A connection started by a packet of direction `initiator`, with no
    /// unified flows yet.
    pub fn new(
        initiator: Direction,
        tcp: Option<TcpConn>,
        now: Time,
        idle_ttl: Option<Time>,
    ) -> Connection {
        Connection {
            sides: [None, None],
            initiator,
            tcp,
            layer_flows: LayerFlowRefs::new(),
            created_secs: whole_secs(now),
            last_seen: now,
            idle_ttl: idle_ttl.into(),
            referenced: false,
            tunnel_port: 0,
        }
    }

    /// [`Connection::tunnel_port`]'s value for the datapath's emit.
    #[inline]
    pub fn tunnel_port(&self) -> Option<u16> {
        (self.tunnel_port != 0).then_some(self.tunnel_port)
    }

    /// The side pushing a UDP tunnel, if exactly one does.
    fn tunnel_side(&self) -> Option<Direction> {
        let pushes = |d: Direction| {
            self.side(d)
                .is_some_and(|uf| uf.action.plan.pushes_udp_tunnel())
        };
        match (pushes(Direction::Out), pushes(Direction::In)) {
            (true, false) => Some(Direction::Out),
            (false, true) => Some(Direction::In),
            _ => None,
        }
    }

    /// When the connection's first packet was seen, to the whole second
    /// (kept in 4 bytes: it is for diagnostics, not timing).
    pub fn created(&self) -> Time {
        crate::types::secs(u64::from(self.created_secs))
    }

    /// Layer flows the connection holds.
    pub fn layer_flow_count(&self) -> usize {
        self.layer_flows.len()
    }

    /// Idle timeout from the deciding rules, if any set one.
    pub fn idle_ttl(&self) -> Option<Time> {
        self.idle_ttl.get()
    }

    pub fn set_idle_ttl(&mut self, t: Option<Time>) {
        self.idle_ttl = t.into();
    }

    pub fn side(&self, d: Direction) -> Option<&UnifiedFlow> {
        self.sides[d.index()].as_ref()
    }

    pub fn is_drop_only(&self) -> bool {
        self.sides
            .iter()
            .flatten()
            .all(|uf| !uf.verdict().is_forward())
    }
}

/// Outbound keys hash without their MACs (compared in full all the same):
/// VM-side pairing finds an inbound flow's outbound partner by its L3/L4
/// identity with the same index, no second one.
#[inline(always)]
fn uft_hash(seed: TableSeed, d: Direction, k: &Ufid) -> u64 {
    let seed = uft_seed(seed, d);
    match d {
        Direction::Out => k.table_hash_without_macs(seed),
        Direction::In => k.table_hash(seed),
    }
}

fn uft_seed(seed: TableSeed, d: Direction) -> u64 {
    seed.0 ^ 0x0055_4654_0000 ^ d.index() as u64
}

/// [`uft_hash`] of a stored key: a key of the IPv4 form is hashed from
/// its tuple and context as stored (the same value), without rebuilding
/// the 112-byte `Ufid` first.
fn stored_hash(
    contexts: &HeaderContexts,
    seed: TableSeed,
    d: Direction,
    k: &StoredUfid,
) -> Option<u64> {
    let Some((t, c)) = contexts.split_of(k) else {
        return contexts.unpack(k).map(|u| uft_hash(seed, d, &u));
    };
    let seed = uft_seed(seed, d);
    Some(match d {
        Direction::Out => table_hash_split_without_macs(t, c, seed),
        Direction::In => table_hash_split(t, c, seed),
    })
}

/// The unified flow table.
#[derive(Clone, Debug, Default)]
pub struct UnifiedFlowTable {
    conns: ChunkedSlab<Connection>,
    free: Vec<u32>,
    /// Entries are `connection << 1 | direction`.
    index: FlowIndex,
    /// The header contexts the flows' keys name.
    contexts: HeaderContexts,
    /// The counter-slot lists the flows name.
    counter_lists: CounterLists,
    /// Clock hand for eviction.
    hand: usize,
    seed: TableSeed,
    /// The connections' layer-flow lists past their inline part.
    ref_blocks: RefBlocks,
}

// Snapshots: the table's fields as the derived form wrote them (the index
// and seed are not stored), each connection's layer flows as a plain
// sequence; the overflow blocks are made again as the lists are read.

impl Serialize for UnifiedFlowTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeSeq, SerializeStruct};
        struct Conns<'a>(&'a UnifiedFlowTable);
        impl Serialize for Conns<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let t = self.0;
                let mut seq = s.serialize_seq(Some(t.conns.len()))?;
                for c in t.conns.iter() {
                    seq.serialize_element(&c.as_ref().map(|c| ConnectionWire {
                        sides: &c.sides,
                        initiator: c.initiator,
                        tcp: &c.tcp,
                        layer_flows: RefsWire {
                            pool: &t.ref_blocks,
                            refs: &c.layer_flows,
                        },
                        created_secs: c.created_secs,
                        last_seen: c.last_seen,
                        idle_ttl: c.idle_ttl,
                        referenced: c.referenced,
                    }))?;
                }
                seq.end()
            }
        }
        let mut st = s.serialize_struct("UnifiedFlowTable", 5)?;
        st.serialize_field("conns", &Conns(self))?;
        st.serialize_field("free", &self.free)?;
        st.serialize_field("contexts", &self.contexts)?;
        st.serialize_field("counter_lists", &self.counter_lists)?;
        st.serialize_field("hand", &self.hand)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for UnifiedFlowTable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            conns: ConnsIn,
            free: Vec<u32>,
            contexts: HeaderContexts,
            counter_lists: CounterLists,
            hand: usize,
        }
        let w = Wire::deserialize(d)?;
        Ok(UnifiedFlowTable {
            conns: w.conns.conns,
            free: w.free,
            index: FlowIndex::default(),
            contexts: w.contexts,
            counter_lists: w.counter_lists,
            hand: w.hand,
            seed: TableSeed::default(),
            ref_blocks: w.conns.ref_blocks,
        })
    }
}

/// A connection as snapshots store it (the fields in [`Connection`]'s
/// order).
#[derive(Serialize)]
struct ConnectionWire<'a> {
    sides: &'a [Option<UnifiedFlow>; 2],
    initiator: Direction,
    tcp: &'a Option<TcpConn>,
    layer_flows: RefsWire<'a>,
    created_secs: u32,
    last_seen: Time,
    idle_ttl: OptSecs,
    referenced: bool,
}

/// [`ConnectionWire`] read back.
#[derive(Deserialize)]
struct ConnectionRead {
    sides: [Option<UnifiedFlow>; 2],
    initiator: Direction,
    tcp: Option<TcpConn>,
    layer_flows: SmallVec<[LayerFlowRef; 2]>,
    created_secs: u32,
    last_seen: Time,
    idle_ttl: OptSecs,
    referenced: bool,
}

/// The connection slab of a snapshot and the overflow blocks of its
/// layer-flow lists, built as the connections are read.
struct ConnsIn {
    conns: ChunkedSlab<Connection>,
    ref_blocks: RefBlocks,
}

impl<'de> Deserialize<'de> for ConnsIn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = ConnsIn;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence of connection slots")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ConnsIn, A::Error> {
                let mut out = ConnsIn {
                    conns: ChunkedSlab::new(),
                    ref_blocks: RefBlocks::default(),
                };
                while let Some(slot) = seq.next_element::<Option<ConnectionRead>>()? {
                    let conn = slot.map(|c| {
                        let mut layer_flows = LayerFlowRefs::new();
                        for r in c.layer_flows {
                            out.ref_blocks.push(&mut layer_flows, r);
                        }
                        Connection {
                            sides: c.sides,
                            initiator: c.initiator,
                            tcp: c.tcp,
                            layer_flows,
                            created_secs: c.created_secs,
                            last_seen: c.last_seen,
                            idle_ttl: c.idle_ttl,
                            referenced: c.referenced,
                            // Worked out in `UnifiedFlowTable::rebuild`.
                            tunnel_port: 0,
                        }
                    });
                    out.conns.push(conn);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Visit)
    }
}

impl UnifiedFlowTable {
    /// Hash of the unified flow key `(d, key)` in this table (the `hash`
    /// argument of [`UnifiedFlowTable::lookup`] and `set_side`).
    #[inline(always)]
    pub fn hash(&self, d: Direction, key: &Ufid) -> u64 {
        uft_hash(self.seed, d, key)
    }

    /// The connection holding the unified flow `(d, key)`.
    #[inline]
    pub fn lookup(&self, d: Direction, key: &Ufid, hash: u64) -> Option<u32> {
        let (conns, contexts) = (&self.conns, &self.contexts);
        let di = d.index();
        self.index
            .find(hash, |v| {
                (v & 1) as usize == di
                    && conns
                        .get((v >> 1) as usize)
                        .and_then(|c| c.as_ref())
                        .and_then(|c| c.sides[di].as_ref())
                        .is_some_and(|uf| contexts.matches(&uf.key, key))
            })
            .map(|v| v >> 1)
    }

    /// [`UnifiedFlowTable::lookup`] trying `hint` (a [`UnifiedFlowTable::peek`]
    /// result) first: when that candidate's key is the packet's, the index
    /// is not searched again. A stale hint (the table changed since the
    /// peek) costs one key comparison, never a wrong answer: keys are
    /// unique, so a flow keyed `key` is the answer wherever it is.
    #[inline]
    pub fn lookup_hinted(&self, d: Direction, key: &Ufid, hash: u64, hint: u32) -> Option<u32> {
        self.candidate_for(d, key, hint)
            .or_else(|| self.lookup(d, key, hash))
    }

    /// The connection a [`UnifiedFlowTable::peek`] candidate names, if its
    /// flow of direction `d` has key `key` (no other way is looked at).
    #[inline]
    pub fn candidate_for(&self, d: Direction, key: &Ufid, hint: u32) -> Option<u32> {
        self.candidate_flow(hint, d)
            .is_some_and(|uf| self.contexts.matches(&uf.key, key))
            .then_some(hint >> 1)
    }

    /// First stage of a pipelined lookup: start loading `hash`'s home
    /// index bucket (a prefetch hint).
    #[inline]
    pub fn prefetch_bucket(&self, hash: u64) {
        self.index.prefetch(hash);
    }

    /// Second stage of a pipelined lookup: the first index value stored
    /// under `hash`'s tag (`u32::MAX` if none), a candidate to key-check.
    #[inline]
    pub fn peek(&self, hash: u64) -> u32 {
        self.index.peek(hash).unwrap_or(u32::MAX)
    }

    /// Third stage: start loading the candidate's connection entry (a
    /// prefetch hint; nothing is read).
    #[inline]
    pub fn prefetch_candidate(&self, candidate: u32) {
        if candidate != u32::MAX
            && let Some(slot) = self.conns.get((candidate >> 1) as usize)
        {
            crate::hint::prefetch(slot);
        }
    }

    /// The unified flow a [`UnifiedFlowTable::peek`] candidate names, if it
    /// is of direction `d`.
    #[inline]
    fn candidate_flow(&self, candidate: u32, d: Direction) -> Option<&UnifiedFlow> {
        if candidate == u32::MAX || (candidate & 1) as usize != d.index() {
            return None;
        }
        self.conns
            .get((candidate >> 1) as usize)
            .and_then(|c| c.as_ref())
            .and_then(|c| c.sides[d.index()].as_ref())
    }

    /// The connection whose outbound flow has the VM-side identity of
    /// `vm_key` (MACs ignored: outbound keys hash without them). Inlined
    /// into the first answer's path (its one hot caller).
    #[inline(always)]
    pub fn lookup_pair(&self, vm_key: &Ufid) -> Option<u32> {
        let out = Direction::Out.index() as u32;
        self.index
            .find(self.hash(Direction::Out, vm_key), |v| {
                v & 1 == out
                    && self
                        .side_key(v >> 1, Direction::Out)
                        .is_some_and(|u| same_layer_key(&u, vm_key))
            })
            .map(|v| v >> 1)
    }

    /// The full key of side `d` of connection `c`.
    pub fn side_key(&self, c: u32, d: Direction) -> Option<Ufid> {
        self.contexts.unpack(&self.get(c)?.side(d)?.key)
    }

    /// Whether side `d` of connection `c` is keyed `key` (without unpacking
    /// the stored key).
    pub fn side_key_is(&self, c: u32, d: Direction, key: &Ufid) -> bool {
        self.get(c)
            .and_then(|conn| conn.side(d))
            .is_some_and(|uf| self.contexts.matches(&uf.key, key))
    }

    /// A reference on the counter-slot list `slots`, for a unified flow
    /// about to go in (see [`UnifiedFlow::counters`]).
    pub fn intern_counters(&mut self, slots: &[u32]) -> u32 {
        self.counter_lists.acquire(slots)
    }

    /// The table's counter-slot lists.
    pub fn counter_lists(&self) -> &CounterLists {
        &self.counter_lists
    }

    /// Connection `c`, mutably, with the counter-slot lists its flows
    /// name (to count into them).
    #[inline]
    pub fn get_mut_with_lists(&mut self, c: u32) -> Option<(&mut Connection, &CounterLists)> {
        let conn = self.conns.get_mut(c as usize)?.as_mut()?;
        Some((conn, &self.counter_lists))
    }

    /// Flush side `d` of connection `c`'s pending counts.
    pub fn flush_side(&mut self, c: u32, d: Direction, arena: &mut crate::counters::CounterArena) {
        if let Some((conn, lists)) = self.get_mut_with_lists(c)
            && let Some(uf) = conn.sides[d.index()].as_mut()
        {
            uf.flush(lists, arena);
        }
    }

    /// Flush both sides of connection `c`.
    pub fn flush_connection(&mut self, c: u32, arena: &mut crate::counters::CounterArena) {
        if let Some((conn, lists)) = self.get_mut_with_lists(c) {
            for uf in conn.sides.iter_mut().flatten() {
                uf.flush(lists, arena);
            }
        }
    }

    /// Replace side `d` of connection `c` with its re-simulation `uf`
    /// (VFP-13), keeping its key: with the same action the flow keeps its
    /// pending counts (and counts into `uf`'s slots from now on, after
    /// flushing if they differ); with another action it is `uf`. `key` is
    /// the side's UFID (for the connection's kept tunnel port).
    pub fn reconcile_side(
        &mut self,
        c: u32,
        d: Direction,
        key: &Ufid,
        uf: UnifiedFlow,
        arena: &mut crate::counters::CounterArena,
    ) {
        let Some((conn, lists)) = self.get_mut_with_lists(c) else {
            self.counter_lists.release(uf.counters);
            return;
        };
        let Some(side) = conn.sides[d.index()].as_mut() else {
            self.counter_lists.release(uf.counters);
            return;
        };
        let old = side.counters;
        let changed = side.action != uf.action || side.ports != uf.ports;
        if changed {
            side.flush(lists, arena);
            // The key stays: it is the table's (stored with a reference on
            // its context); the rest is the new flow.
            let stored = std::mem::take(&mut side.key);
            *side = UnifiedFlow { key: stored, ..uf };
        } else if old != uf.counters {
            // Same action, other rules (or slots): count into the new
            // ones from this packet on.
            side.generation = uf.generation;
            side.flush(lists, arena);
            side.counters = uf.counters;
        } else {
            side.generation = uf.generation;
            self.counter_lists.release(uf.counters);
            return;
        }
        self.counter_lists.release(old);
        // The tunnel port follows the flow's action and ports only.
        if changed {
            self.refresh_tunnel_port(c, d, Some(key));
        }
    }

    /// Whether the index holds exactly one well-placed entry per flow, and
    /// the shared parts' reference counts (header contexts, wide keys,
    /// counter lists) are exactly those of the flows in the table.
    pub fn verify_shared(&self) -> Result<(), String> {
        // The index: well formed, and exactly one entry per flow, found
        // by a lookup of the flow's own key.
        let (conns, contexts, seed) = (&self.conns, &self.contexts, self.seed);
        self.index
            .verify(|v| side_hash(conns, contexts, seed, v))
            .map_err(|e| format!("unified flow index: {e}"))?;
        let mut flows = 0;
        for (c, conn) in self.iter() {
            for d in [Direction::Out, Direction::In] {
                if conn.side(d).is_none() {
                    continue;
                }
                flows += 1;
                let key = self
                    .side_key(c, d)
                    .ok_or_else(|| format!("connection {c} {d:?}: key not stored"))?;
                if self.lookup(d, &key, self.hash(d, &key)) != Some(c) {
                    return Err(format!("connection {c} {d:?}: its key does not find it"));
                }
            }
            let port = self.tunnel_port_from_scratch(c);
            if conn.tunnel_port != port {
                return Err(format!(
                    "connection {c}: tunnel source port {} kept, {port} due",
                    conn.tunnel_port
                ));
            }
        }
        if flows != self.index.len() {
            return Err(format!(
                "unified flow index: {} entries for {flows} flows",
                self.index.len()
            ));
        }
        self.contexts.verify(self.flows().map(|uf| &uf.key))?;
        self.counter_lists
            .lists
            .verify(self.flows().map(|uf| uf.counters))
            .map_err(|e| format!("counter lists: {e}"))
    }

    /// Header contexts in use (shared by the keys, see [`crate::flow_key`]).
    pub fn context_count(&self) -> usize {
        self.contexts.len()
    }

    pub fn get(&self, c: u32) -> Option<&Connection> {
        self.conns.get(c as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, c: u32) -> Option<&mut Connection> {
        self.conns.get_mut(c as usize)?.as_mut()
    }

    pub fn len(&self) -> usize {
        self.conns.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of unified flows (both directions).
    pub fn flow_count(&self) -> usize {
        self.index.len()
    }

    /// Heap bytes [`UnifiedFlowTable::reserve`] holds for `connections`
    /// connections: the slots, the free list and the index of both sides.
    pub fn reserve_bytes(connections: usize) -> usize {
        ChunkedSlab::<Connection>::bytes_for(connections)
            .saturating_add(connections.saturating_mul(size_of::<u32>()))
            .saturating_add(FlowIndex::bytes_for(connections.saturating_mul(2)))
    }

    /// Make room for `connections` connections (both of their unified
    /// flows) without allocating or faulting a page in as they come (see
    /// `Port::reserve`).
    pub fn reserve(&mut self, connections: usize) {
        self.conns.reserve(connections);
        self.free
            .reserve(connections.saturating_sub(self.free.len()));
        let hashes = SideHashes {
            conns: &self.conns,
            contexts: &self.contexts,
            seed: self.seed,
        };
        self.index.reserve(connections.saturating_mul(2), hashes);
    }

    /// Room for `n` more counter-slot lists (see [`CounterLists`]): for
    /// the lists new meter buckets bring (see `Port::reserve`).
    pub fn reserve_counter_lists(&mut self, n: usize) {
        self.counter_lists.reserve(n);
    }

    /// Heap bytes [`UnifiedFlowTable::reserve_counter_lists`] takes for
    /// `n` lists.
    pub fn counter_lists_reserve_bytes(n: usize) -> usize {
        SharedTable::<CounterList>::reserve_bytes(n)
    }

    #[cfg(test)]
    pub(crate) fn free_list_mut(&mut self) -> &mut Vec<u32> {
        &mut self.free
    }

    pub fn alloc(&mut self, c: Connection) -> u32 {
        let s = match self.free.pop() {
            Some(s) => {
                self.conns[s as usize] = Some(c);
                s
            }
            None => {
                self.conns.push(Some(c));
                (self.conns.len() - 1) as u32
            }
        };
        self.prefetch_next_alloc();
        s
    }

    /// Start bringing in the slot the next [`UnifiedFlowTable::alloc`]
    /// takes: after a bulk expiry or on a large table it is cold, and a
    /// new connection's entry spans several lines, written in the middle
    /// of the slow path. Fetched now, it arrives during the packets
    /// before the next new connection.
    #[inline]
    fn prefetch_next_alloc(&self) {
        match self.free.last() {
            Some(&s) => {
                if let Some(slot) = self.conns.get(s as usize) {
                    crate::hint::prefetch(slot);
                }
            }
            None => self.conns.prefetch_next_push(),
        }
    }

    /// Keep connection `c`'s [`Connection::tunnel_port`] true after its
    /// side `d` changed (set, recompiled or cleared); `key` is that side's
    /// UFID when it has one. The other side's port, already kept, stays;
    /// its key is unpacked only when it had none (both sides pushed).
    fn refresh_tunnel_port(&mut self, c: u32, d: Direction, key: Option<&Ufid>) {
        let Some(conn) = self.get(c) else { return };
        let port = match conn.tunnel_side() {
            None => 0,
            Some(s) if s == d => key.and_then(|k| conn.side(s)?.tunnel_port(k)).unwrap_or(0),
            Some(_) if conn.tunnel_port != 0 => return,
            // Both sides pushed until now: the other's port was not kept.
            Some(_) => self.tunnel_port_from_scratch(c),
        };
        if let Some(conn) = self.get_mut(c) {
            conn.tunnel_port = port;
        }
    }

    /// What [`Connection::tunnel_port`] holds for connection `c`, worked
    /// out from scratch (restores, checks).
    fn tunnel_port_from_scratch(&self, c: u32) -> u16 {
        let Some(conn) = self.get(c) else { return 0 };
        conn.tunnel_side()
            .and_then(|s| {
                let uf = conn.side(s)?;
                uf.tunnel_port(&self.contexts.unpack(&uf.key)?)
            })
            .unwrap_or(0)
    }

    /// Install `uf` (keyed `key`, whose [`UnifiedFlowTable::hash`] is `hash`) as side `d`
    /// of connection `c`, replacing (and unindexing) any previous flow of
    /// that side. The caller has the key unpacked and hashed already.
    /// (Inlined: it is most of a new flow's install, and the compiler
    /// stops inlining it by itself at small changes of its callers.)
    #[inline(always)]
    pub fn set_side(&mut self, c: u32, d: Direction, mut uf: UnifiedFlow, key: &Ufid, hash: u64) {
        debug_assert_eq!(hash, self.hash(d, key), "caller's hash");
        if self.get(c).is_none() {
            self.counter_lists.release(uf.counters);
            return;
        }
        // Store first: a context the old flow shared stays without a
        // free-and-intern round trip.
        uf.key = self.contexts.store(key);
        self.take_side(c, d);
        let seed = self.seed;
        let Some(conn) = self.get_mut(c) else { return };
        conn.sides[d.index()] = Some(uf);
        let hashes = SideHashes {
            conns: &self.conns,
            contexts: &self.contexts,
            seed,
        };
        self.index.insert(hash, c << 1 | d.index() as u32, hashes);
        self.refresh_tunnel_port(c, d, Some(key));
    }

    /// Remove side `d` of connection `c` from the table.
    pub fn clear_side(&mut self, c: u32, d: Direction) {
        if self.take_side(c, d) {
            self.refresh_tunnel_port(c, d, None);
        }
    }

    /// [`UnifiedFlowTable::clear_side`] leaving the connection's kept tunnel
    /// port to the caller (a side set at once, a connection removed);
    /// whether there was a side.
    fn take_side(&mut self, c: u32, d: Direction) -> bool {
        // Unindexed by its key (if it has one: a flow not yet stored has
        // none), then its references dropped.
        if let Some(hash) = self
            .get(c)
            .and_then(|conn| conn.side(d))
            .and_then(|uf| stored_hash(&self.contexts, self.seed, d, &uf.key))
        {
            self.index.remove(hash, c << 1 | d.index() as u32);
        }
        let Some(uf) = self
            .get_mut(c)
            .and_then(|conn| conn.sides[d.index()].take())
        else {
            return false;
        };
        self.contexts.release(&uf.key);
        self.counter_lists.release(uf.counters);
        true
    }

    /// Remove a whole connection.
    pub fn remove(&mut self, c: u32) {
        self.take_side(c, Direction::Out);
        self.take_side(c, Direction::In);
        // Dropped where it lies (moving 184 bytes out only to drop them
        // showed in the retire path's profile).
        if let Some(slot) = self.conns.get_mut(c as usize)
            && let Some(conn) = slot
        {
            self.ref_blocks.clear(&mut conn.layer_flows);
            *slot = None;
            self.free.push(c);
        }
    }

    /// The layer flows connection `conn` (of this table) holds.
    pub fn layer_refs<'a>(&'a self, conn: &'a Connection) -> RefsIter<'a> {
        self.ref_blocks.iter(&conn.layer_flows)
    }

    /// The layer flows connection `c` holds, copied out.
    pub fn refs_of(&self, c: u32) -> Option<SmallVec<[LayerFlowRef; 8]>> {
        self.get(c)
            .map(|conn| self.ref_blocks.collect(&conn.layer_flows))
    }

    /// Connection `c` holds `refs` too (those it did not hold already);
    /// returns the ones added.
    pub fn add_refs(&mut self, c: u32, refs: &[LayerFlowRef]) -> SmallVec<[LayerFlowRef; 4]> {
        let mut added = SmallVec::new();
        let Some(Some(conn)) = self.conns.get_mut(c as usize) else {
            return added;
        };
        for r in refs {
            if !self.ref_blocks.contains(&conn.layer_flows, r) {
                self.ref_blocks.push(&mut conn.layer_flows, *r);
                added.push(*r);
            }
        }
        added
    }

    /// Connection `c` keeps only the layer flows `keep` accepts.
    pub fn retain_refs(&mut self, c: u32, keep: impl FnMut(&LayerFlowRef) -> bool) {
        if let Some(Some(conn)) = self.conns.get_mut(c as usize) {
            self.ref_blocks.retain(&mut conn.layer_flows, keep);
        }
    }

    /// Room for `blocks` overflow blocks of layer-flow lists (a port whose
    /// connections hold more layer flows than fit inline, see
    /// `Port::reserve`).
    pub fn reserve_ref_blocks(&mut self, blocks: usize) {
        self.ref_blocks.reserve(blocks);
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &Connection)> {
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i as u32, c)))
    }

    /// Every unified flow.
    pub fn flows(&self) -> impl Iterator<Item = &UnifiedFlow> {
        flows_of(&self.conns)
    }

    /// Every unified flow, mutably (for sweeps that do not touch keys).
    pub fn flows_mut(&mut self) -> impl Iterator<Item = &mut UnifiedFlow> {
        self.conns
            .iter_mut()
            .flatten()
            .flat_map(|c| c.sides.iter_mut().flatten())
    }

    /// Connection slots, live or free (the range of connection ids).
    pub fn slot_count(&self) -> usize {
        self.conns.len()
    }

    /// Slot numbers of all live connections.
    pub fn ids(&self) -> Vec<u32> {
        self.iter().map(|(i, _)| i).collect()
    }

    /// Choose a victim with a bounded clock sweep (second chance): among up
    /// to `window` live connections from the hand, the best by `score`
    /// (higher = evict first); referenced bits are cleared as the hand
    /// passes, and a referenced connection scores lower. O(window), never
    /// O(n) per packet.
    pub fn pick_victim(
        &mut self,
        window: usize,
        score: impl Fn(&Connection) -> u32,
    ) -> Option<u32> {
        let n = self.conns.len();
        if n == 0 || self.is_empty() {
            return None;
        }
        let mut best: Option<(u32, u32)> = None;
        let mut seen = 0;
        let mut steps = 0;
        while seen < window && steps < n {
            let i = self.hand % n;
            self.hand = (self.hand + 1) % n;
            steps += 1;
            let Some(c) = self.conns[i].as_mut() else {
                continue;
            };
            seen += 1;
            let mut s = score(c) * 2;
            if !c.referenced {
                s += 1;
            }
            c.referenced = false;
            if best.is_none_or(|(bs, _)| s > bs) {
                best = Some((s, i as u32));
            }
        }
        best.map(|(_, i)| i)
    }

    /// Rebuild the index and the contexts' reference counts after
    /// deserialization; a key naming a missing context is an error.
    pub fn rebuild(&mut self) -> Result<(), String> {
        self.conns
            .check_free_list(&self.free)
            .map_err(|e| format!("connections: {e}"))?;
        self.contexts
            .rebuild(flows_of(&self.conns).map(|uf| &uf.key))?;
        let seed = self.counter_lists.seed.get();
        self.counter_lists
            .lists
            .rebuild(flows_of(&self.conns).map(|uf| uf.counters), |l| {
                list_hash(seed, l)
            })
            .map_err(|id| format!("a unified flow names counter list {id}, which is missing"))?;
        let mut index = FlowIndex::with_capacity(self.len() * 2);
        let (conns, contexts) = (&self.conns, &self.contexts);
        let seed = self.seed;
        for (i, c) in conns.iter().enumerate() {
            let Some(c) = c else { continue };
            for d in [Direction::Out, Direction::In] {
                let v = (i as u32) << 1 | d.index() as u32;
                if c.side(d).is_some() {
                    index.insert(side_hash(conns, contexts, seed, v), v, |v| {
                        side_hash(conns, contexts, seed, v)
                    });
                }
            }
        }
        self.index = index;
        for c in 0..self.conns.len() as u32 {
            let port = self.tunnel_port_from_scratch(c);
            if let Some(conn) = self.get_mut(c) {
                conn.tunnel_port = port;
            }
        }
        Ok(())
    }

    /// Approximate heap bytes used by the table: the connection slab (with
    /// the overflow blocks of layer-flow lists), the index, and the shared
    /// key and counter-list parts.
    pub fn memory_parts(&self) -> (usize, usize, usize) {
        let slab =
            self.conns.memory_bytes() + self.free.capacity() * 4 + self.ref_blocks.memory_bytes();
        let shared = self.contexts.memory_bytes() + self.counter_lists.memory_bytes();
        (slab, self.index.memory_bytes(), shared)
    }

    /// The IP protocol of connection `c`'s flows.
    pub fn proto(&self, c: &Connection) -> u8 {
        c.sides
            .iter()
            .flatten()
            .next()
            .map_or(0, |uf| self.contexts.proto(&uf.key))
    }
}

/// Every unified flow of the connections `conns`.
fn flows_of(conns: &ChunkedSlab<Connection>) -> impl Iterator<Item = &UnifiedFlow> {
    conns
        .iter()
        .flatten()
        .flat_map(|c| c.sides.iter().flatten())
}

/// The index's [`Rehash`] for growing: each value's hash from its flow's
/// stored key, the connection prefetched first.
struct SideHashes<'a> {
    conns: &'a ChunkedSlab<Connection>,
    contexts: &'a HeaderContexts,
    seed: TableSeed,
}

impl Rehash for SideHashes<'_> {
    fn rehash(&self, v: u32) -> u64 {
        side_hash(self.conns, self.contexts, self.seed, v)
    }

    fn prefetch(&self, v: u32) {
        if let Some(slot) = self.conns.get((v >> 1) as usize) {
            crate::hint::prefetch(slot);
        }
    }
}

fn side_hash(
    conns: &ChunkedSlab<Connection>,
    contexts: &HeaderContexts,
    seed: TableSeed,
    v: u32,
) -> u64 {
    let d = Direction::from_index((v & 1) as usize);
    conns
        .get((v >> 1) as usize)
        .and_then(|c| c.as_ref())
        .and_then(|c| c.side(d))
        .and_then(|uf| stored_hash(contexts, seed, d, &uf.key))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entry sizes are what memory per connection is made of (issue 2);
    /// growing one is a decision, not an accident. (Unified flows grew 96
    /// → 104 bytes to keep their counter list out of the shared action the
    /// fast path reads: with it inside, per-destination meters made one
    /// action per peer, a cold line per packet. Then 104 → 64 when keys
    /// began naming a shared header context instead of holding MACs and
    /// tunnel headers, → 56 with 32-bit pending bytes and port values whose
    /// shape is the shared action's; TCP state 52 → 44 with the sides'
    /// flags packed together; connection times 24 → 16 bytes; → 48 with
    /// 20-byte keys and counter lists named by 4-byte ids.)
    #[test]
    fn entries_stay_compact() {
        assert_eq!(size_of::<StoredUfid>(), 20);
        assert_eq!(size_of::<Option<UnifiedFlow>>(), 48);
        assert_eq!(size_of::<Option<TcpConn>>(), 44);
        assert_eq!(size_of::<Option<Connection>>(), 184);
        assert_eq!(size_of::<Option<LayerFlow>>(), 24);
    }

    /// Each step keeps its own hash and orientation; steps never set, and
    /// steps past the capacity, have none.
    #[test]
    fn early_hashes_keep_each_steps_hash() {
        let h = |value, reversible| LayerFlowHash { value, reversible };
        let mut e = EarlyHashes::default();
        assert!(e.is_empty());
        e.set(0, h(7, true));
        assert!(!e.is_empty());
        e.set(3, h(u64::MAX, false));
        e.set(EarlyHashes::CAP - 1, h(9, true));
        e.set(EarlyHashes::CAP, h(11, true));
        assert_eq!(e.get(0), Some(h(7, true)));
        assert_eq!(e.get(3), Some(h(u64::MAX, false)));
        assert_eq!(e.get(EarlyHashes::CAP - 1), Some(h(9, true)));
        for step in [1, 2, 4, EarlyHashes::CAP, 64, usize::MAX] {
            assert_eq!(e.get(step), None, "step {step}");
        }
        // A later hash for a step replaces the earlier one, both fields.
        e.set(3, h(5, true));
        assert_eq!(e.get(3), Some(h(5, true)));
        e.set(3, h(6, false));
        assert_eq!(e.get(3), Some(h(6, false)));
    }

    /// `same_layer_key` is equality of identity keys: every field but the
    /// MACs counts, inner and outer (a field it forgot would let a layer
    /// flow answer for another flow's packets).
    #[test]
    fn same_layer_key_is_identity_equality() {
        use std::net::{IpAddr, Ipv4Addr};
        use strata_packet::flow::{FlowKey, OuterKey, TunnelKind};
        let ip = |x: u8| IpAddr::V4(Ipv4Addr::new(10, 0, 0, x));
        let base = Ufid {
            outer: Some(OuterKey {
                src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
                dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
                src_ip: ip(1),
                dst_ip: ip(2),
                tunnel: TunnelKind::Vxlan,
                vni: 7,
            }),
            inner: FlowKey {
                src_mac: MacAddr([2, 0, 0, 0, 0, 3]),
                dst_mac: MacAddr([2, 0, 0, 0, 0, 4]),
                vlan: Some(5),
                ether_type: 0x0800,
                src_ip: ip(3),
                dst_ip: ip(4),
                proto: 6,
                dscp: 1,
                src_port: 1000,
                dst_port: 80,
                icmp_type: 0,
                icmp_code: 0,
            },
        };
        for (field, edit) in strata_packet::flow::FIELD_EDITS {
            let mut other = base;
            edit(&mut other);
            assert_ne!(other, base, "{field} not edited");
            assert_eq!(
                same_layer_key(&base, &other),
                layer_flow_key(&base) == layer_flow_key(&other),
                "{field}"
            );
            assert_eq!(
                same_layer_key(&base, &other),
                field.ends_with("mac"),
                "{field}"
            );
            assert!(same_layer_key(&other, &other));
        }
    }

    /// Pending counts are 32-bit: a packet that would overflow either
    /// count flushes the pending ones to the counter slots first, so no
    /// packet or byte is lost (jumbo frames on a long-lived flow pass 4 GiB
    /// in seconds).
    #[test]
    fn pending_counts_flush_before_overflow() {
        use crate::counters::{CounterArena, CounterName};
        let mut arena = CounterArena::default();
        let name = CounterName::Layer { layer: "l".into() };
        let slot = arena.slot(name.clone());
        let mut lists = CounterLists::default();
        let mut uf = forwarding_flow(lists.acquire(&[slot]));
        let jumbo = 9000u32;
        let n = u64::from(u32::MAX / jumbo) + 10;
        for _ in 0..n {
            uf.count(jumbo, &lists, &mut arena);
        }
        let flushed = arena.get(&name).expect("counter");
        assert!(flushed.packets > 0, "flushed once before the byte overflow");
        assert_eq!(flushed.packets + u64::from(uf.packets), n);
        assert_eq!(flushed.bytes + u64::from(uf.bytes), n * u64::from(jumbo));
        uf.packets = u32::MAX;
        uf.bytes = 0;
        uf.count(64, &lists, &mut arena);
        assert_eq!(
            (uf.packets, uf.bytes),
            (1, 64),
            "packet count overflow flushes"
        );
        assert_eq!(
            arena.get(&name).expect("counter").packets,
            flushed.packets + u64::from(u32::MAX)
        );
    }

    /// Flow keys come from the network: every table hashes with its own
    /// random seed, so no sender can precompute keys that collide in it. A
    /// clone keeps its seed (its index was built with it); a restored table
    /// draws a new one and rebuilds its index (the snapshot tests find
    /// every flow again).
    #[test]
    fn tables_hash_with_their_own_seeds() {
        let key = Ufid::plain(strata_packet::flow::FlowKey {
            ether_type: 0x0800,
            src_ip: IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
            dst_ip: IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)),
            proto: 17,
            src_port: 53,
            dst_port: 5353,
            ..Default::default()
        });
        let d = Direction::Out;
        let (a, b) = (UnifiedFlowTable::default(), UnifiedFlowTable::default());
        assert_ne!(a.hash(d, &key), b.hash(d, &key));
        assert_eq!(a.clone().hash(d, &key), a.hash(d, &key));
        let (la, lb) = (LayerFlowTable::default(), LayerFlowTable::default());
        assert_ne!(lf_hash(la.seed, d, &key), lf_hash(lb.seed, d, &key));
        let i = Direction::In;
        assert_ne!(a.hash(i, &key), b.hash(i, &key));
    }

    /// A unified flow that forwards unchanged, counting into list
    /// `counters`, not yet in a table.
    fn forwarding_flow(counters: u32) -> UnifiedFlow {
        UnifiedFlow {
            key: StoredUfid::default(),
            generation: 1,
            ports: PortValues::default(),
            action: Arc::new(FlowAction {
                verdict: Verdict::Forward,
                plan: EmitPlan::new(Transposition::identity()),
                port_shape: PortShape::default(),
            }),
            counters,
            packets: 0,
            bytes: 0,
        }
    }

    fn rule_identity(id: &str) -> Arc<RuleIdentity> {
        Arc::new(RuleIdentity {
            id: id.into(),
            fingerprint: 1,
            counter: 0,
        })
    }

    /// A flow pushing VXLAN to `pa` (a UDP tunnel: its source port is kept).
    fn tunnel_flow(counters: u32, pa: u8) -> UnifiedFlow {
        let encap = strata_packet::Encap {
            kind: strata_packet::TunnelKind::Vxlan,
            vni: 7,
            src_mac: strata_packet::MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: strata_packet::MacAddr([2, 0, 0, 0, 0, 2]),
            src_ip: IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 0, 1)),
            dst_ip: IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 0, pa)),
            ttl: 64,
            dst_port: 4789,
            geneve_options: Vec::new(),
        };
        let t = Transposition {
            outer: strata_packet::OuterOp::Push(Arc::new(encap)),
            ..Transposition::identity()
        };
        UnifiedFlow {
            action: Arc::new(FlowAction {
                verdict: Verdict::Forward,
                plan: EmitPlan::new(t),
                port_shape: PortShape::default(),
            }),
            ..forwarding_flow(counters)
        }
    }

    /// A connection keeps the tunnel source port of its one tunnel-pushing
    /// side, none while both push, and the remaining side's once the other
    /// goes (worked out then: it was never kept).
    #[test]
    fn a_connection_keeps_its_one_tunnelling_sides_port() {
        let (out, inb) = (Direction::Out, Direction::In);
        let mut conns = UnifiedFlowTable::default();
        let c = conns.alloc(Connection::new(out, None, 0, None));
        let (ko, ki) = (tcp_key(1, 1000), tcp_key(1, 1000).reversed());
        let port_of = |uf: &UnifiedFlow, k: &Ufid| uf.tunnel_port(k).expect("a UDP tunnel");
        let (fo, fi) = (
            tunnel_flow(conns.intern_counters(&[]), 2),
            tunnel_flow(conns.intern_counters(&[]), 3),
        );
        let (po, pi) = (port_of(&fo, &ko), port_of(&fi, &ki));
        assert_ne!(
            po, pi,
            "the two sides' ports differ (else the test proves nothing)"
        );
        let kept = |conns: &UnifiedFlowTable| conns.get(c).and_then(Connection::tunnel_port);

        conns.set_side(c, out, fo, &ko, conns.hash(out, &ko));
        assert_eq!(kept(&conns), Some(po));
        conns.set_side(c, inb, fi, &ki, conns.hash(inb, &ki));
        assert_eq!(kept(&conns), None, "both sides push");
        conns.verify_shared().expect("flow state");
        conns.clear_side(c, inb);
        assert_eq!(
            kept(&conns),
            Some(po),
            "the outbound side's, worked out again"
        );
        let plain = forwarding_flow(conns.intern_counters(&[]));
        conns.set_side(c, inb, plain, &ki, conns.hash(inb, &ki));
        assert_eq!(kept(&conns), Some(po), "a reply's side beside it keeps it");
        conns.clear_side(c, out);
        assert_eq!(kept(&conns), None);
        conns.verify_shared().expect("flow state");
    }

    /// A TCP key from 10.0.0.0 + `i`, port `sport`, to 8.8.8.8:443.
    fn tcp_key(i: u32, sport: u16) -> Ufid {
        Ufid::plain(strata_packet::flow::FlowKey {
            ether_type: 0x0800,
            src_ip: IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
            dst_ip: IpAddr::V4(std::net::Ipv4Addr::new(8, 8, 8, 8)),
            proto: 6,
            src_port: sport,
            dst_port: 443,
            ..Default::default()
        })
    }

    /// A new flow's key waits in the fresh slot: found by lookups there,
    /// moved to its connection by `share_key` (only if the connection's
    /// key is the same), settled into the own keys otherwise (by `settle`
    /// or the next insert), dropped with the flow, and written among the
    /// own keys when the table is serialized with it pending.
    #[test]
    fn fresh_keys_are_shared_settled_or_dropped() {
        let flow = || {
            OwnedLayerFlow::new(
                Direction::Out,
                rule_identity("track"),
                1,
                &Transposition::identity(),
                &[],
                ActionState::None,
                None,
            )
        };
        let out = Direction::Out;
        let mut conns = UnifiedFlowTable::default();
        let mut t = LayerFlowTable::default();
        let found = |t: &LayerFlowTable, conns: &UnifiedFlowTable, k: &Ufid| {
            t.lookup(out, k, conns).map(|(s, _)| s)
        };

        // Shared with a connection keyed the same: no own key left.
        let (k0, k1, k2) = (tcp_key(1, 1000), tcp_key(2, 1000), tcp_key(3, 1000));
        let s0 = t.insert(flow(), &k0, &conns);
        assert!(t.has_fresh_key());
        assert_eq!(found(&t, &conns, &k0), Some(s0));
        let connection_keyed = |conns: &mut UnifiedFlowTable, key: &Ufid| {
            let c = conns.alloc(Connection::new(out, None, 0, None));
            let uf = forwarding_flow(conns.intern_counters(&[]));
            let h = conns.hash(out, key);
            conns.set_side(c, out, uf, key, h);
            c
        };
        let other = connection_keyed(&mut conns, &k2);
        assert!(!t.share_key(s0, other, out, &conns), "a different key");
        assert!(t.has_fresh_key());
        let c0 = connection_keyed(&mut conns, &k0);
        assert!(t.share_key(s0, c0, out, &conns));
        assert!(!t.has_fresh_key());
        assert!(t.own_keys.is_empty());
        assert_eq!(found(&t, &conns, &k0), Some(s0));

        // Not shared: the next insert settles it into the own keys.
        let s1 = t.insert(flow(), &k1, &conns);
        let s2 = t.insert(flow(), &k2, &conns);
        assert_eq!(t.own_keys.len(), 1);
        let stored = t.get(s1).expect("held").key_conn;
        assert!(is_own(stored) && stored != OWN_KEY, "s1's key is stored");
        assert_eq!(found(&t, &conns, &k1), Some(s1));
        assert_eq!(found(&t, &conns, &k2), Some(s2));

        // Serialized while k2 is pending: read back, every key is found.
        let bytes = postcard::to_stdvec(&t).expect("serialize");
        let mut r: LayerFlowTable = postcard::from_bytes(&bytes).expect("deserialize");
        r.reindex(&conns, t.shadowed().to_vec()).expect("reindex");
        assert!(!r.has_fresh_key());
        for (k, s) in [(&k0, s0), (&k1, s1), (&k2, s2)] {
            assert_eq!(found(&r, &conns, k), Some(s));
        }

        // Released while pending: gone, and nothing is settled for it.
        assert!(t.release(s2, &conns).is_some());
        assert!(!t.has_fresh_key());
        t.settle();
        assert_eq!(t.own_keys.len(), 1);
        assert_eq!(found(&t, &conns, &k2), None);
    }

    /// Both keys of every flow stay findable while the index grows under
    /// inserts (growth rehashes entries, including the first side of the
    /// flow being inserted, which must be readable by then), and a reverse
    /// key already taken keeps its first owner.
    #[test]
    fn layer_index_finds_both_sides_across_growth() {
        use std::net::Ipv4Addr;
        let conns = UnifiedFlowTable::default();
        let mut t = LayerFlowTable::default();
        let rule = rule_identity("snat");
        let key = |i: u32| tcp_key(i, 1000 + (i % 50_000) as u16);
        // Every flow's source becomes one public address and port: reverse
        // keys differ by port, except flows 5000.. which reuse 0..'s ports.
        let nat = |i: u32| Transposition {
            src_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            src_port: Some(2000 + (i % 5000) as u16),
            ..Transposition::identity()
        };
        let n = 6000u32;
        let slots: Vec<u32> = (0..n)
            .map(|i| {
                let f = OwnedLayerFlow::new(
                    Direction::Out,
                    Arc::clone(&rule),
                    1,
                    &nat(i),
                    &[],
                    ActionState::None,
                    None,
                );
                let slot = t.insert(f, &key(i), &conns);
                // Checked at once too: a later growth would rehash (and so
                // hide) an entry misplaced by this insert.
                assert_eq!(t.lookup(Direction::Out, &key(i), &conns), Some((slot, 0)));
                slot
            })
            .collect();
        for i in 0..n {
            let slot = slots[i as usize];
            assert_eq!(
                t.lookup(Direction::Out, &key(i), &conns),
                Some((slot, 0)),
                "origin side of flow {i}"
            );
            let reply = nat(i).apply_to_ufid(&key(i)).reversed();
            let owner = slots[(i % 5000) as usize];
            assert_eq!(
                t.lookup_with_origin(Direction::In, &reply, &conns)
                    .map(|(s, side, o)| (s, side, o == key(i % 5000))),
                Some((owner, 1, true)),
                "reverse side of flow {i}"
            );
        }
    }

    /// Connection-tracking flows (no transposition) take one index entry
    /// for both keys; both are found from it, with the right side, across
    /// growth, detach and a rebuild; a flow whose key is another's reverse
    /// key keeps out of it (the first owner answers), and a later mirror
    /// flow whose reverse key is taken falls back to its own entries.
    #[test]
    fn mirror_flows_take_one_index_entry() {
        use std::net::Ipv4Addr;
        let conns = UnifiedFlowTable::default();
        let mut t = LayerFlowTable::default();
        let rule = rule_identity("track");
        let key = |i: u32, icmp: bool| {
            let mut k = tcp_key(i, 1000 + i as u16);
            if icmp {
                // An echo request, identifier i.
                (k.inner.proto, k.inner.src_port) = (1, i as u16);
                (k.inner.dst_port, k.inner.icmp_type) = (0, 8);
            }
            k
        };
        let flow = |d: Direction| {
            OwnedLayerFlow::new(
                d,
                Arc::clone(&rule),
                1,
                &Transposition::identity(),
                &[],
                ActionState::None,
                None,
            )
        };
        // Flow i: an echo request every third, from the VM side every
        // other.
        let of = |i: u32| {
            let d = if i.is_multiple_of(2) {
                Direction::Out
            } else {
                Direction::In
            };
            (d, key(i, i.is_multiple_of(3)))
        };
        let n = 3000u32;
        let mut slots = Vec::new();
        for i in 0..n {
            let (d, k) = of(i);
            slots.push(t.insert(flow(d), &k, &conns));
        }
        assert_eq!(t.index.len(), n as usize, "one entry per flow");
        let check = |t: &LayerFlowTable, live: &dyn Fn(u32) -> bool| {
            for i in 0..n {
                let (d, k) = of(i);
                let want = |side| live(i).then_some((slots[i as usize], side));
                assert_eq!(t.lookup(d, &k, &conns), want(0), "origin of {i}");
                assert_eq!(
                    t.lookup(d.opposite(), &k.reversed(), &conns),
                    want(1),
                    "reverse of {i}"
                );
                assert_eq!(t.lookup(d.opposite(), &k, &conns), None, "{i} other way");
                assert_eq!(t.lookup(d, &k.reversed(), &conns), None, "{i} reversed");
            }
        };
        check(&t, &|_| true);

        // Detach every third flow: both its keys go.
        for i in (0..n).step_by(3) {
            t.detach(slots[i as usize], &conns);
        }
        check(&t, &|i| i % 3 != 0);

        // Serialized and rebuilt: the same.
        let bytes = postcard::to_stdvec(&t).expect("serialize");
        let mut r: LayerFlowTable = postcard::from_bytes(&bytes).expect("deserialize");
        r.reindex(&conns, t.shadowed().to_vec()).expect("reindex");
        check(&r, &|i| i % 3 != 0);
        assert_eq!(r.index.len(), t.index.len());

        // A flow whose origin key is flow 1's reverse key: flow 1 keeps
        // answering for it, and the newcomer's own reverse key (flow 1's
        // origin, taken too) stays flow 1's.
        let k1 = key(1, false);
        let late = t.insert(flow(Direction::Out), &k1.reversed(), &conns);
        assert_eq!(
            t.lookup(Direction::Out, &k1.reversed(), &conns),
            Some((slots[1], 1))
        );
        assert_eq!(t.lookup(Direction::In, &k1, &conns), Some((slots[1], 0)));
        assert!(!t.get(late).expect("late flow").one_entry);
        // A mirror flow whose reverse key alone is taken (by a NAT flow's
        // reverse side): its origin key gets an entry of its own, its
        // reverse key stays the NAT flow's.
        let snat = Transposition {
            src_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            src_port: Some(2000),
            ..Transposition::identity()
        };
        let nat_key = key(7000, false);
        let nat = OwnedLayerFlow::new(
            Direction::Out,
            Arc::clone(&rule),
            1,
            &snat,
            &[],
            ActionState::None,
            None,
        );
        let nat_slot = t.insert(nat, &nat_key, &conns);
        let nat_reply = snat.apply_to_ufid(&nat_key).reversed();
        let m = t.insert(flow(Direction::Out), &nat_reply.reversed(), &conns);
        assert!(!t.get(m).expect("mirror").one_entry);
        assert_eq!(
            t.lookup(Direction::Out, &nat_reply.reversed(), &conns),
            Some((m, 0))
        );
        assert_eq!(
            t.lookup(Direction::In, &nat_reply, &conns),
            Some((nat_slot, 1))
        );
    }

    /// A flow inserted with the hash of the lookup that missed
    /// (`insert_hashed`, as the port does) is found from both sides, like
    /// one inserted without it: for a mirror flow, for a NAT flow, and for
    /// a key whose endpoints cannot be told apart (no reversible hash).
    #[test]
    fn insert_with_the_lookups_hash_indexes_both_sides() {
        use std::net::Ipv4Addr;
        let conns = UnifiedFlowTable::default();
        let mut t = LayerFlowTable::default();
        let rule = rule_identity("track");
        let snat = Transposition {
            src_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            src_port: Some(2000),
            ..Transposition::identity()
        };
        let mut to_itself = tcp_key(9, 1009);
        to_itself.inner.dst_ip = to_itself.inner.src_ip;
        to_itself.inner.dst_port = to_itself.inner.src_port;
        assert!(!t.hash(Direction::Out, &to_itself).reversible);
        let cases = [
            (tcp_key(1, 1001), Transposition::identity()),
            (tcp_key(2, 1002), snat),
            (to_itself, Transposition::identity()),
        ];
        for (k, tr) in &cases {
            let d = Direction::Out;
            let h = t.hash(d, k);
            assert_eq!(t.lookup_hashed(d, k, h, &conns), None);
            let f = OwnedLayerFlow::new(d, Arc::clone(&rule), 1, tr, &[], ActionState::None, None);
            let slot = t.insert_hashed(f, k, Some(h), &conns);
            assert_eq!(t.lookup(d, k, &conns), Some((slot, 0)));
            let reply = tr.apply_to_ufid(k).reversed();
            assert_eq!(t.lookup(d.opposite(), &reply, &conns), Some((slot, 1)));
        }
    }
}
