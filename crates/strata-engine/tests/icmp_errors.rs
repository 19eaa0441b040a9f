//! ICMP errors about a port's connections, through the four-layer stack:
//! a router's "fragmentation needed" and "time exceeded" and a host's
//! "port unreachable" reach the VM behind SNAT, load balancing with direct
//! server return and VNET encap, with the error's own header and its quote
//! translated (every checksum, the quote's included, verified by
//! etherparse); the VM's own errors leave translated; an error about no
//! connection is decided by the policy and leaves no state behind.

mod common;
use common::*;
use etherparse::{Icmpv4Type, NetHeaders, PacketHeaders, TransportHeader, icmpv4};
use std::net::Ipv4Addr;
use strata_engine::scenario::*;
use strata_engine::{ActionRegistry, Direction, DropReason, Port, PortConfig, Verdict, secs};
use strata_packet::PacketBuf;
use strata_packet::flow::MacAddr;

const WEB: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const MUX_INNER: MacAddr = MacAddr([0x02, 0xbb, 0, 0, 0, 1]);

fn port() -> Port {
    four_layer_port(PortConfig::default(), 0).expect("four-layer port")
}

fn unreachable(code: icmpv4::DestUnreachableHeader) -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(code)
}

fn frag_needed(next_hop_mtu: u16) -> Icmpv4Type {
    unreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu })
}

fn ttl_exceeded() -> Icmpv4Type {
    Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit)
}

/// An error from `from` to the VIP, arriving natively from the underlay
/// gateway.
fn error_to_vip(from: Ipv4Addr, kind: Icmpv4Type, quote: &[u8]) -> Vec<u8> {
    icmp_error((GW_MAC, HOST_MAC), from, VIP, kind, quote)
}

/// Send `frame` in direction `d`; it must be forwarded: the frame out.
fn relay(p: &mut Port, d: Direction, frame: &[u8], now: u64) -> Vec<u8> {
    let (v, out) = run(p, d, frame, now);
    assert_eq!(v, Verdict::Forward);
    out
}

