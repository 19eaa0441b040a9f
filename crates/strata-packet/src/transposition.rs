//! Header transpositions (VFP-9): one operation per header group — push,
//! modify, pop or ignore — that turns one flow into another.
//!
//! A [`Transposition`] is plain data. The engine composes the transpositions
//! of every layer into one ([`Transposition::then`]), applies it to flow
//! metadata while simulating ([`Transposition::apply_to_ufid`]), and derives
//! the inverse for the return direction of a stateful flow
//! ([`Transposition::reverse_for`]). Changing packet bytes is the emitter's
//! job (`crate::emit`), done once per packet at the end.
//!
//! Strata supports one level of encapsulation: pushing an outer group onto a
//! flow that already has one replaces it (it is not nested).

use crate::flow::{FiveTuple, FlowKey, MacAddr, OuterKey, TunnelKind, Ufid, ipproto, tunnel_port};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Arc;

/// The outer header groups to push: outer Ethernet, outer IP (v4 or v6),
/// outer UDP (VXLAN/Geneve) or GRE (NVGRE), and the encap header.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Encap {
    pub kind: TunnelKind,
    /// VNI / virtual subnet id (24 bits).
    pub vni: u32,
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    /// Outer (physical, PA) addresses; both must be the same family.
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub ttl: u8,
    /// Outer UDP destination port (VXLAN/Geneve); ignored for NVGRE.
    pub dst_port: u16,
    /// Raw Geneve option TLVs (a multiple of 4 bytes, at most 252); empty
    /// for VXLAN and NVGRE.
    pub geneve_options: Vec<u8>,
}

impl Encap {
    /// An encap with the protocol's default UDP port and TTL 64.
    pub fn new(
        kind: TunnelKind,
        vni: u32,
        src_mac: MacAddr,
        dst_mac: MacAddr,
        src_ip: IpAddr,
        dst_ip: IpAddr,
    ) -> Encap {
        Encap {
            kind,
            vni: vni & 0x00ff_ffff,
            src_mac,
            dst_mac,
            src_ip,
            dst_ip,
            ttl: 64,
            dst_port: default_tunnel_port(kind),
            geneve_options: Vec::new(),
        }
    }

    /// The outer key a packet carries after this encap is pushed.
    pub fn outer_key(&self) -> OuterKey {
        OuterKey {
            src_mac: self.src_mac,
            dst_mac: self.dst_mac,
            src_ip: self.src_ip,
            dst_ip: self.dst_ip,
            tunnel: self.kind,
            vni: self.vni,
        }
    }

    /// The encap that recreates `outer` (used to reverse a pop).
    pub fn from_outer_key(outer: &OuterKey) -> Encap {
        Encap::new(
            outer.tunnel,
            outer.vni,
            outer.src_mac,
            outer.dst_mac,
            outer.src_ip,
            outer.dst_ip,
        )
    }
}

/// The UDP destination port a tunnel kind uses by default (0 for NVGRE).
pub fn default_tunnel_port(kind: TunnelKind) -> u16 {
    match kind {
        TunnelKind::Vxlan => tunnel_port::VXLAN,
        TunnelKind::Geneve => tunnel_port::GENEVE,
        TunnelKind::Nvgre => 0,
    }
}

/// What happens to the outer header groups.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OuterOp {
    /// Leave outer headers as they are (or absent).
    #[default]
    Ignore,
    /// Remove the outer groups (decap).
    Pop,
    /// Add outer groups (encap).
    Push(Arc<Encap>),
    /// Remove the existing outer groups and push new ones (pop ∘ push).
    Replace(Arc<Encap>),
}

/// What happens to the inner 802.1Q tag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VlanOp {
    #[default]
    Ignore,
    Pop,
    /// Push a tag with this VLAN id, or rewrite the id if already tagged.
    Set(u16),
}

/// The L4 port (or ICMP echo identifier) part of a transposition.
///
/// Flow tables store a transposition split in two: this part per flow (it
/// is what tells SNAT'd flows apart) and the rest shared by every flow with
/// the same result (see [`Transposition::split_ports`]). The emitter applies
/// the two together with no allocation ([`crate::emit::apply_with_ports`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortRewrite {
    pub src: Option<u16>,
    pub dst: Option<u16>,
}

/// One compiled header transposition. `None` fields are left unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transposition {
    pub outer: OuterOp,
    pub src_mac: Option<MacAddr>,
    pub dst_mac: Option<MacAddr>,
    pub vlan: VlanOp,
    pub src_ip: Option<IpAddr>,
    pub dst_ip: Option<IpAddr>,
    pub dscp: Option<u8>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
}

impl Transposition {
    /// The transposition that changes nothing, as a constant (for
    /// references to "no transposition").
    pub const IDENTITY: Transposition = Transposition {
        outer: OuterOp::Ignore,
        src_mac: None,
        dst_mac: None,
        vlan: VlanOp::Ignore,
        src_ip: None,
        dst_ip: None,
        dscp: None,
        src_port: None,
        dst_port: None,
    };

