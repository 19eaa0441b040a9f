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
//! Both tables keep entries in a slab and index them with a hash table of
//! slot numbers, so a key is stored once, lookups hash the key once, and
//! eviction and expiry walk slots without touching the index.

use crate::flow_index::FlowIndex;
use crate::resource::ActionState;
use crate::tcp::TcpConn;
use crate::types::{Direction, Time, Verdict};
use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::sync::Arc;
use strata_packet::flow::{MacAddr, Ufid};
use strata_packet::packed::PackedUfid;
use strata_packet::transposition::Transposition;

/// A stateful flow of one layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerFlow {
    /// Direction of the packet whose rule created the flow.
    pub origin: Direction,
    /// The layer-local key of the originating packet. The reverse key
    /// (looked up in the opposite direction) is derived from it: the
    /// reversed post-transposition key. Stored packed.
    pub key: PackedUfid,
    /// The deciding rule's id (shared with the policy, not copied per flow).
    pub rule_id: Arc<str>,
    pub rule_counter: u32,
    pub fingerprint: u64,
    /// Generation of the layer when the flow was last validated.
    pub layer_generation: u64,
    /// Connections holding this flow.
    pub refs: u32,
    /// Removed from the index (its rule no longer decides) but still held.
    pub detached: bool,
    /// What most flows (connection-tracking ACL entries) lack: boxed so
    /// those flows stay small.
    pub extra: Option<Box<LayerFlowExtra>>,
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

/// Shared "no state" for flows without extra parts.
static NO_STATE: ActionState = ActionState::None;

impl LayerFlow {
    /// A flow made by a rule: `extra` is allocated only when the rule left
    /// something besides connection tracking.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        origin: Direction,
        key: &Ufid,
        rule_id: Arc<str>,
        rule_counter: u32,
        fingerprint: u64,
        layer_generation: u64,
        transposition: &Transposition,
        counters: &[u32],
        state: ActionState,
        ttl: Option<Time>,
    ) -> LayerFlow {
        let plain = transposition.is_identity()
            && counters.is_empty()
            && state == ActionState::None
            && ttl.is_none();
        LayerFlow {
            origin,
            key: PackedUfid::pack(key),
            rule_id,
            rule_counter,
            fingerprint,
            layer_generation,
            refs: 0,
            detached: false,
            extra: (!plain).then(|| {
                Box::new(LayerFlowExtra {
                    transposition: transposition.clone(),
                    counters: counters.into(),
                    state,
                    ttl,
                })
            }),
        }
    }

    fn dir_of(&self, side: usize) -> Direction {
        if side == 0 {
            self.origin
        } else {
            self.origin.opposite()
        }
    }

    /// The rule's transposition (origin side).
    pub fn transposition(&self) -> &Transposition {
        self.extra
            .as_ref()
            .map_or(&Transposition::IDENTITY, |e| &e.transposition)
    }

    /// Resource state to release when the flow ends.
    pub fn state(&self) -> &ActionState {
        self.extra.as_ref().map_or(&NO_STATE, |e| &e.state)
    }

    pub fn ttl(&self) -> Option<Time> {
        self.extra.as_ref().and_then(|e| e.ttl)
    }

    /// The key of side `side` (0 = origin, 1 = reverse).
    pub fn key_of(&self, side: usize) -> Ufid {
        let key = self.key.unpack();
        if side == 0 {
            key
        } else {
            self.transposition().apply_to_ufid(&key).reversed()
        }
    }

    /// The transposition of side `side`: the rule's, or its inverse.
    pub fn transposition_of(&self, side: usize) -> Transposition {
        if side == 0 {
            self.transposition().clone()
        } else {
            self.transposition().reverse_for(&self.key.unpack())
        }
    }

    /// Counter slots of side `side`.
    pub fn side_counters(&self, side: usize) -> &[u32] {
        match &self.extra {
            Some(e) if side == 0 => &e.counters,
            _ => &[],
        }
    }

    /// Heap bytes held beyond the value itself.
    pub fn heap_bytes(&self) -> usize {
        self.key.heap_bytes()
            + self
                .extra
                .as_ref()
                .map_or(0, |e| size_of::<LayerFlowExtra>() + e.counters.len() * 4)
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

#[inline]
fn lf_hash(d: Direction, k: &Ufid) -> u64 {
    k.table_hash(0x4c46_0000 ^ d.index() as u64)
}

fn lf_slot_hash(slots: &[Option<LayerFlow>], v: u32) -> u64 {
    slots
        .get((v >> 1) as usize)
        .and_then(|f| f.as_ref())
        .map(|f| {
            let side = (v & 1) as usize;
            lf_hash(f.dir_of(side), &layer_flow_key(&f.key_of(side)))
        })
        .unwrap_or(0)
}

/// The flow table of one layer: flows in a slab, both keys of each flow in
/// an open-addressing index of slot numbers (keys are stored once).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LayerFlowTable {
    slots: Vec<Option<LayerFlow>>,
    free: Vec<u32>,
    #[serde(skip)]
    index: FlowIndex,
}

