//! Actions (VFP-5): what a matched rule does to a flow.
//!
//! A rule carries an [`ActionSpec`] (plain, serializable data). When a group
//! is installed every spec is compiled into an [`Action`] object through the
//! port's [`ActionRegistry`]; built-in specs compile to the types in this
//! module, and `ActionSpec::Custom` names a factory registered by the user, so
//! new actions need no engine change.
//!
//! Actions run only on the slow path, once per new flow per layer: they return
//! a header transposition plus action contexts (counter slots) that the
//! unified flow caches, and optionally per-flow state (an SNAT port) that is
//! given back when the flow ends.

use crate::condition::Field;
use crate::counters::{BucketName, CounterArena};
use crate::resource::{ActionState, EventSink, Resources};
use crate::types::{Direction, DropReason, Time};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;
use strata_packet::flow::{MacAddr, TunnelKind, Ufid, u128_to_ip};
use strata_packet::transposition::{Encap, OuterOp, Transposition, VlanOp};

/// A rule's action, as the controller writes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ActionSpec {
    /// Let the packet through unchanged.
    Allow,
    /// Drop the packet (reason `rule-block`).
    Block,
    /// Push outer headers with fixed parameters.
    Encap {
        tunnel: TunnelKind,
        vni: u32,
        local_pa: IpAddr,
        remote_pa: IpAddr,
        local_mac: MacAddr,
        next_hop_mac: MacAddr,
        /// Rewrite the inner destination MAC too.
        #[serde(default)]
        inner_dst_mac: Option<MacAddr>,
    },
    /// Push outer headers looked up in a CA → PA mapping table by the inner
    /// destination IP.
    EncapMapped {
        mapping: String,
        local_pa: IpAddr,
        local_mac: MacAddr,
    },
    /// Pop the outer headers.
    Decap,
    /// Static NAT: rewrite any of the four address/port fields.
    Nat {
        #[serde(default)]
        src_ip: Option<IpAddr>,
        #[serde(default)]
        dst_ip: Option<IpAddr>,
        #[serde(default)]
        src_port: Option<u16>,
        #[serde(default)]
        dst_port: Option<u16>,
    },
    /// Load-balancing DNAT: destination (VIP) → a backend of the pool, chosen
    /// by 5-tuple hash; use in a stateful rule for connection affinity.
    LbNat { pool: String },
    /// Source NAT to the pool's IP and a port taken from its range; use in a
    /// stateful rule so the port is held for the connection and returned
    /// when it ends.
    Snat { pool: String },
    /// Rewrite Ethernet / DSCP / VLAN fields.
    Modify {
        #[serde(default)]
        src_mac: Option<MacAddr>,
        #[serde(default)]
        dst_mac: Option<MacAddr>,
        #[serde(default)]
        dscp: Option<u8>,
        #[serde(default)]
        vlan: Option<VlanOp>,
    },
    /// A user-defined header transposition (VFP-9).
    Transpose { transposition: Transposition },
    /// Count packets per bucket of `by` (e.g. per destination IP, or per
    /// destination /24 with `prefix_len`), then allow.
    Meter {
        by: Field,
        #[serde(default)]
        prefix_len: Option<u8>,
    },
    /// Count under the rule's own counter only, then allow.
    Count,
    /// An action from the registry.
    Custom {
        name: String,
        #[serde(default)]
        params: BTreeMap<String, String>,
    },
}

/// What an action decided for a flow in one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionOutput {
    pub transposition: Transposition,
    pub verdict: Result<(), DropReason>,
    /// Counter slots the unified flow bumps per packet (action contexts);
    /// inline, so producing them allocates nothing.
    pub counters: smallvec::SmallVec<[u32; 2]>,
    /// State taken from a resource; released when the flow ends.
    pub state: ActionState,
}

impl ActionOutput {
    pub fn allow(t: Transposition) -> ActionOutput {
        ActionOutput {
            transposition: t,
            verdict: Ok(()),
            counters: smallvec::SmallVec::new(),
            state: ActionState::None,
        }
    }

    pub fn drop(reason: DropReason) -> ActionOutput {
        ActionOutput {
            transposition: Transposition::identity(),
            verdict: Err(reason),
            counters: smallvec::SmallVec::new(),
            state: ActionState::None,
        }
    }
}

