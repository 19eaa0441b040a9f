//! The parser's shortcut for the shapes nearly every frame has: untagged
//! Ethernet / IPv4 without options / TCP or UDP, unfragmented, either alone
//! or as the inner frame of an untagged Ethernet / IPv4 (no options,
//! unfragmented) / UDP / VXLAN tunnel.
//!
//! Every header offset of these shapes is a constant, so the checks are a
//! handful of compares on fixed-size arrays (no bounds checks, no view
//! construction), and the result is written into the caller's [`Parsed`]
//! in one go instead of being assembled field by field and then copied.
//!
//! The shortcut only ever *accepts*: a frame it does not recognise, or one
//! that would fail any check of the general parser, is left to the general
//! parser, which then returns the same result or typed error it always did.
//! So for every input the outcome equals the general parser's (property
//! tests in `tests/parse_fast.rs`).

use super::{L3Kind, L4Kind, Layout, PacketMeta, Parsed};
use crate::flow::{FlowKey, MacAddr, OuterKey, TunnelKind, Ufid, ethertype, ipproto, tunnel_port};
use crate::wire::{ethernet, ipv4, tcp, udp, vxlan};
use std::net::{IpAddr, Ipv4Addr};

/// Offsets in a VXLAN-over-IPv4 frame without VLAN tags or IP options.
const OUTER_L3: usize = ethernet::HEADER_LEN;
const OUTER_L4: usize = OUTER_L3 + ipv4::HEADER_LEN;
const ENCAP: usize = OUTER_L4 + udp::HEADER_LEN;
const INNER_ETH: usize = ENCAP + vxlan::HEADER_LEN;

/// First byte of an IPv4 header without options: version 4, IHL 5.
const VER_IHL_NO_OPTIONS: u8 = 0x45;
/// The MF flag and the fragment offset: zero for an unfragmented packet.
const FRAGMENT_BITS: u16 = 0x3fff;
/// VXLAN's I (VNI valid) flag.
const VXLAN_FLAG_I: u8 = 0x08;

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Length of an untagged Ethernet + option-less IPv4 header group.
const ETH_IPV4_LEN: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN;

/// An untagged Ethernet + option-less, unfragmented IPv4 header group. It
/// keeps the header bytes rather than the fields: they are read where
/// [`write`] stores them, after every check passed, so nothing is held in
/// registers (or spilled) across the checks.
struct EthIpv4<'a> {
    h: &'a [u8; ETH_IPV4_LEN],
    /// End of the datagram (offset in the frame).
    end: usize,
}

impl EthIpv4<'_> {
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.h[23]
    }

    #[inline(always)]
    fn mac(&self, at: usize) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.h[at..at + 6]);
        MacAddr(m)
    }

    #[inline(always)]
    fn ip(&self, at: usize) -> IpAddr {
        let h = self.h;
        IpAddr::V4(Ipv4Addr::new(h[at], h[at + 1], h[at + 2], h[at + 3]))
    }
}

/// The Ethernet + IPv4 group starting at `eth`, if it has the common shape
/// and passes every check the general parser makes (`frame` ends where
/// the frame, or the tunnel's inner frame, ends).
#[inline(always)]
fn eth_ipv4(frame: &[u8], eth: usize) -> Option<EthIpv4<'_>> {
    let h: &[u8; ETH_IPV4_LEN] = frame.get(eth..)?.first_chunk()?;
    if be16([h[12], h[13]]) != ethertype::IPV4 || h[14] != VER_IHL_NO_OPTIONS {
        return None;
    }
    let ip = eth + ethernet::HEADER_LEN;
    // Total length: at least the header, within the frame.
    let total = usize::from(be16([h[16], h[17]]));
    if total < ipv4::HEADER_LEN || total > frame.len() - ip {
        return None;
    }
    // Fragments: the general parser decides what their L4 fields are.
    if be16([h[20], h[21]]) & FRAGMENT_BITS != 0 {
        return None;
    }
    Some(EthIpv4 { h, end: ip + total })
}

/// The TCP or UDP fields of the inner (or only) packet.
struct L4 {
    kind: L4Kind,
    hdr_len: usize,
    src_port: u16,
    dst_port: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    payload_len: usize,
}

/// The TCP or UDP header of segment `seg`, if it passes the general
/// parser's checks.
#[inline(always)]
fn l4(proto: u8, seg: &[u8]) -> Option<L4> {
    match proto {
        ipproto::TCP => {
            let t: &[u8; tcp::HEADER_LEN] = seg.first_chunk()?;
            let hdr_len = usize::from(t[12] >> 4) * 4;
            if hdr_len < tcp::HEADER_LEN || hdr_len > seg.len() {
                return None;
            }
            Some(L4 {
                kind: L4Kind::Tcp,
                hdr_len,
                src_port: be16([t[0], t[1]]),
                dst_port: be16([t[2], t[3]]),
                flags: t[13],
                seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
                ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
                payload_len: seg.len() - hdr_len,
            })
        }
        ipproto::UDP => {
            let u: &[u8; udp::HEADER_LEN] = seg.first_chunk()?;
            let len = usize::from(be16([u[4], u[5]]));
            if len < udp::HEADER_LEN || len > seg.len() {
                return None;
            }
            Some(L4 {
                kind: L4Kind::Udp,
                hdr_len: udp::HEADER_LEN,
                src_port: be16([u[0], u[1]]),
                dst_port: be16([u[2], u[3]]),
                flags: 0,
                seq: 0,
                ack: 0,
                payload_len: len - udp::HEADER_LEN,
            })
        }
        _ => None,
    }
}