impl LayerFlowTable {
    /// `(slot, side)` of the flow keyed `(d, key)`.
    pub fn lookup(&self, d: Direction, key: &Ufid) -> Option<(u32, usize)> {
        let k = layer_flow_key(key);
        let v = self.find(lf_hash(d, &k), d, &k)?;
        Some((v >> 1, (v & 1) as usize))
    }

    pub fn get(&self, slot: u32) -> Option<&LayerFlow> {
        self.slots.get(slot as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut LayerFlow> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// Insert a flow and index both keys. A key already indexed (two flows
    /// whose reverse keys collide, e.g. many-to-one static NAT) keeps its
    /// first owner.
    pub fn insert(&mut self, f: LayerFlow) -> u32 {
        // Each side's identity and hash, computed once.
        let keys = [layer_flow_key(&f.key_of(0)), layer_flow_key(&f.key_of(1))];
        let dirs = [f.dir_of(0), f.dir_of(1)];
        let hashes = [lf_hash(dirs[0], &keys[0]), lf_hash(dirs[1], &keys[1])];
        let taken = [0, 1].map(|side| self.find(hashes[side], dirs[side], &keys[side]).is_some());
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[slot as usize] = Some(f);
        for side in 0..2 {
            if !taken[side] {
                let slots = &self.slots;
                self.index
                    .insert(hashes[side], slot << 1 | side as u32, |v| {
                        lf_slot_hash(slots, v)
                    });
            }
        }
        slot
    }

    /// Index lookup with a precomputed hash of an identity key.
    fn find(&self, hash: u64, d: Direction, k: &Ufid) -> Option<u32> {
        let slots = &self.slots;
        self.index.find(hash, |v| {
            slots
                .get((v >> 1) as usize)
                .and_then(|f| f.as_ref())
                .is_some_and(|f| {
                    let side = (v & 1) as usize;
                    f.dir_of(side) == d && layer_flow_key(&f.key_of(side)) == *k
                })
        })
    }

    /// Take a flow out of the index (it stays in its slot while held).
    pub fn detach(&mut self, slot: u32) {
        let Some(f) = self.slots.get_mut(slot as usize).and_then(|s| s.as_mut()) else {
            return;
        };
        if f.detached {
            return;
        }
        f.detached = true;
        for side in 0..2 {
            let h = lf_hash(f.dir_of(side), &layer_flow_key(&f.key_of(side)));
            self.index.remove(h, slot << 1 | side as u32);
        }
    }

    /// Drop one reference; returns the flow if it was the last.
    pub fn release(&mut self, slot: u32) -> Option<LayerFlow> {
        let f = self.slots.get_mut(slot as usize)?.as_mut()?;
        f.refs = f.refs.saturating_sub(1);
        if f.refs > 0 {
            return None;
        }
        self.detach(slot);
        let f = self.slots.get_mut(slot as usize)?.take();
        self.free.push(slot);
        f
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &LayerFlow)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|f| (i as u32, f)))
    }

    /// Every flow, emptying the table.
    pub fn drain(&mut self) -> Vec<LayerFlow> {
        self.index.clear();
        self.free.clear();
        self.slots.drain(..).flatten().collect()
    }

    /// Heap bytes used.
    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Option<LayerFlow>>()
            + self.iter().map(|(_, f)| f.heap_bytes()).sum::<usize>()
            + self.index.memory_bytes()
            + self.free.capacity() * 4
    }

    /// Rebuild the index after deserialization.
    pub fn reindex(&mut self) {
        let mut index = FlowIndex::with_capacity(self.len() * 2);
        let slots = &self.slots;
        for (slot, f) in slots.iter().enumerate() {
            let Some(f) = f else { continue };
            if f.detached {
                continue;
            }
            for side in 0..2 {
                let k = layer_flow_key(&f.key_of(side));
                let d = f.dir_of(side);
                let h = lf_hash(d, &k);
                let dup = index
                    .find(h, |v| {
                        slots
                            .get((v >> 1) as usize)
                            .and_then(|g| g.as_ref())
                            .is_some_and(|g| {
                                let s = (v & 1) as usize;
                                g.dir_of(s) == d && layer_flow_key(&g.key_of(s)) == k
                            })
                    })
                    .is_some();
                if !dup {
                    index.insert(h, (slot as u32) << 1 | side as u32, |v| {
                        lf_slot_hash(slots, v)
                    });
                }
            }
        }
        self.index = index;
    }
}

