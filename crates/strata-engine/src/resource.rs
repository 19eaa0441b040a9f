//! Resources (VFP-7): shared objects that rules refer to by name.
//!
//! - [`MappingTable`]: CA → PA mappings for VNET encap (tenant IP → physical
//!   IP, MAC, VNI). A miss raises a [`ResourceEvent::MappingMiss`] on the
//!   port's event channel (the VL2 directory "pull" model) and the packet is
//!   dropped with `mapping-miss`; the agent installs the answer, which bumps
//!   the port generation so the cached drop flow reconciles on the next
//!   packet. Dropping (not holding) keeps the engine free of packet queues;
//!   the sender's retransmission after the agent's answer gets through.
//! - [`PortPool`]: a range list of SNAT ports on one public IP. Ports go back
//!   to the *end* of the free list when the connection ends (after TIME_WAIT
//!   for TCP), so a just-freed port is the last to be reused.
//! - [`BackendPool`]: the DIPs of a load-balanced VIP.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use hashbrown::{HashMap, HashSet};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use strata_packet::flow::{MacAddr, TunnelKind};
use strata_packet::transposition::Encap;

use crate::error::ApiError;

/// One CA → PA mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mapping {
    /// Physical address of the host holding the CA.
    pub pa: IpAddr,
    /// MAC to use as the outer destination (next hop) for that PA.
    pub pa_mac: MacAddr,
    /// Inner destination MAC (the remote VNIC's MAC).
    pub ca_mac: MacAddr,
    pub vni: u32,
    pub tunnel: TunnelKind,
}

/// A CA → PA mapping table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingTable {
    #[serde(serialize_with = "sorted_map")]
    entries: HashMap<IpAddr, MappingEntry>,
}

/// A hash map written in key order (read back as any map): a snapshot of
/// the same state is the same bytes, whatever the map's seed or history,
/// so saves can be compared and checksummed (a live migration's, say).
fn sorted_map<K, V, S>(m: &HashMap<K, V>, s: S) -> Result<S::Ok, S::Error>
where
    K: Ord + Serialize,
    V: Serialize,
    S: serde::Serializer,
{
    let mut entries: Vec<(&K, &V)> = m.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    s.collect_map(entries)
}

/// A hash set written in order (see [`sorted_map`]).
fn sorted_set<T, S>(set: &HashSet<T>, s: S) -> Result<S::Ok, S::Error>
where
    T: Ord + Serialize,
    S: serde::Serializer,
{
    let mut items: Vec<&T> = set.iter().collect();
    items.sort_unstable();
    s.collect_seq(items)
}

/// One CA's mapping, with the outer header built from it: every flow to
/// that CA points at one shared [`Encap`] instead of a copy each. The
/// header is not part of the entry's value (equality, snapshots): it is
/// rebuilt on demand, and replacing the mapping replaces it.
#[derive(Clone, Debug)]
pub struct MappingEntry {
    mapping: Mapping,
    encap: Option<Arc<Encap>>,
}

impl MappingEntry {
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// The outer header from `local_mac` / `local_pa` to this mapping's
    /// PA, shared: built the first time, and again only when asked for
    /// from another local side. The caller checks the address families.
    pub fn encap_from(&mut self, local_mac: MacAddr, local_pa: IpAddr) -> Arc<Encap> {
        match &self.encap {
            Some(e) if e.src_mac == local_mac && e.src_ip == local_pa => e.clone(),
            _ => {
                let m = &self.mapping;
                let e = Arc::new(Encap::new(
                    m.tunnel, m.vni, local_mac, m.pa_mac, local_pa, m.pa,
                ));
                self.encap = Some(e.clone());
                e
            }
        }
    }
}

impl PartialEq for MappingEntry {
    fn eq(&self, other: &Self) -> bool {
        self.mapping == other.mapping
    }
}

impl Eq for MappingEntry {}

// Serialized as the bare mapping: the snapshot format is unchanged.
impl Serialize for MappingEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.mapping.serialize(s)
    }
}

impl<'de> Deserialize<'de> for MappingEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Mapping::deserialize(d).map(|mapping| MappingEntry {
            mapping,
            encap: None,
        })
    }
}

impl MappingTable {
    pub fn get(&self, ca: &IpAddr) -> Option<&Mapping> {
        self.entries.get(ca).map(|e| &e.mapping)
    }

