//! Emit plans: a transposition prepared once for the many packets (and
//! flows) that share it, so the fast path does not redo per packet what
//! depends only on the transposition.
//!
//! [`EmitPlan::new`] checks the transposition's own parameters (encap
//! address families, Geneve options) and, for the common shapes, builds the
//! outer headers it pushes as a byte template: Ethernet + IPv4 + UDP +
//! VXLAN / Geneve (options included), or Ethernet + IPv4 + GRE (NVGRE).
//! [`apply_planned`] then copies the template and patches the four fields
//! that depend on the packet — IPv4 total length and header checksum, UDP
//! length and the flow-hash source port — instead of building each header
//! through its wire view.
//!
//! The plan also keeps the IPv4 addresses it writes as numbers, so the
//! usual NAT rewrite (IPv4 with TCP or UDP) and the source port's
//! [`tunnel_hash`] of the translated 5-tuple work on plain integers rather
//! than on `IpAddr`s and whole keys.
//!
//! The plan's shortcut covers: no VLAN change; outer groups pushed over
//! IPv4, popped, or replaced; inner MAC / IPv4 / DSCP / port rewrites. For
//! anything else (IPv6 outer headers, VLAN pushes and pops, kept outer
//! groups whose lengths must follow the inner frame, an IP rewrite of the
//! other family) it calls [`super::apply_with_ports`]. Either way the
//! result — bytes and errors — is exactly that of
//! [`super::apply_with_ports`] for the plan's transposition (property test
//! `tests/emit_plan.rs`).

use super::{
    EmitError, MISMATCH, PacketBuf, apply_with_ports, encap_len, inner_bounds, push_outer,
    rewrite_l3_l4, tunnel_src_port,
};
use crate::checksum::{self, Delta};
use crate::flow::{FlowKey, TunnelKind, ports_word, tunnel_hash, tunnel_hash_v4};
use crate::parse::{L3Kind, L4Kind, Parsed};
use crate::transposition::{OuterOp, PortRewrite, Transposition, VlanOp, ports_rewritable};
use crate::wire::{ethernet, geneve, ipv4, tcp, udp, vxlan};
use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};

/// A transposition with what can be prepared ahead of the packets.
///
/// Compares, hashes and serializes as its transposition: the rest is
/// derived from it (and rebuilt on deserialization).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(from = "Transposition", into = "Transposition")]
pub struct EmitPlan {
    transposition: Transposition,
    /// The shortcut, when the transposition's shape allows one.
    fast: Option<FastPlan>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FastPlan {
    /// The family of the IP addresses rewritten (`Some(true)` for IPv6),
    /// if any are.
    ip_v6: Option<bool>,
    /// Whether an L3 field is rewritten (addresses, DSCP); ports come with
    /// each packet.
    l3: bool,
    /// The IPv4 addresses written (when `ip_v6` is not `Some(true)`), as
    /// numbers for the specialised IPv4 rewrite.
    src_v4: Option<u32>,
    dst_v4: Option<u32>,
    dscp: Option<u8>,
    /// An outer op other than `Ignore`: a frame's existing outer groups go.
    pops: bool,
    /// The outer headers to push.
    push: Option<OuterTemplate>,
}

/// Outer headers over IPv4 as bytes, with the sums needed to finish them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct OuterTemplate {
    bytes: Box<[u8]>,
    /// UDP-based (VXLAN, Geneve): length and source port to patch.
    udp: bool,
    /// Folded sum of the IPv4 header's words with total length and
    /// checksum zero.
    ip_sum: u16,
}

/// Offsets in a template (Ethernet, then a 20-byte IPv4 header).
const IP: usize = ethernet::HEADER_LEN;
const IP_TOTAL_LEN: usize = IP + 2;
const IP_CHECKSUM: usize = IP + 10;
const L4: usize = IP + ipv4::HEADER_LEN;
const UDP_SRC_PORT: usize = L4;
const UDP_LEN: usize = L4 + 4;
/// Length of a VXLAN-over-IPv4 template.
const VXLAN_V4_LEN: usize = L4 + udp::HEADER_LEN + vxlan::HEADER_LEN;