/// The cached result for one UFID in one direction: one composed
/// transposition plus action contexts (VFP-12).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnifiedFlow {
    /// The flow's UFID (stored packed; compare with [`PackedUfid::matches`]).
    pub key: PackedUfid,
    /// Port generation the flow was compiled at (VFP-13).
    pub generation: u64,
    pub transposition: Transposition,
    pub verdict: Verdict,
    /// Counter slots this flow's packets count towards (forward: layers,
    /// rules, meters; drop: the deciding layer and rule). Interned: shared
    /// by every flow with the same list.
    pub counters: Arc<[u32]>,
    /// Packets and bytes not yet added to `counters` (the fast path counts
    /// here, in the entry it already has in cache; flushed lazily).
    #[serde(default)]
    pub packets: u64,
    #[serde(default)]
    pub bytes: u64,
}

impl UnifiedFlow {
    /// Add pending packets/bytes to the counter slots (as drops for a drop
    /// flow) and zero them.
    pub fn flush(&mut self, arena: &mut crate::counters::CounterArena) {
        if self.packets == 0 {
            return;
        }
        for &slot in self.counters.iter() {
            if self.verdict.is_forward() {
                arena.add(slot, self.packets, self.bytes);
            } else {
                arena.add_drops(slot, self.packets);
            }
        }
        self.packets = 0;
        self.bytes = 0;
    }
}

/// Reference from a connection to a layer flow it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerFlowRef {
    pub layer_uid: u32,
    pub slot: u32,
}

/// The layer flows a connection holds (inline up to two: no allocation
/// for the usual ACL + NAT pair).
pub type LayerFlowRefs = SmallVec<[LayerFlowRef; 2]>;

/// A pair of unified flows and their shared state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// Indexed by `Direction::index()`.
    pub sides: [Option<UnifiedFlow>; 2],
    pub initiator: Direction,
    pub tcp: Option<TcpConn>,
    pub layer_flows: LayerFlowRefs,
    pub created: Time,
    pub last_seen: Time,
    /// Idle timeout from the deciding rules, if any set one.
    pub idle_ttl: Option<Time>,
    /// Second-chance bit for eviction (set on every hit).
    pub referenced: bool,
}

impl Connection {
    pub fn side(&self, d: Direction) -> Option<&UnifiedFlow> {
        self.sides[d.index()].as_ref()
    }