    /// The transposition that changes nothing.
    pub fn identity() -> Transposition {
        Transposition::default()
    }

    #[inline]
    pub fn is_identity(&self) -> bool {
        // Field by field, cheapest first (the slow path asks once per layer).
        self.src_ip.is_none()
            && self.dst_ip.is_none()
            && self.src_port.is_none()
            && self.dst_port.is_none()
            && matches!(self.outer, OuterOp::Ignore)
            && self.src_mac.is_none()
            && self.dst_mac.is_none()
            && self.dscp.is_none()
            && matches!(self.vlan, VlanOp::Ignore)
    }

    /// Composition: `self` first, then `next` (VFP-10's `acc ∘ rule.ht`).
    pub fn then(&self, next: &Transposition) -> Transposition {
        let outer = match (&self.outer, &next.outer) {
            (a, OuterOp::Ignore) => a.clone(),
            (OuterOp::Ignore, b) => b.clone(),
            // Pushed then popped: net effect nothing.
            (OuterOp::Push(_), OuterOp::Pop) => OuterOp::Ignore,
            (OuterOp::Replace(_), OuterOp::Pop) | (OuterOp::Pop, OuterOp::Pop) => OuterOp::Pop,
            (OuterOp::Pop, OuterOp::Push(e)) | (OuterOp::Pop, OuterOp::Replace(e)) => {
                OuterOp::Replace(e.clone())
            }
            (OuterOp::Push(_), OuterOp::Push(e)) | (OuterOp::Push(_), OuterOp::Replace(e)) => {
                OuterOp::Push(e.clone())
            }
            (OuterOp::Replace(_), OuterOp::Push(e))
            | (OuterOp::Replace(_), OuterOp::Replace(e)) => OuterOp::Replace(e.clone()),
        };
        let vlan = match next.vlan {
            VlanOp::Ignore => self.vlan,
            v => v,
        };
        Transposition {
            outer,
            src_mac: next.src_mac.or(self.src_mac),
            dst_mac: next.dst_mac.or(self.dst_mac),
            vlan,
            src_ip: next.src_ip.or(self.src_ip),
            dst_ip: next.dst_ip.or(self.dst_ip),
            dscp: next.dscp.or(self.dscp),
            src_port: next.src_port.or(self.src_port),
            dst_port: next.dst_port.or(self.dst_port),
        }
    }

    /// The port rewrite of this transposition.
    #[inline]
    pub fn ports(&self) -> PortRewrite {
        PortRewrite {
            src: self.src_port,
            dst: self.dst_port,
        }
    }

    /// The storage split of a flow table: the transposition without its
    /// port rewrite (shared by many flows), and the port rewrite (per flow).
    /// `a.with_ports(p)` gives the original back.
    pub fn split_ports(&self) -> (Transposition, PortRewrite) {
        let mut shared = self.clone();
        shared.src_port = None;
        shared.dst_port = None;
        (shared, self.ports())
    }

    /// This transposition with its port rewrite replaced by `p`.
    pub fn with_ports(&self, p: PortRewrite) -> Transposition {
        let mut t = self.clone();
        t.src_port = p.src;
        t.dst_port = p.dst;
        t
    }

    /// Apply to inner-group metadata only.
    pub fn apply_to_key(&self, k: &FlowKey) -> FlowKey {
        self.apply_to_key_with_ports(k, self.ports())
    }

    /// [`Transposition::apply_to_key`] with the port rewrite replaced by `ports`.
    pub fn apply_to_key_with_ports(&self, k: &FlowKey, ports: PortRewrite) -> FlowKey {
        let mut o = *k;
        if let Some(m) = self.src_mac {
            o.src_mac = m;
        }
        if let Some(m) = self.dst_mac {
            o.dst_mac = m;
        }
        match self.vlan {
            VlanOp::Ignore => {}
            VlanOp::Pop => o.vlan = None,
            VlanOp::Set(v) => o.vlan = Some(v & 0x0fff),
        }
        if k.is_ip() {
            if let Some(ip) = self.src_ip {
                o.src_ip = ip;
            }
            if let Some(ip) = self.dst_ip {
                o.dst_ip = ip;
            }
            if let Some(d) = self.dscp {
                o.dscp = d & 0x3f;
            }
            let (src_ok, dst_ok) = ports_rewritable(k);
            if src_ok && let Some(p) = ports.src {
                o.src_port = p;
            }
            if dst_ok && let Some(p) = ports.dst {
                o.dst_port = p;
            }
        }
        o
    }

    /// The 5-tuple of `apply_to_key_with_ports(k, ports)`, without
    /// building the whole key (the tunnel hash needs only this).
    #[inline]
    pub fn tuple_with_ports(&self, k: &FlowKey, ports: PortRewrite) -> FiveTuple {
        let mut o = FiveTuple::of(k);
        if k.is_ip() {
            if let Some(ip) = self.src_ip {
                o.src_ip = ip;
            }
            if let Some(ip) = self.dst_ip {
                o.dst_ip = ip;
            }
            let (src_ok, dst_ok) = ports_rewritable(k);
            if src_ok && let Some(p) = ports.src {
                o.src_port = p;
            }
            if dst_ok && let Some(p) = ports.dst {
                o.dst_port = p;
            }
        }
        o
    }

