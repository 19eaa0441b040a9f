//! The port (VFP-1): the unit of policy, and the packet processor that runs
//! packets through it.
//!
//! Fast path: parse → one exact-match lookup in the unified flow table →
//! TCP tracking, counter contexts → apply the cached transposition. Slow path
//! (miss): the flow compiler walks the layers (outbound top → bottom, inbound
//! bottom → top; VFP-10): per layer it looks up the layer flow table, else
//! classifies the layer-local UFID, runs the rule's action and composes its
//! transposition into the accumulated one; stateful rules create layer flow
//! pairs. The result is cached as a unified flow. Flows pair into
//! connections on the VM side (VFP-14): an inbound flow gets its outbound
//! partner at once, by simulation; an outbound flow's inbound partner is
//! made by the first reply, which finds the connection by its VM-side key
//! (so an unanswered SYN costs one simulation and one flow, not two).
//!
//! Every policy or resource change bumps the port generation; a unified flow
//! hit with an older generation is re-simulated before use (VFP-13), so a
//! change reaches the very next packet. Layer flows are revalidated against
//! their layer's generation: a flow whose rule (same id, same content) still
//! decides its origin key is kept — NAT affinity survives unrelated changes.

mod fragments;
mod related;
pub(crate) use fragments::FragmentState;
pub use fragments::{
    FRAGMENT_TIMEOUT, MAX_DATAGRAMS, MAX_HELD, MAX_HELD_PER_DATAGRAM, ReleasedFragment,
};

use crate::action::{ActionCx, ActionOutput, ActionRegistry, ActionSpec, MAX_METER_BUCKETS};
use crate::condition::FieldValues;
use crate::counters::{CounterArena, CounterName, PortCounters};
use crate::error::{ApiError, check_id};
use crate::flow_key::StoredUfid;
use crate::flow_table::{
    Connection, CounterLists, EarlyHashes, FlowAction, FlowActionRef, FlowMemory, LayerFlowHash,
    LayerFlowRef, LayerFlowTable, LayerFlowView, OwnedLayerFlow, PortShape, PortValues,
    UnifiedFlow, UnifiedFlowTable,
};
use crate::layer_refs::RefBlocks;
use crate::policy::{
    DefaultAction, Group, LayerPolicy, LayerSpec, PortConfig, PortPolicy, PreparedGroup, Rule,
    RuleRef,
};
use crate::preclassify::{BurstScratch, PreClassified};
use crate::resource::{
    ActionState, Backend, EventSink, Mapping, PortPool, ResourceEvent, Resources,
};
use crate::tcp::{TcpConn, TcpState};
use crate::trace::{FragmentHandling, LayerDecision, LayerTrace, Trace};
use crate::types::{Direction, DropReason, Time, Verdict};
use crossbeam_channel::Receiver;
use smallvec::{SmallVec, smallvec};
use std::net::IpAddr;
use std::sync::Arc;
use strata_packet::emit::{EmitPlan, PacketBuf, apply_planned, apply_planned_inline};
use strata_packet::flow::{Ufid, ipproto};
use strata_packet::parse::{L4Kind, PacketMeta, ParseOptions, Parsed, parse_into, parse_with};
use strata_packet::transposition::{PortRewrite, Transposition};

/// Frames between the one processed and the one whose flow entry is being
/// prefetched (see `process_batch`).
const AHEAD: usize = 4;

/// Frames per pipelined chunk of [`Port::process_batch`].
pub const BATCH: usize = 32;

/// One chunk of [`Port::process_batch`] in flight: its frames, their
/// parse results and hashes (`None`: did not parse), candidate flows and
/// verdicts.
struct Chunk<'a> {
    bufs: &'a mut [PacketBuf],
    parsed: &'a [Parsed],
    hashes: &'a [Option<u64>],
    candidates: &'a mut [u32],
    out: &'a mut [Verdict],
}

/// The most connections a port can number (31 bits: a flow is named by its
/// connection's number and a side bit).
pub const MAX_CONNECTIONS: usize = 1 << 31;

/// Clock-sweep window of the eviction policy.
const EVICTION_WINDOW: usize = 32;

/// A port: policy, flow state, resources and counters of one VNIC.
#[derive(Debug)]
pub struct Port {
    pub(crate) name: String,
    pub(crate) config: PortConfig,
    pub(crate) policy: Arc<PortPolicy>,
    pub(crate) generation: u64,
    pub(crate) next_layer_uid: u32,
    pub(crate) registry: ActionRegistry,
    pub(crate) resources: Resources,
    pub(crate) events: EventSink,
    /// Layer flow tables by layer uid.
    pub(crate) layer_flows: Vec<(u32, LayerFlowTable)>,
    /// Bit `i` clear: the layer at policy position `i` holds no layer
    /// flows, and a walk does not look there (its table is a line or two
    /// of its own: one miss per layer on a first packet). Set by each
    /// insert, worked out again where positions shift and after expiry;
    /// layers past the 64th are always looked up.
    pub(crate) flow_layers: u64,
    pub(crate) uft: UnifiedFlowTable,
    pub(crate) counters: PortCounters,
    /// Interned actions of unified flows (see [`FlowAction`]).
    pub(crate) flow_actions: hashbrown::HashSet<Arc<FlowAction>>,
    /// Parse results of the chunk [`Port::process_batch`] has in flight,
    /// kept between calls (allocated by the first batch) so a batch neither
    /// initialises nor copies the 192-byte results.
    pub(crate) batch: Vec<Parsed>,
    /// A burst's first packets classified layer by layer ahead of their
    /// walks (see [`crate::preclassify`]), kept between calls likewise.
    pub(crate) burst: BurstScratch,
    /// Where [`Port::expire_some`] stands.
    pub(crate) sweep: crate::expiry::ExpirySweep,
    /// Connections the port was last sized for ([`Port::reserve`]; kept
    /// in snapshots, and reserved again on restore).
    pub(crate) reserved: usize,
    /// IP datagrams whose first fragment passed, and later fragments held
    /// for theirs (see the `fragments` module).
    pub(crate) fragments: Box<fragments::FragmentTracker>,
}

/// Result of walking the layers for one UFID.
#[derive(Debug, Default)]
struct Sim {
    transposition: Transposition,
    /// Whether a layer composed a step into `transposition` (so far it is
    /// the identity), known without testing its every field.
    transposed: bool,
    verdict: Option<(DropReason, u16)>,
    /// Two per layer the packet passed (layer and rule) and a layer
    /// flow's own: room for 16 layers before it spills to the heap.
    counters: SmallVec<[u32; 32]>,
    drop_counters: SmallVec<[u32; 2]>,
    refs: SmallVec<[LayerFlowRef; 4]>,
    created: SmallVec<[LayerFlowRef; 4]>,
    ttl: Option<Time>,
    trace: Vec<LayerTrace>,
}

impl Sim {
    /// Follow the transposition so far with a layer's `step`: taken as is
    /// while nothing has been transposed yet (the usual case: one or two
    /// layers of a port transpose), composed otherwise.
    #[inline]
    fn compose(&mut self, step: Transposition) {
        self.transposition = if self.transposed {
            self.transposition.then(&step)
        } else {
            step
        };
        self.transposed = true;
    }

    /// A rule of layer `li` dropped the packet: the layer's and the rule's
    /// counters count the drop.
    #[inline(always)]
    fn rule_drop(&mut self, reason: DropReason, li: usize, layer: u32, rule: u32) {
        self.verdict = Some((reason, li as u16));
        self.drop_counters = smallvec![layer, rule];
    }

    /// A rule let the packet through: its layer's and its own counters
    /// count the flow, and its TTL bounds the flow's.
    #[inline(always)]
    fn rule_pass(&mut self, layer: u32, rule: u32, ttl: Option<Time>) {
        self.counters.push(layer);
        self.counters.push(rule);
        self.ttl = min_ttl(self.ttl, ttl);
    }

    fn verdict(&self) -> Verdict {
        match self.verdict {
            None => Verdict::Forward,
            Some((reason, layer)) => Verdict::Drop {
                reason,
                layer: Some(layer),
            },
        }
    }
}

/// A read-only view of one connection, for tests and tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub initiator: Direction,
    pub tcp_state: Option<TcpState>,
    pub out_flow: Option<UnifiedFlow>,
    pub in_flow: Option<UnifiedFlow>,
    pub layer_flows: usize,
    /// When the connection's first packet was seen (whole seconds).
    pub created: Time,
    pub last_seen: Time,
}

impl Port {
    pub fn new(name: &str, config: PortConfig) -> Port {
        Port::with_registry(name, config, ActionRegistry::default())
    }