    pub fn is_drop_only(&self) -> bool {
        self.sides
            .iter()
            .flatten()
            .all(|uf| !uf.verdict.is_forward())
    }
}

/// Hash of a UFT key.
#[inline]
pub fn uft_hash(d: Direction, k: &Ufid) -> u64 {
    k.table_hash(0x0055_4654_0000 ^ d.index() as u64)
}

/// The unified flow table.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UnifiedFlowTable {
    conns: Vec<Option<Connection>>,
    free: Vec<u32>,
    /// Entries are `connection << 1 | direction`.
    #[serde(skip)]
    index: FlowIndex,
    /// Connections with an outbound flow, by the MAC-agnostic identity of
    /// that flow's key: VM-side pairing (VFP-14) finds an inbound flow's
    /// partner here even when the return path's MACs differ.
    #[serde(skip)]
    pair_index: HashTable<u32>,
    /// Clock hand for eviction.
    hand: usize,
}

impl UnifiedFlowTable {
    /// The connection holding the unified flow `(d, key)`.
    #[inline]
    pub fn lookup(&self, d: Direction, key: &Ufid, hash: u64) -> Option<u32> {
        let conns = &self.conns;
        let di = d.index();
        self.index
            .find(hash, |v| {
                (v & 1) as usize == di
                    && conns
                        .get((v >> 1) as usize)
                        .and_then(|c| c.as_ref())
                        .and_then(|c| c.sides[di].as_ref())
                        .is_some_and(|uf| uf.key.matches(key))
            })
            .map(|v| v >> 1)
    }

    /// First stage of a pipelined lookup: the index value in the home
    /// bucket of `hash` if its hash bits match (`u32::MAX` if none).
    #[inline]
    pub fn peek(&self, hash: u64) -> u32 {
        self.index.peek(hash).unwrap_or(u32::MAX)
    }

    /// Second stage: read one word of the candidate's flow entry so its
    /// cache line is on its way. Returns the word (feed it to `black_box`).
    #[inline]
    pub fn touch_entry(&self, candidate: u32, d: Direction) -> u64 {
        if candidate == u32::MAX || (candidate & 1) as usize != d.index() {
            return 0;
        }
        self.conns
            .get((candidate >> 1) as usize)
            .and_then(|c| c.as_ref())
            .and_then(|c| c.sides[d.index()].as_ref())
            // The hash and both ends of the key: the lines the lookup reads.
            .map_or(1, |uf| uf.generation ^ u64::from(uf.key.proto()))
    }

