//! Shared test support: frames built with etherparse (plus hand-built tunnel
//! headers, which etherparse does not know), and an independent checksum
//! verifier that walks frames with etherparse and recomputes every checksum
//! with etherparse's own functions.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use strata_packet::emit::{PacketBuf, apply};
use strata_packet::flow::{MacAddr, TunnelKind};
use strata_packet::parse::parse;
use strata_packet::transposition::{Encap, OuterOp, Transposition, VlanOp};

use etherparse::{
    IpAuthHeader, IpDscp, IpEcn, IpFragOffset, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header,
    Ipv6Extensions, Ipv6FlowLabel, Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader,
    Ipv6RoutingExtensions, NetHeaders, PacketBuilder, PacketHeaders, TransportHeader, VlanId,
};

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
pub const MAC_OA: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x0a];
pub const MAC_OB: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x0b];

pub const V4_A: [u8; 4] = [10, 0, 0, 1];
pub const V4_B: [u8; 4] = [10, 0, 0, 2];
pub const V6_A: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const V6_B: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const PA4_A: [u8; 4] = [192, 168, 1, 1];
pub const PA4_B: [u8; 4] = [192, 168, 1, 2];
pub const PA6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];
pub const PA6_B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b];

pub const PAYLOAD: &[u8] = b"hello, strata! 0123456789";

fn v4_header(proto: u8, payload_len: usize, dscp: u8, ecn: u8, options: &[u8]) -> Ipv4Header {
    let mut h = Ipv4Header::new(payload_len as u16, 64, IpNumber(proto), V4_A, V4_B).unwrap();
    h.dscp = IpDscp::try_new(dscp).unwrap();
    h.ecn = IpEcn::try_new(ecn).unwrap();
    h.identification = 0x1234;
    h.options = options.try_into().unwrap();
    h
}

fn v6_header(proto: u8, dscp: u8, ecn: u8) -> Ipv6Header {
    Ipv6Header {
        traffic_class: (dscp << 2) | ecn,
        flow_label: Ipv6FlowLabel::try_new(0x12345).unwrap(),
        payload_length: 0,
        next_header: IpNumber(proto),
        hop_limit: 33,
        source: V6_A,
        destination: V6_B,
    }
}

/// Plain TCP over IPv4: 10.0.0.1:40000 -> 10.0.0.2:80, ACK|PSH, DSCP 46, ECN 1.
pub fn tcp_v4() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ip(IpHeaders::Ipv4(
            v4_header(6, 0, 46, 1, &[]),
            Ipv4Extensions::default(),
        ))
        .tcp(40000, 80, 1000, 4096)
        .ack(2000)
        .psh()
        .write(&mut out, PAYLOAD)
        .unwrap();
    out
}

/// TCP over IPv4 with 8 bytes of IP options (NOP padding + a timestamp-ish
/// blob) and TCP options.
pub fn tcp_v4_options() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ip(IpHeaders::Ipv4(
            v4_header(6, 0, 10, 0, &[1, 1, 1, 1, 0x44, 4, 5, 0]),
            Ipv4Extensions::default(),
        ))
        .tcp(40001, 443, 7, 1024)
        .syn()
        .options_raw(&[2, 4, 5, 0xb4])
        .unwrap()
        .write(&mut out, &[])
        .unwrap();
    out
}

/// UDP over IPv4: 10.0.0.1:5353 -> 10.0.0.2:53.
pub fn udp_v4() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ip(IpHeaders::Ipv4(
            v4_header(17, 0, 0, 0, &[]),
            Ipv4Extensions::default(),
        ))
        .udp(5353, 53)
        .write(&mut out, PAYLOAD)
        .unwrap();
    out
}

/// UDP over IPv4 with the (optional) checksum zeroed.
pub fn udp_v4_nocsum() -> Vec<u8> {
    let mut f = udp_v4();
    f[14 + 20 + 6] = 0;
    f[14 + 20 + 7] = 0;
    f
}

pub fn icmp_v4_echo_request() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_A, V4_B, 64)
        .icmpv4_echo_request(0x1234, 7)
        .write(&mut out, PAYLOAD)
        .unwrap();
    out
}

