//! Emit: apply one compiled [`Transposition`] to a frame in place.
//!
//! The frame lives in a [`PacketBuf`] with headroom, so pushing headers
//! (a VLAN tag, a whole outer Ethernet/IP/UDP/encap group) only moves the
//! buffer start back and writes the new bytes; popping moves it forward.
//! Nothing is allocated and the payload is never copied, except for the
//! rare fallback that shifts a frame into its tailroom when the headroom is
//! too small.
//!
//! Order of operations (VFP-9 semantics):
//! 1. pop the outer groups (`Pop`, `Replace`, or `Push` onto an already
//!    tunnelled frame: Strata keeps one level of encapsulation);
//! 2. rewrite the inner groups: MACs, IP addresses, DSCP, ports / ICMP echo
//!    identifier, then the VLAN tag; checksums are updated incrementally
//!    (RFC 1624), so the cost does not depend on the payload;
//! 3. push the new outer groups, with full checksums for the headers built.
//!
//! If the outer groups are kept (`Ignore`) while inner bytes change, the
//! outer length fields follow any VLAN push/pop and a non-zero outer UDP
//! (or GRE) checksum, which covers the inner frame, is recomputed.
//!
//! Everything that can make a transposition inapplicable (address family,
//! encap parameters, lengths, headroom) is checked before the first byte is
//! written, so on error the frame is unchanged — given that the `Parsed`
//! passed in was parsed from this very buffer (the engine's case). A stale
//! or foreign `Parsed` can fail after the IP header was rewritten.

use crate::checksum::{self, Delta};
use crate::flow::TunnelKind;
use crate::flow::{ethertype, ipproto, tunnel_hash};
use crate::parse::{L3Kind, L4Kind, Layout, Parsed};
use crate::transposition::{Encap, OuterOp, PortRewrite, Transposition, VlanOp};
use crate::wire::{ethernet, geneve, icmp, ipv4, ipv6, nvgre, tcp, udp, vlan, vxlan};
use std::net::IpAddr;

mod plan;
pub use plan::{EmitPlan, apply_planned, apply_planned_inline};

/// Default headroom kept in front of a frame for pushed outer headers:
/// Ethernet + IPv6 + UDP + Geneve (70 bytes) with 58 bytes to spare for
/// Geneve options or a VLAN tag. Larger pushes still work when the buffer
/// has tailroom (the frame is shifted once), else fail with
/// [`EmitError::NoHeadroom`].
pub const DEFAULT_HEADROOM: usize = 128;

/// The first port of the range VXLAN/Geneve source ports are drawn from
/// (RFC 7348 §5 recommends the dynamic range 49152–65535).
pub const TUNNEL_SRC_PORT_BASE: u16 = 49152;
/// Size of that range.
pub const TUNNEL_SRC_PORT_RANGE: u64 = 16384;

/// A frame buffer with headroom, reused across packets (no allocation on the
/// fast path after construction).
#[derive(Clone, Debug)]
pub struct PacketBuf {
    storage: Vec<u8>,
    start: usize,
    end: usize,
    /// Headroom restored by [`PacketBuf::reset`].
    reserve: usize,
}

impl PacketBuf {
    /// A buffer able to hold `capacity` frame bytes plus [`DEFAULT_HEADROOM`].
    pub fn with_capacity(capacity: usize) -> PacketBuf {
        PacketBuf::with_headroom(capacity, DEFAULT_HEADROOM)
    }

    /// A buffer able to hold `capacity` frame bytes plus `headroom`.
    pub fn with_headroom(capacity: usize, headroom: usize) -> PacketBuf {
        PacketBuf {
            storage: vec![0; capacity + headroom],
            start: headroom,
            end: headroom,
            reserve: headroom,
        }
    }

    /// A buffer holding a copy of `frame` with default headroom.
    pub fn from_frame(frame: &[u8]) -> PacketBuf {
        let mut b = PacketBuf::with_capacity(frame.len().max(2048));
        b.reset(frame);
        b
    }

