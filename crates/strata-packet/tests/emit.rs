//! Emitter tests: apply transpositions, then re-parse the result with
//! etherparse and with `strata_packet::parse`, compare every field, and
//! verify every checksum independently (etherparse's checksum functions).

mod common;

use common::*;
use etherparse::{LinkHeader, NetHeaders, PacketHeaders, TransportHeader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use strata_packet::emit::{EmitError, PacketBuf, TUNNEL_SRC_PORT_BASE, apply, tunnel_src_port};
use strata_packet::flow::{FiveTuple, MacAddr, TunnelKind, tunnel_hash};
use strata_packet::parse::{Parsed, parse};
use strata_packet::transposition::{Encap, OuterOp, Transposition, VlanOp};

fn ip4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn ip6(a: [u8; 16]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(a))
}

/// Apply `t` to `frame`; check checksums and that the re-parsed UFID is the
/// one the transposition predicts. Returns the output and both parses.
fn run(frame: &[u8], t: &Transposition) -> (Vec<u8>, Parsed, Parsed) {
    let before = parse(frame).expect("input parses");
    let mut buf = PacketBuf::from_frame(frame);
    apply(t, &mut buf, &before).expect("apply succeeds");
    let out = buf.as_slice().to_vec();
    verify(&out);
    let after = parse(&out).expect("output parses");
    assert_eq!(
        after.ufid,
        t.apply_to_ufid(&before.ufid),
        "UFID as predicted"
    );
    (out, before, after)
}

fn headers(frame: &[u8]) -> PacketHeaders<'_> {
    PacketHeaders::from_ethernet_slice(frame).unwrap()
}

fn nat(
    src: Option<IpAddr>,
    sport: Option<u16>,
    dst: Option<IpAddr>,
    dport: Option<u16>,
) -> Transposition {
    Transposition {
        src_ip: src,
        src_port: sport,
        dst_ip: dst,
        dst_port: dport,
        ..Transposition::default()
    }
}

fn encap(kind: TunnelKind, vni: u32, v6: bool) -> Encap {
    let (s, d) = if v6 {
        (ip6(PA6_A), ip6(PA6_B))
    } else {
        (ip4(PA4_A), ip4(PA4_B))
    };
    let mut e = Encap::new(kind, vni, MacAddr(MAC_OA), MacAddr(MAC_OB), s, d);
    e.ttl = 17;
    e
}

#[test]
fn snat_tcp_v4() {
    let f = tcp_v4();
    let t = nat(Some(ip4([100, 64, 0, 1])), Some(1024), None, None);
    let (out, _, after) = run(&f, &t);
    assert_eq!(out.len(), f.len());
    let h = headers(&out);
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else {
        panic!()
    };
    assert_eq!(ip.source, [100, 64, 0, 1]);
    assert_eq!(ip.destination, V4_B);
    assert_eq!(ip.time_to_live, 64);
    assert_eq!(ip.identification, 0x1234);
    assert_eq!(ip.dscp.value(), 46);
    assert_eq!(ip.ecn.value(), 1);
    let Some(TransportHeader::Tcp(tcp)) = &h.transport else {
        panic!()
    };
    assert_eq!((tcp.source_port, tcp.destination_port), (1024, 80));
    assert_eq!(
        (tcp.sequence_number, tcp.acknowledgment_number),
        (1000, 2000)
    );
    assert_eq!(h.payload.slice(), PAYLOAD);
    assert_eq!(after.meta.tcp_flags, parse(&f).unwrap().meta.tcp_flags);
}

#[test]
fn dnat_udp_v4_and_zero_checksum() {
    let t = nat(None, None, Some(ip4([172, 16, 5, 5])), Some(5300));
    let (out, ..) = run(&udp_v4(), &t);
    let h = headers(&out);
    let Some(TransportHeader::Udp(u)) = &h.transport else {
        panic!()
    };
    assert_eq!((u.source_port, u.destination_port), (5353, 5300));
    assert_ne!(u.checksum, 0);
    // Absent checksum stays absent.
    let (out, ..) = run(&udp_v4_nocsum(), &t);
    let Some(TransportHeader::Udp(u)) = &headers(&out).transport else {
        panic!()
    };
    assert_eq!(u.checksum, 0);
    assert_eq!(u.destination_port, 5300);
}