    /// A port whose custom actions come from `registry`.
    pub fn with_registry(name: &str, config: PortConfig, registry: ActionRegistry) -> Port {
        Port {
            name: name.to_string(),
            config,
            policy: Arc::new(PortPolicy::default()),
            generation: 1,
            next_layer_uid: 1,
            registry,
            resources: Resources::default(),
            events: EventSink::default(),
            layer_flows: Vec::new(),
            flow_layers: u64::MAX,
            uft: UnifiedFlowTable::default(),
            counters: PortCounters::default(),
            flow_actions: Default::default(),
            batch: Vec::new(),
            burst: BurstScratch::default(),
            sweep: Default::default(),
            reserved: 0,
            fragments: Default::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &PortConfig {
        &self.config
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn policy(&self) -> &Arc<PortPolicy> {
        &self.policy
    }

    pub fn registry(&self) -> &ActionRegistry {
        &self.registry
    }

    /// Port totals of one direction, O(1): packets, bytes, forwarded,
    /// dropped, fast/slow path, reconciled. Cheap enough to read per packet.
    pub fn direction_counters(&self, d: Direction) -> crate::counters::DirCounters {
        self.counters.dir[d.index()]
    }

    /// Drops by reason, O(1).
    pub fn drops(&self, r: DropReason) -> u64 {
        self.counters.drops[r.index()]
    }

    /// All counters, exact: includes packets still pending in unified
    /// flows (O(flows) — a monitoring read, not a per-packet call).
    pub fn counters(&self) -> PortCounters {
        let mut c = self.counters.clone();
        for (_, conn) in self.uft.iter() {
            for uf in conn.sides.iter().flatten() {
                uf.add_pending(self.uft.counter_lists(), &mut c.arena);
            }
        }
        c
    }

    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// Events for the agent (mapping misses).
    pub fn subscribe_events(&self) -> Receiver<ResourceEvent> {
        self.events.subscribe()
    }

    /// Size the port for `connections` connections before their packets
    /// come. The unified flow table, and the flow table of every layer
    /// that now holds a stateful rule, get room for that many: allocated
    /// now, and every page of it written now. The first packets of up to
    /// that many connections then neither allocate, nor wait while a table
    /// doubles, nor take a page's first touch: on this project's VM a huge
    /// page's first write costs about 5 ms, which a growing port otherwise
    /// pays inside some packet once per 2 MiB of new table.
    ///
    /// The memory is held from now on (about 250 bytes per connection, see
    /// [`Port::flow_memory`]); tables grow as usual past it. A layer added
    /// with stateful rules later, or given its first stateful rule, gets
    /// its table sized for the reservation as it is installed (that call is
    /// refused, changing nothing, when the memory is not there). A snapshot
    /// keeps the reservation: [`Port::restore`] makes it again before it
    /// returns. Asking for more than `max_connections` (or 2^31), or for
    /// more memory than the host lets the process take
    /// ([`crate::host_memory::available`]: `MemAvailable`, and every memory
    /// cgroup limit over the process), is refused and changes nothing.
    pub fn reserve(&mut self, connections: usize) -> Result<(), ApiError> {
        // Connections are numbered in 31 bits (a flow is its connection's
        // number and a side bit).
        let max = self.config.max_connections.min(MAX_CONNECTIONS);
        if connections > max {
            return Err(ApiError::ReserveBeyondLimit {
                requested: connections,
                max,
            });
        }
        // Every page is written now: a reservation the machine cannot back
        // is refused here rather than ending the process.
        let policy = Arc::clone(&self.policy);
        // Stateful layers, and whether their rules may transpose (then
        // their NAT'd flows keep extra parts, in a map sized too).
        let stateful: Vec<(u32, bool)> = policy
            .layers
            .iter()
            .filter(|l| l.has_stateful())
            .map(|l| (l.uid, l.may_transpose()))
            .collect();
        let transposing = stateful.iter().filter(|(_, t)| *t).count();
        // Connections through more stateful layers than their slots hold
        // inline keep the rest of their list in overflow blocks.
        let blocks = RefBlocks::blocks_for(stateful.len()).saturating_mul(connections);
        // Meter buckets to come, with a counter list each.
        let meter_room = self.meter_buckets_reserved_for(connections);
        let needed = UnifiedFlowTable::reserve_bytes(connections)
            .saturating_add(
                LayerFlowTable::reserve_bytes(connections).saturating_mul(stateful.len()),
            )
            .saturating_add(RefBlocks::bytes_for(blocks))
            .saturating_add(
                LayerFlowTable::extras_reserve_bytes(connections).saturating_mul(transposing),
            )
            .saturating_add(
                self.resources
                    .port_pools
                    .values()
                    .map(|p| PortPool::reserve_bytes(p.size()))
                    .sum(),
            )
            .saturating_sub(self.flow_memory().total())
            .saturating_add(
                CounterArena::meter_reserve_bytes(meter_room.0)
                    .saturating_add(UnifiedFlowTable::counter_lists_reserve_bytes(meter_room.0)),
            );
        if let Some(available) = crate::host_memory::available()
            && needed > available
        {
            return Err(ApiError::ReserveBeyondMemory {
                requested: connections,
                needed,
                available,
            });
        }
        self.reserved = connections;
        self.uft.reserve(connections);
        // A batch's scratch too (otherwise made by the first batch).
        if self.batch.len() < BATCH {
            self.batch.resize(BATCH, Parsed::EMPTY);
        }
        self.burst.reserve(BATCH);
        // SNAT pools: their in-use sets never hold more than their ports.
        for pool in self.resources.port_pools.values_mut() {
            pool.reserve_all();
        }
        // Each stateful layer as one made stateful later is sized.
        for (uid, _) in stateful {
            self.reserve_layer_table(uid);
        }
        self.make_meter_room(meter_room);
        Ok(())
    }

    /// Can layer `layer` take `rules` more meter rules? On a reserved port
    /// the room for their buckets (see [`Port::reserve_meter_buckets`]) is
    /// made as they are installed, and the memory for it must be there.
    fn check_meter_reservation(&self, layer: &str, rules: usize) -> Result<(), ApiError> {
        if self.reserved == 0 || rules == 0 {
            return Ok(());
        }
        let buckets = rules
            .saturating_mul(MAX_METER_BUCKETS + 1)
            .min(self.reserved.saturating_mul(2));
        let needed = CounterArena::meter_reserve_bytes(buckets)
            .saturating_add(UnifiedFlowTable::counter_lists_reserve_bytes(buckets));
        match crate::host_memory::available() {
            Some(available) if needed > available => Err(ApiError::MetersBeyondReservation {
                layer: layer.into(),
                connections: self.reserved,
                needed,
                available,
            }),
            _ => Ok(()),
        }
    }

    /// Room in the counter arena for the meter buckets the reserved
    /// connections may make (each meter rule's buckets still to come under
    /// its cap, and no more than one per meter layer for each walk of a
    /// connection's two directions), and for the counter lists of the
    /// flows that make them. (Called again as meter rules come.)
    fn reserve_meter_buckets(&mut self) {
        if self.reserved == 0 {
            return;
        }
        self.make_meter_room(self.meter_buckets_reserved_for(self.reserved));
    }

    /// Room for `buckets` meter buckets of `rules` meter rules (from
    /// [`Port::meter_buckets_reserved_for`]).
    fn make_meter_room(&mut self, (buckets, rules): (usize, usize)) {
        self.counters.arena.reserve_meter_buckets(buckets, rules);
        // A flow counting into a new bucket names a new counter list.
        self.uft.reserve_counter_lists(buckets);
    }

    /// The meter buckets [`Port::reserve`] makes room for (with a counter
    /// list each) when reserving `connections` under the current policy.
    pub fn meter_bucket_room(&self, connections: usize) -> usize {
        self.meter_buckets_reserved_for(connections).0
    }

    /// The meter buckets to make room for when reserving `connections`,
    /// and the meter rules they are for.
    fn meter_buckets_reserved_for(&self, connections: usize) -> (usize, usize) {
        let arena = &self.counters.arena;
        let (mut buckets, mut rules, mut layers) = (0usize, 0, 0);
        for layer in &self.policy.layers {
            let before = rules;
            for g in layer.groups() {
                for (rule, crule) in g.group.rules.iter().zip(&g.rules) {
                    if is_meter(rule) {
                        rules += 1;
                        buckets = buckets
                            .saturating_add(arena.meter_room(crule.counter(), MAX_METER_BUCKETS));
                    }
                }
            }
            layers += usize::from(rules > before);
        }
        (buckets.min(connections.saturating_mul(2 * layers)), rules)
    }

    /// Connections the port was last sized for with [`Port::reserve`]
    /// (0 if never).
    pub fn reserved_connections(&self) -> usize {
        self.reserved
    }

    /// Can layer `layer` (uid `uid`, `None` if new) take the rules that
    /// would make it stateful (`becomes_stateful`), or stateful and
    /// transposing (`transposes`)? On a reserved port its flow table, and
    /// with transposing rules its map of extra parts, must then be sized
    /// for the reservation, and the memory for that must be there.
    fn check_layer_reservation(
        &self,
        layer: &str,
        uid: Option<u32>,
        becomes_stateful: bool,
        transposes: bool,
    ) -> Result<(), ApiError> {
        if self.reserved == 0 {
            return Ok(());
        }
        let n = self.reserved;
        let held = uid
            .and_then(|u| self.flow_table(u))
            .map_or(0, LayerFlowTable::memory_bytes);
        let mut target = LayerFlowTable::reserve_bytes(n);
        if transposes {
            target = target.saturating_add(LayerFlowTable::extras_reserve_bytes(n));
        }
        let mut needed = target.saturating_sub(held);
        if becomes_stateful {
            // One more stateful layer: connections may hold one more layer
            // flow each, past their inline room.
            let k = self.stateful_layers() + 1;
            let blocks = RefBlocks::blocks_for(k) - RefBlocks::blocks_for(k - 1);
            needed = needed.saturating_add(RefBlocks::bytes_for(blocks.saturating_mul(n)));
        }
        match crate::host_memory::available() {
            Some(available) if needed > available => Err(ApiError::LayerBeyondReservation {
                layer: layer.into(),
                connections: n,
                needed,
                available,
            }),
            _ => Ok(()),
        }
    }

    /// Size layer `uid`'s flow table (and, if its rules may transpose, its
    /// map of extra parts) for the port's reservation, if any, once it
    /// holds stateful rules (checked by [`Port::check_layer_reservation`]).
    fn reserve_layer_table(&mut self, uid: u32) {
        if self.reserved == 0 {
            return;
        }
        let transposes = self
            .policy
            .layers
            .iter()
            .find(|l| l.uid == uid)
            .is_some_and(|l| l.may_transpose());
        if let Some(t) = table_in(&mut self.layer_flows, uid) {
            t.reserve(self.reserved, &self.uft);
            if transposes {
                t.reserve_extras(self.reserved);
            }
        }
        let blocks = RefBlocks::blocks_for(self.stateful_layers());
        self.uft
            .reserve_ref_blocks(blocks.saturating_mul(self.reserved));
    }

    /// Layers holding stateful rules.
    fn stateful_layers(&self) -> usize {
        self.policy
            .layers
            .iter()
            .filter(|l| l.has_stateful())
            .count()
    }

    /// What installing `group` at layer `pos` calls for sizing: the layer's
    /// tables (its first stateful rule, or the first rule that may
    /// transpose in a stateful layer) and meter buckets' room (meter
    /// rules). Checked against the port's reservation first; done by
    /// [`Port::size_for_group`] once the group is in.
    fn check_group_reservation(
        &self,
        pos: usize,
        group: &PreparedGroup,
    ) -> Result<GroupSizing, ApiError> {
        let layer = &self.policy.layers[pos];
        let g = &group.0;
        // What the layer already holds was sized when it came to (or by
        // `Port::reserve`).
        let becomes_stateful = g.has_stateful && !layer.has_stateful();
        let stateful = g.has_stateful || layer.has_stateful();
        let transposes = g.may_transpose || layer.may_transpose();
        let gains_transposition = stateful && g.may_transpose && !layer.may_transpose();
        let sizing = becomes_stateful || gains_transposition;
        if sizing {
            self.check_layer_reservation(&layer.id, Some(layer.uid), becomes_stateful, transposes)?;
        }
        let meters = meter_rules(&g.group);
        self.check_meter_reservation(&layer.id, meters)?;
        Ok(GroupSizing {
            table: sizing,
            meters: meters > 0,
        })
    }

    /// Size what [`Port::check_group_reservation`] found the group at
    /// layer `pos` calls for.
    fn size_for_group(&mut self, pos: usize, sizing: GroupSizing) {
        if sizing.table {
            self.reserve_layer_table(self.policy.layers[pos].uid);
        }
        if sizing.meters {
            self.reserve_meter_buckets();
        }
    }

    /// Live connections (unified-flow pairs).
    pub fn connection_count(&self) -> usize {
        self.uft.len()
    }

    /// Unified flows (both directions).
    pub fn unified_flow_count(&self) -> usize {
        self.uft.flow_count()
    }

    /// Layer flows of one layer.
    pub fn layer_flow_count(&self, layer: &str) -> usize {
        self.policy
            .layers
            .iter()
            .find(|l| l.id == layer)
            .and_then(|l| self.flow_table(l.uid))
            .map_or(0, |t| t.len())
    }

    pub fn layer_ids(&self) -> Vec<String> {
        self.policy.layers.iter().map(|l| l.id.clone()).collect()
    }

    /// The layer specs, VM side first (groups included).
    pub fn layer_specs(&self) -> Vec<LayerSpec> {
        self.policy.layers.iter().map(|l| l.spec()).collect()
    }

    /// Heap bytes of the port's flow state, by part (the connection slab,
    /// the unified flow index, shared parts, each layer's flow table).
    pub fn flow_memory(&self) -> FlowMemory {
        let (connections, uft_index, shared) = self.uft.memory_parts();
        let actions = self.flow_actions.capacity() * (size_of::<Arc<FlowAction>>() + 1)
            + self
                .flow_actions
                .iter()
                .map(|a| size_of::<FlowAction>() + 16 + a.plan.heap_bytes())
                .sum::<usize>();
        FlowMemory {
            connections,
            uft_index,
            shared: shared + actions,
            layer_flows: self
                .policy
                .layers
                .iter()
                .filter_map(|l| Some((l.id.clone(), self.flow_table(l.uid)?.memory_bytes())))
                .collect(),
        }
    }

    /// Approximate heap bytes of the port's counters (rule, layer and
    /// meter-bucket slots with their names and indexes).
    pub fn counter_memory_bytes(&self) -> usize {
        self.counters.arena.memory_bytes()
    }

    /// Shared flow state in use: header contexts and counter-slot lists
    /// (each stored once for the flows naming it).
    pub fn shared_flow_parts(&self) -> (usize, usize) {
        (self.uft.context_count(), self.uft.counter_lists().len())
    }

    /// A consistency check of the flow table: every flow is indexed once
    /// under its key (and the index is well formed), and every reference
    /// count of a shared part equals the number of flows naming it (for
    /// tests and diagnostics; O(flows)).
    pub fn verify_flow_state(&self) -> Result<(), String> {
        if let Some((uid, _)) = self.layer_flows.iter().find(|(_, t)| t.has_fresh_key()) {
            return Err(format!("layer {uid}: a new flow's key was never settled"));
        }
        // A walk skips a layer whose bit is clear: its table must be empty.
        for (i, layer) in self.policy.layers.iter().enumerate() {
            if !self.may_hold_flows(i) && self.flow_table(layer.uid).is_some_and(|t| !t.is_empty())
            {
                return Err(format!(
                    "layer {}: holds flows a walk would not look for",
                    layer.id
                ));
            }
        }
        for (uid, t) in &self.layer_flows {
            t.verify_index(&self.uft)
                .map_err(|e| format!("layer {uid}: {e}"))?;
        }
        self.check_layer_flow_holders()?;
        self.uft.verify_shared()
    }

    /// Every connection holds layer flows that are there, and every layer
    /// flow's count of holders is the number of connections holding it:
    /// a flow is released when, and only when, its last connection goes.
    /// (A count too high keeps a flow for ever; one too low frees it under
    /// a connection, whose later release would take a holder from the
    /// flow reusing the slot.) Checked on restore; O(connections + flows).
    pub(crate) fn check_layer_flow_holders(&self) -> Result<(), String> {
        let mut held: Vec<Vec<u32>> = self
            .layer_flows
            .iter()
            .map(|(_, t)| vec![0; t.slot_count()])
            .collect();
        for (c, conn) in self.uft.iter() {
            for r in self.uft.layer_refs(conn) {
                let table = self.layer_flows.iter().position(|(u, _)| *u == r.layer_uid);
                let count = table
                    .filter(|&i| self.layer_flows[i].1.get(r.slot).is_some())
                    .and_then(|i| held[i].get_mut(r.slot as usize));
                match count {
                    Some(n) => *n += 1,
                    None => {
                        return Err(format!(
                            "connection {c} holds flow {} of layer {}, which is not there",
                            r.slot, r.layer_uid
                        ));
                    }
                }
            }
        }
        for ((uid, t), counts) in self.layer_flows.iter().zip(&held) {
            for (slot, f) in t.iter() {
                let n = counts.get(slot as usize).copied().unwrap_or(0);
                if f.refs != n {
                    return Err(format!(
                        "flow {slot} of layer {uid} counts {} holders; {n} connections hold it",
                        f.refs
                    ));
                }
            }
        }
        Ok(())
    }

    /// The connection whose `d` side has UFID `key`.
    pub fn connection(&self, d: Direction, key: &Ufid) -> Option<ConnectionInfo> {
        let c = self.uft.lookup(d, key, self.uft.hash(d, key))?;
        let c = self.uft.get(c)?;
        Some(ConnectionInfo {
            initiator: c.initiator,
            tcp_state: c.tcp.map(|t| t.state),
            out_flow: c.side(Direction::Out).cloned(),
            in_flow: c.side(Direction::In).cloned(),
            layer_flows: c.layer_flow_count(),
            created: c.created(),
            last_seen: c.last_seen,
        })
    }

    // ----- policy API -------------------------------------------------------

    fn bump(&mut self) -> u64 {
        self.generation += 1;
        if stamp(self.generation) == 0 {
            // The low half wrapped: stamps of flows compiled 2^32
            // generations ago could now equal current ones. Mark every flow
            // stale once (stamp 0 is never current) and skip generation
            // stamp 0. Once per 2^32 policy changes, so O(flows) is fine.
            self.generation += 1;
            for uf in self.uft.flows_mut() {
                uf.generation = 0;
            }
            for (_, t) in &mut self.layer_flows {
                t.expire_stamps();
            }
        }
        self.generation
    }

    /// The generation stamp flows compiled now carry.
    pub(crate) fn stamp(&self) -> u32 {
        stamp(self.generation)
    }

    /// The layer flow in `slot` of layer `uid`'s table.
    pub(crate) fn layer_flow(&self, uid: u32, slot: u32) -> Option<LayerFlowView<'_>> {
        self.flow_table(uid)?.get(slot)
    }

    fn flow_table(&self, uid: u32) -> Option<&LayerFlowTable> {
        self.layer_flows
            .iter()
            .find(|(u, _)| *u == uid)
            .map(|(_, t)| t)
    }

    /// The flow table of layer `uid`, the layer at position `li` of the
    /// policy: the tables are kept in policy order, so it is usually the
    /// one at `li` (a simulation asks once per layer; a search would
    /// compare half the layers' ids each time).
    #[inline]
    fn flow_table_at(&self, uid: u32, li: usize) -> Option<&LayerFlowTable> {
        match self.layer_flows.get(li) {
            Some((u, t)) if *u == uid => Some(t),
            _ => self.flow_table(uid),
        }
    }

    /// Add a layer at `position` (0 = VM side; `None` = bottom, network
    /// side), with any groups it carries.
    pub fn add_layer(&mut self, spec: LayerSpec, position: Option<usize>) -> Result<(), ApiError> {
        check_id(&spec.id)?;
        if self.policy.position(&spec.id).is_some() {
            return Err(ApiError::LayerExists(spec.id));
        }
        let n = self.policy.layers.len();
        let pos = position.unwrap_or(n);
        if pos > n {
            return Err(ApiError::BadPosition {
                position: pos,
                layers: n,
            });
        }
        // Validate and build everything before touching the port.
        let mut prepared = Vec::with_capacity(spec.groups.len());
        let mut group_ids = std::collections::HashSet::new();
        for g in spec.groups {
            if !group_ids.insert(g.id.clone()) {
                return Err(ApiError::GroupExists {
                    layer: spec.id.clone(),
                    group: g.id,
                });
            }
            prepared.push(
                g.prepare(&self.registry)
                    .map_err(|e| with_layer(e, &spec.id))?,
            );
        }
        check_unique_rules(&spec.id, prepared.iter().map(|p| &p.0.group))?;
        let stateful = prepared.iter().any(|p| p.0.has_stateful);
        let meters: usize = prepared.iter().map(|p| meter_rules(&p.0.group)).sum();
        if stateful {
            let transposes = prepared.iter().any(|p| p.0.may_transpose);
            self.check_layer_reservation(&spec.id, None, true, transposes)?;
        }
        self.check_meter_reservation(&spec.id, meters)?;
        let generation = self.bump();
        let uid = self.next_layer_uid;
        self.next_layer_uid += 1;
        let counter = self.counters.arena.slot(CounterName::Layer {
            layer: spec.id.as_str().into(),
        });
        let groups = prepared
            .into_iter()
            .map(|p| Arc::new(self.assign_counters(&spec.id, p, &[])))
            .collect();
        let layer = LayerPolicy::new(
            spec.id,
            uid,
            spec.default_out,
            spec.default_in,
            generation,
            counter,
        )
        .with_groups(groups);
        let mut policy = (*self.policy).clone();
        policy.layers.insert(pos, Arc::new(layer));
        self.policy = Arc::new(policy);
        // In policy order, as `flow_table_at` expects first.
        let at = pos.min(self.layer_flows.len());
        self.layer_flows
            .insert(at, (uid, LayerFlowTable::default()));
        self.refresh_flow_layers();
        if stateful {
            self.reserve_layer_table(uid);
        }
        if meters > 0 {
            self.reserve_meter_buckets();
        }
        Ok(())
    }

    /// Remove a layer and its layer flows (releasing their resources).
    pub fn remove_layer(&mut self, id: &str) -> Result<(), ApiError> {
        let pos = self
            .policy
            .position(id)
            .ok_or_else(|| ApiError::NoSuchLayer(id.into()))?;
        self.bump();
        let mut policy = (*self.policy).clone();
        let layer = policy.layers.remove(pos);
        self.policy = Arc::new(policy);
        self.counters.arena.retire(layer.counter);
        for g in layer.groups() {
            self.retire_rule_counters(g, None);
        }
        if let Some(i) = self.layer_flows.iter().position(|(u, _)| *u == layer.uid) {
            let (_, mut table) = self.layer_flows.remove(i);
            for f in table.drain() {
                self.resources.release(f.state());
            }
        }
        self.refresh_flow_layers();
        Ok(())
    }

    /// Work [`Port::flow_layers`] out from the tables.
    pub(crate) fn refresh_flow_layers(&mut self) {
        let mut bits = 0u64;
        for (i, layer) in self.policy.layers.iter().enumerate().take(64) {
            if self.flow_table(layer.uid).is_some_and(|t| !t.is_empty()) {
                bits |= 1 << i;
            }
        }
        self.flow_layers = bits;
    }

    /// May the layer at policy position `li` hold layer flows?
    #[inline]
    fn may_hold_flows(&self, li: usize) -> bool {
        li >= 64 || self.flow_layers >> li & 1 != 0
    }

    /// Change a layer's default actions.
    pub fn set_layer_defaults(
        &mut self,
        id: &str,
        default_out: DefaultAction,
        default_in: DefaultAction,
    ) -> Result<(), ApiError> {
        let pos = self
            .policy
            .position(id)
            .ok_or_else(|| ApiError::NoSuchLayer(id.into()))?;
        let generation = self.bump();
        let mut layer = (*self.policy.layers[pos]).clone();
        layer.default_out = default_out;
        layer.default_in = default_in;
        layer.generation = generation;
        self.replace_layer(pos, layer);
        Ok(())
    }

    fn replace_layer(&mut self, pos: usize, layer: LayerPolicy) {
        let mut policy = (*self.policy).clone();
        policy.layers[pos] = Arc::new(layer);
        self.policy = Arc::new(policy);
    }

    /// Retire the counter slots of `old`'s rules that `new` does not carry
    /// (rule ids are unique within a layer, so those rules left it); they
    /// are freed once no flow counts into them (see `expire`).
    fn retire_rule_counters(
        &mut self,
        old: &crate::policy::CompiledGroup,
        new: Option<&crate::policy::CompiledGroup>,
    ) {
        let arena = &mut self.counters.arena;
        let mut kept = vec![false; arena.capacity()];
        for r in new.into_iter().flat_map(|g| g.rules.iter()) {
            if let Some(k) = kept.get_mut(r.counter() as usize) {
                *k = true;
            }
        }
        for r in &old.rules {
            if !kept.get(r.counter() as usize).copied().unwrap_or(false) {
                arena.retire(r.counter());
            }
        }
    }

    /// Give a prepared group's rules their counter slots: `known[i]`, when
    /// given, is rule `i`'s existing slot (looked up beforehand).
    fn assign_counters(
        &mut self,
        layer: &str,
        p: PreparedGroup,
        known: &[Option<u32>],
    ) -> crate::policy::CompiledGroup {
        let mut g = p.0;
        let arena = &mut self.counters.arena;
        for (i, (r, c)) in g.group.rules.iter().zip(g.rules.iter_mut()).enumerate() {
            let slot = match known.get(i).copied().flatten() {
                Some(s) => {
                    arena.unretire(s);
                    s
                }
                None => arena.rule_slot(layer, &r.id),
            };
            c.set_counter(slot);
        }
        g
    }

    /// Add or atomically replace a group (validated and compiled first).
    pub fn set_group(&mut self, layer: &str, group: Group) -> Result<(), ApiError> {
        let pos = self.policy.position(layer);
        let (arena, policy) = (&self.counters.arena, &self.policy);
        // While a large group's classifier is built: the rule-id check
        // against the layer's other groups, and the look-up of the counter
        // slots the port already has for these rule ids (current or
        // retired: a rule that comes back keeps its counts).
        let (prepared, (unique, known)) = group
            .prepare_with(&self.registry, |g| {
                let unique =
                    pos.map(|pos| check_unique_rules(layer, with_others(&policy.layers[pos], g)));
                let known: Vec<Option<u32>> = g
                    .rules
                    .iter()
                    .map(|r| arena.find_rule(layer, &r.id))
                    .collect();
                (unique, known)
            })
            .map_err(|e| with_layer(e, layer))?;
        let pos = pos.ok_or_else(|| ApiError::NoSuchLayer(layer.into()))?;
        unique.unwrap_or(Ok(()))?;
        let sizing = self.check_group_reservation(pos, &prepared)?;
        self.swap_group(pos, layer, prepared, &known);
        self.size_for_group(pos, sizing);
        Ok(())
    }

    /// Install a group prepared off the datapath: replaces the group with the
    /// same id in place, or appends it. One swap; nothing half-built is ever
    /// visible. A group from [`Group::prepare_for`] whose layer has not
    /// changed since needs no further checks or look-ups here.
    pub fn install_group(
        &mut self,
        layer: &str,
        mut prepared: PreparedGroup,
    ) -> Result<(), ApiError> {
        let pos = self
            .policy
            .position(layer)
            .ok_or_else(|| ApiError::NoSuchLayer(layer.into()))?;
        let current = &self.policy.layers[pos];
        let known = prepared
            .1
            .take()
            .filter(|f| f.layer_uid == current.uid && f.generation == current.generation)
            .map(|f| f.slots);
        if known.is_none() {
            check_unique_rules(layer, with_others(current, &prepared.0.group))?;
        }
        let sizing = self.check_group_reservation(pos, &prepared)?;
        self.swap_group(pos, layer, prepared, known.as_deref().unwrap_or(&[]));
        self.size_for_group(pos, sizing);
        Ok(())
    }

    /// The swap of [`Port::install_group`], checks done.
    fn swap_group(
        &mut self,
        pos: usize,
        layer: &str,
        prepared: PreparedGroup,
        known: &[Option<u32>],
    ) {
        let gid = prepared.0.group.id.clone();
        let generation = self.bump();
        let compiled = Arc::new(self.assign_counters(layer, prepared, known));
        let mut l = (*self.policy.layers[pos]).clone();
        let mut groups = l.groups().to_vec();
        let old = match groups.iter().position(|g| g.group.id == gid) {
            Some(i) => Some(std::mem::replace(&mut groups[i], compiled)),
            None => {
                groups.push(compiled);
                None
            }
        };
        l.set_groups(groups);
        l.generation = generation;
        self.replace_layer(pos, l);
        if let Some(old) = old {
            let new = self.policy.layers[pos]
                .groups()
                .iter()
                .find(|g| g.group.id == gid)
                .cloned();
            self.retire_rule_counters(&old, new.as_deref());
            retire(old);
        }
    }

    pub fn remove_group(&mut self, layer: &str, group: &str) -> Result<(), ApiError> {
        let pos = self
            .policy
            .position(layer)
            .ok_or_else(|| ApiError::NoSuchLayer(layer.into()))?;
        let i = self.policy.layers[pos]
            .groups()
            .iter()
            .position(|g| g.group.id == group)
            .ok_or_else(|| ApiError::NoSuchGroup {
                layer: layer.into(),
                group: group.into(),
            })?;
        let generation = self.bump();
        let mut l = (*self.policy.layers[pos]).clone();
        let mut groups = l.groups().to_vec();
        let removed = groups.remove(i);
        l.set_groups(groups);
        l.generation = generation;
        self.replace_layer(pos, l);
        self.retire_rule_counters(&removed, None);
        retire(removed);
        Ok(())
    }

    // ----- resources API ----------------------------------------------------

    pub fn add_mapping_table(&mut self, name: &str) -> Result<(), ApiError> {
        self.resources.add_mapping_table(name)?;
        self.bump();
        Ok(())
    }

    /// Install or update a CA → PA mapping (the agent's answer to a miss).
    pub fn set_mapping(&mut self, table: &str, ca: IpAddr, m: Mapping) -> Result<(), ApiError> {
        if m.vni > 0x00ff_ffff {
            return Err(ApiError::InvalidResource {
                name: table.into(),
                message: format!("vni {} does not fit 24 bits", m.vni),
            });
        }
        self.resources.mapping_mut(table)?.insert(ca, m);
        self.events.table_changed(table);
        self.bump();
        Ok(())
    }

    pub fn remove_mapping(&mut self, table: &str, ca: IpAddr) -> Result<(), ApiError> {
        self.resources.mapping_mut(table)?.remove(&ca);
        self.events.table_changed(table);
        self.bump();
        Ok(())
    }

    pub fn add_port_pool(
        &mut self,
        name: &str,
        ip: IpAddr,
        ranges: Vec<(u16, u16)>,
    ) -> Result<(), ApiError> {
        self.resources.add_port_pool(name, ip, ranges)?;
        // On a reserved port, sized as `Port::reserve` sizes the others (a
        // few hundred kilobytes at most: 65,535 ports).
        if self.reserved > 0
            && let Some(pool) = self.resources.port_pools.get_mut(name)
        {
            pool.reserve_all();
        }
        self.bump();
        Ok(())
    }

    pub fn set_backend_pool(&mut self, name: &str, backends: Vec<Backend>) -> Result<(), ApiError> {
        self.resources.set_backend_pool(name, backends)?;
        self.bump();
        Ok(())
    }

    // ----- datapath ---------------------------------------------------------

    /// Process one frame in place. On `Forward` the buffer holds the frame to
    /// send on. (A later IP fragment that came before its first is
    /// [`Verdict::Held`]; see [`Port::drain_released`].)
    pub fn process(&mut self, d: Direction, buf: &mut PacketBuf, now: Time) -> Verdict {
        let v = self.process_one(d, buf, now);
        if self.fragments_ready() {
            self.release_ready(now);
        }
        v
    }

    /// [`Port::process`] without releasing held fragments.
    fn process_one(&mut self, d: Direction, buf: &mut PacketBuf, now: Time) -> Verdict {
        let mut p = Parsed::EMPTY;
        match parse_into(buf.as_slice(), parse_options(d), &mut p) {
            Ok(()) => {
                if p.layout.fragment
                    && let Some(v) = self.fragment(d, buf, &mut p, now)
                {
                    return v;
                }
                let hash = self.uft.hash(d, &p.ufid);
                self.process_parsed(d, buf, &p, hash, u32::MAX, &PreClassified::NONE, now)
            }
            Err(e) => self.malformed(d, buf.len(), e),
        }
    }

    /// Process a batch of frames of one direction; verdicts go to `out`
    /// (only `min(bufs.len(), out.len())` frames are processed).
    ///
    /// Pipelined in chunks of [`BATCH`]: every frame is parsed and hashed,
    /// and its index bucket prefetched; then, while each frame is
    /// processed, the candidate flow of the frame four places later is
    /// found in its bucket and its connection entry prefetched, so a frame
    /// is processed with its table memory in cache, its candidate checked
    /// first (see [`crate::hint`]). From a chunk's first frame without a
    /// candidate on, the frames without one (first packets) are classified
    /// layer by layer before they are walked ([`crate::preclassify`]).
    pub fn process_batch(
        &mut self,
        d: Direction,
        bufs: &mut [PacketBuf],
        now: Time,
        out: &mut [Verdict],
    ) {
        let n = bufs.len().min(out.len());
        let opts = parse_options(d);
        // Frames are parsed in place into `parsed` (no copy of the result);
        // `hashes[j]` is `Some` for the frames that parsed. The scratch is
        // taken out of `self` while `process_parsed` borrows it mutably.
        let mut parsed = std::mem::take(&mut self.batch);
        if parsed.len() < BATCH {
            parsed.resize(BATCH, Parsed::EMPTY);
        }
        let mut burst = std::mem::take(&mut self.burst);
        let (bufs, out) = (&mut bufs[..n], &mut out[..n]);
        for (bufs, out) in bufs.chunks_mut(BATCH).zip(out.chunks_mut(BATCH)) {
            let parsed = &mut parsed[..bufs.len()];
            let mut hashes: [Option<u64>; BATCH] = [None; BATCH];
            let hashes = &mut hashes[..bufs.len()];
            // A software pipeline over the chunk: each frame's index bucket
            // is prefetched as soon as it is hashed, and a frame's flow
            // entry `AHEAD` frames before it is processed, so the misses of
            // later frames overlap the work on earlier ones.
            for (((buf, p), h), o) in bufs
                .iter()
                .zip(parsed.iter_mut())
                .zip(hashes.iter_mut())
                .zip(out.iter_mut())
            {
                match parse_into(buf.as_slice(), opts, p) {
                    // A later fragment held (or dropped): not processed.
                    Ok(())
                        if p.layout.fragment
                            && let Some(v) = self.fragment(d, buf, p, now) =>
                    {
                        *o = v;
                    }
                    Ok(()) => {
                        let hash = self.uft.hash(d, &p.ufid);
                        self.uft.prefetch_bucket(hash);
                        *h = Some(hash);
                    }
                    Err(e) => *o = self.malformed(d, buf.len(), e),
                }
            }
            let mut candidates = [u32::MAX; BATCH];
            let candidates = &mut candidates[..bufs.len()];
            for (h, c) in hashes.iter().zip(candidates.iter_mut()).take(AHEAD) {
                if let Some(hash) = h {
                    *c = self.uft.peek(*hash);
                    self.uft.prefetch_candidate(*c);
                }
            }
            let parsed = &parsed[..bufs.len()];
            let mut chunk = Chunk {
                bufs,
                parsed,
                hashes,
                candidates,
                out,
            };
            // Frames with a candidate flow (the fast path) go straight
            // through; from the first without one (a first packet, nearly
            // always) on, frames are classified layer by layer ahead of
            // their walks.
            let from = self.run_chunk::<false>(d, &mut chunk, 0, &burst, now);
            if from < chunk.bufs.len() {
                self.classify_ahead(
                    d,
                    chunk.parsed,
                    chunk.hashes,
                    chunk.candidates,
                    from,
                    &mut burst,
                );
                self.run_chunk::<true>(d, &mut chunk, from, &burst, now);
            }
        }
        self.batch = parsed;
        self.burst = burst;
        if self.fragments_ready() {
            self.release_ready(now);
        }
    }

    /// Process the frames of `chunk` from `from` on, in order, each with
    /// the candidate flow of the frame [`AHEAD`] places later looked up
    /// first. Without `CLASSIFIED` (nothing classified ahead), stop at the
    /// first frame with no candidate, unprocessed, and return its index;
    /// with it, walk first packets with their results in `burst`.
    #[inline(always)]
    fn run_chunk<const CLASSIFIED: bool>(
        &mut self,
        d: Direction,
        chunk: &mut Chunk<'_>,
        from: usize,
        burst: &BurstScratch,
        now: Time,
    ) -> usize {
        let n = chunk.bufs.len();
        for j in from..n {
            if CLASSIFIED {
                // Its candidate was found when the frames were classified.
                if let Some(&c) = chunk.candidates.get(j + AHEAD) {
                    self.uft.prefetch_candidate(c);
                }
            } else if let (Some(h), Some(c)) = (
                chunk.hashes.get(j + AHEAD),
                chunk.candidates.get_mut(j + AHEAD),
            ) && let Some(hash) = h
            {
                *c = self.uft.peek(*hash);
                self.uft.prefetch_candidate(*c);
            }
            let hint = chunk.candidates[j];
            let pre = if CLASSIFIED {
                burst.results(j)
            } else if hint == u32::MAX && chunk.hashes[j].is_some() {
                return j;
            } else {
                &PreClassified::NONE
            };
            if let (Some(hash), Some(buf), Some(p), Some(o)) = (
                chunk.hashes[j],
                chunk.bufs.get_mut(j),
                chunk.parsed.get(j),
                chunk.out.get_mut(j),
            ) {
                *o = self.process_parsed(d, buf, p, hash, hint, pre, now);
            }
        }
        n
    }

    /// Classify ahead (see [`crate::preclassify`]) the frames of `chunk`
    /// from `from` on whose home index bucket holds no candidate flow:
    /// first packets, but for a rare tag collision (then they are walked
    /// as usual) or a flow an earlier frame of the chunk makes (their
    /// results unused). The candidates of the frames past the lookahead
    /// are found on the way.
    #[inline(never)]
    fn classify_ahead(
        &self,
        d: Direction,
        parsed: &[Parsed],
        hashes: &[Option<u64>],
        candidates: &mut [u32],
        from: usize,
        burst: &mut BurstScratch,
    ) {
        let n = hashes.len().min(BATCH);
        // (No frame is, if no layer can be: the slots are only emptied.)
        let worthwhile = crate::preclassify::worthwhile(&self.policy, d);
        let mut keys: [Option<&Ufid>; BATCH] = [None; BATCH];
        for (k, key) in keys.iter_mut().enumerate().take(n).skip(from) {
            if let (Some(Some(hash)), Some(p), Some(c)) =
                (hashes.get(k), parsed.get(k), candidates.get_mut(k))
            {
                if k > from + AHEAD {
                    *c = self.uft.peek(*hash);
                }
                if worthwhile {
                    *key = Some(&p.ufid);
                }
            }
        }
        let candidates = &*candidates;
        burst.classify(&self.policy, d, &keys[..n], |i| {
            candidates.get(i) == Some(&u32::MAX)
        });
    }

    /// Count a frame that did not parse.
    fn malformed(&mut self, d: Direction, len: usize, e: strata_packet::ParseError) -> Verdict {
        // No allocation once a reason has been seen.
        match self.counters.malformed.get_mut(e.reason()) {
            Some(n) => *n += 1,
            None => {
                self.counters.malformed.insert(e.reason().to_string(), 1);
            }
        }
        self.drop_unlooked(d, len, DropReason::Malformed)
    }

    /// Count a frame of `len` bytes dropped before its flow was looked up
    /// (one that did not parse, a fragment that could not wait for its
    /// first), as a packet of direction `d` and a drop for `reason`.
    fn drop_unlooked(&mut self, d: Direction, len: usize, reason: DropReason) -> Verdict {
        let dc = &mut self.counters.dir[d.index()];
        dc.packets += 1;
        dc.bytes += len as u64;
        dc.dropped += 1;
        self.counters.drops[reason.index()] += 1;
        Verdict::Drop {
            reason,
            layer: None,
        }
    }

    /// The datapath for one parsed frame: unified flow hit (or slow path),
    /// reconciliation if stale, TCP tracking, counting, emit. `hint` is the
    /// batch's index candidate for the frame (`u32::MAX` for none), `pre`
    /// its layers classified ahead (for a first packet of a batch).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn process_parsed(
        &mut self,
        d: Direction,
        buf: &mut PacketBuf,
        parsed: &Parsed,
        hash: u64,
        hint: u32,
        pre: &PreClassified,
        now: Time,
    ) -> Verdict {
        if let Some(v) = self.process_established(d, buf, parsed, hint, now) {
            return v;
        }
        self.process_parsed_in_full(d, buf, parsed, hash, hint, pre, now)
    }

    /// The established packet's path, inlined into the datapath's loop: the
    /// packet's candidate flow (see [`UnifiedFlowTable::peek`]) is its
    /// flow, compiled at the current generation (a drop flow's packets
    /// take it too). `None`, having changed nothing, for every other
    /// packet ([`Port::process_parsed_in_full`] decides those).
    #[inline(always)]
    fn process_established(
        &mut self,
        d: Direction,
        buf: &mut PacketBuf,
        parsed: &Parsed,
        hint: u32,
        now: Time,
    ) -> Option<Verdict> {
        let conn = self.uft.candidate_for(d, &parsed.ufid, hint)?;
        let stamp = self.stamp();
        let (c, lists) = self.uft.get_mut_with_lists(conn)?;
        let uf = c.sides[d.index()].as_ref()?;
        if uf.generation != stamp {
            return None;
        }
        let dc = &mut self.counters.dir[d.index()];
        dc.packets += 1;
        dc.bytes += u64::from(parsed.meta.frame_len);
        dc.fast_path += 1;
        Some(forward_flow::<true>(
            c,
            lists,
            &mut self.counters,
            d,
            buf,
            parsed,
            false,
            now,
        ))
    }

    /// Every packet [`Port::process_established`] leaves: one without a
    /// candidate (`Port::process`'s), a flow found only by a full lookup, a
    /// first packet (slow path), a flow to reconcile.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn process_parsed_in_full(
        &mut self,
        d: Direction,
        buf: &mut PacketBuf,
        parsed: &Parsed,
        hash: u64,
        hint: u32,
        pre: &PreClassified,
        now: Time,
    ) -> Verdict {
        let bytes = u64::from(parsed.meta.frame_len);
        {
            let dc = &mut self.counters.dir[d.index()];
            dc.packets += 1;
            dc.bytes += bytes;
        }
        let (conn, tracked) = match self.uft.lookup_hinted(d, &parsed.ufid, hash, hint) {
            Some(c) => {
                self.counters.dir[d.index()].fast_path += 1;
                (c, false)
            }
            None => {
                // An ICMP error is about another flow: it never has one.
                // (One test here; the rest of the check is out of line.)
                if matches!(parsed.layout.l4_kind, L4Kind::Icmpv4 | L4Kind::Icmpv6)
                    && let Some(v) = self.icmp_error(d, buf, parsed, now)
                {
                    return v;
                }
                self.counters.dir[d.index()].slow_path += 1;
                let created = self.create_flow(d, &parsed.ufid, hash, &parsed.meta, pre, now);
                self.settle_keys();
                created
            }
        };
        let stamp = self.stamp();
        // One slab access for the usual case (current flow); a stale flow
        // is reconciled and looked up again.
        let Some((mut c, mut lists)) = self.uft.get_mut_with_lists(conn) else {
            return REFUSED;
        };
        if c.sides[d.index()]
            .as_ref()
            .is_some_and(|uf| uf.generation != stamp)
        {
            self.counters.dir[d.index()].reconciled += 1;
            self.reconcile(conn, d, now);
            self.settle_keys();
            match self.uft.get_mut_with_lists(conn) {
                Some(again) => (c, lists) = again,
                None => return REFUSED,
            }
        }
        forward_flow::<false>(c, lists, &mut self.counters, d, buf, parsed, tracked, now)
    }

