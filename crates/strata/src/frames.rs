//! Frame building and inspection with `etherparse`, independent of the
//! engine's own parser and emitter: the demo and the tests build traffic
//! here and check what the switch sent with [`summarize`], which also
//! verifies every IPv4, TCP and UDP checksum.
//!
//! Builders take payloads of at most [`MAX_PAYLOAD`] bytes (longer ones are
//! cut), so building a frame cannot fail.

use etherparse::{Ipv4Header, LinkSlice, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use strata_packet::flow::{MacAddr, tunnel_port};

/// Largest payload the builders put in a frame.
pub const MAX_PAYLOAD: usize = 1400;

/// TCP flag set for [`tcp`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
}

impl Flags {
    pub const SYN: Flags = Flags {
        syn: true,
        ack: false,
        fin: false,
        rst: false,
        psh: false,
    };
    pub const SYN_ACK: Flags = Flags {
        syn: true,
        ack: true,
        fin: false,
        rst: false,
        psh: false,
    };
    pub const ACK: Flags = Flags {
        syn: false,
        ack: true,
        fin: false,
        rst: false,
        psh: false,
    };
    pub const PSH_ACK: Flags = Flags {
        syn: false,
        ack: true,
        fin: false,
        rst: false,
        psh: true,
    };
    pub const FIN_ACK: Flags = Flags {
        syn: false,
        ack: true,
        fin: true,
        rst: false,
        psh: false,
    };
    pub const RST: Flags = Flags {
        syn: false,
        ack: false,
        fin: false,
        rst: true,
        psh: false,
    };
}

fn cut(payload: &[u8]) -> &[u8] {
    &payload[..payload.len().min(MAX_PAYLOAD)]
}

/// An Ethernet/IPv4/TCP frame.
#[allow(clippy::too_many_arguments)]
pub fn tcp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    ack: u32,
    flags: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src.ip().octets(), dst.ip().octets(), 64)
        .tcp(src.port(), dst.port(), seq, 64240);
    if flags.syn {
        b = b.syn();
    }
    if flags.ack {
        b = b.ack(ack);
    }
    if flags.fin {
        b = b.fin();
    }
    if flags.rst {
        b = b.rst();
    }
    if flags.psh {
        b = b.psh();
    }
    let payload = cut(payload);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    // Writing into a Vec with a bounded payload cannot fail.
    let _ = b.write(&mut out, payload);
    out
}

/// An Ethernet/IPv4/UDP frame.
pub fn udp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src.ip().octets(), dst.ip().octets(), 64)
        .udp(src.port(), dst.port());
    let payload = cut(payload);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    let _ = b.write(&mut out, payload);
    out
}

/// An Ethernet/IPv4/ICMP echo request.
pub fn icmp_echo_request(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    seq: u16,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_echo_request(id, seq);
    let payload = b"strata-ping";
    let mut out = Vec::with_capacity(b.size(payload.len()));
    let _ = b.write(&mut out, payload);
    out
}

/// Outer headers for [`vxlan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outer {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    /// Outer UDP source port (flow entropy).
    pub src_port: u16,
    pub vni: u32,
}

/// Encapsulate `inner` (a whole Ethernet frame) in Ethernet/IPv4/UDP/VXLAN.
pub fn vxlan(o: &Outer, inner: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(8 + inner.len());
    let vni = o.vni & 0x00ff_ffff;
    payload.extend_from_slice(&[0x08, 0, 0, 0]);
    payload.extend_from_slice(&[(vni >> 16) as u8, (vni >> 8) as u8, vni as u8, 0]);
    payload.extend_from_slice(inner);
    let b = PacketBuilder::ethernet2(o.src_mac.0, o.dst_mac.0)
        .ipv4(o.src_ip.octets(), o.dst_ip.octets(), 64)
        .udp(o.src_port, tunnel_port::VXLAN);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    let _ = b.write(&mut out, &payload);
    out
}

/// The outer groups of a VXLAN frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OuterSummary {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub src_port: u16,
    pub vni: u32,
}