/// Everything an action may see and touch while processing a new flow.
pub struct ActionCx<'a> {
    pub direction: Direction,
    /// The layer-local flow id (after the layers before this one).
    pub flow: &'a Ufid,
    pub now: Time,
    /// Simulation only (trace): take nothing from resources, send no event.
    pub dry_run: bool,
    pub layer: &'a str,
    pub rule: &'a str,
    /// The rule's counter slot (keys per-rule action state such as meter
    /// buckets).
    pub rule_counter: u32,
    pub resources: &'a mut Resources,
    pub events: &'a mut EventSink,
    pub counters: &'a mut CounterArena,
}

/// A pluggable action: `process` on a new flow (init + per-flow work),
/// `teardown` when a flow it created state for ends.
pub trait Action: Send + Sync + Debug {
    fn process(&self, cx: &mut ActionCx<'_>) -> ActionOutput;

    /// For an action whose every output is the identity transposition
    /// with this verdict, no counters and no state (plain allow and
    /// block): the verdict. The engine then decides such a rule's flows
    /// without calling [`Action::process`]. `None` (the default) for any
    /// other action.
    fn fixed_verdict(&self) -> Option<Result<(), DropReason>> {
        None
    }

    /// Whether any output of this action may transpose the packet, and so
    /// change the key the layers after it see. `true` (the default) is
    /// always safe; an action that only decides or counts says `false`,
    /// which lets a first packet's walk hash the flow keys of the layers
    /// after it before it gets there (see `Port::simulate`).
    fn may_transpose(&self) -> bool {
        true
    }

    /// Release custom per-flow state. Resource state (SNAT ports) is
    /// released by the engine.
    fn teardown(&self, _state: &ActionState, _resources: &mut Resources) {}
}

/// Why an action spec did not compile.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("unknown action type {0:?} (not registered)")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
}

/// A factory building a custom action from its parameters.
pub type ActionFactory =
    Arc<dyn Fn(&BTreeMap<String, String>) -> Result<Arc<dyn Action>, String> + Send + Sync>;

/// Compiles [`ActionSpec`]s into actions; holds the custom factories.
#[derive(Clone, Default)]
pub struct ActionRegistry {
    custom: BTreeMap<String, ActionFactory>,
}