pub fn icmp_v4_echo_reply() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4(V4_B, V4_A, 64)
        .icmpv4_echo_reply(0x1234, 7)
        .write(&mut out, PAYLOAD)
        .unwrap();
    out
}

/// ICMPv4 destination unreachable (not echo: ports 0).
pub fn icmp_v4_unreachable() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_A, V4_B, 64)
        .icmpv4_raw(3, 1, [0, 0, 0, 0])
        .write(&mut out, &[0x45; 28])
        .unwrap();
    out
}

pub fn tcp_v6() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ip(IpHeaders::Ipv6(
            v6_header(6, 26, 2),
            Ipv6Extensions::default(),
        ))
        .tcp(40000, 8080, 0xfffffff0, 65535)
        .syn()
        .write(&mut out, &[])
        .unwrap();
    out
}

pub fn udp_v6() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ip(IpHeaders::Ipv6(
            v6_header(17, 0, 0),
            Ipv6Extensions::default(),
        ))
        .udp(1000, 2000)
        .write(&mut out, PAYLOAD)
        .unwrap();
    out
}

pub fn icmp_v6_echo_request() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(V6_A, V6_B, 64)
        .icmpv6_echo_request(0x4321, 9)
        .write(&mut out, PAYLOAD)
        .unwrap();
    out
}

pub fn icmp_v6_echo_reply() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv6(V6_B, V6_A, 64)
        .icmpv6_echo_reply(0x4321, 9)
        .write(&mut out, PAYLOAD)
        .unwrap();
    out
}

/// IPv6 + hop-by-hop + destination options + routing + fragment (atomic:
/// offset 0, no more fragments) + AH, then UDP.
pub fn udp_v6_ext() -> Vec<u8> {
    let exts = Ipv6Extensions {
        hop_by_hop_options: Some(
            Ipv6RawExtHeader::new_raw(IpNumber(0), &[1, 4, 0, 0, 0, 0]).unwrap(),
        ),
        destination_options: Some(
            Ipv6RawExtHeader::new_raw(IpNumber(0), &[1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
                .unwrap(),
        ),
        routing: Some(Ipv6RoutingExtensions {
            routing: Ipv6RawExtHeader::new_raw(IpNumber(0), &[0, 0, 0, 0, 0, 0]).unwrap(),
            final_destination_options: None,
        }),
        fragment: Some(Ipv6FragmentHeader::new(
            IpNumber(0),
            IpFragOffset::try_new(0).unwrap(),
            false,
            0xabcd,
        )),
        auth: Some(IpAuthHeader::new(IpNumber(0), 0x100, 1, &[9, 9, 9, 9]).unwrap()),
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ip(IpHeaders::Ipv6(v6_header(17, 8, 0), exts))
        .udp(3000, 4000)
        .write(&mut out, PAYLOAD)
        .unwrap();
    out
}

/// 802.1Q-tagged (VID 100) TCP over IPv4.
pub fn tcp_v4_vlan() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(VlanId::try_new(100).unwrap())
        .ipv4(V4_A, V4_B, 64)
        .tcp(40000, 80, 1, 100)
        .ack(5)
        .write(&mut out, PAYLOAD)
        .unwrap();
    out
}

/// QinQ (S-tag 200, C-tag 300) UDP over IPv6.
pub fn udp_v6_qinq() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .double_vlan(VlanId::try_new(200).unwrap(), VlanId::try_new(300).unwrap())
        .ipv6(V6_A, V6_B, 64)
        .udp(1000, 2000)
        .write(&mut out, PAYLOAD)
        .unwrap();
    out
}

/// A non-first IPv4 fragment of a UDP datagram (offset 1480 bytes).
pub fn udp_v4_fragment() -> Vec<u8> {
    let mut h = v4_header(17, 16, 0, 0, &[]);
    h.fragment_offset = IpFragOffset::try_new(185).unwrap();
    h.more_fragments = false;
    let mut out = eth_ipv4(h);
    out.extend_from_slice(&[0xee; 16]);
    out
}

/// An Ethernet header (B to A, IPv4) and IPv4 header `h`, its checksum
/// computed: the start of a frame whose IP payload the caller appends.
fn eth_ipv4(mut h: Ipv4Header) -> Vec<u8> {
    h.header_checksum = h.calc_header_checksum();
    let mut out = Vec::new();
    out.extend_from_slice(&MAC_B);
    out.extend_from_slice(&MAC_A);
    out.extend_from_slice(&[0x08, 0x00]);
    h.write(&mut out).unwrap();
    out
}

/// The first IPv4 fragment of a UDP datagram: its UDP length field names
/// the whole datagram (1,488 bytes), more than this fragment holds.
pub fn udp_v4_first_fragment() -> Vec<u8> {
    let mut h = v4_header(17, 24, 0, 0, &[]);
    h.more_fragments = true;
    h.identification = 0x0777;
    let mut out = eth_ipv4(h);
    out.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0x05, 0xd0, 0x12, 0x34]);
    out.extend_from_slice(&[0xee; 16]);
    out
}

