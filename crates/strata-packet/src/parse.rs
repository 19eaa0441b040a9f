//! Parse a frame once into header groups (VFP-8): outer Ethernet / outer IP /
//! encap / inner Ethernet / inner IP / L4, giving the [`Ufid`], the per-packet
//! fields TCP tracking needs ([`PacketMeta`]) and the byte layout the emitter
//! uses ([`Layout`]).
//!
//! A frame is *tunnelled* when its (outer) IP packet is unfragmented and is
//! UDP to port 4789 (VXLAN) or 6081 (Geneve), or NVGRE (GRE with the key bit
//! and protocol 0x6558). Then `ufid.outer` holds the outer groups and
//! `ufid.inner` the encapsulated frame's; otherwise `ufid.outer` is `None`.
//! One level of encapsulation is decoded: a tunnel inside the inner frame is
//! just inner UDP/GRE traffic.
//!
//! The parser is strict about lengths (every header must fit, length fields
//! must agree with the buffer) and lenient about everything a switch merely
//! forwards: checksums are not verified, unknown ethertypes and protocols
//! give a key without L3/L4 fields, fragments are accepted (non-first
//! fragments have ports 0 since their L4 header is elsewhere).
//!
//! `parse` does not allocate and runs in time bounded by the header sizes
//! (VLAN tags, IPv6 extension headers and Geneve options are bounded loops).
//!
//! Frames of the shapes nearly all traffic has (untagged IPv4 / TCP or UDP,
//! alone or inside VXLAN over untagged IPv4) take a shortcut with constant
//! header offsets (`fast`); anything else, and any frame the shortcut would
//! have to reject, goes through the general parser, so the result is the
//! same either way. [`parse_into`] writes the result in place, which the
//! datapath uses to avoid copying it.

use crate::flow::{
    FlowKey, MacAddr, NO_IP, OuterKey, TunnelKind, Ufid, ethertype, ipproto, tunnel_port,
};
use crate::wire::{self, arp, ethernet, geneve, icmp, ipv4, ipv6, nvgre, tcp, udp, vlan, vxlan};
use core::fmt;
use std::net::IpAddr;

mod fast;

/// Per-packet fields that are not part of the flow key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketMeta {
    /// Whole frame length in bytes.
    pub frame_len: u32,
    /// TCP flags byte (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 ... CWR=0x80); 0 if not TCP.
    pub tcp_flags: u8,
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    /// TCP/UDP payload length (bytes after the L4 header) of the inner packet.
    pub l4_payload_len: u32,
    /// ECN bits of the inner IP header (3 = CE).
    pub ecn: u8,
    /// Inner IP TTL / hop limit.
    pub ttl: u8,
}

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// A parsed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub ufid: Ufid,
    pub meta: PacketMeta,
    pub layout: Layout,
}

impl Parsed {
    /// A placeholder to parse into (a non-IP frame of length 0, as the
    /// parser never returns it).
    pub const EMPTY: Parsed = Parsed {
        ufid: Ufid {
            outer: None,
            inner: FlowKey::EMPTY,
        },
        meta: PacketMeta {
            frame_len: 0,
            tcp_flags: 0,
            tcp_seq: 0,
            tcp_ack: 0,
            l4_payload_len: 0,
            ecn: 0,
            ttl: 0,
        },
        layout: Layout::EMPTY,
    };

    /// Whether the frame carries outer (tunnel) header groups.
    pub fn is_tunnelled(&self) -> bool {
        self.ufid.outer.is_some()
    }
}

/// The network-layer header of the inner (or only) frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum L3Kind {
    /// An ethertype the parser does not decode.
    #[default]
    None,
    Arp,
    Ipv4,
    Ipv6,
}

/// The transport header of the inner (or only) packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum L4Kind {
    /// No L4 header here: not IP, or a non-first fragment.
    #[default]
    None,
    Tcp,
    Udp,
    /// ICMP over IPv4.
    Icmpv4,
    /// ICMPv6 over IPv6.
    Icmpv6,
    /// Another protocol (GRE that is not NVGRE, ESP, ICMP over the wrong
    /// IP version, …): its bytes are opaque.
    Other,
}

