//! Counters (VFP-22): per port, per layer and per rule — packets, bytes, and
//! drops by reason. Rule and meter counters live in an arena so a unified
//! flow can carry the slots it must bump as action contexts (VFP-11), and the
//! fast path updates them with plain indexed adds.

use crate::types::{Direction, DropReason};
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Packets, bytes and drops of one object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
    pub drops: u64,
}

/// What a counter slot counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CounterName {
    /// Packets that traversed a layer (fast and slow path).
    Layer { layer: String },
    /// Packets of flows a rule decided (fast and slow path).
    Rule { layer: String, rule: String },
    /// A meter bucket (e.g. per destination) of a meter rule.
    Meter {
        layer: String,
        rule: String,
        bucket: String,
    },
}

/// Counter slots, named, never freed (a re-added rule gets its old slot back,
/// so its counts continue).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CounterArena {
    slots: Vec<Counter>,
    names: Vec<CounterName>,
    #[serde(skip)]
    by_name: HashMap<CounterName, u32>,
    /// Meter buckets by (rule counter slot, bucket value): found without
    /// building the bucket's name (rebuilt lazily after a restore).
    #[serde(skip)]
    meter_index: HashMap<(u32, u128), u32>,
}

impl CounterArena {
    /// The slot for `name`, created at zero if new.
    pub fn slot(&mut self, name: CounterName) -> u32 {
        if let Some(&s) = self.by_name.get(&name) {
            return s;
        }
        let s = self.slots.len() as u32;
        self.slots.push(Counter::default());
        self.names.push(name.clone());
        self.by_name.insert(name, s);
        s
    }

    /// The meter bucket slot for `(rule slot, value)`, if known.
    pub fn meter_slot(&self, rule: u32, value: u128) -> Option<u32> {
        self.meter_index.get(&(rule, value)).copied()
    }

    /// Remember a meter bucket's slot.
    pub fn set_meter_slot(&mut self, rule: u32, value: u128, slot: u32) {
        self.meter_index.insert((rule, value), slot);
    }

    pub fn find(&self, name: &CounterName) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    #[inline]
    pub fn add(&mut self, slot: u32, packets: u64, bytes: u64) {
        if let Some(c) = self.slots.get_mut(slot as usize) {
            c.packets += packets;
            c.bytes += bytes;
        }
    }

    #[inline]
    pub fn add_drops(&mut self, slot: u32, n: u64) {
        if let Some(c) = self.slots.get_mut(slot as usize) {
            c.drops += n;
        }
    }

    pub fn get(&self, name: &CounterName) -> Option<Counter> {
        self.find(name)
            .and_then(|s| self.slots.get(s as usize).copied())
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Every counter with its name, sorted by name.
    pub fn all(&self) -> Vec<(CounterName, Counter)> {
        let mut v: Vec<_> = self
            .names
            .iter()
            .cloned()
            .zip(self.slots.iter().copied())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Rebuild the name index after deserialization.
    pub fn reindex(&mut self) {
        self.by_name = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
    }
}

/// Per-direction port totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirCounters {
    pub packets: u64,
    pub bytes: u64,
    pub forwarded: u64,
    pub dropped: u64,
    /// Packets served by a unified flow hit.
    pub fast_path: u64,
    /// Packets that walked the layers (first packet of a flow).
    pub slow_path: u64,
    /// Hits on a stale unified flow that were re-simulated (VFP-13).
    pub reconciled: u64,
}

/// TCP statistics of a port (VFP-14).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpStats {
    pub handshakes_completed: u64,
    /// Handshake packets with wrong sequence/ack numbers (flow stays half-open).
    pub invalid_handshakes: u64,
    pub resets: u64,
    pub retransmits: u64,
    pub ecn_ce_marks: u64,
    pub rtt_samples: u64,
    pub rtt_sum_ns: u64,
}

impl TcpStats {
    /// Average RTT in nanoseconds over all samples, if any.
    pub fn avg_rtt_ns(&self) -> Option<u64> {
        self.rtt_sum_ns.checked_div(self.rtt_samples)
    }
}

/// Flow-table statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStats {
    pub connections_created: u64,
    pub connections_expired: u64,
    pub connections_closed: u64,
    /// Evicted to make room under the port's flow limit, by class.
    pub evicted_half_open: u64,
    pub evicted_established: u64,
    pub evicted_other: u64,
    pub layer_flows_created: u64,
}

/// All counters of a port.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PortCounters {
    pub dir: [DirCounters; 2],
    pub drops: [u64; DropReason::COUNT],
    /// Parse failures by the parser's own reason.
    pub malformed: BTreeMap<String, u64>,
    pub tcp: TcpStats,
    pub flows: FlowStats,
    pub arena: CounterArena,
}

impl PortCounters {
    pub fn direction(&self, d: Direction) -> &DirCounters {
        &self.dir[d.index()]
    }

    pub fn drops_for(&self, r: DropReason) -> u64 {
        self.drops[r.index()]
    }

    pub fn layer(&self, layer: &str) -> Counter {
        self.arena
            .get(&CounterName::Layer {
                layer: layer.to_string(),
            })
            .unwrap_or_default()
    }

    pub fn rule(&self, layer: &str, rule: &str) -> Counter {
        self.arena
            .get(&CounterName::Rule {
                layer: layer.to_string(),
                rule: rule.to_string(),
            })
            .unwrap_or_default()
    }

    /// Meter buckets of one meter rule, by bucket name.
    pub fn meter(&self, layer: &str, rule: &str) -> BTreeMap<String, Counter> {
        self.arena
            .all()
            .into_iter()
            .filter_map(|(n, c)| match n {
                CounterName::Meter {
                    layer: l,
                    rule: r,
                    bucket,
                } if l == layer && r == rule => Some((bucket, c)),
                _ => None,
            })
            .collect()
    }
}