#[test]
fn udp_checksum_never_becomes_zero() {
    // Sweeping the source port walks the checksum through every value; the
    // one that would be 0x0000 must be sent as 0xffff.
    let f = udp_v4();
    let before = parse(&f).unwrap();
    let mut buf = PacketBuf::from_frame(&f);
    let mut saw_ffff = 0;
    for port in 0..=u16::MAX {
        buf.reset(&f);
        apply(&nat(None, Some(port), None, None), &mut buf, &before).unwrap();
        let out = buf.as_slice();
        let c = u16::from_be_bytes([out[40], out[41]]);
        assert_ne!(c, 0, "port {port}");
        if c == 0xffff {
            saw_ffff += 1;
            verify(out);
        }
    }
    assert_eq!(saw_ffff, 1);
}

#[test]
fn nat_v6_tcp_and_udp() {
    let a = ip6([
        0x20, 0x01, 0x0d, 0xb8, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34,
    ]);
    let b = ip6([0xfd, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99]);
    let t = nat(Some(a), Some(61000), Some(b), Some(443));
    for f in [tcp_v6(), udp_v6(), udp_v6_ext(), udp_v6_qinq()] {
        let (out, before, _) = run(&f, &t);
        let h = headers(&out);
        let Some(NetHeaders::Ipv6(ip, _)) = &h.net else {
            panic!()
        };
        assert_eq!(IpAddr::V6(ip.source.into()), a);
        assert_eq!(IpAddr::V6(ip.destination.into()), b);
        assert_eq!(
            ip.traffic_class,
            parse(&f).unwrap().ufid.inner.dscp << 2 | before.meta.ecn
        );
        match &h.transport {
            Some(TransportHeader::Tcp(x)) => {
                assert_eq!((x.source_port, x.destination_port), (61000, 443))
            }
            Some(TransportHeader::Udp(x)) => {
                assert_eq!((x.source_port, x.destination_port), (61000, 443))
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn nat_with_ip_options() {
    let t = nat(
        Some(ip4([1, 2, 3, 4])),
        Some(9),
        Some(ip4([5, 6, 7, 8])),
        Some(10),
    );
    let (out, ..) = run(&tcp_v4_options(), &t);
    let Some(NetHeaders::Ipv4(ip, _)) = &headers(&out).net else {
        panic!()
    };
    assert_eq!(&ip.options[..], &[1, 1, 1, 1, 0x44, 4, 5, 0]);
}

#[test]
fn icmp_echo_identifier_nat() {
    // v4 request: id from src_port; ICMPv4 checksum has no pseudo-header.
    let t = nat(Some(ip4([100, 64, 0, 1])), Some(0x7777), None, None);
    let (out, ..) = run(&icmp_v4_echo_request(), &t);
    assert_eq!(u16::from_be_bytes([out[38], out[39]]), 0x7777);
    // v4 reply: id from dst_port.
    let t = nat(None, None, Some(ip4([100, 64, 0, 1])), Some(0x7777));
    let (out, ..) = run(&icmp_v4_echo_reply(), &t);
    assert_eq!(u16::from_be_bytes([out[38], out[39]]), 0x7777);
    // v6 request and reply: pseudo-header addresses change too.
    let a = ip6([0x20, 0x01, 0x0d, 0xb8, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    let t = nat(Some(a), Some(0x0102), None, None);
    let (out, ..) = run(&icmp_v6_echo_request(), &t);
    assert_eq!(u16::from_be_bytes([out[58], out[59]]), 0x0102);
    let t = nat(None, None, Some(a), Some(0x0102));
    let (out, ..) = run(&icmp_v6_echo_reply(), &t);
    assert_eq!(u16::from_be_bytes([out[58], out[59]]), 0x0102);
    // Non-echo ICMP: address rewrite only, ports ignored.
    let t = nat(Some(ip4([9, 9, 9, 9])), Some(5), None, Some(6));
    let before = parse(&icmp_v4_unreachable()).unwrap();
    let mut buf = PacketBuf::from_frame(&icmp_v4_unreachable());
    apply(&t, &mut buf, &before).unwrap();
    verify(buf.as_slice());
    assert_eq!(&buf.as_slice()[38..42], &[0, 0, 0, 0]);
}

#[test]
fn dscp_rewrite_keeps_ecn() {
    let t = Transposition {
        dscp: Some(12),
        ..Transposition::default()
    };
    let (out, ..) = run(&tcp_v4(), &t);
    let Some(NetHeaders::Ipv4(ip, _)) = &headers(&out).net else {
        panic!()
    };
    assert_eq!((ip.dscp.value(), ip.ecn.value()), (12, 1));
    let (out, ..) = run(&tcp_v6(), &t);
    let Some(NetHeaders::Ipv6(ip, _)) = &headers(&out).net else {
        panic!()
    };
    assert_eq!(ip.traffic_class, (12 << 2) | 2);
    assert_eq!(ip.flow_label.value(), 0x12345);
}

#[test]
fn mac_rewrite() {
    let t = Transposition {
        src_mac: Some(MacAddr([0x0e, 1, 2, 3, 4, 5])),
        dst_mac: Some(MacAddr([0x0e, 6, 7, 8, 9, 10])),
        ..Transposition::default()
    };
    for f in [tcp_v4(), arp_request(), tcp_v4_vlan()] {
        let (out, ..) = run(&f, &t);
        let Some(LinkHeader::Ethernet2(e)) = &headers(&out).link else {
            panic!()
        };
        assert_eq!(e.source, [0x0e, 1, 2, 3, 4, 5]);
        assert_eq!(e.destination, [0x0e, 6, 7, 8, 9, 10]);
        assert_eq!(&out[12..], &f[12..]);
    }
}

#[test]
fn vlan_push_set_pop() {
    let push = Transposition {
        vlan: VlanOp::Set(42),
        src_mac: Some(MacAddr([0x0e, 0, 0, 0, 0, 1])),
        ..Transposition::default()
    };
    let f = tcp_v4();
    let (out, _, after) = run(&f, &push);
    assert_eq!(out.len(), f.len() + 4);
    assert_eq!(&out[12..16], &[0x81, 0x00, 0x00, 42]);
    assert_eq!(&out[16..], &f[12..]);
    assert_eq!(&out[..6], &MAC_B);
    assert_eq!(after.ufid.inner.vlan, Some(42));
    let h = headers(&out);
    assert_eq!(h.link_exts.len(), 1);

    // Rewrite an existing VID, keeping PCP/DEI.
    let mut tagged = tcp_v4_vlan();
    tagged[14] |= 0xa0; // PCP 5
    let (out, ..) = run(
        &tagged,
        &Transposition {
            vlan: VlanOp::Set(7),
            ..Transposition::default()
        },
    );
    assert_eq!(out.len(), tagged.len());
    assert_eq!(&out[14..16], &[0xa0, 7]);

    // Pop a single tag.
    let pop = Transposition {
        vlan: VlanOp::Pop,
        ..Transposition::default()
    };
    let (out, ..) = run(&tcp_v4_vlan(), &pop);
    let untagged = {
        let mut v = tcp_v4_vlan();
        v.drain(12..16);
        v
    };
    assert_eq!(out, untagged);
    // Pop on QinQ removes both tags (the key says "untagged").
    let (out, ..) = run(&udp_v6_qinq(), &pop);
    let mut expect = udp_v6_qinq();
    expect.drain(12..20);
    assert_eq!(out, expect);
    // Pop on an untagged frame changes nothing.
    let (out, ..) = run(&tcp_v4(), &pop);
    assert_eq!(out, tcp_v4());
}

fn check_outer_v4(out: &[u8], proto: u8, ttl: u8) {
    let h = headers(out);
    let Some(LinkHeader::Ethernet2(e)) = &h.link else {
        panic!()
    };
    assert_eq!((e.source, e.destination), (MAC_OA, MAC_OB));
    assert_eq!(e.ether_type.0, 0x0800);
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else {
        panic!()
    };
    assert_eq!((ip.source, ip.destination), (PA4_A, PA4_B));
    assert!(ip.dont_fragment && !ip.more_fragments);
    assert_eq!(ip.identification, 0);
    assert_eq!(ip.time_to_live, ttl);
    assert_eq!(ip.protocol.0, proto);
    assert_eq!(usize::from(ip.total_len), out.len() - 14);
}

#[test]
fn push_vxlan_v4() {
    let inner = tcp_v4();
    let e = encap(TunnelKind::Vxlan, 0x00abcd, false);
    let t = Transposition {
        outer: OuterOp::Push(Arc::new(e)),
        ..Transposition::default()
    };
    let (out, before, after) = run(&inner, &t);
    assert_eq!(out.len(), inner.len() + 50);
    check_outer_v4(&out, 17, 17);
    let h = headers(&out);
    let Some(TransportHeader::Udp(u)) = &h.transport else {
        panic!()
    };
    let hash = tunnel_hash(&FiveTuple::of(&before.ufid.inner));
    let expect_port = tunnel_src_port(hash);
    assert_eq!(u.source_port, expect_port);
    assert!(u.source_port >= TUNNEL_SRC_PORT_BASE);
    assert_eq!(
        u32::from(expect_port - TUNNEL_SRC_PORT_BASE),
        (hash % 16384) as u32
    );
    assert_eq!(u.destination_port, 4789);
    assert_eq!(u.checksum, 0);
    assert_eq!(usize::from(u.length), inner.len() + 16);
    assert_eq!(&h.payload.slice()[..8], &vxlan_header(0xabcd));
    assert_eq!(&h.payload.slice()[8..], &inner[..]);
    assert_eq!(after.ufid.inner, before.ufid.inner);
}

#[test]
fn push_vxlan_over_v6() {
    let inner = udp_v6();
    let e = encap(TunnelKind::Vxlan, 99, true);
    let t = Transposition {
        outer: OuterOp::Push(Arc::new(e)),
        ..Transposition::default()
    };
    let (out, ..) = run(&inner, &t);
    assert_eq!(out.len(), inner.len() + 70);
    let h = headers(&out);
    let Some(NetHeaders::Ipv6(ip, _)) = &h.net else {
        panic!()
    };
    assert_eq!((ip.source, ip.destination), (PA6_A, PA6_B));
    assert_eq!(ip.hop_limit, 17);
    assert_eq!(ip.next_header.0, 17);
    assert_eq!(usize::from(ip.payload_length), inner.len() + 16);
    let Some(TransportHeader::Udp(u)) = &h.transport else {
        panic!()
    };
    assert_ne!(u.checksum, 0, "UDP over IPv6 carries a checksum");
    let v = verify(&out);
    assert_eq!(v.l4_checksums, 2, "outer UDP and inner UDP checked");
}

#[test]
fn push_nvgre() {
    let inner = icmp_v4_echo_request();
    let t = Transposition {
        outer: OuterOp::Push(Arc::new(encap(TunnelKind::Nvgre, 0x123456, false))),
        ..Transposition::default()
    };
    let (out, ..) = run(&inner, &t);
    check_outer_v4(&out, 47, 17);
    assert_eq!(
        &out[34..42],
        &[0x20, 0x00, 0x65, 0x58, 0x12, 0x34, 0x56, 0x00]
    );
    assert_eq!(&out[42..], &inner[..]);
}

#[test]
fn push_geneve_with_options() {
    let inner = tcp_v6();
    let mut e = encap(TunnelKind::Geneve, 4242, false);
    e.geneve_options = GENEVE_OPTS.to_vec();
    let t = Transposition {
        outer: OuterOp::Push(Arc::new(e)),
        ..Transposition::default()
    };
    let (out, ..) = run(&inner, &t);
    check_outer_v4(&out, 17, 17);
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 6081);
    assert_eq!(&out[42..62], &geneve_header(4242, GENEVE_OPTS)[..]);
    assert_eq!(&out[62..], &inner[..]);
}

#[test]
fn pop_restores_inner_frame() {
    let inner = tcp_v4_vlan();
    let t = Transposition {
        outer: OuterOp::Pop,
        ..Transposition::default()
    };
    for f in [
        vxlan_v4(7, &inner),
        vxlan_v6(7, &inner),
        geneve_v4(7, GENEVE_OPTS, &inner),
        nvgre_v4(7, 1, &inner),
    ] {
        let (out, ..) = run(&f, &t);
        assert_eq!(out, inner);
    }
    // Pop on a plain frame is a no-op.
    let (out, ..) = run(&inner, &t);
    assert_eq!(out, inner);
}

#[test]
fn decap_then_nat() {
    let t = Transposition {
        outer: OuterOp::Pop,
        ..nat(None, None, Some(ip4([192, 0, 2, 10])), Some(8080))
    };
    let (out, ..) = run(&vxlan_v6(3, &tcp_v4()), &t);
    let Some(TransportHeader::Tcp(x)) = &headers(&out).transport else {
        panic!()
    };
    assert_eq!(x.destination_port, 8080);
}

#[test]
fn nat_then_encap_hashes_translated_flow() {
    let mut t = nat(Some(ip4([100, 64, 1, 1])), Some(2000), None, None);
    t.outer = OuterOp::Push(Arc::new(encap(TunnelKind::Vxlan, 1, false)));
    t.vlan = VlanOp::Set(5);
    let (out, before, after) = run(&udp_v4(), &t);
    let translated = t.apply_to_key(&before.ufid.inner);
    assert_eq!(after.ufid.inner, translated);
    assert_eq!(
        u16::from_be_bytes([out[34], out[35]]),
        tunnel_src_port(tunnel_hash(&FiveTuple::of(&translated)))
    );
}

#[test]
fn replace_outer() {
    let inner = udp_v4();
    let mut e = encap(TunnelKind::Geneve, 31337, true);
    e.geneve_options = vec![0, 1, 2, 0];
    let t = Transposition {
        outer: OuterOp::Replace(Arc::new(e)),
        dscp: Some(3),
        ..Transposition::default()
    };
    for f in [
        vxlan_v4(1, &inner),
        nvgre_v4(2, 0, &inner),
        geneve_v4(3, GENEVE_OPTS, &inner),
    ] {
        let (out, _, after) = run(&f, &t);
        let o = after.ufid.outer.unwrap();
        assert_eq!((o.tunnel, o.vni), (TunnelKind::Geneve, 31337));
        assert_eq!(out.len(), 14 + 40 + 8 + 12 + inner.len());
    }
    // Push onto a tunnelled frame also replaces (one level of encap).
    let t = Transposition {
        outer: OuterOp::Push(Arc::new(encap(TunnelKind::Nvgre, 8, false))),
        ..Transposition::default()
    };
    let (out, ..) = run(&vxlan_v6(1, &inner), &t);
    assert_eq!(out.len(), 14 + 20 + 8 + inner.len());
}

#[test]
fn inner_rewrite_under_kept_outer() {
    // Outer UDP over IPv6 has a checksum covering the inner frame; NAT
    // and VLAN push/pop inside must keep it (and the lengths) valid.
    let t = Transposition {
        vlan: VlanOp::Set(9),
        ..nat(Some(ip4([7, 7, 7, 7])), Some(77), None, None)
    };
    for f in [
        vxlan_v6(1, &tcp_v4()),
        vxlan_v4(1, &tcp_v4()),
        geneve_v4(1, GENEVE_OPTS, &udp_v4()),
        nvgre_v4(1, 0, &udp_v4()),
    ] {
        let (out, ..) = run(&f, &t);
        assert_eq!(out.len(), f.len() + 4);
    }
    let pop = Transposition {
        vlan: VlanOp::Pop,
        dscp: Some(1),
        ..Transposition::default()
    };
    for f in [vxlan_v6(1, &udp_v6_qinq()), vxlan_v4(1, &tcp_v4_vlan())] {
        let (out, before, _) = run(&f, &pop);
        assert_eq!(
            out.len(),
            f.len() - 4 * usize::from(before.layout.vlan_count)
        );
    }
}

#[test]
fn non_first_fragment_ports_ignored() {
    let f = udp_v4_fragment();
    let t = nat(Some(ip4([1, 1, 1, 1])), Some(1), None, Some(2));
    let before = parse(&f).unwrap();
    let mut buf = PacketBuf::from_frame(&f);
    apply(&t, &mut buf, &before).unwrap();
    let out = buf.as_slice();
    verify(out);
    assert_eq!(&out[26..30], &[1, 1, 1, 1]);
    assert_eq!(&out[34..], &f[34..], "fragment data untouched");
}

#[test]
fn arp_ignores_ip_rewrites() {
    let f = arp_request();
    let t = nat(Some(ip4([1, 1, 1, 1])), Some(1), Some(ip6(V6_A)), None);
    let (out, ..) = run(&f, &t);
    assert_eq!(out, f);
}

#[test]
fn errors_leave_frame_unchanged() {
    let f = tcp_v4();
    let p = parse(&f).unwrap();
    let mut buf = PacketBuf::from_frame(&f);
    let t = nat(Some(ip6(V6_A)), Some(5), None, None);
    assert_eq!(apply(&t, &mut buf, &p), Err(EmitError::FamilyMismatch));
    assert_eq!(buf.as_slice(), &f[..]);

    let mut e = encap(TunnelKind::Vxlan, 1, false);
    e.dst_ip = ip6(PA6_B);
    let t = Transposition {
        outer: OuterOp::Push(Arc::new(e)),
        src_port: Some(1),
        ..Transposition::default()
    };
    assert_eq!(apply(&t, &mut buf, &p), Err(EmitError::EncapFamilyMismatch));
    assert_eq!(buf.as_slice(), &f[..]);

    let mut e = encap(TunnelKind::Geneve, 1, false);
    e.geneve_options = vec![0, 0, 0, 1]; // TLV claims 4 data bytes
    let t = Transposition {
        outer: OuterOp::Push(Arc::new(e)),
        ..Transposition::default()
    };
    assert_eq!(apply(&t, &mut buf, &p), Err(EmitError::BadGeneveOptions));
    assert_eq!(buf.as_slice(), &f[..]);

    // No headroom and no tailroom.
    let mut tight = PacketBuf::with_headroom(f.len(), 0);
    tight.reset(&f);
    let t = Transposition {
        outer: OuterOp::Push(Arc::new(encap(TunnelKind::Vxlan, 1, false))),
        ..Transposition::default()
    };
    assert_eq!(apply(&t, &mut tight, &p), Err(EmitError::NoHeadroom(50)));
    assert_eq!(tight.as_slice(), &f[..]);
    assert_eq!(EmitError::NoHeadroom(50).reason(), "no-headroom");

    // Headroom missing but tailroom available: the frame is shifted.
    let mut roomy = PacketBuf::with_headroom(4096, 0);
    roomy.reset(&f);
    apply(&t, &mut roomy, &p).unwrap();
    verify(roomy.as_slice());
    assert_eq!(&roomy.as_slice()[50..], &f[..]);

    // Geneve options beyond the default headroom also fit via tailroom.
    let mut e = encap(TunnelKind::Geneve, 1, true);
    e.geneve_options = [
        [0u8, 1, 2, 30].as_slice(),
        &[0; 120],
        &[0, 1, 2, 30],
        &[0; 120],
    ]
    .concat();
    let t = Transposition {
        outer: OuterOp::Push(Arc::new(e)),
        ..Transposition::default()
    };
    let (out, ..) = run(&f, &t);
    assert_eq!(out.len(), f.len() + 14 + 40 + 8 + 8 + 248);
}

#[test]
fn layout_mismatch_is_an_error_not_a_panic() {
    let long = vxlan_v6(1, &udp_v6_ext());
    let p = parse(&long).unwrap();
    let everything = Transposition {
        src_mac: Some(MacAddr::ZERO),
        vlan: VlanOp::Set(1),
        dscp: Some(1),
        ..nat(Some(ip6(V6_A)), Some(1), Some(ip6(V6_B)), Some(2))
    };
    for short in [&tcp_v4()[..], &[][..], &long[..long.len() - 1], &long[..70]] {
        let mut buf = PacketBuf::from_frame(short);
        for outer in [OuterOp::Ignore, OuterOp::Pop] {
            let t = Transposition {
                outer,
                ..everything.clone()
            };
            assert_eq!(apply(&t, &mut buf, &p), Err(EmitError::LayoutMismatch));
        }
    }
    // Same length, unrelated bytes: whatever happens, no panic.
    for fill in [0u8, 0xff, 0x45, 0x60] {
        let junk = vec![fill; long.len()];
        for outer in [OuterOp::Ignore, OuterOp::Pop] {
            let mut buf = PacketBuf::from_frame(&junk);
            let t = Transposition {
                outer,
                ..everything.clone()
            };
            let _ = apply(&t, &mut buf, &p);
        }
    }
}

#[test]
#[should_panic(expected = "TCP checksum")]
fn verifier_detects_bad_checksums() {
    let mut f = tcp_v4();
    f[50] ^= 1;
    verify(&f);
}

#[test]
fn encap_that_overflows_length_fields_is_refused() {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_A, V4_B, 64)
        .udp(1, 2)
        .write(&mut f, &vec![0u8; 65_480])
        .unwrap();
    let p = parse(&f).unwrap();
    let mut buf = PacketBuf::from_frame(&f);
    for v6 in [false, true] {
        let t = Transposition {
            outer: OuterOp::Push(Arc::new(encap(TunnelKind::Vxlan, 1, v6))),
            ..Transposition::default()
        };
        assert_eq!(apply(&t, &mut buf, &p), Err(EmitError::TooLong));
        assert_eq!(buf.as_slice(), &f[..]);
    }
    // NVGRE adds less and still fits over IPv6 (payload length excludes
    // the IPv6 header).
    let t = Transposition {
        outer: OuterOp::Push(Arc::new(encap(TunnelKind::Nvgre, 1, true))),
        ..Transposition::default()
    };
    apply(&t, &mut buf, &p).unwrap();
    assert_eq!(
        parse(buf.as_slice()).unwrap().ufid.outer.unwrap().tunnel,
        TunnelKind::Nvgre
    );
}

#[test]
fn outer_vlan_tag_is_part_of_the_outer_groups() {
    let inner = tcp_v4();
    let mut f = vxlan_v4(3, &inner);
    f.splice(12..12, [0x81, 0x00, 0x00, 0x0c]);
    let p = parse(&f).unwrap();
    assert_eq!(p.ufid.outer.unwrap().vni, 3);
    assert_eq!((p.layout.outer_l3, p.layout.inner_eth), (18, 54));
    assert_eq!(p.ufid.inner.vlan, None, "outer tag is not the inner key's");
    let pop = Transposition {
        outer: OuterOp::Pop,
        ..Transposition::default()
    };
    let (out, ..) = run(&f, &pop);
    assert_eq!(out, inner);
    // Inner VLAN push under the kept, tagged outer group.
    let (out, ..) = run(
        &f,
        &Transposition {
            vlan: VlanOp::Set(8),
            ..Transposition::default()
        },
    );
    assert_eq!(&out[12..16], &[0x81, 0x00, 0x00, 0x0c]);
    assert_eq!(parse(&out).unwrap().ufid.inner.vlan, Some(8));
}