    /// Add every flow's pending packet counts to the rule, layer and meter
    /// counters (done by `expire` too; reading [`Port::counters`] does not
    /// need it).
    pub fn flush_counters(&mut self) {
        for c in self.uft.ids() {
            self.flush_connection(c);
        }
    }

    pub(crate) fn flush_connection(&mut self, c: u32) {
        self.uft.flush_connection(c, &mut self.counters.arena);
    }

    /// Slow path: compile a new unified flow and its pair. Returns the
    /// connection and whether its TCP state was started from this packet
    /// (so the caller does not track the packet twice).
    fn create_flow(
        &mut self,
        d: Direction,
        ufid: &Ufid,
        hash: u64,
        meta: &PacketMeta,
        pre: &PreClassified,
        now: Time,
    ) -> (u32, bool) {
        let mut sim = Sim::default();
        self.simulate::<false>(&mut sim, d, ufid, pre, now, false);
        let forward = sim.verdict.is_none();
        let final_ufid = sim.transposition.apply_to_ufid(ufid);
        let uf = self.unified_flow(&mut sim);

        // VM-side pairing: an inbound flow whose VM-side key reversed is an
        // existing outbound flow joins that connection (asymmetric paths).
        if d == Direction::In {
            let out_key = final_ufid.reversed();
            if let Some(c) = self.uft.lookup_pair(&out_key) {
                self.uft.flush_side(c, d, &mut self.counters.arena);
                self.unshare_keys(c, d);
                self.uft.set_side(c, d, uf, ufid, hash);
                let added = self.uft.add_refs(c, &sim.refs);
                let mut tracked = false;
                if let Some(conn) = self.uft.get_mut(c) {
                    conn.set_idle_ttl(min_ttl(conn.idle_ttl(), sim.ttl));
                    if forward && conn.tcp.is_none() && ufid.inner.is_tcp() {
                        conn.tcp = Some(TcpConn::new(d, meta, now, &mut self.counters.tcp));
                        tracked = true;
                    }
                }
                self.hold(&added);
                self.share_keys(c, d, &sim.created);
                return (c, tracked);
            }
        }

        // A limit past what a port can number is the numbering's limit.
        if self.uft.len() >= self.config.max_connections.min(MAX_CONNECTIONS) {
            self.evict_one(now);
        }
        let tcp = (forward && ufid.inner.is_tcp())
            .then(|| TcpConn::new(d, meta, now, &mut self.counters.tcp));
        let tracked = tcp.is_some();
        let c = self.uft.alloc(Connection::new(d, tcp, now, sim.ttl));
        let added = self.uft.add_refs(c, &sim.refs);
        self.hold(&added);
        self.uft.set_side(c, d, uf, ufid, hash);
        self.share_keys(c, d, &sim.created);
        self.counters.flows.connections_created += 1;
        // An outbound connection's inbound flow is made when its first
        // inbound packet comes (VM-side pairing above): a SYN that is never
        // answered (a scan, a flood through the VM) costs one flow, and the
        // first packet one simulation. An inbound connection gets its
        // outbound partner now, by simulation (VFP-14): the VM is the one
        // that answers, and its reply then takes the fast path.
        if !forward || d == Direction::Out {
            return (c, tracked);
        }
        // The outbound partner is keyed by the VM-side key itself.
        let pd = Direction::Out;
        let pkey = final_ufid.reversed();
        let phash = self.uft.hash(pd, &pkey);
        if self.uft.lookup(pd, &pkey, phash).is_some() {
            return (c, tracked);
        }
        let mut psim = Sim::default();
        self.simulate::<false>(&mut psim, pd, &pkey, &PreClassified::NONE, now, false);
        if psim.verdict.is_none() {
            let puf = self.unified_flow(&mut psim);
            self.uft.set_side(c, pd, puf, &pkey, phash);
            let added = self.uft.add_refs(c, &psim.refs);
            if let Some(conn) = self.uft.get_mut(c) {
                conn.set_idle_ttl(min_ttl(conn.idle_ttl(), psim.ttl));
            }
            self.hold(&added);
            self.share_keys(c, pd, &psim.created);
        } else {
            self.rollback(&psim.created);
        }
        (c, tracked)
    }