/// Byte offsets of the header groups, relative to the frame start.
///
/// The `outer_*` and `encap` fields are meaningful only for a tunnelled
/// frame (`ufid.outer.is_some()`); they are 0 otherwise. Every other field
/// describes the inner frame of a tunnelled packet, or the frame itself.
/// Offsets are `u32` so no frame length can overflow them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Offset of the outer IP header.
    pub outer_l3: u32,
    /// The outer IP header is IPv6 (else IPv4).
    pub outer_l3_v6: bool,
    /// Offset of the outer UDP header (VXLAN, Geneve) or GRE header (NVGRE).
    pub outer_l4: u32,
    /// Offset of the VXLAN / Geneve header; equal to `outer_l4` for NVGRE.
    pub encap: u32,
    /// Offset of the inner Ethernet header (0 for a plain frame).
    pub inner_eth: u32,
    /// End of the inner frame: the end of the outer UDP datagram / IP packet
    /// for a tunnelled frame (outer trailing bytes excluded), the frame
    /// length for a plain one.
    pub inner_end: u32,
    /// Number of VLAN tags (0..=2).
    pub vlan_count: u8,
    /// Offsets of each tag's TCI, outermost first; each tag occupies
    /// `tci - 2 .. tci + 2` (TPID + TCI).
    pub vlan_tci: [u32; 2],
    /// Offset of the ethertype field after the tags.
    pub ether_type: u32,
    /// Offset of the L3 header (IP or ARP), right after that ethertype.
    pub l3: u32,
    pub l3_kind: L3Kind,
    /// IP header length: IHL · 4 (options included) for IPv4, 40 +
    /// extension headers for IPv6; 0 if not IP.
    pub l3_hdr_len: u32,
    /// End of the IP datagram (by its length field; Ethernet padding after
    /// it is not part of it); 0 if not IP.
    pub l3_end: u32,
    /// The IP packet is a fragment (first or later).
    pub fragment: bool,
    /// The IP packet is a fragment other than the first: no L4 header.
    pub non_first_fragment: bool,
    /// Offset of the L4 header (or of the fragment data), `l3 + l3_hdr_len`.
    pub l4: u32,
    pub l4_kind: L4Kind,
    /// L4 header length (TCP options included; 8 for UDP and ICMP).
    pub l4_hdr_len: u32,
}

impl Layout {
    /// Every offset 0, no L3 / L4 header (`Layout::default()` as a constant).
    pub const EMPTY: Layout = Layout {
        outer_l3: 0,
        outer_l3_v6: false,
        outer_l4: 0,
        encap: 0,
        inner_eth: 0,
        inner_end: 0,
        vlan_count: 0,
        vlan_tci: [0; 2],
        ether_type: 0,
        l3: 0,
        l3_kind: L3Kind::None,
        l3_hdr_len: 0,
        l3_end: 0,
        fragment: false,
        non_first_fragment: false,
        l4: 0,
        l4_kind: L4Kind::None,
        l4_hdr_len: 0,
    };

    /// Offset of the L4 checksum field, if the L4 header has one the
    /// emitter maintains.
    pub fn l4_checksum(&self) -> Option<u32> {
        match self.l4_kind {
            L4Kind::Tcp => Some(self.l4 + tcp::field::CHECKSUM as u32),
            L4Kind::Udp => Some(self.l4 + udp::field::CHECKSUM as u32),
            L4Kind::Icmpv4 | L4Kind::Icmpv6 => Some(self.l4 + icmp::field::CHECKSUM as u32),
            L4Kind::None | L4Kind::Other => None,
        }
    }
}

/// The header a frame was truncated in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Header {
    Ethernet,
    Vlan,
    Arp,
    Ipv4,
    Ipv6,
    Ipv6Ext,
    Tcp,
    Udp,
    Icmp,
    Gre,
    Vxlan,
    Geneve,
}