impl PartialEq for EmitPlan {
    fn eq(&self, other: &EmitPlan) -> bool {
        self.transposition == other.transposition
    }
}

impl Eq for EmitPlan {}

impl Hash for EmitPlan {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.transposition.hash(state);
    }
}

impl From<Transposition> for EmitPlan {
    fn from(t: Transposition) -> EmitPlan {
        EmitPlan::new(t)
    }
}

impl From<EmitPlan> for Transposition {
    fn from(p: EmitPlan) -> Transposition {
        p.transposition
    }
}

impl EmitPlan {
    /// Prepare `t` (allocates; done when a flow action is created, not per
    /// packet).
    pub fn new(t: Transposition) -> EmitPlan {
        let fast = FastPlan::new(&t);
        EmitPlan {
            transposition: t,
            fast,
        }
    }

    pub fn transposition(&self) -> &Transposition {
        &self.transposition
    }

    /// Whether packets of the usual shapes take the prepared shortcut.
    pub fn has_shortcut(&self) -> bool {
        self.fast.is_some()
    }

    /// Whether the shortcut pushes a UDP tunnel header (VXLAN, Geneve over
    /// IPv4), whose source port [`EmitPlan::tunnel_port`] can tell ahead.
    pub fn pushes_udp_tunnel(&self) -> bool {
        self.fast
            .as_ref()
            .and_then(|f| f.push.as_ref())
            .is_some_and(|p| p.udp)
    }

    /// The UDP source port the shortcut writes in the tunnel header it
    /// pushes on a frame whose inner key is `key`, with port rewrite
    /// `ports`; `None` if it pushes none. It depends only on the flow (the
    /// translated 5-tuple's [`tunnel_hash`]), so a flow table can keep it
    /// per flow and hand it to [`apply_planned_inline`] instead of hashing
    /// every packet.
    pub fn tunnel_port(&self, ports: &PortRewrite, key: &FlowKey) -> Option<u16> {
        let f = self.fast.as_ref().filter(|_| self.pushes_udp_tunnel())?;
        Some(tunnel_src_port(f.tunnel_hash(
            &self.transposition,
            key,
            ports,
        )))
    }

    /// Whether a kept tunnel port given to the emit is this frame's (or
    /// unused): the emit functions' precondition.
    fn kept_tunnel_port_fits(
        &self,
        ports: &PortRewrite,
        tunnel_port: Option<u16>,
        parsed: &Parsed,
    ) -> bool {
        tunnel_port.is_none()
            || !self.pushes_udp_tunnel()
            || tunnel_port == self.tunnel_port(ports, &parsed.ufid.inner)
    }

    /// Whether this packet takes the shortcut (tests, traces).
    pub fn takes_shortcut(&self, parsed: &Parsed) -> bool {
        self.fast.as_ref().is_some_and(|f| f.fits(parsed))
    }

    /// Heap bytes held (the outer template).
    pub fn heap_bytes(&self) -> usize {
        let t = &self.transposition;
        let opts = match &t.outer {
            OuterOp::Push(e) | OuterOp::Replace(e) => e.geneve_options.capacity(),
            OuterOp::Ignore | OuterOp::Pop => 0,
        };
        opts + self
            .fast
            .as_ref()
            .and_then(|f| f.push.as_ref())
            .map_or(0, |p| p.bytes.len())
    }
}

impl FastPlan {
    fn new(t: &Transposition) -> Option<FastPlan> {
        if t.vlan != VlanOp::Ignore {
            return None;
        }
        let v6 = |a: Option<IpAddr>| a.map(|a| a.is_ipv6());
        let ip_v6 = match (v6(t.src_ip), v6(t.dst_ip)) {
            (Some(a), Some(b)) if a != b => return None,
            (a, b) => a.or(b),
        };
        let push = match &t.outer {
            OuterOp::Push(e) | OuterOp::Replace(e) => Some(OuterTemplate::new(e)?),
            OuterOp::Ignore | OuterOp::Pop => None,
        };
        let v4 = |a: Option<IpAddr>| match a {
            Some(IpAddr::V4(a)) => Some(a.to_bits()),
            Some(IpAddr::V6(_)) | None => None,
        };
        Some(FastPlan {
            ip_v6,
            l3: t.src_ip.is_some() || t.dst_ip.is_some() || t.dscp.is_some(),
            src_v4: v4(t.src_ip),
            dst_v4: v4(t.dst_ip),
            dscp: t.dscp,
            pops: t.outer != OuterOp::Ignore,
            push,
        })
    }
}