/// What a frame carries, as read by `etherparse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub outer: Option<OuterSummary>,
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src_ip: Option<IpAddr>,
    pub dst_ip: Option<IpAddr>,
    /// 6 = TCP, 17 = UDP, 1 = ICMP; 0 if not IP.
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub seq: u32,
    pub ack_no: u32,
    pub payload_len: usize,
    /// Every IPv4 header, TCP and UDP checksum present is correct.
    pub checksums_ok: bool,
}

impl Summary {
    pub fn src(&self) -> Option<SocketAddrV4> {
        match self.src_ip {
            Some(IpAddr::V4(ip)) => Some(SocketAddrV4::new(ip, self.src_port)),
            _ => None,
        }
    }

    pub fn dst(&self) -> Option<SocketAddrV4> {
        match self.dst_ip {
            Some(IpAddr::V4(ip)) => Some(SocketAddrV4::new(ip, self.dst_port)),
            _ => None,
        }
    }
}

/// Read a frame (decoding one level of VXLAN) and check its checksums.
pub fn summarize(frame: &[u8]) -> Result<Summary, String> {
    let mut s = summarize_plain(frame)?;
    if s.proto == 17 && s.dst_port == tunnel_port::VXLAN {
        let sliced = SlicedPacket::from_ethernet(frame).map_err(|e| e.to_string())?;
        let Some(TransportSlice::Udp(u)) = sliced.transport else {
            return Err("VXLAN frame without UDP".into());
        };
        let p = u.payload();
        if p.len() < 8 || p[0] & 0x08 == 0 {
            return Err("bad VXLAN header".into());
        }
        let vni = (u32::from(p[4]) << 16) | (u32::from(p[5]) << 8) | u32::from(p[6]);
        let outer = OuterSummary {
            src_mac: s.src_mac,
            dst_mac: s.dst_mac,
            src_ip: s.src_ip.ok_or("VXLAN without IP")?,
            dst_ip: s.dst_ip.ok_or("VXLAN without IP")?,
            src_port: s.src_port,
            vni,
        };
        let outer_ok = s.checksums_ok;
        let mut inner = summarize_plain(&p[8..]).map_err(|e| format!("inner frame: {e}"))?;
        inner.checksums_ok &= outer_ok;
        inner.outer = Some(outer);
        s = inner;
    }
    Ok(s)
}

fn summarize_plain(frame: &[u8]) -> Result<Summary, String> {
    let sliced = SlicedPacket::from_ethernet(frame).map_err(|e| e.to_string())?;
    let (src_mac, dst_mac) = match &sliced.link {
        Some(LinkSlice::Ethernet2(e)) => (MacAddr(e.source()), MacAddr(e.destination())),
        _ => return Err("not an Ethernet II frame".into()),
    };
    let mut s = Summary {
        outer: None,
        src_mac,
        dst_mac,
        src_ip: None,
        dst_ip: None,
        proto: 0,
        src_port: 0,
        dst_port: 0,
        syn: false,
        ack: false,
        fin: false,
        rst: false,
        seq: 0,
        ack_no: 0,
        payload_len: 0,
        checksums_ok: true,
    };
    let mut ip4: Option<Ipv4Header> = None;
    match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            s.src_ip = Some(IpAddr::V4(h.source_addr()));
            s.dst_ip = Some(IpAddr::V4(h.destination_addr()));
            s.proto = h.protocol().0;
            let hdr = h.to_header();
            s.checksums_ok &= hdr.calc_header_checksum() == hdr.header_checksum;
            ip4 = Some(hdr);
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            s.src_ip = Some(IpAddr::V6(h.source_addr()));
            s.dst_ip = Some(IpAddr::V6(h.destination_addr()));
            s.proto = ip.payload().ip_number.0;
        }
        _ => {}
    }
    match &sliced.transport {
        Some(TransportSlice::Tcp(t)) => {
            s.src_port = t.source_port();
            s.dst_port = t.destination_port();
            s.syn = t.syn();
            s.ack = t.ack();
            s.fin = t.fin();
            s.rst = t.rst();
            s.seq = t.sequence_number();
            s.ack_no = t.acknowledgment_number();
            s.payload_len = t.payload().len();
            if let Some(ip) = &ip4 {
                let want = t.to_header().calc_checksum_ipv4(ip, t.payload()).ok();
                s.checksums_ok &= want == Some(t.checksum());
            }
        }
        Some(TransportSlice::Udp(u)) => {
            s.src_port = u.source_port();
            s.dst_port = u.destination_port();
            s.payload_len = u.payload().len();
            if let Some(ip) = &ip4
                && u.checksum() != 0
            {
                let want = u.to_header().calc_checksum_ipv4(ip, u.payload()).ok();
                s.checksums_ok &= want == Some(u.checksum());
            }
        }
        _ => {}
    }
    Ok(s)
}