impl Header {
    pub fn name(self) -> &'static str {
        match self {
            Header::Ethernet => "ethernet",
            Header::Vlan => "vlan",
            Header::Arp => "arp",
            Header::Ipv4 => "ipv4",
            Header::Ipv6 => "ipv6",
            Header::Ipv6Ext => "ipv6-extension",
            Header::Tcp => "tcp",
            Header::Udp => "udp",
            Header::Icmp => "icmp",
            Header::Gre => "gre",
            Header::Vxlan => "vxlan",
            Header::Geneve => "geneve",
        }
    }
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a frame could not be parsed. Every variant names a counted drop reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("frame truncated in the {0} header")]
    Truncated(Header),
    #[error("frame longer than 4 GiB")]
    FrameTooLong,
    #[error("more than two VLAN tags")]
    TooManyVlanTags,
    #[error("IPv4 ethertype but IP version is not 4")]
    Ipv4BadVersion,
    #[error("IPv4 header length (IHL) below 5 words")]
    Ipv4BadIhl,
    #[error("IPv4 total length below the header length or beyond the frame")]
    Ipv4BadTotalLength,
    #[error("IPv6 ethertype but IP version is not 6")]
    Ipv6BadVersion,
    #[error("IPv6 payload length beyond the frame")]
    Ipv6BadPayloadLength,
    #[error("more than {} IPv6 extension headers", ipv6::MAX_EXT_HEADERS)]
    Ipv6TooManyExtHeaders,
    #[error("TCP data offset below 5 words or beyond the segment")]
    TcpBadDataOffset,
    #[error("UDP length below 8 or beyond the IP payload")]
    UdpBadLength,
    #[error("VXLAN header without the I (VNI valid) flag")]
    VxlanBadFlags,
    #[error("Geneve version is not 0")]
    GeneveBadVersion,
    #[error("Geneve option length beyond the packet or malformed option TLVs")]
    GeneveBadOptionLength,
    #[error("Geneve payload is not an Ethernet frame")]
    GeneveUnsupportedProtocol,
}

