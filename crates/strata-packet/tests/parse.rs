//! Parser tests: frames built with etherparse (tunnel headers by hand),
//! checked field by field against what was built.

mod common;

use common::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use strata_packet::flow::{FlowKey, MacAddr, NO_IP, OuterKey, TunnelKind};
use strata_packet::parse::{Header, L3Kind, L4Kind, ParseError, parse, tcp_flags};

fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn v6(a: [u8; 16]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(a))
}

fn key(proto: u8, src_port: u16, dst_port: u16) -> FlowKey {
    FlowKey {
        src_mac: MacAddr(MAC_A),
        dst_mac: MacAddr(MAC_B),
        vlan: None,
        ether_type: 0x0800,
        src_ip: v4(V4_A),
        dst_ip: v4(V4_B),
        proto,
        dscp: 0,
        src_port,
        dst_port,
        icmp_type: 0,
        icmp_code: 0,
    }
}

fn key6(proto: u8, src_port: u16, dst_port: u16) -> FlowKey {
    FlowKey {
        ether_type: 0x86dd,
        src_ip: v6(V6_A),
        dst_ip: v6(V6_B),
        ..key(proto, src_port, dst_port)
    }
}

#[test]
fn tcp_v4_fields() {
    let f = tcp_v4();
    let p = parse(&f).unwrap();
    assert_eq!(p.ufid.outer, None);
    assert_eq!(
        p.ufid.inner,
        FlowKey {
            dscp: 46,
            ..key(6, 40000, 80)
        }
    );
    assert_eq!(p.meta.frame_len as usize, f.len());
    assert_eq!(p.meta.tcp_flags, tcp_flags::ACK | tcp_flags::PSH);
    assert_eq!(p.meta.tcp_seq, 1000);
    assert_eq!(p.meta.tcp_ack, 2000);
    assert_eq!(p.meta.l4_payload_len as usize, PAYLOAD.len());
    assert_eq!(p.meta.ecn, 1);
    assert_eq!(p.meta.ttl, 64);
    let l = p.layout;
    assert_eq!((l.inner_eth, l.inner_end as usize), (0, f.len()));
    assert_eq!(l.vlan_count, 0);
    assert_eq!(l.ether_type, 12);
    assert_eq!((l.l3, l.l3_kind, l.l3_hdr_len), (14, L3Kind::Ipv4, 20));
    assert_eq!(l.l3_end as usize, f.len());
    assert_eq!((l.l4, l.l4_kind, l.l4_hdr_len), (34, L4Kind::Tcp, 20));
    assert!(!l.fragment && !l.non_first_fragment);
    assert_eq!(l.l4_checksum(), Some(50));
}

#[test]
fn tcp_v4_with_options() {
    let f = tcp_v4_options();
    let p = parse(&f).unwrap();
    assert_eq!(
        p.ufid.inner,
        FlowKey {
            dscp: 10,
            ..key(6, 40001, 443)
        }
    );
    assert_eq!(p.meta.tcp_flags, tcp_flags::SYN);
    assert_eq!(p.meta.tcp_seq, 7);
    assert_eq!(p.meta.l4_payload_len, 0);
    assert_eq!(p.layout.l3_hdr_len, 28);
    assert_eq!(p.layout.l4, 14 + 28);
    assert_eq!(p.layout.l4_hdr_len, 24);
}

#[test]
fn udp_v4_fields() {
    let f = udp_v4();
    let p = parse(&f).unwrap();
    assert_eq!(p.ufid.inner, key(17, 5353, 53));
    assert_eq!(p.meta.l4_payload_len as usize, PAYLOAD.len());
    assert_eq!(p.meta.tcp_flags, 0);
    assert_eq!((p.layout.l4_kind, p.layout.l4_hdr_len), (L4Kind::Udp, 8));
}

#[test]
fn icmp_v4_echo_convention() {
    let p = parse(&icmp_v4_echo_request()).unwrap();
    assert_eq!(
        p.ufid.inner,
        FlowKey {
            icmp_type: 8,
            ..key(1, 0x1234, 0)
        }
    );
    assert_eq!(p.layout.l4_kind, L4Kind::Icmpv4);
    let r = parse(&icmp_v4_echo_reply()).unwrap();
    assert_eq!(r.ufid.inner.icmp_type, 0);
    assert_eq!((r.ufid.inner.src_port, r.ufid.inner.dst_port), (0, 0x1234));
    // The reply's key is the reversed request key.
    assert_eq!(r.ufid.inner, p.ufid.inner.reversed());
    let u = parse(&icmp_v4_unreachable()).unwrap();
    assert_eq!((u.ufid.inner.icmp_type, u.ufid.inner.icmp_code), (3, 1));
    assert_eq!((u.ufid.inner.src_port, u.ufid.inner.dst_port), (0, 0));
}