/// Lowercase hex of a frame.
pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parse hex (whitespace and `:` separators allowed).
pub fn from_hex(s: &str) -> Result<Vec<u8>, String> {
    let t: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b':')
        .collect();
    if !t.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    t.chunks(2)
        .map(|p| {
            let hi = (p[0] as char).to_digit(16);
            let lo = (p[1] as char).to_digit(16);
            match (hi, lo) {
                (Some(h), Some(l)) => Ok((h * 16 + l) as u8),
                _ => Err(format!(
                    "{:?} is not a hex byte",
                    String::from_utf8_lossy(p)
                )),
            }
        })
        .collect()
}

/// The IPv4 datagram of `frame` split into fragments of at most `size`
/// payload bytes (rounded down to a multiple of 8), identification `id`,
/// as a router before a smaller MTU splits it; `None` if `frame` is not
/// an untagged IPv4 frame.
pub fn fragment_v4(frame: &[u8], size: usize, id: u16) -> Option<Vec<Vec<u8>>> {
    let size = (size / 8 * 8).max(8);
    let (eth, ip) = (frame.get(..14)?, frame.get(14..)?);
    let (h, rest) = Ipv4Header::from_slice(ip).ok()?;
    let payload = rest.get(..usize::from(h.total_len).checked_sub(h.header_len())?)?;
    let mut out = Vec::new();
    for (i, part) in payload.chunks(size).enumerate() {
        let mut f = h.clone();
        f.identification = id;
        f.dont_fragment = false;
        f.more_fragments = (i + 1) * size < payload.len();
        f.fragment_offset =
            etherparse::IpFragOffset::try_new(u16::try_from(i * size / 8).ok()?).ok()?;
        f.set_payload_len(part.len()).ok()?;
        f.header_checksum = f.calc_header_checksum();
        let mut v = eth.to_vec();
        f.write(&mut v).ok()?;
        v.extend_from_slice(part);
        out.push(v);
    }
    Some(out)
}

/// The fragments of one IPv4 datagram (untagged frames, any order) put
/// back together into one frame, with the first fragment's Ethernet and
/// IP headers; an error names what is off (a header checksum, a gap or
/// overlap, no first or last fragment).
pub fn reassemble_v4(frags: &[Vec<u8>]) -> Result<Vec<u8>, String> {
    let mut parts = Vec::new();
    let mut head = None;
    let mut last = false;
    for f in frags {
        let (h, rest) =
            Ipv4Header::from_slice(f.get(14..).unwrap_or_default()).map_err(|e| e.to_string())?;
        if h.header_checksum != h.calc_header_checksum() {
            return Err("a fragment's IPv4 header checksum is wrong".into());
        }
        let data = rest
            .get(..usize::from(h.total_len).saturating_sub(h.header_len()))
            .ok_or("a fragment shorter than its header says")?;
        let offset = usize::from(h.fragment_offset.value()) * 8;
        if offset == 0 {
            head = Some((f.get(..14).unwrap_or_default().to_vec(), h.clone()));
        }
        last |= !h.more_fragments;
        parts.push((offset, data));
    }
    let (mut out, mut h) = head.ok_or("no first fragment")?;
    if !last {
        return Err("no last fragment".into());
    }
    parts.sort_by_key(|(o, _)| *o);
    let mut payload = Vec::new();
    for (o, d) in parts {
        if o != payload.len() {
            return Err(format!("a gap or overlap at byte {o}"));
        }
        payload.extend_from_slice(d);
    }
    h.more_fragments = false;
    h.set_payload_len(payload.len())
        .map_err(|e| e.to_string())?;
    h.header_checksum = h.calc_header_checksum();
    h.write(&mut out).map_err(|e| e.to_string())?;
    out.extend_from_slice(&payload);
    Ok(out)
}