impl ParseError {
    /// Every reason string [`ParseError::reason`] can return, e.g. to
    /// pre-register drop counters.
    pub const REASONS: &'static [&'static str] = &[
        "truncated-ethernet",
        "truncated-vlan",
        "truncated-arp",
        "truncated-ipv4",
        "truncated-ipv6",
        "truncated-ipv6-extension",
        "truncated-tcp",
        "truncated-udp",
        "truncated-icmp",
        "truncated-gre",
        "truncated-vxlan",
        "truncated-geneve",
        "frame-too-long",
        "too-many-vlan-tags",
        "ipv4-bad-version",
        "ipv4-bad-ihl",
        "ipv4-bad-total-length",
        "ipv6-bad-version",
        "ipv6-bad-payload-length",
        "ipv6-too-many-ext-headers",
        "tcp-bad-data-offset",
        "udp-bad-length",
        "vxlan-bad-flags",
        "geneve-bad-version",
        "geneve-bad-option-length",
        "geneve-unsupported-protocol",
    ];

    /// A stable kebab-case reason used as a drop counter name.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::Truncated(h) => match h {
                Header::Ethernet => "truncated-ethernet",
                Header::Vlan => "truncated-vlan",
                Header::Arp => "truncated-arp",
                Header::Ipv4 => "truncated-ipv4",
                Header::Ipv6 => "truncated-ipv6",
                Header::Ipv6Ext => "truncated-ipv6-extension",
                Header::Tcp => "truncated-tcp",
                Header::Udp => "truncated-udp",
                Header::Icmp => "truncated-icmp",
                Header::Gre => "truncated-gre",
                Header::Vxlan => "truncated-vxlan",
                Header::Geneve => "truncated-geneve",
            },
            ParseError::FrameTooLong => "frame-too-long",
            ParseError::TooManyVlanTags => "too-many-vlan-tags",
            ParseError::Ipv4BadVersion => "ipv4-bad-version",
            ParseError::Ipv4BadIhl => "ipv4-bad-ihl",
            ParseError::Ipv4BadTotalLength => "ipv4-bad-total-length",
            ParseError::Ipv6BadVersion => "ipv6-bad-version",
            ParseError::Ipv6BadPayloadLength => "ipv6-bad-payload-length",
            ParseError::Ipv6TooManyExtHeaders => "ipv6-too-many-ext-headers",
            ParseError::TcpBadDataOffset => "tcp-bad-data-offset",
            ParseError::UdpBadLength => "udp-bad-length",
            ParseError::VxlanBadFlags => "vxlan-bad-flags",
            ParseError::GeneveBadVersion => "geneve-bad-version",
            ParseError::GeneveBadOptionLength => "geneve-bad-option-length",
            ParseError::GeneveUnsupportedProtocol => "geneve-unsupported-protocol",
        }
    }

    /// Translate a view error for header `h` into the precise reason.
    fn from_wire(h: Header, e: wire::Error) -> ParseError {
        use wire::Error as W;
        match (h, e) {
            (Header::Ipv4, W::BadVersion) => ParseError::Ipv4BadVersion,
            (Header::Ipv4, W::BadHeaderLen) => ParseError::Ipv4BadIhl,
            (Header::Ipv4, W::BadLength) => ParseError::Ipv4BadTotalLength,
            (Header::Ipv6, W::BadVersion) => ParseError::Ipv6BadVersion,
            (Header::Ipv6, W::BadLength) => ParseError::Ipv6BadPayloadLength,
            (Header::Ipv6Ext, W::TooManyHeaders) => ParseError::Ipv6TooManyExtHeaders,
            (Header::Tcp, W::BadHeaderLen) => ParseError::TcpBadDataOffset,
            (Header::Udp, W::BadLength) => ParseError::UdpBadLength,
            (Header::Vxlan, W::BadFlags) => ParseError::VxlanBadFlags,
            (Header::Geneve, W::BadVersion) => ParseError::GeneveBadVersion,
            (Header::Geneve, W::BadHeaderLen) => ParseError::GeneveBadOptionLength,
            // Views report nothing else; a length problem is the best
            // description of anything unexpected.
            _ => ParseError::Truncated(h),
        }
    }
}

/// `map_err` helper: `view.map_err(err(Header::Tcp))`.
#[inline]
fn err(h: Header) -> impl Fn(wire::Error) -> ParseError {
    move |e| ParseError::from_wire(h, e)
}

/// Offsets fit `u32`: `parse` rejects longer frames first.
#[inline(always)]
fn o32(off: usize) -> u32 {
    off as u32
}

/// The Ethernet group: MACs, VLAN tags, final ethertype.
struct L2 {
    src: MacAddr,
    dst: MacAddr,
    vlan_count: u8,
    vlan_tci: [u32; 2],
    vid: Option<u16>,
    ether_type: u16,
    /// Offset of the final ethertype field.
    et_off: usize,
    /// Offset of the L3 header.
    l3: usize,
}

#[inline(always)]
fn parse_l2(frame: &[u8], eth: usize) -> Result<L2, ParseError> {
    let f = ethernet::Frame::new_checked(frame.get(eth..).unwrap_or_default())
        .map_err(err(Header::Ethernet))?;
    let mut ether_type = f.ethertype();
    let mut l3 = eth + ethernet::HEADER_LEN;
    // At most two tags, unrolled: scalars stay in registers (a tag array
    // indexed by a loop counter forces the whole struct through memory).
    let mut tags = [0u32; 2];
    let mut vlan_count = 0u8;
    let mut vid = None;
    if vlan::is_tpid(ether_type) {
        let tag = vlan::Tag::new_checked(frame.get(l3..).unwrap_or_default())
            .map_err(err(Header::Vlan))?;
        tags[0] = o32(l3);
        vid = Some(tag.vid());
        ether_type = tag.ethertype();
        l3 += vlan::TAG_LEN;
        vlan_count = 1;
        if vlan::is_tpid(ether_type) {
            let tag = vlan::Tag::new_checked(frame.get(l3..).unwrap_or_default())
                .map_err(err(Header::Vlan))?;
            tags[1] = o32(l3);
            vid = Some(tag.vid());
            ether_type = tag.ethertype();
            l3 += vlan::TAG_LEN;
            vlan_count = 2;
            if vlan::is_tpid(ether_type) {
                return Err(ParseError::TooManyVlanTags);
            }
        }
    }
    Ok(L2 {
        src: f.src_addr(),
        dst: f.dst_addr(),
        vlan_count,
        vlan_tci: tags,
        vid,
        ether_type,
        et_off: l3 - 2,
        l3,
    })
}