/// An IPv6 fragment (fragment header, id 0x01020304) of a UDP datagram:
/// the first when `offset` is 0 (with the UDP header), else a later one.
pub fn udp_v6_fragment(offset: u16, more: bool) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAC_B);
    out.extend_from_slice(&MAC_A);
    out.extend_from_slice(&[0x86, 0xdd]);
    let mut h = v6_header(44, 0, 0);
    h.payload_length = 8 + 24;
    h.write(&mut out).unwrap();
    // By hand: etherparse 0.19 writes the offset and M flag in the wrong
    // bits (its issue #150, fixed in 0.20).
    out.extend_from_slice(&[17, 0]);
    out.extend_from_slice(&(offset << 3 | u16::from(more)).to_be_bytes());
    out.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    if offset == 0 {
        out.extend_from_slice(&[0x0f, 0xa0, 0x01, 0xbb, 0x00, 0x80, 0x55, 0x66]);
        out.extend_from_slice(&[0xdd; 16]);
    } else {
        out.extend_from_slice(&[0xdd; 24]);
    }
    out
}

pub fn arp_request() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&[0xff; 6]);
    out.extend_from_slice(&MAC_A);
    out.extend_from_slice(&[0x08, 0x06]);
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    out.extend_from_slice(&MAC_A);
    out.extend_from_slice(&V4_A);
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&V4_B);
    out.extend_from_slice(&[0; 18]); // padding to 60 bytes
    out
}

/// The VXLAN header for `vni`.
pub fn vxlan_header(vni: u32) -> [u8; 8] {
    let v = (vni << 8).to_be_bytes();
    [0x08, 0, 0, 0, v[0], v[1], v[2], 0]
}

/// A Geneve header carrying Ethernet with the given option TLVs.
pub fn geneve_header(vni: u32, options: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let v = (vni << 8).to_be_bytes();
    let mut h = vec![
        (options.len() / 4) as u8,
        0,
        0x65,
        0x58,
        v[0],
        v[1],
        v[2],
        0,
    ];
    h.extend_from_slice(options);
    h
}

/// Example Geneve options: one 4-byte-data TLV and one empty TLV.
pub const GENEVE_OPTS: &[u8] = &[
    0x01, 0x02, 0x03, 0x01, 0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0x80, 0x00,
];

/// Outer Ethernet + IPv4 + UDP(src 50000, dst `port`) around `encap || inner`.
pub fn udp_tunnel_v4(port: u16, encap: &[u8], inner: &[u8]) -> Vec<u8> {
    let mut payload = encap.to_vec();
    payload.extend_from_slice(inner);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_OA, MAC_OB)
        .ipv4(PA4_A, PA4_B, 63)
        .udp(50000, port)
        .write(&mut out, &payload)
        .unwrap();
    out
}

/// Outer Ethernet + IPv6 + UDP(src 50000, dst `port`) around `encap || inner`.
pub fn udp_tunnel_v6(port: u16, encap: &[u8], inner: &[u8]) -> Vec<u8> {
    let mut payload = encap.to_vec();
    payload.extend_from_slice(inner);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_OA, MAC_OB)
        .ipv6(PA6_A, PA6_B, 63)
        .udp(50000, port)
        .write(&mut out, &payload)
        .unwrap();
    out
}