/// The IP packet of a frame the switch sent natively.
fn ip_of(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

/// A relayed error, decoded: its ICMP header and the quote's IP header
/// and L4 ports, every checksum (the quote's IPv4 header's, and its L4
/// one when `whole` says the quote holds the whole packet) verified.
struct Relayed {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    macs: (MacAddr, MacAddr),
    icmp: Icmpv4Type,
    quoted: (Ipv4Addr, u16, Ipv4Addr, u16),
}

fn relayed(frame: &[u8], whole: bool) -> Relayed {
    // `decode` checks the error's IPv4 and ICMP checksums.
    let d = decode(frame);
    assert!(d.outer.is_none(), "relayed natively");
    let h = PacketHeaders::from_ethernet_slice(frame).expect("etherparse");
    let Some(TransportHeader::Icmpv4(icmp)) = h.transport else {
        panic!("not icmp: {:?}", h.transport)
    };
    let quote = &d.inner.payload;
    let (qip, rest) = etherparse::Ipv4Header::from_slice(quote).expect("quoted ipv4 header");
    assert_eq!(
        qip.header_checksum,
        qip.calc_header_checksum(),
        "quoted IPv4 header checksum"
    );
    let ports = (
        u16::from_be_bytes([rest[0], rest[1]]),
        u16::from_be_bytes([rest[2], rest[3]]),
    );
    if whole {
        let q = PacketHeaders::from_ip_slice(quote).expect("quoted packet");
        let Some(NetHeaders::Ipv4(ip, _)) = &q.net else {
            panic!("quoted packet not ipv4")
        };
        let payload = q.payload.slice();
        match &q.transport {
            Some(TransportHeader::Tcp(t)) => assert_eq!(
                t.checksum,
                t.calc_checksum_ipv4(ip, payload).expect("calc"),
                "quoted TCP checksum"
            ),
            Some(TransportHeader::Udp(u)) => assert_eq!(
                u.checksum,
                u.calc_checksum_ipv4(ip, payload).expect("calc"),
                "quoted UDP checksum"
            ),
            other => panic!("quoted transport {other:?}"),
        }
    }
    Relayed {
        src: d.inner.src,
        dst: d.inner.dst,
        macs: (d.inner.src_mac, d.inner.dst_mac),
        icmp: icmp.icmp_type,
        quoted: (
            Ipv4Addr::from(qip.source),
            ports.0,
            Ipv4Addr::from(qip.destination),
            ports.1,
        ),
    }
}

/// The VM's UDP datagram to `WEB`:53 from port `sp`, as it left (SNAT'd).
fn vm_dns_query(p: &mut Port, sp: u16) -> Vec<u8> {
    let q = udp(VM_MAC, VM_GW_MAC, VM_CA, WEB, sp, 53, b"a query of sorts");
    relay(p, Direction::Out, &q, secs(2))
}

fn flows(p: &Port) -> (usize, usize, Vec<usize>) {
    (
        p.connection_count(),
        p.unified_flow_count(),
        p.layer_ids()
            .iter()
            .map(|l| p.layer_flow_count(l))
            .collect(),
    )
}

#[test]
fn port_unreachable_reaches_the_snated_vm_before_any_answer() {
    let mut p = port();
    let sent = vm_dns_query(&mut p, 41000);
    let nat = decode_sent(&sent).inner;
    assert_eq!(nat.src, VIP);
    let before = flows(&p);

    // The DNS server answers "port unreachable", quoting the datagram as
    // it arrived: from the VIP and the SNAT port. No answer has come
    // before (the connection has no inbound flow yet), and the ACL blocks
    // unsolicited inbound traffic: only the quote lets it in.
    let err = error_to_vip(
        WEB,
        unreachable(icmpv4::DestUnreachableHeader::Port),
        ip_of(&sent),
    );
    // A trace tells why it is let in.
    let t = p.trace_frame(Direction::In, &err, secs(3)).expect("parses");
    let related = t.related.as_ref().expect("traced as related");
    assert_eq!(related.answer.inner.dst_ip, std::net::IpAddr::V4(VIP));
    assert!(t.verdict.is_forward());
    assert!(t.to_string().contains("ICMP error about connection"), "{t}");
    let r = relayed(&relay(&mut p, Direction::In, &err, secs(3)), true);
    assert_eq!(
        (r.src, r.dst),
        (WEB, VM_CA),
        "from the peer itself, to the VM"
    );
    assert_eq!(r.macs, (VM_GW_MAC, VM_MAC));
    assert_eq!(r.icmp, unreachable(icmpv4::DestUnreachableHeader::Port));
    assert_eq!(
        r.quoted,
        (VM_CA, 41000, WEB, 53),
        "the datagram the VM sent"
    );
    let c = p.icmp_error_counters();
    assert_eq!((c.relayed, c.unrelated, c.unreadable), (1, 0, 0));
    assert_eq!(flows(&p), before, "an error makes no flow");
    assert_eq!(p.direction_counters(Direction::In).forwarded, 1);

    // The error counters travel with the port's snapshot.
    let q = Port::restore(&p.snapshot().expect("snapshot"), ActionRegistry::default())
        .expect("restore");
    assert_eq!(q.icmp_error_counters(), p.icmp_error_counters());
}

#[test]
fn fragmentation_needed_from_a_router_keeps_its_source_and_mtu() {
    let mut p = port();
    let out = relay(
        &mut p,
        Direction::Out,
        &vm_tcp(WEB, 41000, 443, SYN, 7, 0, b""),
        secs(2),
    );
    let nat_port = decode_sent(&out).inner.sp;
    let syn_ack = internet_answer(WEB, 443, nat_port, SYN | ACK, 8);
    assert!(forwards(&mut p, Direction::In, &syn_ack, secs(2) + 10));
    let ack = vm_tcp(WEB, 41000, 443, ACK, 8, 901, b"");
    assert!(forwards(&mut p, Direction::Out, &ack, secs(2) + 20));
    let data = vm_tcp(WEB, 41000, 443, ACK, 8, 901, &[0x55; 600]);
    let sent = relay(&mut p, Direction::Out, &data, secs(2) + 30);
    let before = flows(&p);
    let handshakes = p.counters().tcp.handshakes_completed;

    // A router on the way cannot forward the segment unfragmented: its
    // error quotes the whole segment (as Linux routers quote up to 576
    // bytes), comes from the router's own address, and names its MTU.
    let err = error_to_vip(ROUTER, frag_needed(576), ip_of(&sent));
    let r = relayed(&relay(&mut p, Direction::In, &err, secs(3)), true);
    assert_eq!(
        (r.src, r.dst),
        (ROUTER, VM_CA),
        "the router keeps its address"
    );
    assert_eq!(r.icmp, frag_needed(576), "the MTU reaches the VM");
    assert_eq!(r.quoted, (VM_CA, 41000, WEB, 443));
    assert_eq!(flows(&p), before);
    assert_eq!(p.counters().tcp.handshakes_completed, handshakes);

    // The connection goes on: data still takes the fast path.
    let fast = p.direction_counters(Direction::Out).fast_path;
    assert!(forwards(&mut p, Direction::Out, &data, secs(4)));
    assert_eq!(p.direction_counters(Direction::Out).fast_path, fast + 1);
}

#[test]
fn time_exceeded_for_an_unanswered_syn_with_the_shortest_quote() {
    let mut p = port();
    let sent = relay(
        &mut p,
        Direction::Out,
        &vm_tcp(WEB, 42000, 80, SYN, 1, 0, b""),
        secs(2),
    );
    // RFC 792's minimum: the IP header and 8 bytes (ports and sequence
    // number; the TCP checksum is not in the quote).
    let short = &ip_of(&sent)[..28];
    let err = error_to_vip(ROUTER, ttl_exceeded(), short);
    let r = relayed(&relay(&mut p, Direction::In, &err, secs(2) + 5), false);
    assert_eq!((r.src, r.dst, r.icmp), (ROUTER, VM_CA, ttl_exceeded()));
    assert_eq!(r.quoted, (VM_CA, 42000, WEB, 80));
}

#[test]
fn an_error_about_no_connection_is_blocked_and_leaves_nothing() {
    let mut p = port();
    let sent = vm_dns_query(&mut p, 41000);
    let before = flows(&p);

    // A quote of a datagram the VM never sent (another source port): the
    // ACL's default blocks it, as any unsolicited inbound packet.
    let mut forged = ip_of(&sent).to_vec();
    forged[20..22].copy_from_slice(&7u16.to_be_bytes());
    let code = unreachable(icmpv4::DestUnreachableHeader::Port);
    let bogus = error_to_vip(WEB, code.clone(), &forged);
    let t = p
        .trace_frame(Direction::In, &bogus, secs(3))
        .expect("parses");
    assert!(t.related.is_none() && !t.verdict.is_forward());
    let (v, _) = run(&mut p, Direction::In, &bogus, secs(3));
    assert_eq!(v.drop_reason(), Some(DropReason::DefaultBlock));
    assert_eq!(p.drops(DropReason::DefaultBlock), 1);
    assert_eq!(p.counters().layer("acl").drops, 1, "the ACL counts it");

    // An error addressed elsewhere than to the quoted packet's source.
    let misdirected = icmp_error(
        (GW_MAC, HOST_MAC),
        WEB,
        Ipv4Addr::new(203, 0, 113, 99),
        code.clone(),
        ip_of(&sent),
    );
    let (v, _) = run(&mut p, Direction::In, &misdirected, secs(3));
    assert!(!v.is_forward());

    // A quote too short for the ports.
    let cut = icmp_error(
        (GW_MAC, HOST_MAC),
        WEB,
        VIP,
        code.clone(),
        &ip_of(&sent)[..24],
    );
    let (v, _) = run(&mut p, Direction::In, &cut, secs(3));
    assert_eq!(v.drop_reason(), Some(DropReason::DefaultBlock));
    let c = p.icmp_error_counters();
    assert_eq!((c.relayed, c.unrelated, c.unreadable), (0, 2, 1));
    assert_eq!(flows(&p), before, "nothing cached for them");

    // Nothing cached: the same error header about the real datagram, just
    // after, is relayed (a flow made for the bogus one would have
    // decided it).
    let real = error_to_vip(WEB, code, ip_of(&sent));
    let out = relay(&mut p, Direction::In, &real, secs(3));
    assert_eq!(relayed(&out, true).quoted, (VM_CA, 41000, WEB, 53));
    assert_eq!(p.icmp_error_counters().relayed, 1);
}

/// A load-balanced connection: the client's SYN through the MUX, the
/// VM's SYN-ACK straight back (direct server return). Returns the reply
/// as it left.
fn lb_connection(p: &mut Port) -> Vec<u8> {
    let syn = tcp(MUX_INNER, VM_MAC, CLIENT, VIP, 5555, 80, SYN, 42, 0, b"");
    relay(
        p,
        Direction::In,
        &vxlan(GW_MAC, HOST_MAC, MUX_PA, HOST_PA, VNI, &syn),
        secs(3),
    );
    let reply = tcp(
        VM_MAC,
        VM_GW_MAC,
        VM_CA,
        CLIENT,
        DIP_PORT,
        5555,
        SYN | ACK,
        77,
        43,
        b"",
    );
    relay(p, Direction::Out, &reply, secs(3) + 10)
}

#[test]
fn errors_about_direct_server_return_replies_reach_the_backend() {
    let mut p = port();
    let sent = lb_connection(&mut p);
    assert_eq!(decode_sent(&sent).inner.src, VIP);
    let before = flows(&p);

    // The reply left natively from VIP:80; a router's error about it comes
    // back natively to the VIP (not through the MUX, which the
    // connection's inbound flow came through).
    let err = error_to_vip(ROUTER, frag_needed(1280), ip_of(&sent));
    let r = relayed(&relay(&mut p, Direction::In, &err, secs(4)), true);
    assert_eq!((r.src, r.dst, r.icmp), (ROUTER, VM_CA, frag_needed(1280)));
    assert_eq!(
        r.quoted,
        (VM_CA, DIP_PORT, CLIENT, 5555),
        "the backend's own reply, as it sent it"
    );
    assert_eq!(flows(&p), before);
}

#[test]
fn the_vms_own_errors_leave_translated() {
    let mut p = port();
    lb_connection(&mut p);
    // The VM refuses a datagram of the connection's tuple (as it saw it:
    // to its own address and port): its error leaves as the connection's
    // packets do, from the VIP, quoting the packet as the client sent it.
    let seen = tcp(
        MUX_INNER, VM_MAC, CLIENT, VM_CA, 5555, DIP_PORT, ACK, 43, 78, b"x",
    );
    let code = unreachable(icmpv4::DestUnreachableHeader::Port);
    let err = icmp_error(
        (VM_MAC, VM_GW_MAC),
        VM_CA,
        CLIENT,
        code.clone(),
        ip_of(&seen),
    );
    let r = relayed(&relay(&mut p, Direction::Out, &err, secs(4)), true);
    assert_eq!((r.src, r.dst, r.icmp), (VIP, CLIENT, code));
    assert_eq!(r.quoted, (CLIENT, 5555, VIP, 80));
    assert_eq!(p.icmp_error_counters().relayed, 1);
}

#[test]
fn errors_from_a_vnet_peer_are_decapsulated_for_the_vm() {
    let mut p = port();
    install_mappings(&mut p, 4).expect("mappings");
    let peer = Ipv4Addr::new(10, 1, 2, 3);
    let q = udp(VM_MAC, VM_GW_MAC, VM_CA, peer, 5000, 6000, b"hello");
    let sent = relay(&mut p, Direction::Out, &q, secs(2));
    let d = decode_sent(&sent);
    assert!(d.outer.is_some(), "VNET traffic leaves encapsulated");
    // The peer's port unreachable, encapsulated by its host, quoting the
    // inner datagram.
    let inner_ip = &sent[14 + 20 + 8 + 8 + 14..];
    let err = icmp_error(
        (remote_mac(2, 3), VM_MAC),
        peer,
        VM_CA,
        unreachable(icmpv4::DestUnreachableHeader::Port),
        inner_ip,
    );
    let frame = vxlan(GW_MAC, HOST_MAC, remote_pa(2, 3), HOST_PA, VNI, &err);
    let r = relayed(&relay(&mut p, Direction::In, &frame, secs(3)), true);
    assert_eq!((r.src, r.dst), (peer, VM_CA));
    assert_eq!(r.quoted, (VM_CA, 5000, peer, 6000));
}

#[test]
fn time_exceeded_for_a_ping_through_snat_names_the_vms_echo_identifier() {
    let mut p = port();
    // Traceroute by echo requests: SNAT gives the echo a new identifier as
    // it gives a datagram a new port.
    let sent = relay(
        &mut p,
        Direction::Out,
        &ping(VM_MAC, VM_GW_MAC, VM_CA, WEB, 9, 1),
        secs(2),
    );
    let nat = decode_sent(&sent).inner;
    assert_eq!(nat.src, VIP);
    let err = error_to_vip(ROUTER, ttl_exceeded(), &ip_of(&sent)[..28]);
    let d = decode(&relay(&mut p, Direction::In, &err, secs(2) + 5));
    assert_eq!((d.inner.src, d.inner.dst), (ROUTER, VM_CA));
    let quote = &d.inner.payload;
    let (qip, echo) = etherparse::Ipv4Header::from_slice(quote).expect("quoted header");
    assert_eq!(qip.header_checksum, qip.calc_header_checksum());
    assert_eq!(Ipv4Addr::from(qip.source), VM_CA);
    assert_eq!(echo[0], 8, "an echo request");
    assert_eq!(
        u16::from_be_bytes([echo[4], echo[5]]),
        9,
        "the VM's own identifier"
    );
}

#[test]
fn an_error_that_cannot_be_emitted_is_a_counted_drop() {
    let mut p = port();
    install_mappings(&mut p, 4).expect("mappings");
    // A VNET peer's connection to the VM's port 8080.
    let syn = peer_tcp(2, 3, 5555, DIP_PORT, SYN, 1, 0, b"");
    relay(&mut p, Direction::In, &syn, secs(1));
    let peer = Ipv4Addr::new(10, 1, 2, 3);
    let seen = tcp(
        remote_mac(2, 3),
        VM_MAC,
        peer,
        VM_CA,
        5555,
        DIP_PORT,
        ACK,
        2,
        1,
        b"x",
    );
    let code = unreachable(icmpv4::DestUnreachableHeader::Port);
    let about = |quote: &[u8]| icmp_error((VM_MAC, VM_GW_MAC), VM_CA, peer, code.clone(), quote);
    // The VM's errors leave VXLAN-encapsulated, which a buffer with no
    // room for the outer headers cannot take: the one about the
    // connection (relayed) and one about nothing (the policy's encap).
    let mut unrelated = ip_of(&seen).to_vec();
    unrelated[20..22].copy_from_slice(&7u16.to_be_bytes());
    for (quote, relayed, unrelated) in [(ip_of(&seen).to_vec(), 0, 0), (unrelated, 0, 1)] {
        let err = about(&quote);
        let mut tight = PacketBuf::with_headroom(err.len(), 0);
        tight.reset(&err);
        let v = p.process(Direction::Out, &mut tight, secs(2));
        assert_eq!(v.drop_reason(), Some(DropReason::EmitFailed));
        let c = p.icmp_error_counters();
        assert_eq!((c.relayed, c.unrelated), (relayed, unrelated));
    }
    assert_eq!(p.drops(DropReason::EmitFailed), 2);
    assert_eq!(p.direction_counters(Direction::Out).dropped, 2);
    // With room, the related one is relayed.
    let out = relay(&mut p, Direction::Out, &about(ip_of(&seen)), secs(3));
    assert!(
        decode_sent(&out).outer.is_some(),
        "encapsulated to the peer's host"
    );
    assert_eq!(p.icmp_error_counters().relayed, 1);
}