/// The IP group.
struct L3 {
    v6: bool,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    tos: u8,
    ttl: u8,
    off: usize,
    hdr_len: usize,
    /// End of the datagram.
    end: usize,
    fragment: bool,
    non_first_fragment: bool,
}

impl L3 {
    fn l4(&self) -> usize {
        self.off + self.hdr_len
    }

    /// The L4 segment (or fragment data).
    fn payload<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        frame.get(self.l4()..self.end).unwrap_or_default()
    }
}

#[inline(always)]
fn parse_ipv4(frame: &[u8], off: usize) -> Result<L3, ParseError> {
    let p = ipv4::Packet::new_checked(frame.get(off..).unwrap_or_default())
        .map_err(err(Header::Ipv4))?;
    Ok(L3 {
        v6: false,
        src: IpAddr::V4(p.src_addr()),
        dst: IpAddr::V4(p.dst_addr()),
        proto: p.protocol(),
        tos: p.tos(),
        ttl: p.ttl(),
        off,
        hdr_len: p.header_len(),
        end: off + p.total_len(),
        fragment: p.is_fragment(),
        non_first_fragment: !p.is_first_fragment(),
    })
}

#[inline(always)]
fn parse_ipv6(frame: &[u8], off: usize) -> Result<L3, ParseError> {
    let p = ipv6::Packet::new_checked(frame.get(off..).unwrap_or_default())
        .map_err(err(Header::Ipv6))?;
    let chain =
        ipv6::walk_ext_headers(p.next_header(), p.payload()).map_err(err(Header::Ipv6Ext))?;
    Ok(L3 {
        v6: true,
        src: IpAddr::V6(p.src_addr()),
        dst: IpAddr::V6(p.dst_addr()),
        proto: chain.protocol,
        tos: p.traffic_class(),
        ttl: p.hop_limit(),
        off,
        hdr_len: ipv6::HEADER_LEN + chain.len,
        end: off + ipv6::HEADER_LEN + p.payload_len(),
        fragment: chain.fragment,
        non_first_fragment: chain.non_first_fragment,
    })
}

/// What tunnel detection found in an outer IP packet.
struct Tunnel {
    kind: TunnelKind,
    vni: u32,
    l4: usize,
    encap: usize,
    inner_eth: usize,
    inner_end: usize,
}