impl OuterTemplate {
    /// The headers `push_outer` writes in front of an empty frame, when
    /// they are over IPv4 and valid.
    fn new(e: &crate::transposition::Encap) -> Option<OuterTemplate> {
        let (IpAddr::V4(_), IpAddr::V4(_)) = (e.src_ip, e.dst_ip) else {
            return None;
        };
        if e.kind == TunnelKind::Geneve && geneve::check_options(&e.geneve_options).is_err() {
            return None;
        }
        let len = encap_len(e);
        let mut scratch = PacketBuf::with_headroom(0, len);
        push_outer(&mut scratch, e, 0, len).ok()?;
        let mut bytes: Box<[u8]> = scratch.as_slice().into();
        if bytes.len() != len || bytes.len() < L4 + 8 {
            return None;
        }
        bytes[IP_TOTAL_LEN..IP_TOTAL_LEN + 2].fill(0);
        bytes[IP_CHECKSUM..IP_CHECKSUM + 2].fill(0);
        let ip_sum = checksum::data_sum(&bytes[IP..L4]);
        Some(OuterTemplate {
            bytes,
            udp: e.kind != TunnelKind::Nvgre,
            ip_sum,
        })
    }
}

/// Apply `plan`'s transposition with its port rewrite replaced by `ports`
/// to the frame in `buf`, which `parsed` describes: the same bytes and
/// errors as [`apply_with_ports`], with less work for the usual shapes.
///
/// `tunnel_port`, if given, must be [`EmitPlan::tunnel_port`] of the
/// frame's inner key when the plan pushes a UDP tunnel (it is ignored
/// otherwise): a flow's tunnel source port, kept with the flow, so that
/// its packets are not hashed again (checked in debug builds).
pub fn apply_planned(
    plan: &EmitPlan,
    ports: &PortRewrite,
    tunnel_port: Option<u16>,
    buf: &mut PacketBuf,
    parsed: &Parsed,
) -> Result<(), EmitError> {
    debug_assert!(plan.kept_tunnel_port_fits(ports, tunnel_port, parsed));
    let t = &plan.transposition;
    match &plan.fast {
        Some(f) if f.plain_v4(parsed) => match parsed.ufid.outer {
            None => apply_fast::<true, true, false>(t, f, ports, tunnel_port, buf, parsed),
            Some(_) => apply_fast::<true, false, false>(t, f, ports, tunnel_port, buf, parsed),
        },
        Some(f) if f.fits(parsed) => {
            apply_fast::<false, false, false>(t, f, ports, tunnel_port, buf, parsed)
        }
        _ => apply_with_ports(t, ports, buf, parsed),
    }
}

/// [`apply_planned`], with the commonest case (a plain IPv4 TCP or UDP
/// frame, no outer groups: `FastPlan::plain_v4`) inlined into the
/// caller and the others left to `apply_planned`'s call: for a datapath
/// loop, where inlining every case would only grow the loop.
///
/// `parsed` must be what the parser made of `buf`'s bytes as they are (a
/// datapath's always is): the inlined case does not repeat the header
/// checks the parser made (IPv4 version and lengths, the TCP data offset,
/// the UDP length). Given a `parsed` of other bytes it may write wrong
/// bytes where [`apply_planned`] would refuse, but never out of the frame
/// and never with a panic.
#[inline(always)]
pub fn apply_planned_inline(
    plan: &EmitPlan,
    ports: &PortRewrite,
    tunnel_port: Option<u16>,
    buf: &mut PacketBuf,
    parsed: &Parsed,
) -> Result<(), EmitError> {
    match &plan.fast {
        Some(f) if parsed.ufid.outer.is_none() && f.plain_v4(parsed) => {
            debug_assert!(plan.kept_tunnel_port_fits(ports, tunnel_port, parsed));
            apply_fast::<true, true, true>(&plan.transposition, f, ports, tunnel_port, buf, parsed)
        }
        _ => apply_planned(plan, ports, tunnel_port, buf, parsed),
    }
}