/// Parse `frame` if it has one of the common shapes, writing the result to
/// `out`; `false` (and `out` untouched) otherwise.
#[inline(always)]
pub(super) fn parse(frame: &[u8], decode_tunnels: bool, out: &mut Parsed) -> bool {
    // The general parser rejects frames whose offsets would not fit u32.
    let Ok(frame_len) = u32::try_from(frame.len()) else {
        return false;
    };
    let Some(ip) = eth_ipv4(frame, 0) else {
        return false;
    };
    // The L4 segment: from the header's end to the datagram's (≥ 20, so
    // the range is valid; `get` keeps that a check, not an assumption).
    let Some(seg) = frame.get(OUTER_L4..ip.end) else {
        return false;
    };
    // A UDP segment too short for its header is no tunnel, and `l4`
    // leaves it to the general parser.
    if decode_tunnels
        && ip.proto() == ipproto::UDP
        && let Some(u) = seg.first_chunk::<{ udp::HEADER_LEN }>()
    {
        match be16([u[2], u[3]]) {
            tunnel_port::VXLAN => return vxlan(frame, frame_len, &ip, seg, out),
            // Geneve headers have options to walk: general parser.
            tunnel_port::GENEVE => return false,
            _ => {}
        }
    }
    let Some(l4) = l4(ip.proto(), seg) else {
        return false;
    };
    write(out, frame_len, None, frame.len(), 0, &ip, &l4);
    true
}

/// The VXLAN case of [`parse`]: `seg` is the outer UDP datagram's segment.
#[inline(always)]
fn vxlan(frame: &[u8], frame_len: u32, outer: &EthIpv4<'_>, seg: &[u8], out: &mut Parsed) -> bool {
    let Some(u) = seg.first_chunk::<{ udp::HEADER_LEN + vxlan::HEADER_LEN }>() else {
        return false;
    };
    let udp_len = usize::from(be16([u[4], u[5]]));
    // The UDP length covers at least the VXLAN header (which must carry the
    // I flag) and stays within the IP payload.
    if udp_len < udp::HEADER_LEN + vxlan::HEADER_LEN
        || udp_len > seg.len()
        || u[8] & VXLAN_FLAG_I == 0
    {
        return false;
    }
    let vni = u32::from_be_bytes([u[12], u[13], u[14], u[15]]) >> 8;
    // The inner frame ends with the UDP datagram.
    let inner_end = OUTER_L4 + udp_len;
    let Some(inner) = frame.get(..inner_end) else {
        return false;
    };
    let Some(ip) = eth_ipv4(inner, INNER_ETH) else {
        return false;
    };
    let inner_l4 = INNER_ETH + ethernet::HEADER_LEN + ipv4::HEADER_LEN;
    let Some(l4) = inner.get(inner_l4..ip.end).and_then(|s| l4(ip.proto(), s)) else {
        return false;
    };
    let key = OuterKey {
        src_mac: outer.mac(6),
        dst_mac: outer.mac(0),
        src_ip: outer.ip(26),
        dst_ip: outer.ip(30),
        tunnel: TunnelKind::Vxlan,
        vni,
    };
    write(out, frame_len, Some(key), inner_end, INNER_ETH, &ip, &l4);
    true
}

/// Write the whole result at once (offsets fit `u32`: they are below
/// `frame_len`).
#[inline(always)]
fn write(
    out: &mut Parsed,
    frame_len: u32,
    outer: Option<OuterKey>,
    inner_end: usize,
    eth: usize,
    ip: &EthIpv4<'_>,
    l4: &L4,
) {
    let l3 = eth + ethernet::HEADER_LEN;
    let tunnelled = outer.is_some();
    let tos = ip.h[15];
    // Outer layout fields are 0 for a plain frame.
    let at = |off: usize| if tunnelled { off as u32 } else { 0 };
    *out = Parsed {
        ufid: Ufid {
            outer,
            inner: FlowKey {
                src_mac: ip.mac(6),
                dst_mac: ip.mac(0),
                vlan: None,
                ether_type: ethertype::IPV4,
                src_ip: ip.ip(26),
                dst_ip: ip.ip(30),
                proto: ip.proto(),
                dscp: tos >> 2,
                src_port: l4.src_port,
                dst_port: l4.dst_port,
                icmp_type: 0,
                icmp_code: 0,
            },
        },
        meta: PacketMeta {
            frame_len,
            tcp_flags: l4.flags,
            tcp_seq: l4.seq,
            tcp_ack: l4.ack,
            l4_payload_len: l4.payload_len as u32,
            ecn: tos & 3,
            ttl: ip.h[22],
        },
        layout: Layout {
            outer_l3: at(OUTER_L3),
            outer_l3_v6: false,
            outer_l4: at(OUTER_L4),
            encap: at(ENCAP),
            inner_eth: eth as u32,
            inner_end: inner_end as u32,
            vlan_count: 0,
            vlan_tci: [0; 2],
            ether_type: (eth + ethernet::field::ETHERTYPE) as u32,
            l3: l3 as u32,
            l3_kind: L3Kind::Ipv4,
            l3_hdr_len: ipv4::HEADER_LEN as u32,
            l3_end: ip.end as u32,
            fragment: false,
            non_first_fragment: false,
            l4: (l3 + ipv4::HEADER_LEN) as u32,
            l4_kind: l4.kind,
            l4_hdr_len: l4.hdr_len as u32,
        },
    };
}
