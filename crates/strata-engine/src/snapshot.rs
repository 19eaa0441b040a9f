//! State save/restore (VFP-20): a port — policy, layer flows, unified flows,
//! TCP state, resources, counters — as bytes, and back.
//!
//! Format: a [`Envelope`] (magic, format version, payload) encoded with
//! postcard; the payload is the version's state struct, also postcard. A
//! reader refuses unknown magic or versions with a clear error instead of
//! misreading. Indexes are not stored; they are rebuilt on restore, and
//! layers are recompiled from their specs through the receiving port's
//! action registry (custom actions must be registered there too).

use crate::action::ActionRegistry;
use crate::counters::{CounterName, IcmpErrorCounters, PortCounters};
use crate::error::ApiError;
use crate::flow_table::{LayerFlowTable, UnifiedFlowTable};
use crate::policy::{LayerPolicy, LayerSpec, PortConfig, PortPolicy};
use crate::port::{FragmentState, Port};
use crate::resource::{EventSink, Resources};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const MAGIC: [u8; 8] = *b"STRATASR";
/// Format version: 2 since flow keys are stored packed
/// ([`strata_packet::PackedUfid`]); 3 since unified flows share interned
/// actions and 32-bit generation stamps and layer flows share their
/// connection's keys; 4 since counter-slot lists are interned apart from
/// flow actions; 5 since counter slots are retired and freed (the
/// arena stores its free list and retired slots); 6 since unified flow keys
/// name header contexts the flow table stores once; 7 since the port's
/// reservation ([`Port::reserve`]) is kept, so a restored port is sized
/// again before its first packet; 8 since the layer flows waiting for a
/// key another flow holds are kept (`LayerFlowTable::shadowed`), so a
/// restored table indexes exactly the flows the saved one did; 9 since
/// the port's ICMP error counters are kept; 10 since the port's IP
/// fragment tracking is (the datagrams whose first fragment passed, the
/// later fragments held for theirs, the fragment counters and drops).
///
/// A build reads its own version and the four before ([`OLDEST_READ`]):
/// a port saved by an earlier release restores across an upgrade (a
/// version 6 snapshot restores without a reservation; versions 6 and 7
/// name no waiting flows; versions 6 to 8 restore with ICMP error counters
/// at zero, versions 6 to 9 with no fragment tracked and its counters at
/// zero). Older snapshots are refused with a clear error.
pub const VERSION: u32 = 10;

/// The oldest format version [`Port::restore`] reads.
pub const OLDEST_READ: u32 = 6;

#[derive(Serialize, Deserialize)]
pub struct Envelope {
    pub magic: [u8; 8],
    pub version: u32,
    pub payload: Vec<u8>,
}

/// [`Envelope`] read in place: the payload borrowed from the snapshot's
/// bytes, not copied (postcard writes a byte sequence and a byte string
/// alike: its length, then the bytes).
#[derive(Deserialize)]
struct EnvelopeRef<'a> {
    magic: [u8; 8],
    version: u32,
    #[serde(borrow)]
    payload: &'a [u8],
}

#[derive(Serialize, Deserialize)]
struct LayerState {
    uid: u32,
    generation: u64,
    /// The layer spec as JSON: specs use internally tagged enums (the
    /// friendly API shape), which postcard cannot decode.
    spec_json: String,
}

/// The port's state in format version 10: version 9's, then the
/// fragment tracking (postcard writes a struct's fields in order, so a
/// version 9 payload is a [`PortState9`], a version 8 one a
/// [`PortState8`], a version 7 one a [`PortState7`] and a version 6 one a
/// [`PortCore`] alone).
#[derive(Serialize, Deserialize)]
struct PortState {
    core: PortCore,
    reserved_connections: u64,
    /// `(layer uid, entries)` for the tables with any, ascending.
    shadowed: Vec<(u32, Vec<u32>)>,
    icmp_errors: IcmpErrorCounters,
    fragments: FragmentState,
}