pub fn vxlan_v4(vni: u32, inner: &[u8]) -> Vec<u8> {
    udp_tunnel_v4(4789, &vxlan_header(vni), inner)
}

pub fn vxlan_v6(vni: u32, inner: &[u8]) -> Vec<u8> {
    udp_tunnel_v6(4789, &vxlan_header(vni), inner)
}

pub fn geneve_v4(vni: u32, options: &[u8], inner: &[u8]) -> Vec<u8> {
    udp_tunnel_v4(6081, &geneve_header(vni, options), inner)
}

/// NVGRE: outer Ethernet + IPv4 (proto 47) + GRE(K, 0x6558, vsid, flow id).
pub fn nvgre_v4(vsid: u32, flow_id: u8, inner: &[u8]) -> Vec<u8> {
    let key = ((vsid << 8) | u32::from(flow_id)).to_be_bytes();
    let mut payload = vec![0x20, 0x00, 0x65, 0x58];
    payload.extend_from_slice(&key);
    payload.extend_from_slice(inner);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_OA, MAC_OB)
        .ipv4(PA4_A, PA4_B, 63)
        .write(&mut out, IpNumber(47), &payload)
        .unwrap();
    out
}

/// Every sample frame, named. Used by the truncation test and as fuzz seeds.
pub fn all_frames() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("tcp_v4", tcp_v4()),
        ("tcp_v4_options", tcp_v4_options()),
        ("udp_v4", udp_v4()),
        ("udp_v4_nocsum", udp_v4_nocsum()),
        ("icmp_v4_echo_request", icmp_v4_echo_request()),
        ("icmp_v4_echo_reply", icmp_v4_echo_reply()),
        ("icmp_v4_unreachable", icmp_v4_unreachable()),
        ("tcp_v6", tcp_v6()),
        ("udp_v6", udp_v6()),
        ("icmp_v6_echo_request", icmp_v6_echo_request()),
        ("icmp_v6_echo_reply", icmp_v6_echo_reply()),
        ("udp_v6_ext", udp_v6_ext()),
        ("tcp_v4_vlan", tcp_v4_vlan()),
        ("udp_v6_qinq", udp_v6_qinq()),
        ("udp_v4_fragment", udp_v4_fragment()),
        ("udp_v4_first_fragment", udp_v4_first_fragment()),
        ("udp_v6_first_fragment", udp_v6_fragment(0, true)),
        ("udp_v6_last_fragment", udp_v6_fragment(3, false)),
        ("arp_request", arp_request()),
        ("vxlan_v4", vxlan_v4(5000, &tcp_v4())),
        ("vxlan_v6", vxlan_v6(0xabcdef, &udp_v6())),
        ("geneve_v4", geneve_v4(77, GENEVE_OPTS, &tcp_v4_vlan())),
        ("nvgre_v4", nvgre_v4(0x123456, 9, &icmp_v4_echo_request())),
        ("icmp_v4_frag_needed_tcp", icmp_v4_frag_needed_tcp()),
        ("icmp_v4_time_exceeded_echo", icmp_v4_time_exceeded_echo()),
        ("icmp_v6_too_big_udp_ext", icmp_v6_too_big_udp_ext()),
        ("icmp_v6_unreachable_tcp", icmp_v6_unreachable_tcp()),
        (
            "vxlan_icmp_v4_frag_needed",
            vxlan_v4(5000, &icmp_v4_frag_needed_tcp()),
        ),
    ]
}

/// What `verify` found, for assertions about coverage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub ipv4_headers: usize,
    pub l4_checksums: usize,
    pub skipped_zero_udp: usize,
}

/// Walk `frame` with etherparse and check every checksum with etherparse's
/// own functions: IPv4 header checksums, TCP/UDP/ICMPv4/ICMPv6 checksums,
/// and, for VXLAN/Geneve/NVGRE frames, the inner frame as well.
pub fn verify(frame: &[u8]) -> Verified {
    let mut v = Verified::default();
    verify_into(frame, &mut v);
    v
}