#[test]
fn tcp_v6_fields() {
    let f = tcp_v6();
    let p = parse(&f).unwrap();
    assert_eq!(
        p.ufid.inner,
        FlowKey {
            dscp: 26,
            ..key6(6, 40000, 8080)
        }
    );
    assert_eq!(p.meta.ecn, 2);
    assert_eq!(p.meta.ttl, 33);
    assert_eq!(p.meta.tcp_flags, tcp_flags::SYN);
    assert_eq!(p.meta.tcp_seq, 0xfffffff0);
    assert_eq!((p.layout.l3_kind, p.layout.l3_hdr_len), (L3Kind::Ipv6, 40));
    assert_eq!(p.layout.l4, 54);
}

#[test]
fn udp_v6_and_icmpv6() {
    let p = parse(&udp_v6()).unwrap();
    assert_eq!(p.ufid.inner, key6(17, 1000, 2000));
    let q = parse(&icmp_v6_echo_request()).unwrap();
    assert_eq!(
        q.ufid.inner,
        FlowKey {
            icmp_type: 128,
            ..key6(58, 0x4321, 0)
        }
    );
    assert_eq!(q.layout.l4_kind, L4Kind::Icmpv6);
    let r = parse(&icmp_v6_echo_reply()).unwrap();
    assert_eq!(r.ufid.inner, q.ufid.inner.reversed());
}

#[test]
fn ipv6_extension_headers() {
    let f = udp_v6_ext();
    let p = parse(&f).unwrap();
    assert_eq!(
        p.ufid.inner,
        FlowKey {
            dscp: 8,
            ..key6(17, 3000, 4000)
        }
    );
    // HBH 8 + DST 16 + routing 8 + fragment 8 + AH 16.
    assert_eq!(p.layout.l3_hdr_len, 40 + 56);
    assert_eq!(p.layout.l4, 14 + 96);
    assert!(!p.layout.fragment, "atomic fragment is not a fragment");
    assert_eq!(p.meta.l4_payload_len as usize, PAYLOAD.len());
}

#[test]
fn vlan_tags() {
    let f = tcp_v4_vlan();
    let p = parse(&f).unwrap();
    assert_eq!(p.ufid.inner.vlan, Some(100));
    assert_eq!(p.ufid.inner.ether_type, 0x0800);
    assert_eq!((p.ufid.inner.src_port, p.ufid.inner.dst_port), (40000, 80));
    assert_eq!(p.layout.vlan_count, 1);
    assert_eq!(p.layout.vlan_tci[0], 14);
    assert_eq!(p.layout.ether_type, 16);
    assert_eq!(p.layout.l3, 18);

    let q = parse(&udp_v6_qinq()).unwrap();
    assert_eq!(q.ufid.inner.vlan, Some(300), "innermost VID");
    assert_eq!(q.layout.vlan_count, 2);
    assert_eq!(q.layout.vlan_tci, [14, 18]);
    assert_eq!(q.layout.l3, 22);
    assert_eq!(
        q.ufid.inner,
        FlowKey {
            vlan: Some(300),
            ..key6(17, 1000, 2000)
        }
    );

    // A third tag is refused.
    let mut f3 = udp_v6_qinq();
    let tag = [0x81, 0x00, 0x00, 0x05];
    f3.splice(12..12, tag);
    assert_eq!(parse(&f3), Err(ParseError::TooManyVlanTags));
}

#[test]
fn non_first_fragment_has_no_ports() {
    let p = parse(&udp_v4_fragment()).unwrap();
    assert_eq!(p.ufid.inner.src_mac, MacAddr(MAC_A));
    assert_eq!(p.ufid.inner.proto, 17);
    assert_eq!((p.ufid.inner.src_port, p.ufid.inner.dst_port), (0, 0));
    assert!(p.layout.fragment && p.layout.non_first_fragment);
    assert_eq!(p.layout.l4_kind, L4Kind::None);
    assert_eq!(p.meta.l4_payload_len, 0);
}