    fn unified_flow(&mut self, sim: &mut Sim) -> UnifiedFlow {
        let forward = sim.verdict.is_none();
        let ports = if forward {
            sim.transposition.ports()
        } else {
            PortRewrite::default()
        };
        let counters: &[u32] = if forward {
            &sim.counters
        } else {
            &sim.drop_counters
        };
        // The shared action is the transposition without its port rewrite
        // (kept per flow): looked up with the ports cleared in place and
        // put back after, rather than a copy.
        let t = &mut sim.transposition;
        let action = if forward {
            (t.src_port, t.dst_port) = (None, None);
            let action = self.intern_action(FlowActionRef {
                verdict: &Verdict::Forward,
                transposition: t,
                port_shape: PortShape::of(&ports),
            });
            (t.src_port, t.dst_port) = (ports.src, ports.dst);
            action
        } else {
            self.intern_action(FlowActionRef {
                verdict: &sim.verdict(),
                transposition: &Transposition::IDENTITY,
                port_shape: PortShape::of(&ports),
            })
        };
        let counters = self.uft.intern_counters(counters);
        UnifiedFlow {
            key: StoredUfid::default(),
            generation: self.stamp(),
            ports: PortValues::of(&ports),
            action,
            counters,
            packets: 0,
            bytes: 0,
        }
    }