    /// `ca`'s entry, for the shared outer header it holds
    /// ([`MappingEntry::encap_from`]).
    pub fn entry_mut(&mut self, ca: &IpAddr) -> Option<&mut MappingEntry> {
        self.entries.get_mut(ca)
    }

    pub fn insert(&mut self, ca: IpAddr, m: Mapping) {
        self.entries.insert(
            ca,
            MappingEntry {
                mapping: m,
                encap: None,
            },
        );
    }

    pub fn remove(&mut self, ca: &IpAddr) -> Option<Mapping> {
        self.entries.remove(ca).map(|e| e.mapping)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&IpAddr, &Mapping)> {
        self.entries.iter().map(|(ca, e)| (ca, &e.mapping))
    }
}

/// A pool of SNAT ports on one public address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortPool {
    pub ip: IpAddr,
    /// The configured ranges (inclusive).
    pub ranges: Vec<(u16, u16)>,
    free: VecDeque<u16>,
    #[serde(serialize_with = "sorted_set")]
    in_use: HashSet<u16>,
}

impl PortPool {
    pub fn new(ip: IpAddr, ranges: Vec<(u16, u16)>) -> Result<PortPool, String> {
        if ranges.is_empty() {
            return Err("a port pool needs at least one range".into());
        }
        let mut free = VecDeque::new();
        let mut seen = HashSet::new();
        for &(lo, hi) in &ranges {
            if lo == 0 || lo > hi {
                return Err(format!("bad port range {lo}-{hi}"));
            }
            for p in lo..=hi {
                if !seen.insert(p) {
                    return Err(format!("port {p} appears in two ranges"));
                }
                free.push_back(p);
            }
        }
        Ok(PortPool {
            ip,
            ranges,
            free,
            in_use: HashSet::new(),
        })
    }

    /// Take the least recently freed port.
    pub fn allocate(&mut self) -> Option<u16> {
        let p = self.free.pop_front()?;
        self.in_use.insert(p);
        Some(p)
    }

    /// The port `allocate` would return, without taking it (dry runs).
    pub fn peek(&self) -> Option<u16> {
        self.free.front().copied()
    }

    /// Return a port; ports not taken from this pool are ignored.
    pub fn release(&mut self, port: u16) {
        if self.in_use.remove(&port) {
            self.free.push_back(port);
        }
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    /// Room in the in-use set for every port of the pool (`Port::reserve`:
    /// the set then never doubles, re-hashing its ports, inside a packet).
    pub fn reserve_all(&mut self) {
        self.in_use.reserve(self.free.len());
    }

    /// Heap bytes [`PortPool::reserve_all`] holds for a pool of `ports`.
    pub fn reserve_bytes(ports: usize) -> usize {
        crate::counters::hash_table_bytes(ports, size_of::<u16>())
    }

    /// Ports in the pool, taken or not.
    pub fn size(&self) -> usize {
        self.free.len() + self.in_use.len()
    }

    /// Whether a pool read from a snapshot is one this build can use: its
    /// ranges valid, and each of their ports either free or in use, once.
    /// (A port listed twice would be given to two connections, whose
    /// replies would then meet on one public address and port.)
    pub fn check(&self) -> Result<(), String> {
        let all: HashSet<u16> = PortPool::new(self.ip, self.ranges.clone())?
            .free
            .into_iter()
            .collect();
        let mut seen = HashSet::with_capacity(all.len());
        for &p in self.free.iter().chain(&self.in_use) {
            if !all.contains(&p) {
                return Err(format!("port {p} is outside the pool's ranges"));
            }
            if !seen.insert(p) {
                return Err(format!("port {p} is listed twice"));
            }
        }
        if seen.len() != all.len() {
            return Err(format!(
                "{} ports of the ranges are neither free nor in use",
                all.len() - seen.len()
            ));
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn free_mut(&mut self) -> &mut VecDeque<u16> {
        &mut self.free
    }
}

/// One backend of a load-balanced service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Backend {
    pub ip: IpAddr,
    /// Backend port; `None` keeps the VIP's port.
    pub port: Option<u16>,
}

/// The DIPs behind a VIP. Selection hashes the connection's 5-tuple, and the
/// stateful NAT layer flow then pins the choice (connection affinity), so
/// changing the pool moves only new connections.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendPool {
    pub backends: Vec<Backend>,
}

/// Every resource of a port, by name.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Resources {
    pub mappings: BTreeMap<String, MappingTable>,
    pub port_pools: BTreeMap<String, PortPool>,
    pub backend_pools: BTreeMap<String, BackendPool>,
}