fn verify_into(frame: &[u8], v: &mut Verified) {
    let h = PacketHeaders::from_ethernet_slice(frame).expect("etherparse accepts the frame");
    let payload = h.payload.slice();
    let (src4, dst4, src6, dst6) = match &h.net {
        Some(NetHeaders::Ipv4(ip, _)) => {
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "IPv4 header checksum"
            );
            v.ipv4_headers += 1;
            (Some(ip.source), Some(ip.destination), None, None)
        }
        Some(NetHeaders::Ipv6(ip, _)) => (None, None, Some(ip.source), Some(ip.destination)),
        _ => return,
    };
    let ip = h.net.as_ref().unwrap();
    let fragmented = match ip {
        NetHeaders::Ipv4(ip, _) => ip.is_fragmenting_payload(),
        NetHeaders::Ipv6(_, exts) => exts.is_fragmenting_payload(),
        _ => false,
    };
    match &h.transport {
        Some(TransportHeader::Tcp(t)) if !fragmented => {
            let c = match (src4, src6) {
                (Some(s), _) => t.calc_checksum_ipv4_raw(s, dst4.unwrap(), payload).unwrap(),
                (_, Some(s)) => t.calc_checksum_ipv6_raw(s, dst6.unwrap(), payload).unwrap(),
                _ => unreachable!(),
            };
            assert_eq!(t.checksum, c, "TCP checksum");
            v.l4_checksums += 1;
        }
        Some(TransportHeader::Udp(u)) if !fragmented => {
            if u.checksum == 0 {
                assert!(
                    src4.is_some() || u.destination_port == 4789 || u.destination_port == 6081,
                    "zero UDP checksum over IPv6"
                );
                v.skipped_zero_udp += 1;
            } else {
                let c = match (src4, src6) {
                    (Some(s), _) => u.calc_checksum_ipv4_raw(s, dst4.unwrap(), payload).unwrap(),
                    (_, Some(s)) => u.calc_checksum_ipv6_raw(s, dst6.unwrap(), payload).unwrap(),
                    _ => unreachable!(),
                };
                assert_eq!(u.checksum, c, "UDP checksum");
                v.l4_checksums += 1;
            }
            match u.destination_port {
                4789 => verify_into(&payload[8..], v),
                6081 => {
                    let opt = usize::from(payload[0] & 0x3f) * 4;
                    verify_into(&payload[8 + opt..], v)
                }
                _ => {}
            }
        }
        Some(TransportHeader::Icmpv4(i)) => {
            assert_eq!(
                i.checksum,
                i.icmp_type.calc_checksum(payload),
                "ICMPv4 checksum"
            );
            v.l4_checksums += 1;
        }
        Some(TransportHeader::Icmpv6(i)) => {
            let c = i
                .icmp_type
                .calc_checksum(src6.unwrap(), dst6.unwrap(), payload)
                .unwrap();
            assert_eq!(i.checksum, c, "ICMPv6 checksum");
            v.l4_checksums += 1;
        }
        None if !fragmented => {
            // NVGRE: GRE with K flag and TEB.
            let proto = match ip {
                NetHeaders::Ipv4(ip, _) => ip.protocol.0,
                NetHeaders::Ipv6(ip, _) => ip.next_header.0,
                _ => 0,
            };
            if proto == 47 && payload.len() >= 8 && payload[2..4] == [0x65, 0x58] {
                verify_into(&payload[8..], v);
            }
        }
        _ => {}
    }
}