    /// Replace the contents with `frame`, restoring full headroom. Grows the
    /// storage only if the frame does not fit.
    pub fn reset(&mut self, frame: &[u8]) {
        let need = self.reserve + frame.len();
        if self.storage.len() < need {
            self.storage.resize(need, 0);
        }
        self.start = self.reserve;
        self.end = self.start + frame.len();
        self.storage[self.start..self.end].copy_from_slice(frame);
    }

    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.end]
    }

    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.end]
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    #[inline]
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Bytes free after the frame.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.storage.len() - self.end
    }

    /// Make at least `n` bytes of headroom, shifting the frame into the
    /// tailroom if needed (a copy, but no allocation).
    #[inline]
    fn ensure_headroom(&mut self, n: usize) -> Result<(), EmitError> {
        if self.start >= n {
            return Ok(());
        }
        let deficit = n - self.start;
        if self.tailroom() < deficit {
            return Err(EmitError::NoHeadroom(n));
        }
        self.storage
            .copy_within(self.start..self.end, self.start + deficit);
        self.start += deficit;
        self.end += deficit;
        Ok(())
    }
}

/// Why a transposition could not be applied. The frame is left unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    #[error("not enough headroom to push {0} bytes")]
    NoHeadroom(usize),
    #[error("IP rewrite to an address of the other family")]
    FamilyMismatch,
    #[error("encap source and destination addresses of different families")]
    EncapFamilyMismatch,
    #[error("Geneve options not a well-formed TLV list of at most 252 bytes")]
    BadGeneveOptions,
    #[error("result exceeds an IP or UDP length field")]
    TooLong,
    #[error("parsed layout does not describe this buffer")]
    LayoutMismatch,
}

impl EmitError {
    /// Every reason string [`EmitError::reason`] can return.
    pub const REASONS: &'static [&'static str] = &[
        "no-headroom",
        "ip-family-mismatch",
        "encap-family-mismatch",
        "bad-geneve-options",
        "too-long",
        "layout-mismatch",
    ];

    /// A stable kebab-case reason used as a drop counter name.
    pub fn reason(&self) -> &'static str {
        match self {
            EmitError::NoHeadroom(_) => "no-headroom",
            EmitError::FamilyMismatch => "ip-family-mismatch",
            EmitError::EncapFamilyMismatch => "encap-family-mismatch",
            EmitError::BadGeneveOptions => "bad-geneve-options",
            EmitError::TooLong => "too-long",
            EmitError::LayoutMismatch => "layout-mismatch",
        }
    }
}

const MISMATCH: EmitError = EmitError::LayoutMismatch;

/// Length of the outer groups `e` pushes.
pub fn encap_len(e: &Encap) -> usize {
    let ip = match e.src_ip {
        IpAddr::V4(_) => ipv4::HEADER_LEN,
        IpAddr::V6(_) => ipv6::HEADER_LEN,
    };
    ethernet::HEADER_LEN + ip + encap_l4_len(e)
}

/// Length of the outer L4 + encap headers: UDP + VXLAN / UDP + Geneve +
/// options / GRE with key.
fn encap_l4_len(e: &Encap) -> usize {
    match e.kind {
        TunnelKind::Vxlan => udp::HEADER_LEN + vxlan::HEADER_LEN,
        TunnelKind::Geneve => udp::HEADER_LEN + geneve::BASE_LEN + e.geneve_options.len(),
        TunnelKind::Nvgre => nvgre::NVGRE_LEN,
    }
}