#[test]
fn first_fragment_has_ports_and_is_not_a_tunnel() {
    // VXLAN to port 4789 but with MF set: a plain UDP flow.
    let mut f = vxlan_v4(1, &tcp_v4());
    f[14 + 6] |= 0x20;
    let c = {
        f[24] = 0;
        f[25] = 0;
        let mut s = 0u32;
        for i in (14..34).step_by(2) {
            s += u32::from(u16::from_be_bytes([f[i], f[i + 1]]));
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    };
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let p = parse(&f).unwrap();
    assert_eq!(p.ufid.outer, None);
    assert_eq!(
        (p.ufid.inner.src_port, p.ufid.inner.dst_port),
        (50000, 4789)
    );
    assert!(p.layout.fragment && !p.layout.non_first_fragment);
}

#[test]
fn arp_fields() {
    let f = arp_request();
    let p = parse(&f).unwrap();
    assert_eq!(
        p.ufid.inner,
        FlowKey {
            src_mac: MacAddr(MAC_A),
            dst_mac: MacAddr::BROADCAST,
            ether_type: 0x0806,
            ..FlowKey::default()
        }
    );
    assert_eq!(p.ufid.inner.src_ip, NO_IP);
    assert_eq!(p.layout.l3_kind, L3Kind::Arp);
    assert_eq!(p.meta.ttl, 0);
    assert_eq!(
        parse(&f[..14 + 27]),
        Err(ParseError::Truncated(Header::Arp))
    );
}

#[test]
fn vxlan_v4_tunnel() {
    let inner = tcp_v4();
    let f = vxlan_v4(5000, &inner);
    let p = parse(&f).unwrap();
    assert_eq!(
        p.ufid.outer,
        Some(OuterKey {
            src_mac: MacAddr(MAC_OA),
            dst_mac: MacAddr(MAC_OB),
            src_ip: v4(PA4_A),
            dst_ip: v4(PA4_B),
            tunnel: TunnelKind::Vxlan,
            vni: 5000,
        })
    );
    assert_eq!(p.ufid.inner, parse(&inner).unwrap().ufid.inner);
    let l = p.layout;
    assert_eq!(
        (l.outer_l3, l.outer_l3_v6, l.outer_l4, l.encap),
        (14, false, 34, 42)
    );
    assert_eq!(l.inner_eth, 50);
    assert_eq!(l.inner_end as usize, f.len());
    assert_eq!(l.l3, 64);
    assert_eq!(l.l4, 84);
    // Inner meta, not outer.
    assert_eq!(p.meta.ttl, 64);
    assert_eq!(p.meta.tcp_seq, 1000);
    assert_eq!(p.meta.frame_len as usize, f.len());
}

#[test]
fn vxlan_v6_tunnel() {
    let inner = udp_v6();
    let f = vxlan_v6(0xabcdef, &inner);
    let p = parse(&f).unwrap();
    let o = p.ufid.outer.unwrap();
    assert_eq!((o.src_ip, o.dst_ip), (v6(PA6_A), v6(PA6_B)));
    assert_eq!((o.tunnel, o.vni), (TunnelKind::Vxlan, 0xabcdef));
    assert_eq!(p.ufid.inner, key6(17, 1000, 2000));
    assert!(p.layout.outer_l3_v6);
    assert_eq!(p.layout.inner_eth, 14 + 40 + 8 + 8);
}

#[test]
fn geneve_tunnel_with_options() {
    let inner = tcp_v4_vlan();
    let f = geneve_v4(77, GENEVE_OPTS, &inner);
    let p = parse(&f).unwrap();
    let o = p.ufid.outer.unwrap();
    assert_eq!((o.tunnel, o.vni), (TunnelKind::Geneve, 77));
    assert_eq!(p.ufid.inner.vlan, Some(100));
    assert_eq!(p.ufid.inner, parse(&inner).unwrap().ufid.inner);
    assert_eq!(p.layout.encap, 42);
    assert_eq!(p.layout.inner_eth as usize, 42 + 8 + GENEVE_OPTS.len());
    assert_eq!(p.layout.vlan_tci[0], p.layout.inner_eth + 14);
}

#[test]
fn nvgre_tunnel() {
    let inner = icmp_v4_echo_request();
    let f = nvgre_v4(0x123456, 9, &inner);
    let p = parse(&f).unwrap();
    let o = p.ufid.outer.unwrap();
    assert_eq!((o.tunnel, o.vni), (TunnelKind::Nvgre, 0x123456));
    assert_eq!(p.ufid.inner, parse(&inner).unwrap().ufid.inner);
    assert_eq!(
        (p.layout.outer_l4, p.layout.encap, p.layout.inner_eth),
        (34, 34, 42)
    );
}

#[test]
fn plain_gre_is_not_a_tunnel() {
    // GRE carrying IPv4 (0x0800), no key.
    let mut f = nvgre_v4(1, 0, &udp_v4());
    f[34] = 0;
    f[36] = 0x08;
    f[37] = 0x00;
    let p = parse(&f).unwrap();
    assert_eq!(p.ufid.outer, None);
    assert_eq!(p.ufid.inner.proto, 47);
    assert_eq!(p.layout.l4_kind, L4Kind::Other);
}

#[test]
fn tunnel_header_errors() {
    let inner = tcp_v4();
    let mut f = vxlan_v4(1, &inner);
    f[42] = 0; // clear I flag
    assert_eq!(parse(&f), Err(ParseError::VxlanBadFlags));

    let f = udp_tunnel_v4(4789, &[8, 0, 0], &[]);
    assert_eq!(parse(&f), Err(ParseError::Truncated(Header::Vxlan)));

    let mut g = geneve_v4(1, GENEVE_OPTS, &inner);
    g[42] |= 0x40;
    assert_eq!(parse(&g), Err(ParseError::GeneveBadVersion));
    let mut g = geneve_v4(1, GENEVE_OPTS, &inner);
    g[42 + 8 + 3] = 0x1f; // first option claims 124 bytes
    assert_eq!(parse(&g), Err(ParseError::GeneveBadOptionLength));
    let mut g = geneve_v4(1, &[], &inner);
    g[44] = 0x08;
    g[45] = 0x00;
    assert_eq!(parse(&g), Err(ParseError::GeneveUnsupportedProtocol));

    // Inner frame truncated inside the tunnel.
    let f = vxlan_v4(1, &inner[..30]);
    assert_eq!(parse(&f), Err(ParseError::Truncated(Header::Ipv4)));
    let f = vxlan_v4(1, &inner[..10]);
    assert_eq!(parse(&f), Err(ParseError::Truncated(Header::Ethernet)));
}

#[test]
fn ip_header_errors() {
    let mut f = tcp_v4();
    f[14] = 0x65;
    assert_eq!(parse(&f), Err(ParseError::Ipv4BadVersion));
    f[14] = 0x44;
    assert_eq!(parse(&f), Err(ParseError::Ipv4BadIhl));
    let mut f = tcp_v4();
    f[16] = 0xff;
    assert_eq!(parse(&f), Err(ParseError::Ipv4BadTotalLength));
    let mut f = tcp_v4();
    f[14 + 20 + 12] = 0x40; // data offset 4
    assert_eq!(parse(&f), Err(ParseError::TcpBadDataOffset));
    f[14 + 20 + 12] = 0xf0; // data offset 15 > segment
    assert_eq!(parse(&f), Err(ParseError::TcpBadDataOffset));
    let mut f = udp_v4();
    f[14 + 20 + 5] = 7;
    f[14 + 20 + 4] = 0;
    assert_eq!(parse(&f), Err(ParseError::UdpBadLength));
    let mut f = tcp_v6();
    f[14] = 0x45;
    assert_eq!(parse(&f), Err(ParseError::Ipv6BadVersion));
    let mut f = tcp_v6();
    f[18] = 0x10;
    assert_eq!(parse(&f), Err(ParseError::Ipv6BadPayloadLength));
}

#[test]
fn too_many_extension_headers() {
    let mut f = udp_v6();
    let mut chain = Vec::new();
    for _ in 0..9 {
        chain.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 0]);
    }
    let n = chain.len() - 8;
    chain[n] = 17;
    f[14 + 6] = 60;
    let plen = u16::from_be_bytes([f[18], f[19]]) as usize + chain.len();
    f[18..20].copy_from_slice(&(plen as u16).to_be_bytes());
    f.splice(54..54, chain);
    assert_eq!(parse(&f), Err(ParseError::Ipv6TooManyExtHeaders));
    assert_eq!(
        ParseError::Ipv6TooManyExtHeaders.reason(),
        "ipv6-too-many-ext-headers"
    );
}

#[test]
fn ethernet_padding_is_not_payload() {
    // A minimum-size frame: 14 + 20 + 8 + 4 = 46 bytes padded to 60.
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_A, V4_B, 64)
        .udp(1, 2)
        .write(&mut out, &[1, 2, 3, 4])
        .unwrap();
    out.resize(60, 0);
    let p = parse(&out).unwrap();
    assert_eq!(p.meta.l4_payload_len, 4);
    assert_eq!(p.layout.l3_end, 46);
    assert_eq!(p.meta.frame_len, 60);
}