    /// One shared copy of each distinct flow action: flows decided by the
    /// same rules with the same result point at the same one (no
    /// allocation per flow).
    fn intern_action(&mut self, a: FlowActionRef<'_>) -> Arc<FlowAction> {
        if let Some(found) = self.flow_actions.get(&a) {
            return Arc::clone(found);
        }
        let owned = Arc::new(FlowAction {
            verdict: *a.verdict,
            plan: EmitPlan::new(a.transposition.clone()),
            port_shape: a.port_shape,
        });
        self.flow_actions.insert(Arc::clone(&owned));
        owned
    }

    /// Share equal actions again (after a restore, which deserializes one
    /// copy per flow).
    pub(crate) fn reintern_actions(&mut self) {
        let mut actions = std::mem::take(&mut self.flow_actions);
        for uf in self.uft.flows_mut() {
            match actions.get(&uf.action) {
                Some(a) => uf.action = Arc::clone(a),
                None => {
                    actions.insert(Arc::clone(&uf.action));
                }
            }
        }
        self.flow_actions = actions;
    }

    /// Re-simulate a stale unified flow (VFP-13).
    fn reconcile(&mut self, c: u32, d: Direction, now: Time) {
        let Some(key) = self.uft.side_key(c, d) else {
            return;
        };
        let mut sim = Sim::default();
        self.simulate::<false>(&mut sim, d, &key, &PreClassified::NONE, now, false);
        let uf = self.unified_flow(&mut sim);
        let new_refs = self.uft.add_refs(c, &sim.refs);
        if let Some(conn) = self.uft.get_mut(c) {
            conn.set_idle_ttl(sim.ttl);
        }
        self.uft
            .reconcile_side(c, d, &key, uf, &mut self.counters.arena);
        self.hold(&new_refs);
        self.share_keys(c, d, &sim.created);
        self.drop_unreachable_refs(c);
    }