/// The port's state in format version 9: version 8's, then the ICMP
/// error counters.
#[derive(Serialize, Deserialize)]
struct PortState9 {
    core: PortCore,
    reserved_connections: u64,
    shadowed: Vec<(u32, Vec<u32>)>,
    icmp_errors: IcmpErrorCounters,
}

/// The port's state in format version 8: version 7's, then each layer
/// table's shadowed index entries.
#[derive(Serialize, Deserialize)]
struct PortState8 {
    core: PortCore,
    reserved_connections: u64,
    shadowed: Vec<(u32, Vec<u32>)>,
}

/// The port's state in format version 7: version 6's, then the reservation.
#[derive(Serialize, Deserialize)]
struct PortState7 {
    core: PortCore,
    reserved_connections: u64,
}

/// [`PortState`] borrowed from a live port, to serialize without copying
/// its tables (the same bytes: serde writes a reference as its target).
#[derive(Serialize)]
struct PortStateRef<'a> {
    core: PortCoreRef<'a>,
    reserved_connections: u64,
    shadowed: Vec<(u32, &'a [u32])>,
    icmp_errors: IcmpErrorCounters,
    fragments: FragmentState,
}

/// [`PortCore`] borrowed (see [`PortStateRef`]).
#[derive(Serialize)]
struct PortCoreRef<'a> {
    name: &'a str,
    config: &'a PortConfig,
    generation: u64,
    next_layer_uid: u32,
    layers: Vec<LayerState>,
    resources: &'a Resources,
    layer_flows: Vec<(u32, &'a LayerFlowTable)>,
    uft: &'a UnifiedFlowTable,
    counters: &'a PortCounters,
}

/// The port's state in format version 6 (the core of every later one).
#[derive(Serialize, Deserialize)]
struct PortCore {
    name: String,
    config: PortConfig,
    generation: u64,
    next_layer_uid: u32,
    layers: Vec<LayerState>,
    resources: Resources,
    layer_flows: Vec<(u32, LayerFlowTable)>,
    uft: UnifiedFlowTable,
    counters: PortCounters,
}

impl Port {
    /// Serialize the whole port.
    ///
    /// The tables are written from where they are (not copied first), into
    /// one buffer sized for the snapshot: taking one costs the memory of
    /// its bytes and little more, which a port near its cgroup's limit may
    /// have when a copy of its tables would not fit.
    pub fn snapshot(&self) -> Result<Vec<u8>, ApiError> {
        let core = PortCoreRef {
            name: &self.name,
            config: &self.config,
            generation: self.generation,
            next_layer_uid: self.next_layer_uid,
            layers: self
                .policy
                .layers
                .iter()
                .map(|l| {
                    Ok(LayerState {
                        uid: l.uid,
                        generation: l.generation,
                        spec_json: serde_json::to_string(&l.spec())
                            .map_err(|e| ApiError::Snapshot(e.to_string()))?,
                    })
                })
                .collect::<Result<_, ApiError>>()?,
            resources: &self.resources,
            layer_flows: self.layer_flows.iter().map(|(uid, t)| (*uid, t)).collect(),
            uft: &self.uft,
            counters: &self.counters,
        };
        let state = PortStateRef {
            core,
            reserved_connections: self.reserved as u64,
            shadowed: self
                .layer_flows
                .iter()
                .filter(|(_, t)| !t.shadowed().is_empty())
                .map(|(uid, t)| (*uid, t.shadowed()))
                .collect(),
            icmp_errors: self.counters.icmp_errors,
            fragments: self.fragment_state(),
        };
        let err = |e: postcard::Error| ApiError::Snapshot(e.to_string());
        // An [`Envelope`] written in place: its magic, version and
        // payload length (a varint, as postcard writes a sequence's), then
        // the payload. Sized first, so the buffer never grows (copying).
        let len = postcard::experimental::serialized_size(&state).map_err(err)?;
        let head = (MAGIC, VERSION, len as u64);
        let size = postcard::experimental::serialized_size(&head).map_err(err)? + len;
        let out = postcard::to_extend(&head, Vec::with_capacity(size)).map_err(err)?;
        let out = postcard::to_extend(&state, out).map_err(err)?;
        debug_assert_eq!(out.len(), size);
        Ok(out)
    }