/// A mix of transpositions touching every emitter path.
pub fn transpositions() -> Vec<Transposition> {
    let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    let v6 = |x| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, x));
    let encap = |kind, six: bool| {
        let (s, d) = if six {
            (v6(0xa), v6(0xb))
        } else {
            (v4(192, 0, 2, 1), v4(192, 0, 2, 2))
        };
        let mut e = Encap::new(
            kind,
            0x1234,
            MacAddr([2, 0, 0, 0, 0, 1]),
            MacAddr([2, 0, 0, 0, 0, 2]),
            s,
            d,
        );
        if kind == TunnelKind::Geneve {
            e.geneve_options = vec![0, 1, 2, 1, 9, 9, 9, 9];
        }
        Arc::new(e)
    };
    let nat4 = Transposition {
        src_ip: Some(v4(100, 64, 0, 1)),
        dst_ip: Some(v4(10, 9, 8, 7)),
        src_port: Some(1024),
        dst_port: Some(8080),
        dscp: Some(10),
        ..Transposition::default()
    };
    let nat6 = Transposition {
        src_ip: Some(v6(1)),
        dst_ip: Some(v6(2)),
        src_port: Some(2048),
        dst_port: Some(443),
        ..Transposition::default()
    };
    vec![
        nat4.clone(),
        nat6.clone(),
        Transposition {
            vlan: VlanOp::Set(77),
            src_mac: Some(MacAddr([2, 9, 9, 9, 9, 9])),
            ..nat4.clone()
        },
        Transposition {
            vlan: VlanOp::Pop,
            ..nat6.clone()
        },
        Transposition {
            outer: OuterOp::Push(encap(TunnelKind::Vxlan, false)),
            ..nat4.clone()
        },
        Transposition {
            outer: OuterOp::Push(encap(TunnelKind::Geneve, true)),
            vlan: VlanOp::Set(5),
            ..Transposition::default()
        },
        Transposition {
            outer: OuterOp::Pop,
            ..nat6
        },
        Transposition {
            outer: OuterOp::Replace(encap(TunnelKind::Nvgre, false)),
            vlan: VlanOp::Pop,
            ..nat4
        },
    ]
}

/// Parse `frame`; if it parses, apply every transposition and require the
/// output to parse again.
pub fn exercise(frame: &[u8]) {
    exercise_quote(frame);
    let Ok(p) = parse(frame) else { return };
    // A parsed fragment's place reads back, consistent with the parse.
    let lay = &p.layout;
    match strata_packet::fragment::fragment_of(frame, lay) {
        Some(f) => {
            assert!(lay.fragment);
            assert_eq!(f.offset % 8, 0);
            assert_eq!(f.offset == 0, !lay.non_first_fragment);
            assert_eq!(f.len, lay.l3_end - lay.l4);
        }
        None => assert!(
            !lay.fragment,
            "a parsed fragment whose place cannot be read"
        ),
    }
    let mut buf = PacketBuf::from_frame(frame);
    for t in transpositions() {
        buf.reset(frame);
        if apply(&t, &mut buf, &p).is_ok() {
            let out = buf.as_slice();
            assert!(
                parse(out).is_ok(),
                "output of {} does not parse: {:?}",
                t.describe(),
                parse(out)
            );
        }
    }
}

/// The IP packet of a plain Ethernet frame.
fn ip_packet(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

/// ICMPv4 "fragmentation needed" quoting a whole TCP segment.
pub fn icmp_v4_frag_needed_tcp() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4(PA4_A, V4_A, 64)
        .icmpv4_raw(3, 4, [0, 0, 0x05, 0xdc])
        .write(&mut out, ip_packet(&tcp_v4()))
        .unwrap();
    out
}

/// ICMPv4 "time exceeded" quoting an echo request (header and 8 bytes).
pub fn icmp_v4_time_exceeded_echo() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4(PA4_A, V4_A, 64)
        .icmpv4_raw(11, 0, [0; 4])
        .write(&mut out, &ip_packet(&icmp_v4_echo_request())[..28])
        .unwrap();
    out
}

/// ICMPv6 "packet too big" quoting a UDP datagram behind extension headers.
pub fn icmp_v6_too_big_udp_ext() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv6(V6_B, V6_A, 64)
        .icmpv6_raw(2, 0, [0, 0, 0x05, 0x00])
        .write(&mut out, ip_packet(&udp_v6_ext()))
        .unwrap();
    out
}

/// ICMPv6 "destination unreachable" quoting a whole TCP segment.
pub fn icmp_v6_unreachable_tcp() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv6(V6_B, V6_A, 64)
        .icmpv6_raw(1, 4, [0; 4])
        .write(&mut out, ip_packet(&tcp_v6()))
        .unwrap();
    out
}