    /// Point restored layer flows at their compiled rule's identity again
    /// (a restore deserializes one copy per flow).
    pub(crate) fn reshare_rules(&mut self) {
        let policy = Arc::clone(&self.policy);
        for layer in &policy.layers {
            let Some(t) = table_in(&mut self.layer_flows, layer.uid) else {
                continue;
            };
            let rules: std::collections::HashMap<&str, &Arc<crate::policy::RuleIdentity>> = layer
                .groups()
                .iter()
                .flat_map(|g| g.rules.iter())
                .map(|r| (&*r.identity.id, &r.identity))
                .collect();
            for f in t.flows_mut() {
                if let Some(&r) = rules.get(&*f.rule.id)
                    && **r == *f.rule
                {
                    f.rule = Arc::clone(r);
                }
            }
        }
    }

    /// Store the keys of new layer flows that no connection took in their
    /// tables (see `LayerFlowTable::settle`; at the end of every call that
    /// creates layer flows).
    fn settle_keys(&mut self) {
        for (_, t) in &mut self.layer_flows {
            t.settle();
        }
    }

    /// Take a reference on layer flows for a connection.
    fn hold(&mut self, refs: &[LayerFlowRef]) {
        for r in refs {
            if let Some(f) = self.table_mut(r.layer_uid).and_then(|t| t.get_mut(r.slot)) {
                f.refs += 1;
            }
        }
    }

    fn table_mut(&mut self, uid: u32) -> Option<&mut LayerFlowTable> {
        table_in(&mut self.layer_flows, uid)
    }

    /// Undo layer flows created by a simulation whose result is not used.
    fn rollback(&mut self, created: &[LayerFlowRef]) {
        for r in created {
            let released = table_in(&mut self.layer_flows, r.layer_uid).and_then(|t| {
                // Created flows have no holder yet: take and free them.
                if let Some(f) = t.get_mut(r.slot) {
                    f.refs = 1;
                }
                t.release(r.slot, &self.uft)
            });
            if let Some(f) = released {
                self.teardown(r.layer_uid, &f);
            }
        }
    }

    /// Release a layer flow's per-flow state.
    fn teardown(&mut self, layer_uid: u32, f: &OwnedLayerFlow) {
        self.resources.release(f.state());
        if let ActionState::Custom(_) = f.state() {
            let policy = Arc::clone(&self.policy);
            if let Some(l) = policy.layers.iter().find(|l| l.uid == layer_uid) {
                for g in l.groups() {
                    if let Some(i) = g.rules.iter().position(|r| *r.identity.id == *f.rule.id) {
                        g.rules[i].action.teardown(f.state(), &mut self.resources);
                    }
                }
            }
        }
    }

    /// Each layer with a stateful rule and flows starts loading the index
    /// bucket of the packet's own key (kept by walk step): it is the key
    /// the layer looks up unless a layer before it may transpose, so on
    /// large tables the layers' misses overlap each other and the
    /// classification of the layers before. The hashes are kept for those
    /// lookups. Which layers qualify is worked out once per policy
    /// ([`PortPolicy::shape`]): a walk through layers without state pays
    /// a few instructions for it.
    #[inline(always)]
    fn early_hashes(&self, policy: &PortPolicy, d: Direction, ufid: &Ufid) -> EarlyHashes {
        let mut early = EarlyHashes::default();
        let shape = policy.shape();
        let t = shape.transposing;
        // Positions the walk reaches with the packet's own key: up to and
        // including the first layer (in walk order) that may transpose.
        let untransposed = match (d, t) {
            (_, 0) => u64::MAX,
            (Direction::Out, t) => u64::MAX >> (63 - t.trailing_zeros()),
            (Direction::In, t) => u64::MAX << (63 - t.leading_zeros()),
        };
        let n = policy.layers.len();
        let mut todo = shape.stateful & untransposed;
        while todo != 0 {
            let li = todo.trailing_zeros() as usize;
            todo &= todo - 1;
            let step = match d {
                Direction::Out => li,
                Direction::In => n - 1 - li,
            };
            // The tables are kept in policy order (`flow_table_at`); a
            // table not where its layer is is left to the walk.
            if let (Some(layer), Some((uid, table))) =
                (policy.layers.get(li), self.layer_flows.get(li))
                && *uid == layer.uid
                && !table.is_empty()
            {
                early.set(step, table.hash_and_prefetch(d, ufid));
            }
        }
        early
    }

    /// Walk the layers for `ufid` in direction `d` (the flow compiler).
    /// Fills `sim` (a fresh one, the caller's: a `Sim` is 300 bytes, too
    /// many to move on every first packet). `pre` holds the layers
    /// classified ahead for `ufid` (see [`crate::preclassify`]). `DRY`: a
    /// dry run (traces, ICMP errors), which creates no layer flow and
    /// takes no resource; a const parameter, so the dry runs are compiled
    /// apart and the walk for new flows keeps its mode a constant.
    #[allow(clippy::too_many_arguments)]
    fn simulate<const DRY: bool>(
        &mut self,
        sim: &mut Sim,
        d: Direction,
        ufid: &Ufid,
        pre: &PreClassified,
        now: Time,
        trace: bool,
    ) {
        let policy = Arc::clone(&self.policy);
        let n = policy.layers.len();
        // The layer-local id and its field values, re-derived only after a
        // layer transformed something (most layers do not).
        let mut derived: Option<Ufid> = None;
        let mut fv = FieldValues::EMPTY;
        let mut fv_of_local = false;
        let mut changed = false;
        // The first two layers' head lines, which the priming inside the
        // walk (below) does not reach: on a new flow they arrive while
        // the flow index's miss and this walk's set-up are resolved.
        for layer in (0..2).filter_map(|step| policy.layer_at(d, step)) {
            layer.prime(d);
        }
        let early = self.early_hashes(&policy, d, ufid);
        let any_early = !early.is_empty();
        let pre_steps = pre.steps_ahead();
        for step in 0..n {
            let li = match d {
                Direction::Out => step,
                Direction::In => n - 1 - step,
            };
            let layer = &policy.layers[li];
            if changed {
                derived = Some(sim.transposition.apply_to_ufid(ufid));
                fv_of_local = false;
                changed = false;
            }
            let local = derived.as_ref().unwrap_or(ufid);

            // 1. An existing layer flow decides.
            let mut miss_hash = match derived {
                None if any_early => early.get(step),
                _ => None,
            };
            if self.may_hold_flows(li)
                && let Some((slot, side, origin)) =
                    self.layer_flow_hit::<DRY>(layer, li, d, local, now, &mut miss_hash)
            {
                let Some(f) = self.flow_table_at(layer.uid, li).and_then(|t| t.get(slot)) else {
                    continue;
                };
                let t = f.side_transposition(side, &origin);
                // Pushed one by one: `extend_from_slice` of a slot or two
                // is a `memcpy` call (it was the slow path's largest item).
                for &c in f.side_counters(side) {
                    sim.counters.push(c);
                }
                sim.counters.push(layer.counter);
                sim.counters.push(f.rule.counter);
                sim.ttl = min_ttl(sim.ttl, f.ttl());
                if trace {
                    sim.trace.push(LayerTrace {
                        layer: layer.id.clone(),
                        input: *local,
                        decision: LayerDecision::LayerFlow {
                            rule: f.rule.id.to_string(),
                            reverse: side == 1,
                        },
                        transposition: t.describe(),
                        step: t.clone(),
                        dropped: None,
                    });
                }
                sim.refs.push(LayerFlowRef {
                    layer_uid: layer.uid,
                    slot,
                });
                if !t.is_identity() {
                    sim.compose(t);
                    changed = true;
                }
                continue;
            }

            // 2. Classify (unless done ahead for the packet's own key).
            let decided = if pre_steps >> step.min(31) & 1 != 0 && derived.is_none() {
                pre.result(step)
            } else {
                if !fv_of_local {
                    fv.fill_from_ufid(local);
                    fv_of_local = true;
                }
                // The layer after next starts loading its first lines.
                if let Some(after) = policy.layer_at(d, step + 2) {
                    after.prime(d);
                }
                layer.classify(d, &fv)
            };
            let Some(rref) = decided else {
                let def = layer.default_for(d);
                if trace {
                    sim.trace.push(LayerTrace {
                        layer: layer.id.clone(),
                        input: *local,
                        decision: LayerDecision::Default(def),
                        transposition: "identity".into(),
                        step: Transposition::identity(),
                        dropped: (def == DefaultAction::Block).then_some(DropReason::DefaultBlock),
                    });
                }
                match def {
                    DefaultAction::Allow => sim.counters.push(layer.counter),
                    DefaultAction::Block => {
                        sim.verdict = Some((DropReason::DefaultBlock, li as u16));
                        sim.drop_counters = smallvec![layer.counter];
                        break;
                    }
                }
                continue;
            };
            // A stateless allow or block rule needs no action call: its
            // verdict is all there is to it.
            // (Read from the compiled rule alone: see `RuleBrief`.)
            if !trace
                && let Some(crule) = layer.compiled_rule(rref)
                && let Some(verdict) = crule.fixed()
                && (!crule.stateful() || DRY || verdict.is_err())
            {
                if let Err(reason) = verdict {
                    sim.rule_drop(reason, li, layer.counter, crule.counter());
                    break;
                }
                sim.rule_pass(layer.counter, crule.counter(), crule.ttl());
                continue;
            }
            let mut lf = None;
            let out = self.run_rule::<DRY>(layer, li, rref, d, local, miss_hash, now, &mut lf);
            let Some((rule, crule, group)) = layer.rule(rref) else {
                continue;
            };
            if trace {
                sim.trace.push(LayerTrace {
                    layer: layer.id.clone(),
                    input: *local,
                    decision: LayerDecision::Rule {
                        group: group.id.clone(),
                        rule: rule.id.clone(),
                        stateful: rule.stateful,
                    },
                    transposition: out.transposition.describe(),
                    step: out.transposition.clone(),
                    dropped: out.verdict.err(),
                });
            }
            if let Err(reason) = out.verdict {
                sim.rule_drop(reason, li, layer.counter, crule.counter());
                break;
            }
            if let Some(slot) = lf {
                let r = LayerFlowRef {
                    layer_uid: layer.uid,
                    slot,
                };
                sim.refs.push(r);
                sim.created.push(r);
            }
            // One by one, as above.
            for &c in &out.counters {
                sim.counters.push(c);
            }
            sim.rule_pass(layer.counter, crule.counter(), crule.ttl());
            if !out.transposition.is_identity() {
                sim.compose(out.transposition);
                changed = true;
            }
        }
        if sim.verdict.is_some() && !DRY {
            let created = std::mem::take(&mut sim.created);
            self.rollback(&created);
            sim.refs.retain(|r| !created.contains(r));
        }
    }

    /// Run a rule's action for `local`; a stateful rule that allows creates
    /// a layer flow pair (unless `DRY`) in `layer`'s table (the layer is
    /// at policy position `li`), whose slot goes to `created`. `hash` is
    /// `local`'s layer-flow hash in direction `d`, if the lookup that
    /// missed computed it. Returns the output.
    #[allow(clippy::too_many_arguments)]
    fn run_rule<const DRY: bool>(
        &mut self,
        layer: &LayerPolicy,
        li: usize,
        rref: RuleRef,
        d: Direction,
        local: &Ufid,
        hash: Option<LayerFlowHash>,
        now: Time,
        created: &mut Option<u32>,
    ) -> ActionOutput {
        let Some((rule, crule, _)) = layer.rule(rref) else {
            return ActionOutput::drop(DropReason::ActionRefused);
        };
        let mut cx = ActionCx {
            direction: d,
            flow: local,
            now,
            dry_run: DRY,
            layer: &layer.id,
            rule: &rule.id,
            rule_counter: crule.counter(),
            resources: &mut self.resources,
            events: &mut self.events,
            counters: &mut self.counters.arena,
        };
        let mut out = crule.action.process(&mut cx);
        if out.verdict.is_err() || !rule.stateful || DRY {
            // Stateless rules keep no per-flow state.
            if out.state != ActionState::None {
                self.resources.release(&std::mem::take(&mut out.state));
            }
            return out;
        }
        let flow = OwnedLayerFlow::new(
            d,
            Arc::clone(&crule.identity),
            stamp(layer.generation),
            &out.transposition,
            &out.counters,
            std::mem::take(&mut out.state),
            crule.ttl(),
        );
        let uid = layer.uid;
        let Some(table) = table_in(&mut self.layer_flows, uid) else {
            self.resources.release(flow.state());
            return out;
        };
        *created = Some(table.insert_hashed(flow, local, hash, &self.uft));
        if li < 64 {
            self.flow_layers |= 1 << li;
        }
        self.counters.flows.layer_flows_created += 1;
        out
    }