    /// The connection whose outbound flow has the VM-side identity of
    /// `vm_key` (MACs ignored).
    pub fn lookup_pair(&self, vm_key: &Ufid) -> Option<u32> {
        let k = layer_flow_key(vm_key);
        let conns = &self.conns;
        self.pair_index
            .find(pair_hash(&k), |&c| {
                conns
                    .get(c as usize)
                    .and_then(|c| c.as_ref())
                    .and_then(|c| c.side(Direction::Out))
                    .is_some_and(|uf| layer_flow_key(&uf.key.unpack()) == k)
            })
            .copied()
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

    pub fn alloc(&mut self, c: Connection) -> u32 {
        match self.free.pop() {
            Some(s) => {
                self.conns[s as usize] = Some(c);
                s
            }
            None => {
                self.conns.push(Some(c));
                (self.conns.len() - 1) as u32
            }
        }
    }

    /// Install `uf` (whose [`uft_hash`] is `hash`) as side `d` of
    /// connection `c`, replacing (and unindexing) any previous flow of that
    /// side.
    pub fn set_side(&mut self, c: u32, d: Direction, uf: UnifiedFlow, hash: u64) {
        debug_assert_eq!(hash, uft_hash(d, &uf.key.unpack()), "caller's hash");
        self.clear_side(c, d);
        let pair = (d == Direction::Out).then(|| pair_hash(&layer_flow_key(&uf.key.unpack())));
        let Some(conn) = self.get_mut(c) else { return };
        conn.sides[d.index()] = Some(uf);
        let conns = &self.conns;
        self.index
            .insert(hash, c << 1 | d.index() as u32, |v| side_hash(conns, v));
        if let Some(ph) = pair {
            self.pair_index
                .insert_unique(ph, c, |&c| out_pair_hash(conns, c));
        }
    }

    /// Remove side `d` of connection `c` from the table.
    pub fn clear_side(&mut self, c: u32, d: Direction) {
        let Some(uf) = self.get(c).and_then(|conn| conn.side(d)) else {
            return;
        };
        let key = uf.key.unpack();
        let hash = uft_hash(d, &key);
        let pair = (d == Direction::Out).then(|| pair_hash(&layer_flow_key(&key)));
        let want = c << 1 | d.index() as u32;
        self.index.remove(hash, want);
        if let Some(ph) = pair
            && let Ok(e) = self.pair_index.find_entry(ph, |&v| v == c)
        {
            e.remove();
        }
        if let Some(conn) = self.get_mut(c) {
            conn.sides[d.index()] = None;
        }
    }

    /// Remove a whole connection.
    pub fn remove(&mut self, c: u32) -> Option<Connection> {
        self.clear_side(c, Direction::Out);
        self.clear_side(c, Direction::In);
        let conn = self.conns.get_mut(c as usize)?.take()?;
        self.free.push(c);
        Some(conn)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &Connection)> {
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i as u32, c)))
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

    /// Rebuild the index after deserialization.
    pub fn reindex(&mut self) {
        let mut index = FlowIndex::with_capacity(self.len() * 2);
        let mut pair_index = HashTable::with_capacity(self.len());
        let conns = &self.conns;
        for (i, c) in conns.iter().enumerate() {
            let Some(c) = c else { continue };
            for d in [Direction::Out, Direction::In] {
                if let Some(uf) = c.side(d) {
                    let v = (i as u32) << 1 | d.index() as u32;
                    index.insert(uft_hash(d, &uf.key.unpack()), v, |v| side_hash(conns, v));
                    if d == Direction::Out {
                        pair_index.insert_unique(
                            pair_hash(&layer_flow_key(&uf.key.unpack())),
                            i as u32,
                            |&c| out_pair_hash(conns, c),
                        );
                    }
                }
            }
        }
        self.index = index;
        self.pair_index = pair_index;
    }

    /// Approximate heap bytes used by the table (slab + index), for the
    /// memory-per-connection figure.
    pub fn memory_bytes(&self) -> usize {
        self.conns.capacity() * size_of::<Option<Connection>>()
            + self.index.memory_bytes()
            + self.pair_index.capacity() * (size_of::<u32>() + 1)
            + self
                .iter()
                .map(|(_, c)| {
                    c.layer_flows.capacity() * size_of::<LayerFlowRef>()
                        + c.sides
                            .iter()
                            .flatten()
                            .map(|uf| uf.counters.len() * 4 + uf.key.heap_bytes())
                            .sum::<usize>()
                })
                .sum::<usize>()
    }
}

fn side_hash(conns: &[Option<Connection>], v: u32) -> u64 {
    conns
        .get((v >> 1) as usize)
        .and_then(|c| c.as_ref())
        .and_then(|c| c.sides[(v & 1) as usize].as_ref())
        .map(|uf| uft_hash(Direction::from_index((v & 1) as usize), &uf.key.unpack()))
        .unwrap_or(0)
}

fn pair_hash(k: &Ufid) -> u64 {
    k.table_hash(0x5041_4952)
}

fn out_pair_hash(conns: &[Option<Connection>], c: u32) -> u64 {
    conns
        .get(c as usize)
        .and_then(|c| c.as_ref())
        .and_then(|c| c.side(Direction::Out))
        .map(|uf| pair_hash(&layer_flow_key(&uf.key.unpack())))
        .unwrap_or(0)
}