impl Resources {
    fn exists(&self, name: &str) -> bool {
        self.mappings.contains_key(name)
            || self.port_pools.contains_key(name)
            || self.backend_pools.contains_key(name)
    }

    pub fn add_mapping_table(&mut self, name: &str) -> Result<(), ApiError> {
        crate::error::check_id(name)?;
        if self.exists(name) {
            return Err(ApiError::ResourceExists(name.into()));
        }
        self.mappings.insert(name.into(), MappingTable::default());
        Ok(())
    }

    pub fn add_port_pool(
        &mut self,
        name: &str,
        ip: IpAddr,
        ranges: Vec<(u16, u16)>,
    ) -> Result<(), ApiError> {
        crate::error::check_id(name)?;
        if self.exists(name) {
            return Err(ApiError::ResourceExists(name.into()));
        }
        let pool = PortPool::new(ip, ranges).map_err(|message| ApiError::InvalidResource {
            name: name.into(),
            message,
        })?;
        self.port_pools.insert(name.into(), pool);
        Ok(())
    }

    pub fn set_backend_pool(&mut self, name: &str, backends: Vec<Backend>) -> Result<(), ApiError> {
        crate::error::check_id(name)?;
        if self.mappings.contains_key(name) || self.port_pools.contains_key(name) {
            return Err(ApiError::ResourceExists(name.into()));
        }
        self.backend_pools
            .insert(name.into(), BackendPool { backends });
        Ok(())
    }

    pub fn mapping_mut(&mut self, name: &str) -> Result<&mut MappingTable, ApiError> {
        self.mappings
            .get_mut(name)
            .ok_or_else(|| ApiError::NoSuchResource(name.into()))
    }

    /// Return per-flow state taken from a resource.
    pub fn release(&mut self, state: &ActionState) {
        if let ActionState::SnatPort { pool, port, .. } = state
            && let Some(p) = self.port_pools.get_mut(&**pool)
        {
            p.release(*port);
        }
    }
}

/// Per-flow state an action took, kept in its layer flow and given back when
/// the flow ends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActionState {
    #[default]
    None,
    SnatPort {
        pool: std::sync::Arc<str>,
        ip: IpAddr,
        port: u16,
    },
    /// Opaque state of a custom action.
    Custom(Vec<u8>),
}

/// An asynchronous event for the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResourceEvent {
    /// A lookup in mapping table `table` found no entry for `key`.
    MappingMiss { table: String, key: IpAddr },
}

/// The sending side of a port's event channel. Bounded: when the agent is
/// not keeping up, events are counted as lost rather than queued without
/// limit; repeated misses for a key already reported are suppressed until
/// that table changes (remembering at most [`MAX_SUPPRESSED`] keys: a VM
/// spraying unmapped addresses while the agent reads every event but maps
/// none must not grow the port's memory).
#[derive(Debug)]
pub struct EventSink {
    tx: Sender<ResourceEvent>,
    rx: Receiver<ResourceEvent>,
    pending: HashSet<(String, IpAddr)>,
    pub lost: u64,
    pub sent: u64,
}

/// Most reported keys whose repeats are suppressed at once.
pub const MAX_SUPPRESSED: usize = 65_536;

impl Default for EventSink {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(4096);
        EventSink {
            tx,
            rx,
            pending: HashSet::new(),
            lost: 0,
            sent: 0,
        }
    }
}

impl EventSink {
    /// A receiver for the agent (all receivers share one queue).
    pub fn subscribe(&self) -> Receiver<ResourceEvent> {
        self.rx.clone()
    }

    pub fn mapping_miss(&mut self, table: &str, key: IpAddr) {
        if self.pending.len() >= MAX_SUPPRESSED {
            // Forget them all: at worst a key is reported again.
            self.pending.clear();
        }
        if !self.pending.insert((table.to_string(), key)) {
            return;
        }
        match self.tx.try_send(ResourceEvent::MappingMiss {
            table: table.to_string(),
            key,
        }) {
            Ok(()) => self.sent += 1,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.lost += 1;
                self.pending.remove(&(table.to_string(), key));
            }
        }
    }

    /// Forget suppressed misses of a table (it changed).
    pub fn table_changed(&mut self, table: &str) {
        self.pending.retain(|(t, _)| t != table);
    }
}