    /// Look up `(d, local)` in the layer's flow table, revalidating a flow
    /// made under an older layer generation: it stays if the same rule (id
    /// and content) still decides its origin key; otherwise it is detached
    /// and, if another stateful rule now decides the origin key, re-derived
    /// from it.
    ///
    /// `layer` is at position `li` of the policy. `hash` receives `local`'s
    /// layer-flow hash when one was computed (for the insert that may follow
    /// a miss).
    #[allow(clippy::too_many_arguments)]
    fn layer_flow_hit<const DRY: bool>(
        &mut self,
        layer: &LayerPolicy,
        li: usize,
        d: Direction,
        local: &Ufid,
        now: Time,
        hash: &mut Option<LayerFlowHash>,
    ) -> Option<(u32, usize, Ufid)> {
        let table = self.flow_table_at(layer.uid, li)?;
        // Layers without stateful rules never hold flows: no hashing.
        if table.is_empty() {
            return None;
        }
        // The walk's early hash of this key, if it has one.
        let h = hash.unwrap_or_else(|| table.hash(d, local));
        debug_assert_eq!(h, table.hash(d, local));
        *hash = Some(h);
        let (slot, side, origin_key) = table.lookup_hashed(d, local, h, &self.uft)?;
        let f = table.get(slot)?;
        if f.layer_generation == stamp(layer.generation) {
            return Some((slot, side, origin_key));
        }
        let origin = f.origin;
        let fv = FieldValues::from_ufid(&origin_key);
        let decided = layer.classify(origin, &fv);
        let still = decided
            .and_then(|r| layer.rule(r))
            .is_some_and(|(r, cr, _)| {
                r.stateful
                    && *cr.identity.id == *f.rule.id
                    && cr.fingerprint() == f.rule.fingerprint
            });
        if DRY {
            return still.then_some((slot, side, origin_key));
        }
        let table = table_in(&mut self.layer_flows, layer.uid)?;
        if still {
            if let Some(f) = table.get_mut(slot) {
                f.layer_generation = stamp(layer.generation);
            }
            return Some((slot, side, origin_key));
        }
        table.detach(slot, &self.uft);
        if table.get(slot).is_some_and(|f| f.refs == 0)
            && let Some(f) = table.release(slot, &self.uft)
        {
            self.teardown(layer.uid, &f);
        }
        let rref = decided?;
        let stateful = layer.rule(rref).is_some_and(|(r, _, _)| r.stateful);
        if !stateful {
            return None;
        }
        let mut new_slot = None;
        self.run_rule::<DRY>(
            layer,
            li,
            rref,
            origin,
            &origin_key,
            None,
            now,
            &mut new_slot,
        );
        let new_slot = new_slot?;
        let table = self.flow_table(layer.uid)?;
        match table.lookup_hashed(d, local, h, &self.uft) {
            Some((s, side, o)) if s == new_slot => Some((s, side, o)),
            _ => {
                // The re-derived flow does not cover this packet's key (e.g.
                // a new SNAT port); it stays for the origin direction's next
                // packet only if someone holds it.
                if let Some(t) = table_in(&mut self.layer_flows, layer.uid)
                    && let Some(f) = t.get_mut(new_slot)
                {
                    f.refs = 1;
                    if let Some(f) = t.release(new_slot, &self.uft) {
                        self.teardown(layer.uid, &f);
                    }
                }
                None
            }
        }
    }

    // ----- expiry and eviction ---------------------------------------------

    /// When connection `c` expires.
    pub(crate) fn deadline(&self, c: &Connection) -> Time {
        let cfg = &self.config;
        if let Some(t) = &c.tcp {
            return match t.state {
                TcpState::TimeWait => t.finished_at().saturating_add(cfg.tcp_time_wait),
                TcpState::Closed => t.finished_at().saturating_add(cfg.tcp_closed_linger),
                s if s.is_half_open() => c.last_seen.saturating_add(cfg.tcp_half_open_idle),
                _ => c
                    .last_seen
                    .saturating_add(c.idle_ttl().unwrap_or(cfg.tcp_established_idle)),
            };
        }
        let proto = self.uft.proto(c);
        let idle = if c.is_drop_only() {
            cfg.tcp_half_open_idle
        } else if proto == ipproto::UDP {
            c.idle_ttl().unwrap_or(cfg.udp_idle)
        } else {
            c.idle_ttl().unwrap_or(cfg.other_idle)
        };
        c.last_seen.saturating_add(idle)
    }

    /// Remove every connection whose time has come (idle TTLs, TIME_WAIT,
    /// resets), releasing layer flows and SNAT ports, and end the
    /// tracking of IP datagrams and the holding of fragments whose time
    /// has come. Returns how many connections.
    pub fn expire(&mut self, now: Time) -> usize {
        self.expire_fragments(now);
        self.flush_counters();
        // Actions no flow uses any more.
        self.flow_actions.retain(|a| Arc::strong_count(a) > 1);
        let due: Vec<u32> = self
            .uft
            .iter()
            .filter(|(_, c)| self.deadline(c) <= now)
            .map(|(i, _)| i)
            .collect();
        for &c in &due {
            self.retire_connection(c);
        }
        if self.counters.arena.retired() > 0 {
            self.reclaim_counters();
        }
        self.refresh_flow_layers();
        due.len()
    }

    /// Remove connection `c` because its time has come, counted as closed
    /// (TCP finished) or expired.
    pub(crate) fn retire_connection(&mut self, c: u32) {
        let closed = self
            .uft
            .get(c)
            .and_then(|c| c.tcp)
            .is_some_and(|t| t.state.is_finished());
        if closed {
            self.counters.flows.connections_closed += 1;
        } else {
            self.counters.flows.connections_expired += 1;
        }
        self.remove_connection(c);
    }

    fn remove_connection(&mut self, c: u32) {
        self.flush_connection(c);
        let Some(refs) = self.uft.refs_of(c) else {
            return;
        };
        // Layer flows go first, while the keys they share are still here.
        for r in refs {
            self.release_ref(c, r);
        }
        self.uft.remove(c);
    }

    /// Connection `c` lets go of one layer flow (its key must still be
    /// readable from `c`): the flow's last holder tears it down.
    fn release_ref(&mut self, c: u32, r: LayerFlowRef) {
        let released = table_in(&mut self.layer_flows, r.layer_uid).and_then(|t| {
            if t.get(r.slot).is_some_and(|f| f.refs > 1) {
                // Others hold it on: it keeps its key itself.
                for d in [Direction::Out, Direction::In] {
                    t.own_key(r.slot, c, d, &self.uft);
                }
            }
            t.release(r.slot, &self.uft)
        });
        if let Some(f) = released {
            self.teardown(r.layer_uid, &f);
        }
    }

    /// After a reconcile: let go of layer flows connection `c` can no
    /// longer reach — flows a policy change detached (no lookup finds them
    /// again; every unified flow of the port is stale, so none uses them)
    /// and flows of removed layers. Without this, each change that moves a
    /// connection to another rule left it holding one more flow.
    fn drop_unreachable_refs(&mut self, c: u32) {
        let Some(conn) = self.uft.get(c) else {
            return;
        };
        let dead: SmallVec<[LayerFlowRef; 4]> = self
            .uft
            .layer_refs(conn)
            .filter(|r| {
                self.flow_table(r.layer_uid)
                    .and_then(|t| t.get(r.slot))
                    .is_none_or(|f| f.detached)
            })
            .collect();
        if dead.is_empty() {
            return;
        }
        for &r in &dead {
            self.release_ref(c, r);
        }
        self.uft.retain_refs(c, |r| !dead.contains(r));
    }

    /// Let layer flows created for side `d` of connection `c` (and held by
    /// it) read their origin key from that side when it is the same.
    fn share_keys(&mut self, c: u32, d: Direction, created: &[LayerFlowRef]) {
        for r in created {
            if let Some(t) = table_in(&mut self.layer_flows, r.layer_uid) {
                t.share_key(r.slot, c, d, &self.uft);
            }
        }
    }

    /// Before side `d` of connection `c` changes key: flows sharing it
    /// store it themselves again.
    fn unshare_keys(&mut self, c: u32, d: Direction) {
        let Some(refs) = self.uft.refs_of(c) else {
            return;
        };
        for r in refs {
            if let Some(t) = table_in(&mut self.layer_flows, r.layer_uid) {
                t.own_key(r.slot, c, d, &self.uft);
            }
        }
    }

    /// Make room for one connection: a bounded clock sweep preferring
    /// expired, closed, half-open and drop-only connections.
    fn evict_one(&mut self, now: Time) {
        let cfg = self.config.clone();
        let score = |c: &Connection| -> u32 {
            let expired = {
                let idle = c.idle_ttl().unwrap_or(cfg.tcp_established_idle);
                c.last_seen.saturating_add(idle) <= now
            };
            match c.tcp.map(|t| t.state) {
                _ if expired => 4,
                Some(s) if s.is_finished() => 3,
                Some(s) if s.is_half_open() => 2,
                None if c.is_drop_only() => 2,
                None => 1,
                Some(_) => 0,
            }
        };
        let Some(victim) = self.uft.pick_victim(EVICTION_WINDOW, score) else {
            return;
        };
        match self
            .uft
            .get(victim)
            .map(|c| (c.tcp.map(|t| t.state), c.is_drop_only()))
        {
            Some((Some(s), _)) if s.is_half_open() => self.counters.flows.evicted_half_open += 1,
            Some((Some(s), _)) if !s.is_finished() => self.counters.flows.evicted_established += 1,
            _ => self.counters.flows.evicted_other += 1,
        }
        self.remove_connection(victim);
    }

    // ----- diagnostics -------------------------------------------------------

    /// Walk `ufid` through the layers changing nothing (traces, ICMP
    /// errors), with each layer's step recorded if `trace`.
    #[inline(never)]
    fn dry_run(&mut self, d: Direction, ufid: &Ufid, now: Time, trace: bool) -> Sim {
        let mut sim = Sim::default();
        self.simulate::<true>(&mut sim, d, ufid, &PreClassified::NONE, now, trace);
        sim
    }

    /// Simulate a UFID through the port (VFP-23) without changing anything:
    /// each layer's decision and transposition, the final transposition, and
    /// what the unified flow table currently caches for it.
    pub fn trace(&mut self, d: Direction, ufid: &Ufid, now: Time) -> Trace {
        let sim = self.dry_run(d, ufid, now, true);
        let cached = self.connection(d, ufid).and_then(|c| match d {
            Direction::Out => c.out_flow,
            Direction::In => c.in_flow,
        });
        Trace {
            direction: d,
            input: *ufid,
            output: sim.transposition.apply_to_ufid(ufid),
            transposition: sim.transposition.describe(),
            verdict: sim.verdict(),
            layers: sim.trace,
            cached: cached.map(|uf| crate::trace::CachedFlow {
                // The latest generation with the flow's stamp.
                generation: self
                    .generation
                    .saturating_sub(u64::from(self.stamp().wrapping_sub(uf.generation))),
                current: uf.generation == self.stamp(),
                transposition: uf.transposition().describe(),
                verdict: uf.verdict(),
            }),
            related: None,
            fragment: None,
        }
    }