/// Decide whether an (unfragmented) IP packet is a tunnel we decode, and
/// validate its encap header if so.
#[inline(always)]
fn detect_tunnel(frame: &[u8], l3: &L3) -> Result<Option<Tunnel>, ParseError> {
    if l3.fragment {
        // The inner frame would be incomplete: forward as plain IP.
        return Ok(None);
    }
    let l4 = l3.l4();
    let seg = l3.payload(frame);
    match l3.proto {
        ipproto::UDP => {
            let u = udp::Packet::new_checked(seg).map_err(err(Header::Udp))?;
            let encap = l4 + udp::HEADER_LEN;
            let inner_end = l4 + u.len();
            match u.dst_port() {
                tunnel_port::VXLAN => {
                    let h = vxlan::Header::new_checked(u.payload()).map_err(err(Header::Vxlan))?;
                    Ok(Some(Tunnel {
                        kind: TunnelKind::Vxlan,
                        vni: h.vni(),
                        l4,
                        encap,
                        inner_eth: encap + vxlan::HEADER_LEN,
                        inner_end,
                    }))
                }
                tunnel_port::GENEVE => {
                    let h =
                        geneve::Header::new_checked(u.payload()).map_err(err(Header::Geneve))?;
                    if h.protocol() != ethertype::TEB {
                        return Err(ParseError::GeneveUnsupportedProtocol);
                    }
                    Ok(Some(Tunnel {
                        kind: TunnelKind::Geneve,
                        vni: h.vni(),
                        l4,
                        encap,
                        inner_eth: encap + h.header_len(),
                        inner_end,
                    }))
                }
                _ => Ok(None),
            }
        }
        ipproto::GRE => {
            // Only NVGRE is a tunnel; other GRE is opaque IP traffic, even
            // if malformed. A header whose fixed part says NVGRE but whose
            // key is cut off is a truncated NVGRE packet.
            let Some(base) = seg.get(..nvgre::BASE_LEN) else {
                return Ok(None);
            };
            let fv = u16::from_be_bytes([base[0], base[1]]);
            let proto = u16::from_be_bytes([base[2], base[3]]);
            if fv & nvgre::FLAG_K == 0 || proto != ethertype::TEB {
                return Ok(None);
            }
            let h = nvgre::Header::new_checked(seg).map_err(err(Header::Gre))?;
            if !h.is_nvgre() {
                return Ok(None);
            }
            Ok(Some(Tunnel {
                kind: TunnelKind::Nvgre,
                vni: h.vsid(),
                l4,
                encap: l4,
                inner_eth: l4 + h.header_len(),
                inner_end: l3.end,
            }))
        }
        _ => Ok(None),
    }
}

/// How to parse a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseOptions {
    /// Decode VXLAN / Geneve / NVGRE as our tunnel (outer + inner groups).
    /// True for frames from the underlay; false for frames a VM sends, whose
    /// own tunnels (a nested overlay) are opaque UDP/GRE payload to us.
    pub decode_tunnels: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            decode_tunnels: true,
        }
    }
}

/// Parse one frame, decoding tunnels.
pub fn parse(frame: &[u8]) -> Result<Parsed, ParseError> {
    parse_with(frame, ParseOptions::default())
}

/// Parse one frame with options.
pub fn parse_with(frame: &[u8], opts: ParseOptions) -> Result<Parsed, ParseError> {
    let mut p = Parsed::EMPTY;
    parse_into(frame, opts, &mut p)?;
    Ok(p)
}

/// Parse one frame with options into `out`, which the fast path reuses
/// across packets: writing the 192-byte result in place saves copying it
/// out of a returned `Result`. On error `out` holds an unspecified (valid)
/// value.
///
/// Frames of the common shapes (untagged IPv4 / TCP or UDP, plain or in
/// VXLAN) take a shortcut; the result is always that of [`parse_general`].
/// The shortcut is inlined into the caller (a datapath's batch loop: its
/// call cost an outbound NAT packet 15 of its 954 instructions); the
/// general parser stays a call.
#[inline(always)]
pub fn parse_into(frame: &[u8], opts: ParseOptions, out: &mut Parsed) -> Result<(), ParseError> {
    if fast::parse(frame, opts.decode_tunnels, out) {
        return Ok(());
    }
    general(frame, opts, out)
}

/// The general parser alone, without the shortcut for common shapes: the
/// reference [`parse_with`] is tested against.
pub fn parse_general(frame: &[u8], opts: ParseOptions) -> Result<Parsed, ParseError> {
    let mut p = Parsed::EMPTY;
    general(frame, opts, &mut p)?;
    Ok(p)
}

/// Whether `frame` takes the shortcut (tests).
pub fn takes_shortcut(frame: &[u8], opts: ParseOptions) -> bool {
    let mut scratch = Parsed::EMPTY;
    fast::parse(frame, opts.decode_tunnels, &mut scratch)
}