/// The outer UDP source port for an inner flow's
/// [`tunnel_hash`] (RFC 7348 §5).
pub fn tunnel_src_port(hash: u64) -> u16 {
    TUNNEL_SRC_PORT_BASE + (hash % TUNNEL_SRC_PORT_RANGE) as u16
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// Apply `t` to the frame in `buf`, which `parsed` describes.
pub fn apply(t: &Transposition, buf: &mut PacketBuf, parsed: &Parsed) -> Result<(), EmitError> {
    apply_with_ports(t, &t.ports(), buf, parsed)
}

/// Apply `t` with its port rewrite replaced by `ports`: the split form flow
/// tables store (see [`Transposition::split_ports`]), applied without
/// rebuilding the whole transposition.
pub fn apply_with_ports(
    t: &Transposition,
    ports: &PortRewrite,
    buf: &mut PacketBuf,
    parsed: &Parsed,
) -> Result<(), EmitError> {
    let lay = &parsed.layout;
    let key = &parsed.ufid.inner;
    let (has_outer, inner_eth, inner_end) = inner_bounds(buf, parsed)?;

    // ---- Validation: nothing is written before this block passes. ----
    let is_ip = key.is_ip() && matches!(lay.l3_kind, L3Kind::Ipv4 | L3Kind::Ipv6);
    if is_ip {
        let v6 = lay.l3_kind == L3Kind::Ipv6;
        for ip in [t.src_ip, t.dst_ip].into_iter().flatten() {
            if ip.is_ipv6() != v6 {
                return Err(EmitError::FamilyMismatch);
            }
        }
    }
    let encap: Option<&Encap> = match &t.outer {
        OuterOp::Push(e) | OuterOp::Replace(e) => Some(e),
        OuterOp::Ignore | OuterOp::Pop => None,
    };
    if let Some(e) = encap {
        if !same_family(e.src_ip, e.dst_ip) {
            return Err(EmitError::EncapFamilyMismatch);
        }
        if e.kind == TunnelKind::Geneve && geneve::check_options(&e.geneve_options).is_err() {
            return Err(EmitError::BadGeneveOptions);
        }
    }
    // One level of encapsulation: any outer op other than Ignore removes
    // the existing outer groups.
    let pop = has_outer && t.outer != OuterOp::Ignore;
    let vlan_count = usize::from(lay.vlan_count).min(vlan::MAX_TAGS);
    let (vlan_push, vlan_pop) = match t.vlan {
        VlanOp::Set(_) => (vlan_count == 0, 0),
        VlanOp::Pop => (false, vlan_count),
        VlanOp::Ignore => (false, 0),
    };
    let growth = if vlan_push { vlan::TAG_LEN } else { 0 };
    let shrink = vlan_pop * vlan::TAG_LEN;
    let kept_len = if pop {
        inner_end - inner_eth
    } else {
        buf.len()
    };
    let inner_len = (kept_len + growth).checked_sub(shrink).ok_or(MISMATCH)?;
    if has_outer && !pop && growth > 0 {
        check_outer_growth(buf.as_slice(), lay, growth)?;
    }
    let push_len = match encap {
        Some(e) => {
            // The outer IPv4 total length / IPv6 payload length (and the
            // UDP length, which is smaller) must fit 16 bits.
            let ip_hdr = if e.src_ip.is_ipv4() {
                ipv4::HEADER_LEN
            } else {
                0
            };
            if encap_l4_len(e) + inner_len + ip_hdr > usize::from(u16::MAX) {
                return Err(EmitError::TooLong);
            }
            encap_len(e)
        }
        None => 0,
    };
    // Headroom: popped outer bytes and popped tags free room before the
    // pushes happen.
    let freed = if pop { inner_eth } else { 0 } + shrink;
    let need = (push_len + growth).saturating_sub(freed);
    buf.ensure_headroom(need)?;

    // ---- 1. Pop the outer groups. ----
    let shift = if pop {
        buf.end = buf.start + inner_end;
        buf.start += inner_eth;
        inner_eth
    } else {
        0
    };
    // Inner offsets in the current frame.
    let rel = |off: u32| (off as usize).checked_sub(shift).ok_or(MISMATCH);

    // ---- 2. Inner groups. ----
    let mut dirty = false;
    {
        let frame = buf.as_mut_slice();
        let eth = rel(lay.inner_eth)?;
        if t.src_mac.is_some() || t.dst_mac.is_some() {
            let mut f = ethernet::Frame::new_checked(frame.get_mut(eth..).ok_or(MISMATCH)?)
                .map_err(|_| MISMATCH)?;
            if let Some(m) = t.dst_mac {
                dirty |= f.dst_addr() != m;
                f.set_dst_addr(m);
            }
            if let Some(m) = t.src_mac {
                dirty |= f.src_addr() != m;
                f.set_src_addr(m);
            }
        }
        if is_ip {
            let offs = [rel(lay.l3)?, rel(lay.l4)?, rel(lay.l3_end)?];
            dirty |= rewrite_l3_l4(t, ports, frame, lay, offs, key.icmp_type)?;
        }
    }
    match t.vlan {
        VlanOp::Set(vid) if vlan_count > 0 => {
            let tci = rel(lay.vlan_tci[vlan_count - 1])?;
            let frame = buf.as_mut_slice();
            let mut tag = vlan::Tag::new_checked(frame.get_mut(tci..).ok_or(MISMATCH)?)
                .map_err(|_| MISMATCH)?;
            dirty |= tag.vid() != vid & 0x0fff;
            tag.set_vid(vid);
        }
        VlanOp::Set(vid) => {
            // Move everything before the ethertype (outer groups if kept,
            // inner MACs) 4 bytes into the headroom, then write the tag
            // where the ethertype was.
            let at = rel(lay.inner_eth)? + ethernet::field::ETHERTYPE;
            if at > buf.len() {
                return Err(MISMATCH);
            }
            let (s, n) = (buf.start, vlan::TAG_LEN);
            // Headroom was ensured above; checked anyway so a broken
            // invariant is an error, not a panic.
            let dst = s.checked_sub(n).ok_or(EmitError::NoHeadroom(n))?;
            buf.storage.copy_within(s..s + at, dst);
            buf.start = dst;
            let frame = buf.as_mut_slice();
            vlan::Repr::ctag(vid)
                .emit(frame.get_mut(at..).ok_or(MISMATCH)?)
                .map_err(|_| MISMATCH)?;
            dirty = true;
        }
        VlanOp::Pop if vlan_count > 0 => {
            // The first tag's TPID sits where the untagged ethertype goes;
            // move everything before it forward over the tags.
            let tpid = rel(lay.vlan_tci[0])?.checked_sub(2).ok_or(MISMATCH)?;
            if tpid + shrink > buf.len() {
                return Err(MISMATCH);
            }
            let s = buf.start;
            buf.storage.copy_within(s..s + tpid, s + shrink);
            buf.start += shrink;
            dirty = true;
        }
        VlanOp::Pop | VlanOp::Ignore => {}
    }

    // ---- Kept outer groups: lengths and checksums covering the inner frame. ----
    if has_outer && !pop && dirty {
        fix_outer(
            buf.as_mut_slice(),
            lay,
            parsed,
            growth as isize - shrink as isize,
        )?;
    }

    // ---- 3. Push the new outer groups. ----
    if let Some(e) = encap {
        let hash = tunnel_hash(&t.tuple_with_ports(key, *ports));
        push_outer(buf, e, hash, push_len)?;
    }
    Ok(())
}

/// Whether the frame has outer groups, and where its inner frame starts and
/// ends; an error if `parsed` cannot describe `buf`.
#[inline]
fn inner_bounds(buf: &PacketBuf, parsed: &Parsed) -> Result<(bool, usize, usize), EmitError> {
    let lay = &parsed.layout;
    let has_outer = parsed.ufid.outer.is_some();
    let inner_eth = lay.inner_eth as usize;
    let inner_end = lay.inner_end as usize;
    if inner_end > buf.len() || inner_eth > inner_end || (!has_outer && inner_eth != 0) {
        return Err(MISMATCH);
    }
    Ok((has_outer, inner_eth, inner_end))
}

/// The port fields TCP and UDP share (the first four bytes of both).
trait PortFields {
    fn ports(&self) -> (u16, u16);
    fn set_src(&mut self, port: u16);
    fn set_dst(&mut self, port: u16);
}

/// The same accessors in both views.
macro_rules! port_fields {
    ($($view:ty),*) => {$(
        impl PortFields for $view {
            fn ports(&self) -> (u16, u16) {
                (self.src_port(), self.dst_port())
            }
            fn set_src(&mut self, port: u16) {
                self.set_src_port(port);
            }
            fn set_dst(&mut self, port: u16) {
                self.set_dst_port(port);
            }
        }
    )*};
}

port_fields!(tcp::Packet<&mut [u8]>, udp::Packet<&mut [u8]>);

/// Write the ports `ports` rewrites that differ from the segment's,
/// adding each change to the checksum delta `d`.
fn rewrite_ports(p: &mut impl PortFields, ports: &PortRewrite, d: &mut Delta) {
    let (src, dst) = p.ports();
    if let Some(port) = ports.src
        && port != src
    {
        d.u16(src, port);
        p.set_src(port);
    }
    if let Some(port) = ports.dst
        && port != dst
    {
        d.u16(dst, port);
        p.set_dst(port);
    }
}

/// Rewrite IP addresses, DSCP and ports / echo id, keeping the IPv4 header
/// checksum and the L4 checksum valid. Returns whether a byte changed.
fn rewrite_l3_l4(
    t: &Transposition,
    ports: &PortRewrite,
    frame: &mut [u8],
    lay: &Layout,
    [l3, l4, l3_end]: [usize; 3],
    icmp_type: u8,
) -> Result<bool, EmitError> {
    let mut dirty = false;
    // Changes covered by the L4 pseudo-header (addresses).
    let mut pseudo = Delta::ZERO;
    let v6 = lay.l3_kind == L3Kind::Ipv6;
    let ip_buf = frame.get_mut(l3..).ok_or(MISMATCH)?;
    if v6 {
        let mut ip = ipv6::Packet::new_checked(ip_buf).map_err(|_| MISMATCH)?;
        if let Some(IpAddr::V6(a)) = t.src_ip {
            let old = ip.src_addr();
            if old != a {
                pseudo.u128(old.to_bits(), a.to_bits());
                ip.set_src_addr(a);
            }
        }
        if let Some(IpAddr::V6(a)) = t.dst_ip {
            let old = ip.dst_addr();
            if old != a {
                pseudo.u128(old.to_bits(), a.to_bits());
                ip.set_dst_addr(a);
            }
        }
        if let Some(d) = t.dscp {
            let tc = ip.traffic_class();
            let new = ((d & 0x3f) << 2) | (tc & 3);
            if new != tc {
                ip.set_traffic_class(new);
                dirty = true;
            }
        }
    } else {
        let mut ip = ipv4::Packet::new_checked(ip_buf).map_err(|_| MISMATCH)?;
        if let Some(IpAddr::V4(a)) = t.src_ip {
            let old = ip.src_addr();
            if old != a {
                pseudo.u32(old.to_bits(), a.to_bits());
                ip.set_src_addr(a);
            }
        }
        if let Some(IpAddr::V4(a)) = t.dst_ip {
            let old = ip.dst_addr();
            if old != a {
                pseudo.u32(old.to_bits(), a.to_bits());
                ip.set_dst_addr(a);
            }
        }
        let mut hdr = pseudo;
        if let Some(d) = t.dscp {
            let tos = ip.tos();
            let new = ((d & 0x3f) << 2) | (tos & 3);
            if new != tos {
                // The ToS byte is the low half of the header's first word.
                let hi = u16::from(ip.version()) << 12 | (ip.header_len() as u16 / 4) << 8;
                hdr.u16(hi | u16::from(tos), hi | u16::from(new));
                ip.set_tos(new);
            }
        }
        if !hdr.is_zero() {
            let c = hdr.apply(ip.checksum());
            ip.set_checksum(c);
            dirty = true;
        }
    }
    dirty |= !pseudo.is_zero();

    if lay.non_first_fragment {
        // The L4 header (and checksum) is in the first fragment.
        return Ok(dirty);
    }
    let seg = frame.get_mut(l4..l3_end).ok_or(MISMATCH)?;
    match lay.l4_kind {
        L4Kind::Tcp => {
            let mut p = tcp::Packet::new_checked(seg).map_err(|_| MISMATCH)?;
            let mut d = pseudo;
            rewrite_ports(&mut p, ports, &mut d);
            if !d.is_zero() {
                let c = d.apply(p.checksum());
                p.set_checksum(c);
                dirty = true;
            }
        }
        L4Kind::Udp => {
            // A first fragment's length field is the whole datagram's.
            let p = if lay.fragment {
                udp::Packet::new_checked_first_fragment(seg)
            } else {
                udp::Packet::new_checked(seg)
            };
            let mut p = p.map_err(|_| MISMATCH)?;
            let mut d = pseudo;
            rewrite_ports(&mut p, ports, &mut d);
            // 0 means "no checksum" (optional over IPv4; over IPv6 only for
            // tunnels, RFC 6935): keep it absent. A computed 0 is sent as
            // 0xffff, its ones' complement equivalent (RFC 768).
            let old = p.checksum();
            if !d.is_zero() {
                dirty = true;
                if old != 0 {
                    let c = match d.apply(old) {
                        0 => 0xffff,
                        c => c,
                    };
                    p.set_checksum(c);
                }
            }
        }
        L4Kind::Icmpv4 | L4Kind::Icmpv6 => {
            let mut p = icmp::Packet::new_checked(seg).map_err(|_| MISMATCH)?;
            // ICMPv6 covers the pseudo-header; ICMPv4 does not.
            let mut d = if v6 { pseudo } else { Delta::ZERO };
            let id = if icmp::is_echo_request(v6, icmp_type) {
                ports.src
            } else if icmp::is_echo_reply(v6, icmp_type) {
                ports.dst
            } else {
                None
            };
            if let Some(id) = id {
                let old = p.echo_ident();
                if old != id {
                    d.u16(old, id);
                    p.set_echo_ident(id);
                    dirty = true;
                }
            }
            if !d.is_zero() {
                let c = d.apply(p.checksum());
                p.set_checksum(c);
            }
        }
        L4Kind::None | L4Kind::Other => {}
    }
    Ok(dirty)
}

/// Before a VLAN push inside a kept tunnel: the outer length fields must
/// have room for the extra bytes.
fn check_outer_growth(frame: &[u8], lay: &Layout, growth: usize) -> Result<(), EmitError> {
    let l3 = frame.get(lay.outer_l3 as usize..).ok_or(MISMATCH)?;
    let ip_len = if lay.outer_l3_v6 {
        ipv6::Packet::new_checked(l3)
            .map_err(|_| MISMATCH)?
            .payload_len()
    } else {
        ipv4::Packet::new_checked(l3)
            .map_err(|_| MISMATCH)?
            .total_len()
    };
    if ip_len + growth > usize::from(u16::MAX) {
        return Err(EmitError::TooLong);
    }
    Ok(())
}

/// Outer addresses for a pseudo-header sum.
enum Addrs {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

impl Addrs {
    fn pseudo(&self, proto: u8, len: u32) -> u16 {
        match self {
            Addrs::V4(s, d) => checksum::pseudo_header_v4(*s, *d, proto, len),
            Addrs::V6(s, d) => checksum::pseudo_header_v6(s, d, proto, len),
        }
    }
}

fn read16(frame: &[u8], at: usize) -> Result<u16, EmitError> {
    match frame.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(MISMATCH),
    }
}

fn write16(frame: &mut [u8], at: usize, v: u16) -> Result<(), EmitError> {
    frame
        .get_mut(at..at + 2)
        .ok_or(MISMATCH)?
        .copy_from_slice(&v.to_be_bytes());
    Ok(())
}

/// Adjust kept outer groups after the inner frame changed: length fields
/// by `delta` bytes (VLAN push/pop), the outer IPv4 header checksum, and a
/// non-zero UDP (VXLAN/Geneve) or GRE (NVGRE with C flag) checksum, which
/// covers the inner frame and is recomputed in full (rare: outer UDP
/// checksums are usually 0, and transit rewrites under a kept tunnel are
/// uncommon).
fn fix_outer(
    frame: &mut [u8],
    lay: &Layout,
    parsed: &Parsed,
    delta: isize,
) -> Result<(), EmitError> {
    let Some(outer) = parsed.ufid.outer else {
        return Ok(());
    };
    let l3 = lay.outer_l3 as usize;
    let l4 = lay.outer_l4 as usize;
    let adj = |v: u16| -> Result<u16, EmitError> {
        let n = usize::from(v).checked_add_signed(delta).ok_or(MISMATCH)?;
        u16::try_from(n).map_err(|_| EmitError::TooLong)
    };
    // Length fields are updated with raw reads/writes first: a view checks
    // them against the buffer, which already has its new length.
    let (addrs, ip_end) = if lay.outer_l3_v6 {
        let at = l3 + ipv6::field::PAYLOAD_LEN;
        let plen = adj(read16(frame, at)?)?;
        write16(frame, at, plen)?;
        let ip =
            ipv6::Packet::new_checked(frame.get(l3..).ok_or(MISMATCH)?).map_err(|_| MISMATCH)?;
        (
            Addrs::V6(ip.src_bytes(), ip.dst_bytes()),
            l3 + ipv6::HEADER_LEN + usize::from(plen),
        )
    } else {
        let at = l3 + ipv4::field::LENGTH;
        let old = read16(frame, at)?;
        let total = adj(old)?;
        if total != old {
            let c_at = l3 + ipv4::field::CHECKSUM;
            let c = checksum::update_u16(read16(frame, c_at)?, old, total);
            write16(frame, at, total)?;
            write16(frame, c_at, c)?;
        }
        let ip =
            ipv4::Packet::new_checked(frame.get(l3..).ok_or(MISMATCH)?).map_err(|_| MISMATCH)?;
        (
            Addrs::V4(ip.src_bytes(), ip.dst_bytes()),
            l3 + usize::from(total),
        )
    };
    let seg = frame.get_mut(l4..ip_end).ok_or(MISMATCH)?;
    match outer.tunnel {
        TunnelKind::Vxlan | TunnelKind::Geneve => {
            let ulen = adj(read16(seg, udp::field::LENGTH)?)?;
            write16(seg, udp::field::LENGTH, ulen)?;
            let mut u = udp::Packet::new_checked(&mut *seg).map_err(|_| MISMATCH)?;
            if u.checksum() != 0 {
                u.set_checksum(0);
                let pseudo = addrs.pseudo(ipproto::UDP, u32::from(ulen));
                let data = seg.get(..usize::from(ulen)).ok_or(MISMATCH)?;
                let c = match checksum::with_pseudo(pseudo, data) {
                    0 => 0xffff,
                    c => c,
                };
                write16(seg, udp::field::CHECKSUM, c)?;
            }
        }
        TunnelKind::Nvgre => {
            let mut g = nvgre::Header::new_checked(&mut *seg).map_err(|_| MISMATCH)?;
            if g.has_checksum() {
                // GRE checksum: over the GRE header and payload (RFC 2784).
                g.set_checksum(0);
                let c = checksum::checksum(seg);
                write16(seg, nvgre::field::OPTIONAL, c)?;
            }
        }
    }
    Ok(())
}

/// Write the outer Ethernet / IP / UDP or GRE / encap headers of `e` in
/// front of the frame (`push_len` bytes of headroom are guaranteed).
fn push_outer(buf: &mut PacketBuf, e: &Encap, hash: u64, push_len: usize) -> Result<(), EmitError> {
    let inner_len = buf.len();
    buf.start = buf
        .start
        .checked_sub(push_len)
        .ok_or(EmitError::NoHeadroom(push_len))?;
    let frame = buf.as_mut_slice();
    let v6 = e.src_ip.is_ipv6();
    let ip_hdr = if v6 {
        ipv6::HEADER_LEN
    } else {
        ipv4::HEADER_LEN
    };
    let l4_off = ethernet::HEADER_LEN + ip_hdr;
    // IP payload: L4 + encap headers + inner frame.
    let ip_payload = push_len - l4_off + inner_len;
    let proto = match e.kind {
        TunnelKind::Nvgre => ipproto::GRE,
        TunnelKind::Vxlan | TunnelKind::Geneve => ipproto::UDP,
    };
    let wire_err = |_| EmitError::TooLong;
    ethernet::Repr {
        src_addr: e.src_mac,
        dst_addr: e.dst_mac,
        ethertype: if v6 { ethertype::IPV6 } else { ethertype::IPV4 },
    }
    .emit(frame)
    .map_err(wire_err)?;
    let ip_buf = frame.get_mut(ethernet::HEADER_LEN..).ok_or(MISMATCH)?;
    let addrs = match (e.src_ip, e.dst_ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ipv4::Repr {
                src_addr: s,
                dst_addr: d,
                protocol: proto,
                payload_len: ip_payload,
                ttl: e.ttl,
                tos: 0,
                ident: 0,
                dont_frag: true,
            }
            .emit(ip_buf)
            .map_err(wire_err)?;
            Addrs::V4(s.octets(), d.octets())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            ipv6::Repr {
                src_addr: s,
                dst_addr: d,
                next_header: proto,
                payload_len: ip_payload,
                hop_limit: e.ttl,
                traffic_class: 0,
                // RFC 6438: a per-flow label lets the underlay hash IPv6
                // tunnels like it hashes the UDP source port.
                flow_label: (hash >> 32) as u32 & 0xf_ffff,
            }
            .emit(ip_buf)
            .map_err(wire_err)?;
            Addrs::V6(s.octets(), d.octets())
        }
        _ => return Err(EmitError::EncapFamilyMismatch),
    };
    let l4 = frame.get_mut(l4_off..).ok_or(MISMATCH)?;
    let udp_repr = udp::Repr {
        src_port: tunnel_src_port(hash),
        dst_port: e.dst_port,
        payload_len: ip_payload.saturating_sub(udp::HEADER_LEN),
    };
    let encap_buf_start = udp::HEADER_LEN;
    match e.kind {
        TunnelKind::Vxlan => {
            udp_repr.emit(l4).map_err(wire_err)?;
            vxlan::Repr { vni: e.vni }
                .emit(l4.get_mut(encap_buf_start..).ok_or(MISMATCH)?)
                .map_err(wire_err)?;
        }
        TunnelKind::Geneve => {
            udp_repr.emit(l4).map_err(wire_err)?;
            geneve::Repr::ethernet(e.vni, &e.geneve_options)
                .emit(l4.get_mut(encap_buf_start..).ok_or(MISMATCH)?)
                .map_err(|_| EmitError::BadGeneveOptions)?;
        }
        TunnelKind::Nvgre => {
            nvgre::Repr {
                vsid: e.vni,
                flow_id: 0,
            }
            .emit(l4)
            .map_err(wire_err)?;
        }
    }
    if v6 && proto == ipproto::UDP {
        // UDP over IPv6 carries a checksum (RFC 8200 §8.1); this is the one
        // place the emitter sums the payload.
        let seg = l4.get(..ip_payload).ok_or(MISMATCH)?;
        let c = match checksum::with_pseudo(addrs.pseudo(ipproto::UDP, ip_payload as u32), seg) {
            0 => 0xffff,
            c => c,
        };
        write16(l4, udp::field::CHECKSUM, c)?;
    }
    Ok(())
}