impl FastPlan {
    /// Whether the packet's inner (or only) frame is IPv4 TCP or UDP, not
    /// a fragment, with no outer groups kept, and the plan
    /// rewrites no IPv6 address: the commonest case, which
    /// `apply_fast::<true, _>` takes without the branches for IPv6 and other
    /// protocols. (Such a packet always `fits`.)
    #[inline]
    fn plain_v4(&self, parsed: &Parsed) -> bool {
        let lay = &parsed.layout;
        (parsed.ufid.outer.is_none() || self.pops)
            && lay.l3_kind == L3Kind::Ipv4
            && matches!(lay.l4_kind, L4Kind::Tcp | L4Kind::Udp)
            && !lay.fragment
            && parsed.ufid.inner.is_ip()
            && self.ip_v6 != Some(true)
    }

    /// Whether the packet needs nothing the shortcut leaves out.
    #[inline]
    fn fits(&self, parsed: &Parsed) -> bool {
        let lay = &parsed.layout;
        let is_ip = parsed.ufid.inner.is_ip() && matches!(lay.l3_kind, L3Kind::Ipv4 | L3Kind::Ipv6);
        // Kept outer groups would need their lengths and checksums fixed.
        let keeps_outer = parsed.ufid.outer.is_some() && !self.pops;
        // A rewrite of the other address family is an error the general
        // path reports.
        let family_clash = is_ip
            && self
                .ip_v6
                .is_some_and(|v6| v6 != (lay.l3_kind == L3Kind::Ipv6));
        !keeps_outer && !family_clash
    }
}