    /// Trace a frame (parsed first).
    pub fn trace_frame(
        &mut self,
        d: Direction,
        frame: &[u8],
        now: Time,
    ) -> Result<Trace, strata_packet::ParseError> {
        let mut p = parse_with(frame, parse_options(d))?;
        let fragment = self.fragment_trace(d, frame, &mut p);
        let mut t = self.trace(d, &p.ufid, now);
        t.related = self.related_error(d, frame, &p, now);
        if t.related.is_some() {
            t.verdict = Verdict::Forward;
        }
        if fragment.is_some_and(|f| f.handling == FragmentHandling::Held) {
            t.verdict = Verdict::Held;
        }
        t.fragment = fragment;
        Ok(t)
    }
}

/// The flow table of layer `uid` (a free function, so callers can borrow
/// the unified flow table beside it).
fn table_in(tables: &mut [(u32, LayerFlowTable)], uid: u32) -> Option<&mut LayerFlowTable> {
    tables.iter_mut().find(|(u, _)| *u == uid).map(|(_, t)| t)
}

/// Frames a VM sends are never decoded as our tunnels (a VM's own overlay
/// is opaque payload); frames from the network are.
pub fn parse_options(d: Direction) -> ParseOptions {
    ParseOptions {
        decode_tunnels: d == Direction::In,
    }
}

/// A packet whose connection lost its flow as it was being found.
const REFUSED: Verdict = Verdict::Drop {
    reason: DropReason::ActionRefused,
    layer: None,
};

/// The rest of a packet's path once its flow is found and current (a
/// connection without side `d` refuses it): count it in the flow, track
/// TCP (unless the connection's state began with this packet: `tracked`),
/// and apply the flow's action. `INLINE_USUAL`: the usual packet's TCP
/// update and emit inlined (the batch loop's established path; the full
/// path calls them, and stays smaller).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_flow<const INLINE_USUAL: bool>(
    c: &mut Connection,
    lists: &CounterLists,
    counters: &mut PortCounters,
    d: Direction,
    buf: &mut PacketBuf,
    parsed: &Parsed,
    tracked: bool,
    now: Time,
) -> Verdict {
    c.last_seen = now;
    c.referenced = true;
    let tunnel_port = c.tunnel_port();
    let Connection { sides, tcp, .. } = c;
    let Some(uf) = sides[d.index()].as_mut() else {
        return REFUSED;
    };
    // Counted in the flow entry itself; added to the rule, layer and
    // meter counters lazily (see `UnifiedFlow::flush`), or now if a
    // pending count would overflow.
    uf.count(parsed.meta.frame_len, lists, &mut counters.arena);
    let action = &*uf.action;
    match action.verdict {
        verdict @ Verdict::Drop { reason, .. } => {
            counters.dir[d.index()].dropped += 1;
            counters.drops[reason.index()] += 1;
            verdict
        }
        // Forward (no flow's verdict is `Held`; one test of the
        // variant on the fast path, as with two).
        _ => {
            // A connection whose TCP state began with this packet has
            // already tracked it.
            if let Some(t) = tcp.as_mut()
                && !tracked
            {
                if INLINE_USUAL {
                    t.update_inline(d, &parsed.meta, now, &mut counters.tcp);
                } else {
                    t.update(d, &parsed.meta, now, &mut counters.tcp);
                }
            }
            let dc = &mut counters.dir[d.index()];
            let ports = uf.port_rewrite();
            let emitted = if INLINE_USUAL {
                apply_planned_inline(&action.plan, &ports, tunnel_port, buf, parsed)
            } else {
                apply_planned(&action.plan, &ports, tunnel_port, buf, parsed)
            };
            match emitted {
                Ok(()) => {
                    dc.forwarded += 1;
                    Verdict::Forward
                }
                Err(_) => {
                    dc.dropped += 1;
                    counters.drops[DropReason::EmitFailed.index()] += 1;
                    Verdict::Drop {
                        reason: DropReason::EmitFailed,
                        layer: None,
                    }
                }
            }
        }
    }
}

/// The generation stamp of port generation `g` (its low half).
fn stamp(g: u64) -> u32 {
    g as u32
}

fn min_ttl(a: Option<Time>, b: Option<Time>) -> Option<Time> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

pub(crate) fn with_layer(e: ApiError, layer: &str) -> ApiError {
    match e {
        ApiError::DuplicateRule { rule, .. } => ApiError::DuplicateRule {
            layer: layer.to_string(),
            rule,
        },
        e => e,
    }
}

/// Free a replaced group. A large one (tens of milliseconds of frees for
/// tens of thousands of rules) is freed on a thread of its own, so the
/// update returns once the new group is in place; nothing on the datapath
/// can still reach it (the port's policy no longer holds it).
fn retire(group: Arc<crate::policy::CompiledGroup>) {
    if group.rules.len() < crate::policy::PARALLEL_PREPARE_MIN || Arc::strong_count(&group) > 1 {
        return;
    }
    // If no thread can be had, the closure (and the group) is dropped here.
    let _ = std::thread::Builder::new()
        .name("strata-retire".into())
        .spawn(move || {
            // Off the critical path: a controller's next update is usually
            // building its classifier on the other cores meanwhile.
            crate::hint::background_priority();
            drop(group)
        });
}

/// The groups of `layer` with `g` in place of its namesake (or added).
pub(crate) fn with_others<'a>(
    layer: &'a LayerPolicy,
    g: &'a Group,
) -> impl Iterator<Item = &'a Group> + 'a {
    layer
        .groups()
        .iter()
        .filter(move |x| x.group.id != g.id)
        .map(|x| &x.group)
        .chain(std::iter::once(g))
}

/// Rule ids are unique across a layer's groups (counters are named by
/// them): the first id seen twice in `groups` is refused.
pub(crate) fn check_unique_rules<'a>(
    layer: &str,
    groups: impl Iterator<Item = &'a Group>,
) -> Result<(), ApiError> {
    let mut seen = hashbrown::HashSet::with_hasher(foldhash::fast::RandomState::default());
    for g in groups {
        for r in &g.rules {
            if !seen.insert(r.id.as_str()) {
                return Err(ApiError::DuplicateRule {
                    layer: layer.to_string(),
                    rule: r.id.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Is `r` a meter rule (whose buckets a reservation makes room for)?
fn is_meter(r: &Rule) -> bool {
    matches!(r.action, ActionSpec::Meter { .. })
}

/// The meter rules of `g`.
fn meter_rules(g: &Group) -> usize {
    g.rules.iter().filter(|r| is_meter(r)).count()
}

/// What a group's installation calls for sizing on a reserved port (see
/// `Port::check_group_reservation`).
#[derive(Clone, Copy, Debug)]
struct GroupSizing {
    /// The layer's flow tables.
    table: bool,
    /// Room for meter buckets.
    meters: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::*;
    use crate::types::secs;
    use std::net::Ipv4Addr;

    /// A batch's first packets are classified ahead through the layers
    /// that can be (here both: stateless, nothing transposes), while the
    /// frames of flows already made, and lone packets, are not.
    #[test]
    fn a_batchs_first_packets_are_classified_ahead() {
        let (mut p, _) = acl_layers_port(2, 2, 50, 16).expect("port");
        let mut bufs: Vec<PacketBuf> = (0..6).map(|i| PacketBuf::from_frame(&vm_udp(i))).collect();
        let mut out = vec![Verdict::Forward; bufs.len()];
        // Flows 0 and 1 made first: their frames have candidates.
        p.process_batch(Direction::Out, &mut bufs[..2], secs(1), &mut out[..2]);
        let mut bufs: Vec<PacketBuf> = (0..6).map(|i| PacketBuf::from_frame(&vm_udp(i))).collect();
        p.process_batch(Direction::Out, &mut bufs, secs(1), &mut out);
        let ahead: Vec<u32> = (0..6).map(|j| p.burst.results(j).steps_ahead()).collect();
        assert_eq!(ahead, [0, 0, 0b11, 0b11, 0b11, 0b11]);
        assert_eq!(p.direction_counters(Direction::Out).slow_path, 6);
        // One at a time: nothing classified ahead (the scratch untouched).
        p.process(
            Direction::Out,
            &mut PacketBuf::from_frame(&vm_udp(9)),
            secs(1),
        );
        assert_eq!(p.burst.results(2).steps_ahead(), 0b11);
    }

    fn vm_udp(sp: u16) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2(VM_MAC.0, VM_GW_MAC.0)
            .ipv4(VM_CA.octets(), Ipv4Addr::new(10, 1, 0, 9).octets(), 64)
            .udp(sp, 53);
        let mut out = Vec::new();
        b.write(&mut out, b"q").expect("frame");
        out
    }

    fn stamps(p: &mut Port) -> (Vec<u32>, Vec<u32>) {
        let uf = p.uft.flows_mut().map(|uf| uf.generation).collect();
        let lf = p
            .layer_flows
            .iter_mut()
            .flat_map(|(_, t)| t.flows_mut().map(|f| f.layer_generation))
            .collect();
        (uf, lf)
    }

    /// Which layers may transpose (where a first packet's walk stops
    /// hashing ahead): the meter and the ACL only count and decide; SLB
    /// NAT and VNET encap rewrite. A custom action says so by default.
    #[test]
    fn layers_that_may_transpose() {
        let p = four_layer_port(PortConfig::default(), 10).expect("port");
        let of = |id: &str| p.policy().layer(id).map(|l| l.may_transpose());
        assert_eq!(of("meter"), Some(false));
        assert_eq!(of("acl"), Some(false));
        assert_eq!(of("slb"), Some(true));
        assert_eq!(of("vnet"), Some(true));
        // By position (meter, acl, slb, vnet): ACL and SLB keep state.
        let shape = |p: &Port| p.policy().shape();
        assert_eq!(
            shape(&p),
            crate::policy::LayerShape {
                stateful: 0b0110,
                transposing: 0b1100
            }
        );
        // A changed policy is worked out anew (meter, acl, vnet).
        let mut p = p;
        p.remove_layer("slb").expect("remove");
        assert_eq!(
            shape(&p),
            crate::policy::LayerShape {
                stateful: 0b010,
                transposing: 0b100
            }
        );
        // A custom action that does not say is taken to transpose.
        #[derive(Debug)]
        struct Quiet;
        impl crate::action::Action for Quiet {
            fn process(&self, _: &mut crate::action::ActionCx<'_>) -> crate::action::ActionOutput {
                crate::action::ActionOutput::allow(Transposition::IDENTITY)
            }
        }
        assert!(crate::action::Action::may_transpose(&Quiet));
    }

    /// Flows keep only the low half of the generation they were compiled
    /// at. When it wraps, every flow is marked stale once, so a stamp that
    /// comes round again 2^32 generations later is not mistaken for
    /// current.
    #[test]
    fn generation_stamps_wrap_safely() {
        let mut p = four_layer_port(PortConfig::default(), 0).expect("port");
        install_mappings(&mut p, 4).expect("mappings");
        let frame = vm_udp(5000);
        let send = |p: &mut Port, now| {
            let mut b = PacketBuf::from_frame(&frame);
            assert!(p.process(Direction::Out, &mut b, now).is_forward());
        };
        send(&mut p, secs(1));
        let compiled = p.stamp();
        let (uf, lf) = stamps(&mut p);
        assert!(!uf.is_empty() && !lf.is_empty());
        assert!(uf.iter().all(|&s| s == compiled));

        // The low half wraps: stamp 0 is skipped and every flow swept to 0.
        p.generation = u64::from(u32::MAX);
        p.bump();
        assert_eq!(p.generation, (1 << 32) + 1);
        let (uf, lf) = stamps(&mut p);
        assert!(uf.iter().chain(&lf).all(|&s| s == 0));

        // 2^32 changes after compilation the old stamp value is current
        // again; the flow must still be re-simulated.
        p.generation = (1 << 32) + u64::from(compiled);
        let before = p.direction_counters(Direction::Out).reconciled;
        send(&mut p, secs(2));
        assert_eq!(p.direction_counters(Direction::Out).reconciled, before + 1);
        send(&mut p, secs(3));
        assert_eq!(p.direction_counters(Direction::Out).reconciled, before + 1);
    }
}