    /// Rebuild a port from [`Port::snapshot`] bytes.
    pub fn restore(bytes: &[u8], registry: ActionRegistry) -> Result<Port, ApiError> {
        let env: EnvelopeRef = postcard::from_bytes(bytes)
            .map_err(|e| ApiError::Snapshot(format!("bad envelope: {e}")))?;
        if env.magic != MAGIC {
            return Err(ApiError::Snapshot(
                "not a Strata port snapshot (bad magic)".into(),
            ));
        }
        let bad_payload = |e: postcard::Error| ApiError::Snapshot(format!("bad payload: {e}"));
        // Beyond `usize` is beyond any limit: `Port::reserve` below refuses
        // it with the other bad reservations.
        let reserved = |r: u64| usize::try_from(r).unwrap_or(usize::MAX);
        let none = IcmpErrorCounters::default();
        let (st, reserved, mut shadowed, icmp_errors, fragments) = match env.version {
            VERSION => {
                let st: PortState = postcard::from_bytes(env.payload).map_err(bad_payload)?;
                let r = reserved(st.reserved_connections);
                (st.core, r, st.shadowed, st.icmp_errors, st.fragments)
            }
            9 => {
                let st: PortState9 = postcard::from_bytes(env.payload).map_err(bad_payload)?;
                let r = reserved(st.reserved_connections);
                (st.core, r, st.shadowed, st.icmp_errors, Default::default())
            }
            8 => {
                let st: PortState8 = postcard::from_bytes(env.payload).map_err(bad_payload)?;
                let r = reserved(st.reserved_connections);
                (st.core, r, st.shadowed, none, Default::default())
            }
            7 => {
                let st: PortState7 = postcard::from_bytes(env.payload).map_err(bad_payload)?;
                let r = reserved(st.reserved_connections);
                (st.core, r, Vec::new(), none, Default::default())
            }
            OLDEST_READ => (
                postcard::from_bytes::<PortCore>(env.payload).map_err(bad_payload)?,
                0,
                Vec::new(),
                none,
                Default::default(),
            ),
            v => {
                return Err(ApiError::Snapshot(format!(
                    "snapshot format version {v} is not supported (this build reads \
                     {OLDEST_READ} to {VERSION})"
                )));
            }
        };
        let mut counters = st.counters;
        counters.icmp_errors = icmp_errors;
        counters
            .arena
            .validate()
            .map_err(|e| ApiError::Snapshot(format!("bad counters: {e}")))?;
        counters.arena.reindex();
        let mut layers = Vec::with_capacity(st.layers.len());
        for l in st.layers {
            let spec: LayerSpec = serde_json::from_str(&l.spec_json)
                .map_err(|e| ApiError::Snapshot(format!("bad layer spec: {e}")))?;
            let (uid, generation) = (l.uid, l.generation);
            let counter = counters.arena.slot(CounterName::Layer {
                layer: spec.id.as_str().into(),
            });
            let mut groups = Vec::with_capacity(spec.groups.len());
            for g in spec.groups {
                let mut cg = g.prepare(&registry)?.0;
                for (r, c) in cg.group.rules.iter().zip(cg.rules.iter_mut()) {
                    let slot = counters.arena.slot(CounterName::Rule {
                        layer: spec.id.as_str().into(),
                        rule: r.id.as_str().into(),
                    });
                    c.set_counter(slot);
                }
                groups.push(Arc::new(cg));
            }
            layers.push(Arc::new(
                LayerPolicy::new(
                    spec.id,
                    uid,
                    spec.default_out,
                    spec.default_in,
                    generation,
                    counter,
                )
                .with_groups(groups),
            ));
        }
        for (name, pool) in &st.resources.port_pools {
            pool.check()
                .map_err(|e| ApiError::Snapshot(format!("bad port pool {name}: {e}")))?;
        }
        let mut uft = st.uft;
        uft.rebuild()
            .map_err(|e| ApiError::Snapshot(format!("bad flow table: {e}")))?;
        let mut layer_flows = st.layer_flows;
        for (uid, t) in &mut layer_flows {
            let bad = |e| ApiError::Snapshot(format!("bad flow table of layer {uid}: {e}"));
            t.check().map_err(bad)?;
            let waiting = shadowed
                .iter()
                .position(|(u, _)| u == uid)
                .map(|i| shadowed.swap_remove(i).1)
                .unwrap_or_default();
            t.reindex(&uft, waiting).map_err(bad)?;
        }
        if let Some((uid, _)) = shadowed.first() {
            return Err(ApiError::Snapshot(format!(
                "shadowed entries for layer {uid} match no flow table (or it twice)"
            )));
        }
        // In policy order (the port looks there first).
        layer_flows.sort_by_key(|(uid, _)| layers.iter().position(|l| l.uid == *uid));
        let mut port = Port {
            name: st.name,
            config: st.config,
            policy: Arc::new(PortPolicy::new(layers)),
            generation: st.generation,
            next_layer_uid: st.next_layer_uid,
            registry,
            resources: st.resources,
            events: EventSink::default(),
            layer_flows,
            flow_layers: u64::MAX,
            uft,
            counters,
            flow_actions: Default::default(),
            batch: Vec::new(),
            burst: Default::default(),
            sweep: Default::default(),
            reserved: 0,
            fragments: Default::default(),
        };
        port.reintern_actions();
        port.reshare_rules();
        port.refresh_flow_layers();
        port.check_layer_flow_holders()
            .map_err(|e| ApiError::Snapshot(format!("bad layer flows: {e}")))?;
        port.restore_fragments(fragments)
            .map_err(|e| ApiError::Snapshot(format!("bad fragment state: {e}")))?;
        // Sized again as it was (every page written now, before traffic).
        if reserved > 0 {
            port.reserve(reserved)
                .map_err(|e| ApiError::Snapshot(format!("bad reservation: {e}")))?;
        }
        Ok(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{four_layer_port, install_mappings};
    use crate::types::{Direction, secs};
    use strata_packet::PacketBuf;

    /// A SYN from the VM to VNET peer 10.1.0.`y`, port `sp`.
    fn syn(y: u8, sp: u16) -> Vec<u8> {
        syn_to([10, 1, 0, y], sp)
    }

    /// A SYN from the VM to `dst`, port `sp`.
    fn syn_to(dst: [u8; 4], sp: u16) -> Vec<u8> {
        use etherparse::PacketBuilder;
        let mut out = Vec::new();
        PacketBuilder::ethernet2(crate::scenario::VM_MAC.0, crate::scenario::GW_MAC.0)
            .ipv4([10, 1, 0, 4], dst, 64)
            .tcp(sp, 80, 1, 1024)
            .syn()
            .write(&mut out, &[])
            .expect("frame");
        out
    }

    /// A port with live connections in its tables and one freed slot in
    /// each, saved after `forge` changed its state.
    fn forged(forge: impl FnOnce(&mut PortState)) -> Vec<u8> {
        let mut p = four_layer_port(PortConfig::default(), 0).expect("port");
        install_mappings(&mut p, 1).expect("mappings");
        for (y, sp) in [(1, 1000), (2, 1001), (3, 1002)] {
            let mut b = PacketBuf::from_frame(&syn(y, sp));
            assert!(p.process(Direction::Out, &mut b, secs(1)).is_forward());
        }
        // The connections' ACL flows leave with them; later ones come back.
        p.expire(secs(100_000));
        for (y, sp) in [(1, 2000), (2, 2001)] {
            let mut b = PacketBuf::from_frame(&syn(y, sp));
            assert!(
                p.process(Direction::Out, &mut b, secs(100_001))
                    .is_forward()
            );
        }
        let bytes = p.snapshot().expect("snapshot");
        let env: EnvelopeRef = postcard::from_bytes(&bytes).expect("envelope");
        let mut st: PortState = postcard::from_bytes(env.payload).expect("payload");
        forge(&mut st);
        let payload = postcard::to_stdvec(&st).expect("payload");
        postcard::to_stdvec(&Envelope {
            magic: MAGIC,
            version: VERSION,
            payload,
        })
        .expect("envelope")
    }

    /// Restore `bytes` (`Err`: refused, with the reason); if the port
    /// comes back, run new connections through it (a bad free list is only
    /// read when a flow is made) and check its flow state.
    fn restore_and_use(bytes: &[u8]) -> Result<Result<(), String>, String> {
        let mut p = Port::restore(bytes, ActionRegistry::default()).map_err(|e| e.to_string())?;
        for sp in 3000..3010 {
            let mut b = PacketBuf::from_frame(&syn(5, sp));
            p.process(Direction::Out, &mut b, secs(100_002));
        }
        Ok(p.verify_flow_state())
    }

    /// A change made to a saved port's state.
    type Forge = dyn Fn(&mut PortState);

    /// The port's SNAT pool.
    fn snat(st: &mut PortState) -> &mut crate::resource::PortPool {
        st.core
            .resources
            .port_pools
            .values_mut()
            .next()
            .expect("a SNAT pool")
    }

    #[test]
    fn damaged_free_lists_pools_and_holder_counts_are_refused_on_restore() {
        assert_eq!(restore_and_use(&forged(|_| {})), Ok(Ok(())));
        let acl = |st: &mut PortState| -> usize {
            st.core
                .layer_flows
                .iter()
                .position(|(_, t)| !t.is_empty())
                .expect("a layer with flows")
        };
        let cases: [(&str, Box<Forge>); 11] = [
            (
                "a SNAT port neither free nor in use",
                Box::new(|st| {
                    snat(st).free_mut().pop_back();
                }),
            ),
            (
                "a layer flow's holders miscounted",
                Box::new(move |st| {
                    let i = acl(st);
                    let t = &mut st.core.layer_flows[i].1;
                    let live = t.iter().next().map(|(s, _)| s).expect("a flow");
                    t.get_mut(live).expect("held").refs += 1;
                }),
            ),
            (
                "a layer flow gone from under its connection",
                Box::new(move |st| {
                    let i = acl(st);
                    let PortCore {
                        uft, layer_flows, ..
                    } = &mut st.core;
                    let t = &mut layer_flows[i].1;
                    let live = t.iter().next().map(|(s, _)| s).expect("a flow");
                    assert!(t.release(live, uft).is_some(), "its only holder");
                }),
            ),
            (
                "a SNAT port twice",
                Box::new(move |st| {
                    let f = snat(st).free_mut();
                    let first = *f.front().expect("a free port");
                    f.push_back(first);
                }),
            ),
            (
                "a SNAT port outside its ranges",
                Box::new(move |st| {
                    snat(st).free_mut().push_back(7);
                }),
            ),
            (
                "past the connections",
                Box::new(|st| st.core.uft.free_list_mut().push(1 << 20)),
            ),
            (
                "a live connection",
                Box::new(|st| {
                    let live = *st.core.uft.ids().first().expect("a connection");
                    st.core.uft.free_list_mut().push(live);
                }),
            ),
            (
                "a connection twice",
                Box::new(|st| {
                    let f = st.core.uft.free_list_mut();
                    let first = *f.first().expect("a freed slot");
                    f.push(first);
                }),
            ),
            (
                "past the layer flows",
                Box::new(move |st| {
                    let i = acl(st);
                    st.core.layer_flows[i].1.free_list_mut().push(1 << 20);
                }),
            ),
            (
                "a live layer flow",
                Box::new(move |st| {
                    let i = acl(st);
                    let t = &mut st.core.layer_flows[i].1;
                    let live = t.iter().next().map(|(s, _)| s).expect("a flow");
                    t.free_list_mut().push(live);
                }),
            ),
            (
                "a layer flow twice",
                Box::new(move |st| {
                    let i = acl(st);
                    let f = st.core.layer_flows[i].1.free_list_mut();
                    let first = *f.first().expect("a freed slot");
                    f.push(first);
                }),
            ),
        ];
        for (what, forge) in cases {
            let bytes = forged(|st| forge(st));
            let outcome = std::panic::catch_unwind(|| restore_and_use(&bytes));
            match outcome {
                Ok(Err(e)) => assert!(
                    ["free", "port ", "hold"].iter().any(|w| e.contains(w)),
                    "{what}: {e}"
                ),
                Ok(Ok(state)) => panic!("{what}: restored and used ({state:?})"),
                Err(_) => panic!("{what}: the port panicked"),
            }
        }
    }

    /// A saved entry said to wait for a key no flow holds (damaged) takes
    /// the key on restore, rather than leave its flow unfound.
    #[test]
    fn a_flow_said_to_wait_for_a_free_key_takes_it_on_restore() {
        let mut p = four_layer_port(PortConfig::default(), 0).expect("port");
        install_mappings(&mut p, 1).expect("mappings");
        // To the internet: SNAT'd, a NAT flow of two entries.
        let syn = syn_to([93, 184, 216, 34], 4000);
        let mut b = PacketBuf::from_frame(&syn);
        assert!(p.process(Direction::Out, &mut b, secs(1)).is_forward());
        let bytes = p.snapshot().expect("snapshot");
        let env: EnvelopeRef = postcard::from_bytes(&bytes).expect("envelope");
        let mut st: PortState = postcard::from_bytes(env.payload).expect("payload");
        let (uid, slot) = st
            .core
            .layer_flows
            .iter()
            .find_map(|(uid, t)| Some((*uid, t.iter().find(|(_, f)| !f.one_entry)?.0)))
            .expect("a NAT flow");
        st.shadowed = vec![(uid, vec![slot << 1 | 1])];
        let forged = postcard::to_stdvec(&Envelope {
            magic: MAGIC,
            version: VERSION,
            payload: postcard::to_stdvec(&st).expect("payload"),
        })
        .expect("envelope");
        let q = Port::restore(&forged, ActionRegistry::default()).expect("restores");
        q.verify_flow_state()
            .expect("every flow found under its keys");
        assert!(q.layer_flows.iter().all(|(_, t)| t.shadowed().is_empty()));
        assert_eq!(q.snapshot().expect("snapshot"), bytes, "as saved");
    }

    /// The list of layer flows waiting for a key (`shadowed`) can only
    /// name sides of attached flows of existing tables, in order.
    #[test]
    fn damaged_lists_of_waiting_flows_are_refused_on_restore() {
        // A live flow (the ACL's: one entry for both its keys).
        let table = |st: &PortState| -> (u32, u32) {
            st.core
                .layer_flows
                .iter()
                .find_map(|(uid, t)| Some((*uid, t.iter().next()?.0)))
                .expect("a flow")
        };
        let cases: [(&str, Box<Forge>); 5] = [
            (
                "a flow of one entry, which holds both its keys",
                Box::new(move |st| {
                    let (uid, live) = table(st);
                    st.shadowed = vec![(uid, vec![live << 1 | 1])];
                }),
            ),
            (
                "an empty slot",
                Box::new(move |st| {
                    let (uid, _) = table(st);
                    st.shadowed = vec![(uid, vec![1 << 20])];
                }),
            ),
            (
                "out of order",
                Box::new(move |st| {
                    let (uid, live) = table(st);
                    st.shadowed = vec![(uid, vec![live << 1 | 1, live << 1])];
                }),
            ),
            (
                "a layer without flows",
                Box::new(move |st| {
                    let (_, live) = table(st);
                    st.shadowed = vec![(9999, vec![live << 1])];
                }),
            ),
            (
                "a table twice",
                Box::new(move |st| {
                    let (uid, live) = table(st);
                    st.shadowed = vec![(uid, vec![]), (uid, vec![live << 1])];
                }),
            ),
        ];
        for (what, forge) in cases {
            let bytes = forged(|st| forge(st));
            let outcome = std::panic::catch_unwind(|| restore_and_use(&bytes));
            match outcome {
                Ok(Err(e)) => assert!(e.contains("shadowed"), "{what}: {e}"),
                Ok(Ok(state)) => panic!("{what}: restored and used ({state:?})"),
                Err(_) => panic!("{what}: the port panicked"),
            }
        }
    }
}