/// The checksums of a plain (untunnelled) ICMP error frame, recomputed by
/// etherparse: whether the error's own checksum holds, and whether the
/// quoted packet's IPv4 header and L4 checksums hold (`None`: not in the
/// quote, or the quote is not a whole packet etherparse reads).
pub fn icmp_error_checksums(frame: &[u8]) -> Option<(bool, Option<bool>, Option<bool>)> {
    let h = PacketHeaders::from_ethernet_slice(frame).ok()?;
    let payload = h.payload.slice();
    let own = match (&h.net, &h.transport) {
        (Some(NetHeaders::Ipv4(..)), Some(TransportHeader::Icmpv4(i))) => {
            i.checksum == i.icmp_type.calc_checksum(payload)
        }
        (Some(NetHeaders::Ipv6(ip, _)), Some(TransportHeader::Icmpv6(i))) => {
            i.checksum
                == i.icmp_type
                    .calc_checksum(ip.source, ip.destination, payload)
                    .ok()?
        }
        _ => return None,
    };
    let header = Ipv4Header::from_slice(payload)
        .ok()
        .map(|(ip, _)| ip.header_checksum == ip.calc_header_checksum());
    let l4 = PacketHeaders::from_ip_slice(payload).ok().and_then(|q| {
        let data = q.payload.slice();
        match (&q.net, &q.transport) {
            (Some(NetHeaders::Ipv4(ip, _)), Some(TransportHeader::Tcp(t))) => {
                Some(t.checksum == t.calc_checksum_ipv4(ip, data).ok()?)
            }
            (Some(NetHeaders::Ipv4(ip, _)), Some(TransportHeader::Udp(u))) if u.checksum != 0 => {
                Some(u.checksum == u.calc_checksum_ipv4(ip, data).ok()?)
            }
            (Some(NetHeaders::Ipv6(ip, _)), Some(TransportHeader::Tcp(t))) => {
                Some(t.checksum == t.calc_checksum_ipv6(ip, data).ok()?)
            }
            (Some(NetHeaders::Ipv6(ip, _)), Some(TransportHeader::Udp(u))) => {
                Some(u.checksum == u.calc_checksum_ipv6(ip, data).ok()?)
            }
            _ => None,
        }
    });
    Some((own, header, l4))
}

/// If `frame` is an ICMP error with a readable quote: rewrite the quote,
/// and check the frame still parses, reads back the new quote, and keeps
/// every checksum that held before.
pub fn exercise_quote(frame: &[u8]) {
    use strata_packet::icmp_error::{read_quote, rewrite_quote};
    let Ok(p) = parse(frame) else { return };
    let Ok(q) = read_quote(frame, &p.ufid.inner, &p.layout) else {
        return;
    };
    let (src, dst) = if q.is_v6() {
        (
            IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 2, 3, 4, 5, 6, 7)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 9, 9, 9, 9, 9, 9)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(172, 16, 5, 6)),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 200)),
        )
    };
    let before = if p.ufid.outer.is_none() {
        icmp_error_checksums(frame)
    } else {
        None
    };
    let mut m = frame.to_vec();
    rewrite_quote(&mut m, &q, src, dst, 4242, 2424).expect("a quote that reads rewrites");
    let p2 = parse(&m).expect("a rewritten error parses");
    let q2 = read_quote(&m, &p2.ufid.inner, &p2.layout).expect("and reads");
    assert_eq!((q2.src_ip, q2.dst_ip, q2.proto), (src, dst, q.proto));
    if matches!(q.proto, 6 | 17) {
        assert_eq!((q2.src_port, q2.dst_port), (4242, 2424));
    }
    if let (Some(b), Some(a)) = (
        before,
        icmp_error_checksums(&m).or(Some((false, None, None))),
    ) {
        assert!(!b.0 || a.0, "the error's checksum held and no longer does");
        assert!(
            b.1 != Some(true) || a.1 == Some(true),
            "quoted IPv4 header checksum"
        );
        assert!(b.2 != Some(true) || a.2 == Some(true), "quoted L4 checksum");
    }
}