impl FastPlan {
    /// [`rewrite_l3_l4`] for IPv4 with TCP or UDP (the NAT case): the same
    /// checks in the same order (without the parser's header checks when
    /// `TRUSTED`, see [`apply_fast`]), the same bytes written, on
    /// fixed-size header arrays with the rewrite values prepared as
    /// numbers. Inlined
    /// into its one caller: as a call of its own, its prologue and argument
    /// moves cost an outbound NAT packet 19 of its 1,153 instructions.
    #[inline(always)]
    fn rewrite_v4<const TRUSTED: bool>(
        &self,
        ports: &PortRewrite,
        frame: &mut [u8],
        l4_kind: L4Kind,
        [l3, l4, l3_end]: [usize; 3],
    ) -> Result<(), EmitError> {
        // What `ipv4::Packet::new_checked` checks.
        let ip = frame.get_mut(l3..).ok_or(MISMATCH)?;
        let ip_len = ip.len();
        let h: &mut [u8; ipv4::HEADER_LEN] = ip.first_chunk_mut().ok_or(MISMATCH)?;
        let hl = usize::from(h[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
        if !TRUSTED
            && (h[0] >> 4 != 4
                || hl < ipv4::HEADER_LEN
                || hl > ip_len
                || total < hl
                || total > ip_len)
        {
            return Err(MISMATCH);
        }
        // Address changes, covered by the L4 pseudo-header too.
        let mut pseudo = Delta::ZERO;
        if let Some(a) = self.src_v4 {
            let old = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
            if old != a {
                pseudo.u32(old, a);
                h[12..16].copy_from_slice(&a.to_be_bytes());
            }
        }
        if let Some(a) = self.dst_v4 {
            let old = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
            if old != a {
                pseudo.u32(old, a);
                h[16..20].copy_from_slice(&a.to_be_bytes());
            }
        }
        let mut hdr = pseudo;
        if let Some(d) = self.dscp {
            let tos = h[1];
            let new = ((d & 0x3f) << 2) | (tos & 3);
            if new != tos {
                // The ToS byte is the low half of the header's first word.
                let hi = u16::from(h[0]) << 8;
                hdr.u16(hi | u16::from(tos), hi | u16::from(new));
                h[1] = new;
            }
        }
        if !hdr.is_zero() {
            let c = hdr.apply(u16::from_be_bytes([h[10], h[11]]));
            h[10..12].copy_from_slice(&c.to_be_bytes());
        }
        if ports.src.is_none() && ports.dst.is_none() && pseudo.is_zero() {
            // Nothing covered by the L4 checksum changed; the general
            // rewrite still checks the L4 header's lengths.
            return check_l4(frame, l4_kind, l4, l3_end);
        }
        let seg = frame.get_mut(l4..l3_end).ok_or(MISMATCH)?;
        let seg_len = seg.len();
        // TCP and UDP share the port fields; the checksum's place and the
        // lengths checked (`new_checked`) differ.
        let csum_at = match l4_kind {
            L4Kind::Tcp => {
                let t: &[u8; tcp::HEADER_LEN] = seg.first_chunk().ok_or(MISMATCH)?;
                let hl = usize::from(t[12] >> 4) * 4;
                if !TRUSTED && (hl < tcp::HEADER_LEN || hl > seg_len) {
                    return Err(MISMATCH);
                }
                tcp::field::CHECKSUM
            }
            _ => {
                let u: &[u8; udp::HEADER_LEN] = seg.first_chunk().ok_or(MISMATCH)?;
                let len = usize::from(u16::from_be_bytes([u[4], u[5]]));
                if !TRUSTED && (len < udp::HEADER_LEN || len > seg_len) {
                    return Err(MISMATCH);
                }
                udp::field::CHECKSUM
            }
        };
        let p: &mut [u8; udp::HEADER_LEN] = seg.first_chunk_mut().ok_or(MISMATCH)?;
        let mut d = pseudo;
        if let Some(port) = ports.src {
            let old = u16::from_be_bytes([p[0], p[1]]);
            if port != old {
                d.u16(old, port);
                p[0..2].copy_from_slice(&port.to_be_bytes());
            }
        }
        if let Some(port) = ports.dst {
            let old = u16::from_be_bytes([p[2], p[3]]);
            if port != old {
                d.u16(old, port);
                p[2..4].copy_from_slice(&port.to_be_bytes());
            }
        }
        if d.is_zero() {
            return Ok(());
        }
        let c = seg.get_mut(csum_at..csum_at + 2).ok_or(MISMATCH)?;
        let old = u16::from_be_bytes([c[0], c[1]]);
        let new = if l4_kind == L4Kind::Tcp {
            d.apply(old)
        } else if old == 0 {
            // UDP without a checksum keeps none (see `rewrite_l3_l4`).
            return Ok(());
        } else {
            match d.apply(old) {
                0 => 0xffff,
                c => c,
            }
        };
        c.copy_from_slice(&new.to_be_bytes());
        Ok(())
    }
}

impl FastPlan {
    /// [`FastPlan::tunnel_hash`] of a TCP or UDP key over IPv4 when the
    /// plan rewrites no IPv6 address (both ports rewritable): the general
    /// form's tests decided. (Kept apart from it: folded into it as a
    /// generic, the outbound NAT packet took 14–19 more instructions.)
    #[inline(always)]
    fn tunnel_hash_tcp_udp_v4(&self, t: &Transposition, key: &FlowKey, ports: &PortRewrite) -> u64 {
        match (key.src_ip, key.dst_ip) {
            (IpAddr::V4(s), IpAddr::V4(d)) if ports_rewritable(key) == (true, true) => self
                .hash_translated_v4(
                    s,
                    d,
                    key.proto,
                    ports.src.unwrap_or(key.src_port),
                    ports.dst.unwrap_or(key.dst_port),
                ),
            _ => self.tunnel_hash(t, key, ports),
        }
    }

    /// The tunnel hash of an IPv4 tuple with the plan's address rewrites
    /// applied (`src_port`, `dst_port` already translated).
    #[inline(always)]
    fn hash_translated_v4(
        &self,
        s: Ipv4Addr,
        d: Ipv4Addr,
        proto: u8,
        src_port: u16,
        dst_port: u16,
    ) -> u64 {
        tunnel_hash_v4(
            self.src_v4.unwrap_or(s.to_bits()),
            self.dst_v4.unwrap_or(d.to_bits()),
            ports_word(proto, src_port, dst_port),
        )
    }

    /// `tunnel_hash(&t.tuple_with_ports(key, ports))`, computed on numbers
    /// when the key and the rewrite are IPv4 (or the key is not IP, so its
    /// fields stay as they are).
    #[inline]
    fn tunnel_hash(&self, t: &Transposition, key: &FlowKey, ports: &PortRewrite) -> u64 {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (key.src_ip, key.dst_ip) else {
            return tunnel_hash(&t.tuple_with_ports(key, *ports));
        };
        if !key.is_ip() {
            return tunnel_hash_v4(
                s.to_bits(),
                d.to_bits(),
                ports_word(key.proto, key.src_port, key.dst_port),
            );
        }
        if self.ip_v6 == Some(true) {
            return tunnel_hash(&t.tuple_with_ports(key, *ports));
        }
        let (src_ok, dst_ok) = ports_rewritable(key);
        let pick = |ok: bool, new: Option<u16>, old: u16| match new {
            Some(p) if ok => p,
            _ => old,
        };
        self.hash_translated_v4(
            s,
            d,
            key.proto,
            pick(src_ok, ports.src, key.src_port),
            pick(dst_ok, ports.dst, key.dst_port),
        )
    }
}

/// The L4 header checks of [`rewrite_l3_l4`] for TCP / UDP, when no byte of
/// it changes.
fn check_l4(frame: &[u8], l4_kind: L4Kind, l4: usize, l3_end: usize) -> Result<(), EmitError> {
    let seg = frame.get(l4..l3_end).ok_or(MISMATCH)?;
    let ok = match l4_kind {
        L4Kind::Tcp => tcp::Packet::new_checked(seg).is_ok(),
        _ => udp::Packet::new_checked(seg).is_ok(),
    };
    if ok { Ok(()) } else { Err(MISMATCH) }
}

/// Put `p`'s outer headers in front of the `inner_len` bytes of `buf` and
/// fill in the fields that depend on the packet.
#[inline(always)]
fn push_template(
    p: &OuterTemplate,
    push_len: usize,
    inner_len: usize,
    src_port: u16,
    buf: &mut PacketBuf,
) -> Result<(), EmitError> {
    buf.start = buf
        .start
        .checked_sub(push_len)
        .ok_or(EmitError::NoHeadroom(push_len))?;
    let frame = buf.as_mut_slice();
    let hdr = frame.get_mut(..push_len).ok_or(MISMATCH)?;
    // VXLAN over IPv4, the usual template, is copied as a fixed-size
    // array: inline moves instead of a call to `memcpy`.
    match (
        hdr.first_chunk_mut::<VXLAN_V4_LEN>(),
        p.bytes.first_chunk::<VXLAN_V4_LEN>(),
    ) {
        (Some(d), Some(s)) if push_len == VXLAN_V4_LEN => *d = *s,
        _ => hdr.copy_from_slice(&p.bytes),
    }
    // Lengths fit 16 bits (checked by the callers).
    let total = (push_len - IP + inner_len) as u16;
    hdr[IP_TOTAL_LEN..IP_TOTAL_LEN + 2].copy_from_slice(&total.to_be_bytes());
    // One end-around-carry addition: the template's sum is folded.
    let (sum, carry) = p.ip_sum.overflowing_add(total);
    let csum = !(sum + u16::from(carry));
    hdr[IP_CHECKSUM..IP_CHECKSUM + 2].copy_from_slice(&csum.to_be_bytes());
    if p.udp {
        let udp_len = (push_len - L4 + inner_len) as u16;
        hdr[UDP_LEN..UDP_LEN + 2].copy_from_slice(&udp_len.to_be_bytes());
        hdr[UDP_SRC_PORT..UDP_SRC_PORT + 2].copy_from_slice(&src_port.to_be_bytes());
    }
    Ok(())
}

/// The shortcut. `V4`: the packet passed [`FastPlan::plain_v4`], so the
/// tests between the IPv4 rewrite and the general one, and those of the
/// tunnel hash's general form, are known to pass; `PLAIN` (with `V4`): the
/// frame has no outer groups, so nothing is popped. Either only drops
/// branches already decided: the result is the same. `TRUSTED`: `parsed`
/// is the parse of the frame's bytes, so the header checks the parser
/// made are not made again (see [`apply_planned_inline`]). `tunnel_port`:
/// see [`apply_planned`].
#[inline(always)]
fn apply_fast<const V4: bool, const PLAIN: bool, const TRUSTED: bool>(
    t: &Transposition,
    f: &FastPlan,
    ports: &PortRewrite,
    tunnel_port: Option<u16>,
    buf: &mut PacketBuf,
    parsed: &Parsed,
) -> Result<(), EmitError> {
    let lay = &parsed.layout;
    let key = &parsed.ufid.inner;
    let (has_outer, inner_eth, inner_end) = if PLAIN {
        // `inner_bounds` of a frame without outer groups.
        let inner_end = lay.inner_end as usize;
        if inner_end > buf.len() || lay.inner_eth != 0 {
            return Err(MISMATCH);
        }
        (false, 0, inner_end)
    } else {
        inner_bounds(buf, parsed)?
    };
    // `fits` ruled out kept outer groups: any existing ones go.
    let pop = has_outer;
    let inner_len = if pop {
        inner_end - inner_eth
    } else {
        buf.len()
    };
    let push_len = f.push.as_ref().map_or(0, |p| p.bytes.len());
    if f.push.is_some() && push_len - IP + inner_len > usize::from(u16::MAX) {
        return Err(EmitError::TooLong);
    }
    buf.ensure_headroom(push_len.saturating_sub(if pop { inner_eth } else { 0 }))?;

    // 1. Pop.
    if pop {
        buf.end = buf.start + inner_end;
        buf.start += inner_eth;
    }
    let shift = if pop { inner_eth } else { 0 };
    let rel = |off: u32| (off as usize).checked_sub(shift).ok_or(MISMATCH);

    // 2. Inner groups.
    {
        let frame = buf.as_mut_slice();
        let eth = rel(lay.inner_eth)?;
        if t.src_mac.is_some() || t.dst_mac.is_some() {
            let e: &mut [u8; ethernet::HEADER_LEN] = frame
                .get_mut(eth..)
                .and_then(|f| f.first_chunk_mut())
                .ok_or(MISMATCH)?;
            if let Some(m) = t.dst_mac {
                e[..6].copy_from_slice(&m.0);
            }
            if let Some(m) = t.src_mac {
                e[6..12].copy_from_slice(&m.0);
            }
        }
        let is_ip = V4 || key.is_ip() && matches!(lay.l3_kind, L3Kind::Ipv4 | L3Kind::Ipv6);
        if is_ip && (f.l3 || ports.src.is_some() || ports.dst.is_some()) {
            let offs = [rel(lay.l3)?, rel(lay.l4)?, rel(lay.l3_end)?];
            if V4
                || lay.l3_kind == L3Kind::Ipv4
                    && !lay.fragment
                    && matches!(lay.l4_kind, L4Kind::Tcp | L4Kind::Udp)
            {
                f.rewrite_v4::<TRUSTED>(ports, frame, lay.l4_kind, offs)?;
            } else {
                rewrite_l3_l4(t, ports, frame, lay, offs, key.icmp_type)?;
            }
        }
    }

    // 3. Push: the template, then the fields that depend on the packet.
    if let Some(p) = &f.push {
        let src_port = match tunnel_port {
            Some(port) => port,
            // (An NVGRE template has no port to write.)
            None if !p.udp => 0,
            None if V4 => tunnel_src_port(f.tunnel_hash_tcp_udp_v4(t, key, ports)),
            None => tunnel_src_port(f.tunnel_hash(t, key, ports)),
        };
        push_template(p, push_len, inner_len, src_port, buf)?;
    }
    Ok(())
}