impl Debug for ActionRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionRegistry")
            .field("custom", &self.custom.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ActionRegistry {
    pub fn register(&mut self, name: &str, factory: ActionFactory) {
        self.custom.insert(name.to_string(), factory);
    }

    /// Compile one spec; errors name what is wrong.
    pub fn compile(&self, spec: &ActionSpec) -> Result<Arc<dyn Action>, CompileError> {
        self.compile_inner(spec).map_err(|message| match spec {
            ActionSpec::Custom { name, .. } if !self.custom.contains_key(name) => {
                CompileError::Unknown(name.clone())
            }
            _ => CompileError::Invalid(message),
        })
    }

    fn compile_inner(&self, spec: &ActionSpec) -> Result<Arc<dyn Action>, String> {
        Ok(match spec {
            ActionSpec::Allow | ActionSpec::Count => {
                Arc::new(Fixed::of(ActionOutput::allow(Transposition::identity())))
            }
            ActionSpec::Block => Arc::new(Fixed::of(ActionOutput::drop(DropReason::RuleBlock))),
            ActionSpec::Encap {
                tunnel,
                vni,
                local_pa,
                remote_pa,
                local_mac,
                next_hop_mac,
                inner_dst_mac,
            } => {
                if local_pa.is_ipv4() != remote_pa.is_ipv4() {
                    return Err("local_pa and remote_pa must be the same address family".into());
                }
                if *vni > 0x00ff_ffff {
                    return Err(format!("vni {vni} does not fit 24 bits"));
                }
                let e = Encap::new(
                    *tunnel,
                    *vni,
                    *local_mac,
                    *next_hop_mac,
                    *local_pa,
                    *remote_pa,
                );
                Arc::new(Fixed::of(ActionOutput::allow(Transposition {
                    outer: OuterOp::Push(Arc::new(e)),
                    dst_mac: *inner_dst_mac,
                    ..Transposition::default()
                })))
            }
            ActionSpec::EncapMapped {
                mapping,
                local_pa,
                local_mac,
            } => Arc::new(EncapMapped {
                mapping: mapping.clone(),
                local_pa: *local_pa,
                local_mac: *local_mac,
            }),
            ActionSpec::Decap => Arc::new(Fixed::of(ActionOutput::allow(Transposition {
                outer: OuterOp::Pop,
                ..Transposition::default()
            }))),
            ActionSpec::Nat {
                src_ip,
                dst_ip,
                src_port,
                dst_port,
            } => Arc::new(Fixed::of(ActionOutput::allow(Transposition {
                src_ip: *src_ip,
                dst_ip: *dst_ip,
                src_port: *src_port,
                dst_port: *dst_port,
                ..Transposition::default()
            }))),
            ActionSpec::LbNat { pool } => Arc::new(LbNat { pool: pool.clone() }),
            ActionSpec::Snat { pool } => Arc::new(Snat {
                pool: Arc::from(pool.as_str()),
            }),
            ActionSpec::Modify {
                src_mac,
                dst_mac,
                dscp,
                vlan,
            } => {
                if let Some(d) = dscp
                    && *d > 63
                {
                    return Err(format!("dscp {d} does not fit 6 bits"));
                }
                if let Some(VlanOp::Set(v)) = vlan
                    && *v > 4095
                {
                    return Err(format!("vlan {v} does not fit 12 bits"));
                }
                Arc::new(Fixed::of(ActionOutput::allow(Transposition {
                    src_mac: *src_mac,
                    dst_mac: *dst_mac,
                    dscp: *dscp,
                    vlan: vlan.unwrap_or_default(),
                    ..Transposition::default()
                })))
            }
            ActionSpec::Transpose { transposition } => {
                Arc::new(Fixed::of(ActionOutput::allow(transposition.clone())))
            }
            ActionSpec::Meter { by, prefix_len } => {
                if let Some(l) = prefix_len
                    && *l > by.width()
                {
                    return Err(format!("prefix_len {l} longer than the field"));
                }
                Arc::new(Meter {
                    by: *by,
                    prefix_len: *prefix_len,
                })
            }
            ActionSpec::Custom { name, params } => {
                let f = self
                    .custom
                    .get(name)
                    .ok_or_else(|| format!("unknown action type {name:?} (not registered)"))?;
                f(params)?
            }
        })
    }
}

/// An action whose output does not depend on the flow (it takes no state
/// and counts nothing of its own: only the transposition and verdict are
/// kept, so producing the output clones no counter list or state).
#[derive(Debug)]
struct Fixed {
    transposition: Transposition,
    verdict: Result<(), DropReason>,
    /// Whether `transposition` is the identity (decided once: comparing
    /// every field costs more than the rest of a plain allow).
    identity: bool,
}

impl Fixed {
    fn of(out: ActionOutput) -> Fixed {
        debug_assert!(out.counters.is_empty() && out.state == ActionState::None);
        Fixed {
            identity: out.transposition.is_identity(),
            transposition: out.transposition,
            verdict: out.verdict,
        }
    }
}

impl Action for Fixed {
    #[inline]
    fn fixed_verdict(&self) -> Option<Result<(), DropReason>> {
        self.identity.then_some(self.verdict)
    }

    #[inline]
    fn may_transpose(&self) -> bool {
        !self.identity
    }

    #[inline]
    fn process(&self, _cx: &mut ActionCx<'_>) -> ActionOutput {
        ActionOutput {
            transposition: if self.identity {
                Transposition::IDENTITY
            } else {
                self.transposition.clone()
            },
            verdict: self.verdict,
            counters: smallvec::SmallVec::new(),
            state: ActionState::None,
        }
    }
}

/// VNET encap through a CA → PA mapping table.
#[derive(Debug)]
struct EncapMapped {
    mapping: String,
    local_pa: IpAddr,
    local_mac: MacAddr,
}

impl Action for EncapMapped {
    fn process(&self, cx: &mut ActionCx<'_>) -> ActionOutput {
        let ca = cx.flow.inner.dst_ip;
        // One lookup: the entry holds the outer header its flows share.
        let found = cx
            .resources
            .mappings
            .get_mut(&self.mapping)
            .and_then(|t| t.entry_mut(&ca));
        let Some(entry) = found else {
            if !cx.dry_run {
                cx.events.mapping_miss(&self.mapping, ca);
            }
            return ActionOutput::drop(DropReason::MappingMiss);
        };
        if entry.mapping().pa.is_ipv4() != self.local_pa.is_ipv4() {
            return ActionOutput::drop(DropReason::ActionRefused);
        }
        let ca_mac = entry.mapping().ca_mac;
        let e = entry.encap_from(self.local_mac, self.local_pa);
        ActionOutput::allow(Transposition {
            outer: OuterOp::Push(e),
            dst_mac: Some(ca_mac),
            ..Transposition::default()
        })
    }
}

/// Load-balancing DNAT.
#[derive(Debug)]
struct LbNat {
    pool: String,
}

impl Action for LbNat {
    fn process(&self, cx: &mut ActionCx<'_>) -> ActionOutput {
        let Some(pool) = cx.resources.backend_pools.get(&self.pool) else {
            return ActionOutput::drop(DropReason::NoBackend);
        };
        if pool.backends.is_empty() {
            return ActionOutput::drop(DropReason::NoBackend);
        }
        let h = strata_packet::flow::flow_hash(&cx.flow.inner);
        let b = pool.backends[(h % pool.backends.len() as u64) as usize];
        if b.ip.is_ipv4() != cx.flow.inner.dst_ip.is_ipv4() {
            return ActionOutput::drop(DropReason::ActionRefused);
        }
        ActionOutput::allow(Transposition {
            dst_ip: Some(b.ip),
            dst_port: b.port,
            ..Transposition::default()
        })
    }
}

/// Source NAT with ports from a pool.
#[derive(Debug)]
struct Snat {
    pool: Arc<str>,
}

impl Action for Snat {
    fn process(&self, cx: &mut ActionCx<'_>) -> ActionOutput {
        let Some(pool) = cx.resources.port_pools.get_mut(&*self.pool) else {
            return ActionOutput::drop(DropReason::SnatExhausted);
        };
        if pool.ip.is_ipv4() != cx.flow.inner.src_ip.is_ipv4() {
            return ActionOutput::drop(DropReason::ActionRefused);
        }
        let port = if cx.dry_run {
            pool.peek()
        } else {
            pool.allocate()
        };
        let Some(port) = port else {
            return ActionOutput::drop(DropReason::SnatExhausted);
        };
        let mut out = ActionOutput::allow(Transposition {
            src_ip: Some(pool.ip),
            src_port: Some(port),
            ..Transposition::default()
        });
        if !cx.dry_run {
            out.state = ActionState::SnatPort {
                pool: self.pool.clone(),
                ip: pool.ip,
                port,
            };
        }
        out
    }
}

/// Per-bucket counters (VFP's metering layer).
#[derive(Debug)]
struct Meter {
    by: Field,
    prefix_len: Option<u8>,
}

/// Bucket cap per meter rule: beyond it, new values share "other".
pub const MAX_METER_BUCKETS: usize = 65_536;

impl Action for Meter {
    fn may_transpose(&self) -> bool {
        false
    }

    fn process(&self, cx: &mut ActionCx<'_>) -> ActionOutput {
        if cx.dry_run {
            return ActionOutput::allow(Transposition::IDENTITY);
        }
        let value = crate::condition::FieldValues::field_of(cx.flow, self.by).map(|v| {
            let w = self.by.width();
            v & crate::condition::prefix_mask(self.prefix_len.unwrap_or(w), w)
        });
        // Known buckets are found by number, without building their names.
        let slot = cx.counters.meter_bucket(
            cx.layer,
            cx.rule,
            cx.rule_counter,
            value.unwrap_or(u128::MAX),
            || match value {
                None => "none".into(),
                Some(masked) => self.bucket_name(masked),
            },
            MAX_METER_BUCKETS,
        );
        ActionOutput {
            transposition: Transposition::IDENTITY,
            verdict: Ok(()),
            counters: smallvec::smallvec![slot],
            state: ActionState::None,
        }
    }
}

impl Meter {
    /// A bucket's display name: an IP (or prefix) for IP fields, else the
    /// number (written inline: no allocation).
    fn bucket_name(&self, masked: u128) -> BucketName {
        let w = self.by.width();
        let len = self.prefix_len.unwrap_or(w);
        if self.by.is_ip() {
            let ip = u128_to_ip(masked);
            let fam_len = if ip.is_ipv4() {
                len.saturating_sub(96)
            } else {
                len
            };
            if len == w {
                BucketName::display(ip)
            } else {
                BucketName::display(format_args!("{ip}/{fam_len}"))
            }
        } else {
            BucketName::display(masked)
        }
    }
}