    /// Apply to a whole UFID: what the next layer (or the wire) sees.
    pub fn apply_to_ufid(&self, u: &Ufid) -> Ufid {
        let outer = match &self.outer {
            OuterOp::Ignore => u.outer,
            OuterOp::Pop => None,
            OuterOp::Push(e) | OuterOp::Replace(e) => Some(e.outer_key()),
        };
        Ufid {
            outer,
            inner: self.apply_to_key(&u.inner),
        }
    }

    /// The inverse transposition for the return direction of a stateful
    /// flow: if `self` turns `before` into `after`, the result turns
    /// `after.reversed()` back into `before.reversed()`. NAT thereby reverses
    /// itself, an encap reverses into a decap and a decap into an encap
    /// towards the original sender. DSCP marks are not reversed: return
    /// traffic keeps its own marking.
    pub fn reverse_for(&self, before: &Ufid) -> Transposition {
        let b = &before.inner;
        let outer = match &self.outer {
            OuterOp::Ignore => OuterOp::Ignore,
            OuterOp::Push(_) => OuterOp::Pop,
            OuterOp::Pop => match &before.outer {
                Some(o) => OuterOp::Push(Arc::new(Encap::from_outer_key(&o.reversed()))),
                None => OuterOp::Ignore,
            },
            OuterOp::Replace(_) => match &before.outer {
                Some(o) => OuterOp::Replace(Arc::new(Encap::from_outer_key(&o.reversed()))),
                None => OuterOp::Pop,
            },
        };
        let vlan = match self.vlan {
            VlanOp::Ignore => VlanOp::Ignore,
            VlanOp::Pop | VlanOp::Set(_) => match b.vlan {
                Some(v) => VlanOp::Set(v),
                None => VlanOp::Pop,
            },
        };
        Transposition {
            outer,
            // A field rewritten on the way out is restored, mirrored, on the way back.
            src_mac: self.dst_mac.map(|_| b.dst_mac),
            dst_mac: self.src_mac.map(|_| b.src_mac),
            vlan,
            src_ip: self.dst_ip.map(|_| b.dst_ip),
            dst_ip: self.src_ip.map(|_| b.src_ip),
            dscp: None,
            src_port: self.dst_port.map(|_| b.dst_port),
            dst_port: self.src_port.map(|_| b.src_port),
        }
    }

    /// A short human rendering for traces.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match &self.outer {
            OuterOp::Ignore => {}
            OuterOp::Pop => parts.push("pop outer".to_string()),
            OuterOp::Push(e) => parts.push(format!(
                "push {:?} vni {} {} -> {}",
                e.kind, e.vni, e.src_ip, e.dst_ip
            )),
            OuterOp::Replace(e) => parts.push(format!(
                "replace outer {:?} vni {} {} -> {}",
                e.kind, e.vni, e.src_ip, e.dst_ip
            )),
        }
        if let Some(m) = self.src_mac {
            parts.push(format!("src_mac={m}"));
        }
        if let Some(m) = self.dst_mac {
            parts.push(format!("dst_mac={m}"));
        }
        match self.vlan {
            VlanOp::Ignore => {}
            VlanOp::Pop => parts.push("pop vlan".into()),
            VlanOp::Set(v) => parts.push(format!("vlan={v}")),
        }
        if let Some(ip) = self.src_ip {
            parts.push(format!("src_ip={ip}"));
        }
        if let Some(ip) = self.dst_ip {
            parts.push(format!("dst_ip={ip}"));
        }
        if let Some(d) = self.dscp {
            parts.push(format!("dscp={d}"));
        }
        if let Some(p) = self.src_port {
            parts.push(format!("src_port={p}"));
        }
        if let Some(p) = self.dst_port {
            parts.push(format!("dst_port={p}"));
        }
        if parts.is_empty() {
            "identity".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Whether a port rewrite applies to the source and destination port of an
/// IP key. ICMP echo carries one identifier on the wire: a request's lives
/// in `src_port`, a reply's in `dst_port` (see [`FlowKey`]).
#[inline]
pub(crate) fn ports_rewritable(k: &FlowKey) -> (bool, bool) {
    match (k.proto, k.icmp_type) {
        (ipproto::TCP | ipproto::UDP, _) => (true, true),
        (ipproto::ICMP, 8) | (ipproto::ICMPV6, 128) => (true, false),
        (ipproto::ICMP, 0) | (ipproto::ICMPV6, 129) => (false, true),
        _ => (false, false),
    }
}

/// Whether the protocol carries ports (or an ICMP echo id) in the key.
pub fn has_ports(proto: u8) -> bool {
    use crate::flow::ipproto::*;
    matches!(proto, TCP | UDP | ICMP | ICMPV6)
}