/// The general parser, writing into `p`.
#[inline(never)]
fn general(frame: &[u8], opts: ParseOptions, p: &mut Parsed) -> Result<(), ParseError> {
    if u32::try_from(frame.len()).is_err() {
        return Err(ParseError::FrameTooLong);
    }
    *p = Parsed {
        meta: PacketMeta {
            frame_len: o32(frame.len()),
            ..PacketMeta::default()
        },
        ..Parsed::EMPTY
    };
    let l2 = parse_l2(frame, 0)?;
    let l3 = match l2.ether_type {
        ethertype::IPV4 => Some(parse_ipv4(frame, l2.l3)?),
        ethertype::IPV6 => Some(parse_ipv6(frame, l2.l3)?),
        _ => None,
    };
    if let Some(ip) = &l3
        && opts.decode_tunnels
        && let Some(t) = detect_tunnel(frame, ip)?
    {
        p.ufid.outer = Some(OuterKey {
            src_mac: l2.src,
            dst_mac: l2.dst,
            src_ip: ip.src,
            dst_ip: ip.dst,
            tunnel: t.kind,
            vni: t.vni,
        });
        let lay = &mut p.layout;
        lay.outer_l3 = o32(ip.off);
        lay.outer_l3_v6 = ip.v6;
        lay.outer_l4 = o32(t.l4);
        lay.encap = o32(t.encap);
        lay.inner_eth = o32(t.inner_eth);
        // The views checked inner_end ≤ frame length.
        let inner = frame.get(..t.inner_end).unwrap_or_default();
        lay.inner_end = o32(inner.len());
        let l2 = parse_l2(inner, t.inner_eth)?;
        let l3 = match l2.ether_type {
            ethertype::IPV4 => Some(parse_ipv4(inner, l2.l3)?),
            ethertype::IPV6 => Some(parse_ipv6(inner, l2.l3)?),
            _ => None,
        };
        return fill(inner, &l2, l3.as_ref(), p);
    }
    p.layout.inner_end = o32(frame.len());
    fill(frame, &l2, l3.as_ref(), p)
}