#[cfg(test)]
mod event_tests {
    use super::*;

    /// Repeats are suppressed; the suppression set stays bounded however
    /// many distinct keys miss, while an agent that keeps reading gets an
    /// event for every one of them.
    #[test]
    fn suppressed_misses_stay_bounded() {
        let mut sink = EventSink::default();
        let rx = sink.subscribe();
        let key = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        sink.mapping_miss("t", key(0));
        sink.mapping_miss("t", key(0));
        assert_eq!((sink.sent, rx.len()), (1, 1));
        rx.try_recv().expect("the first miss");
        let n = MAX_SUPPRESSED as u32 + 1000;
        for i in 1..n {
            sink.mapping_miss("t", key(i));
            assert!(sink.pending.len() <= MAX_SUPPRESSED);
            rx.try_recv().expect("one event per new key");
        }
        assert_eq!((sink.sent, sink.lost), (u64::from(n), 0));
        sink.mapping_miss("t", key(n - 1));
        assert!(rx.is_empty(), "a recent key is still suppressed");
    }
}

#[cfg(test)]
mod mapping_tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn mapping(pa: IpAddr) -> Mapping {
        Mapping {
            pa,
            pa_mac: MacAddr([2, 0, 0, 0, 0, 9]),
            ca_mac: MacAddr([2, 0, 0, 0, 0, 5]),
            vni: 77,
            tunnel: TunnelKind::Vxlan,
        }
    }

    /// Flows to one CA share one outer header, built from the mapping and
    /// the asking side; another local side, or a new mapping, gets its own.
    #[test]
    fn an_entry_shares_its_outer_header_until_it_changes() {
        let (ca, local) = (ip(10, 0, 0, 5), ip(192, 168, 0, 1));
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let mut t = MappingTable::default();
        t.insert(ca, mapping(ip(192, 168, 0, 7)));
        let entry = t.entry_mut(&ca).expect("entry");
        let a = entry.encap_from(mac, local);
        let b = entry.encap_from(mac, local);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(
            *a,
            Encap::new(
                TunnelKind::Vxlan,
                77,
                mac,
                MacAddr([2, 0, 0, 0, 0, 9]),
                local,
                ip(192, 168, 0, 7)
            )
        );
        let other = entry.encap_from(mac, ip(192, 168, 0, 2));
        assert_eq!(other.src_ip, ip(192, 168, 0, 2));
        assert!(!Arc::ptr_eq(&a, &other));

        // The CA moves: the next flow is sent to its new PA.
        t.insert(ca, mapping(ip(192, 168, 0, 8)));
        let moved = t.entry_mut(&ca).expect("entry").encap_from(mac, local);
        assert_eq!((moved.src_ip, moved.dst_ip), (local, ip(192, 168, 0, 8)));
        assert_eq!(a.dst_ip, ip(192, 168, 0, 7), "earlier flows keep theirs");
    }

    /// The cached header is not part of the table's value: equal tables
    /// compare equal, and a snapshot holds the bare mappings.
    #[test]
    fn the_cached_header_is_not_part_of_the_value() {
        let ca = ip(10, 0, 0, 5);
        let mut used = MappingTable::default();
        used.insert(ca, mapping(ip(192, 168, 0, 7)));
        let fresh = used.clone();
        used.entry_mut(&ca)
            .expect("entry")
            .encap_from(MacAddr([2; 6]), ip(192, 168, 0, 1));
        assert_eq!(used, fresh);
        let bytes = postcard::to_allocvec(&used).expect("serialize");
        assert_eq!(bytes, postcard::to_allocvec(&fresh).expect("serialize"));
        let mut plain = hashbrown::HashMap::new();
        plain.insert(ca, mapping(ip(192, 168, 0, 7)));
        assert_eq!(bytes, postcard::to_allocvec(&plain).expect("serialize"));
        let back: MappingTable = postcard::from_bytes(&bytes).expect("deserialize");
        assert_eq!(back, fresh);
    }
}