/// Fill the inner key, meta and layout from the inner (or only) frame's
/// groups, parsing its L4 header.
#[inline(always)]
fn fill(frame: &[u8], l2: &L2, l3: Option<&L3>, p: &mut Parsed) -> Result<(), ParseError> {
    let key = &mut p.ufid.inner;
    let lay = &mut p.layout;
    key.src_mac = l2.src;
    key.dst_mac = l2.dst;
    key.vlan = l2.vid;
    key.ether_type = l2.ether_type;
    lay.vlan_count = l2.vlan_count;
    lay.vlan_tci = l2.vlan_tci;
    lay.ether_type = o32(l2.et_off);
    lay.l3 = o32(l2.l3);
    let Some(ip) = l3 else {
        if l2.ether_type == ethertype::ARP {
            arp::Packet::new_checked(frame.get(l2.l3..).unwrap_or_default())
                .map_err(err(Header::Arp))?;
            lay.l3_kind = L3Kind::Arp;
        }
        // Non-IP: IP fields stay NO_IP, proto 0 (FlowKey::default()).
        debug_assert_eq!(key.src_ip, NO_IP);
        return Ok(());
    };
    key.src_ip = ip.src;
    key.dst_ip = ip.dst;
    key.proto = ip.proto;
    key.dscp = ip.tos >> 2;
    p.meta.ecn = ip.tos & 3;
    p.meta.ttl = ip.ttl;
    lay.l3_kind = if ip.v6 { L3Kind::Ipv6 } else { L3Kind::Ipv4 };
    lay.l3_hdr_len = o32(ip.hdr_len);
    lay.l3_end = o32(ip.end);
    lay.l4 = o32(ip.l4());
    lay.fragment = ip.fragment;
    lay.non_first_fragment = ip.non_first_fragment;
    if ip.non_first_fragment {
        lay.l4_kind = L4Kind::None;
        return Ok(());
    }
    let seg = ip.payload(frame);
    match ip.proto {
        ipproto::TCP => {
            let t = tcp::Packet::new_checked(seg).map_err(err(Header::Tcp))?;
            key.src_port = t.src_port();
            key.dst_port = t.dst_port();
            p.meta.tcp_flags = t.flags();
            p.meta.tcp_seq = t.seq_number();
            p.meta.tcp_ack = t.ack_number();
            p.meta.l4_payload_len = o32(seg.len() - t.header_len());
            lay.l4_kind = L4Kind::Tcp;
            lay.l4_hdr_len = o32(t.header_len());
        }
        ipproto::UDP => {
            // A first fragment's length field is the whole datagram's.
            let (u, here) = if ip.fragment {
                let u = udp::Packet::new_checked_first_fragment(seg);
                (u.map_err(err(Header::Udp))?, seg.len())
            } else {
                let u = udp::Packet::new_checked(seg).map_err(err(Header::Udp))?;
                (u, u.len())
            };
            key.src_port = u.src_port();
            key.dst_port = u.dst_port();
            p.meta.l4_payload_len = o32(here - udp::HEADER_LEN);
            lay.l4_kind = L4Kind::Udp;
            lay.l4_hdr_len = o32(udp::HEADER_LEN);
        }
        ipproto::ICMP | ipproto::ICMPV6 if (ip.proto == ipproto::ICMPV6) == ip.v6 => {
            let m = icmp::Packet::new_checked(seg).map_err(err(Header::Icmp))?;
            let t = m.msg_type();
            key.icmp_type = t;
            key.icmp_code = m.code();
            if icmp::is_echo_request(ip.v6, t) {
                key.src_port = m.echo_ident();
            } else if icmp::is_echo_reply(ip.v6, t) {
                key.dst_port = m.echo_ident();
            }
            lay.l4_kind = if ip.v6 {
                L4Kind::Icmpv6
            } else {
                L4Kind::Icmpv4
            };
            lay.l4_hdr_len = o32(icmp::HEADER_LEN);
        }
        _ => lay.l4_kind = L4Kind::Other,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_listed_and_kebab() {
        let all = [
            ParseError::Truncated(Header::Ethernet),
            ParseError::Truncated(Header::Vlan),
            ParseError::Truncated(Header::Arp),
            ParseError::Truncated(Header::Ipv4),
            ParseError::Truncated(Header::Ipv6),
            ParseError::Truncated(Header::Ipv6Ext),
            ParseError::Truncated(Header::Tcp),
            ParseError::Truncated(Header::Udp),
            ParseError::Truncated(Header::Icmp),
            ParseError::Truncated(Header::Gre),
            ParseError::Truncated(Header::Vxlan),
            ParseError::Truncated(Header::Geneve),
            ParseError::FrameTooLong,
            ParseError::TooManyVlanTags,
            ParseError::Ipv4BadVersion,
            ParseError::Ipv4BadIhl,
            ParseError::Ipv4BadTotalLength,
            ParseError::Ipv6BadVersion,
            ParseError::Ipv6BadPayloadLength,
            ParseError::Ipv6TooManyExtHeaders,
            ParseError::TcpBadDataOffset,
            ParseError::UdpBadLength,
            ParseError::VxlanBadFlags,
            ParseError::GeneveBadVersion,
            ParseError::GeneveBadOptionLength,
            ParseError::GeneveUnsupportedProtocol,
        ];
        assert_eq!(all.len(), ParseError::REASONS.len());
        for (e, r) in all.iter().zip(ParseError::REASONS) {
            assert_eq!(e.reason(), *r);
            assert!(
                r.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-' || c.is_ascii_digit())
            );
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn constants_are_the_defaults() {
        assert_eq!(Layout::EMPTY, Layout::default());
        assert_eq!(Parsed::EMPTY.ufid, Ufid::plain(FlowKey::default()));
        assert_eq!(Parsed::EMPTY.meta, PacketMeta::default());
    }

    #[test]
    fn empty_and_tiny() {
        assert_eq!(parse(&[]), Err(ParseError::Truncated(Header::Ethernet)));
        let mut f = [0u8; 14];
        f[12] = 0x88;
        f[13] = 0xb5; // local experimental ethertype
        let p = parse(&f).unwrap();
        assert_eq!(p.ufid.inner.ether_type, 0x88b5);
        assert_eq!(p.layout.l3_kind, L3Kind::None);
        assert_eq!(p.meta.frame_len, 14);
    }
}
