//! The VFP four-policy stack (Meter, ACL, SLB NAT, VNET) end to end: packets
//! built by etherparse go through a port; every output is re-parsed by
//! etherparse and compared field by field, checksums verified.

mod common;

use common::*;
use std::net::{IpAddr, Ipv4Addr};
use strata_engine::scenario::*;
use strata_engine::{Direction, DropReason, PortConfig, ResourceEvent, Verdict, secs};

fn port() -> strata_engine::Port {
    let mut p = four_layer_port(PortConfig::default(), 0).expect("port");
    install_mappings(&mut p, 2).expect("mappings");
    p
}

fn peer(x: u8, y: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, x, y)
}

#[test]
fn vnet_encap_outbound_decap_inbound_full_tcp() {
    let mut p = port();
    let (v, out) = run(
        &mut p,
        Direction::Out,
        &vm_tcp(peer(1, 7), 40000, 80, SYN, 1000, 0, b""),
        secs(1),
    );
    assert_eq!(v, Verdict::Forward);
    let d = decode_sent(&out);
    let o = d.outer.expect("VXLAN encapsulated");
    assert_eq!(o.src, HOST_PA);
    assert_eq!(o.dst, remote_pa(1, 7));
    assert_eq!(o.src_mac, HOST_MAC);
    assert_eq!(o.dst_mac, GW_MAC);
    assert_eq!(o.vni, VNI);
    assert_eq!(o.udp_dp, 4789);
    assert!(
        o.udp_sp >= 49152,
        "flow-hash source port in the dynamic range"
    );
    assert_eq!(d.inner.src_mac, VM_MAC);
    assert_eq!(
        d.inner.dst_mac,
        remote_mac(1, 7),
        "inner dst MAC from the mapping"
    );
    assert_eq!((d.inner.src, d.inner.dst), (VM_CA, peer(1, 7)));
    assert_eq!((d.inner.sp, d.inner.dp), (40000, 80));
    assert_eq!(d.inner.tcp_flags, SYN);
    assert_eq!(d.inner.seq, 1000);

    // SYN-ACK from the peer, encapsulated; delivered decapsulated from the
    // virtual gateway MAC.
    let (v, out) = run(
        &mut p,
        Direction::In,
        &peer_tcp(1, 7, 80, 40000, SYN | ACK, 5000, 1001, b""),
        secs(1) + 200_000,
    );
    assert_eq!(v, Verdict::Forward);
    let d = decode_sent(&out);
    assert!(d.outer.is_none(), "decapsulated");
    assert_eq!((d.inner.src_mac, d.inner.dst_mac), (VM_GW_MAC, VM_MAC));
    assert_eq!((d.inner.src, d.inner.dst), (peer(1, 7), VM_CA));
    assert_eq!((d.inner.sp, d.inner.dp, d.inner.ack), (80, 40000, 1001));

    let (v, _) = run(
        &mut p,
        Direction::Out,
        &vm_tcp(peer(1, 7), 40000, 80, ACK, 1001, 5001, b""),
        secs(1) + 300_000,
    );
    assert_eq!(v, Verdict::Forward);
    let (v, out) = run(
        &mut p,
        Direction::Out,
        &vm_tcp(
            peer(1, 7),
            40000,
            80,
            ACK,
            1001,
            5001,
            b"GET / HTTP/1.1\r\n\r\n",
        ),
        secs(1) + 400_000,
    );
    assert_eq!(v, Verdict::Forward);
    assert_eq!(decode_sent(&out).inner.payload, b"GET / HTTP/1.1\r\n\r\n");

    let key = strata_packet::parse(&vm_tcp(peer(1, 7), 40000, 80, ACK, 1001, 5001, b""))
        .unwrap()
        .ufid;
    let c = p.connection(Direction::Out, &key).expect("connection");
    assert_eq!(c.tcp_state, Some(strata_engine::tcp::TcpState::Established));
    assert!(c.in_flow.is_some() && c.out_flow.is_some(), "paired");

    let cn = p.counters();
    assert_eq!(
        cn.direction(Direction::Out).slow_path,
        1,
        "one slow path for the outbound flow"
    );
    assert_eq!(
        cn.direction(Direction::In).slow_path,
        1,
        "the SYN-ACK made the inbound flow, which joined the connection"
    );
    assert_eq!(cn.direction(Direction::Out).fast_path, 2);
    assert_eq!(cn.direction(Direction::In).fast_path, 0);
    assert_eq!(p.connection_count(), 1);
    assert_eq!(cn.tcp.handshakes_completed, 1);
    let meter = cn.meter("meter", "meter-dst");
    assert_eq!(
        meter.get("10.1.1.7").map(|c| c.packets),
        Some(3),
        "per-destination meter: {meter:?}"
    );
    assert_eq!(
        cn.meter("meter", "meter-src")
            .get("10.1.1.7")
            .map(|c| c.packets),
        Some(1)
    );
    // A stateful rule counts both directions of the flows it decided.
    assert_eq!(cn.rule("acl", "allow-out").packets, 4);
    assert_eq!(cn.layer("vnet").packets, 4);
}

#[test]
fn snat_outbound_and_reverse_inbound() {
    let mut p = port();
    let web = Ipv4Addr::new(93, 184, 216, 34);
    let (v, out) = run(
        &mut p,
        Direction::Out,
        &vm_tcp(web, 41000, 443, SYN, 7, 0, b""),
        secs(2),
    );
    assert_eq!(v, Verdict::Forward);
    let d = decode_sent(&out);
    assert!(d.outer.is_none(), "internet traffic leaves natively");
    assert_eq!((d.inner.src_mac, d.inner.dst_mac), (HOST_MAC, GW_MAC));
    assert_eq!(d.inner.src, VIP, "source NATed to the VIP");
    assert_eq!(d.inner.dst, web);
    let nat_port = d.inner.sp;
    assert!((1024..=65535).contains(&nat_port));
    assert_eq!(d.inner.dp, 443);

    // The reply comes back natively to VIP:nat_port and reaches the VM.
    let reply = tcp(
        GW_MAC,
        HOST_MAC,
        web,
        VIP,
        443,
        nat_port,
        SYN | ACK,
        900,
        8,
        b"",
    );
    let (v, out) = run(&mut p, Direction::In, &reply, secs(2) + 1000);
    assert_eq!(v, Verdict::Forward);
    let d = decode_sent(&out);
    assert_eq!((d.inner.src, d.inner.dst), (web, VM_CA));
    assert_eq!((d.inner.sp, d.inner.dp), (443, 41000), "port restored");
    assert_eq!((d.inner.src_mac, d.inner.dst_mac), (VM_GW_MAC, VM_MAC));
    assert_eq!(p.resources().port_pools[SNAT_POOL].in_use(), 1);

    // A second connection gets a different port.
    let (_, out) = run(
        &mut p,
        Direction::Out,
        &vm_tcp(web, 41001, 443, SYN, 7, 0, b""),
        secs(2),
    );
    assert_ne!(decode_sent(&out).inner.sp, nat_port);
}

#[test]
fn lb_dnat_inbound_with_direct_server_return() {
    let mut p = port();
    let client = Ipv4Addr::new(198, 51, 100, 7);
    let inner = tcp(
        MacAddrs::MUX_INNER,
        VM_MAC,
        client,
        VIP,
        5555,
        80,
        SYN,
        42,
        0,
        b"",
    );
    let frame = vxlan(GW_MAC, HOST_MAC, MUX_PA, HOST_PA, VNI, &inner);
    let (v, out) = run(&mut p, Direction::In, &frame, secs(3));
    assert_eq!(v, Verdict::Forward);
    let d = decode_sent(&out);
    assert!(d.outer.is_none());
    assert_eq!((d.inner.src, d.inner.dst), (client, VM_CA));
    assert_eq!(
        (d.inner.sp, d.inner.dp),
        (5555, DIP_PORT),
        "VIP:80 -> DIP:8080"
    );

    // The VM answers; the reply leaves directly to the client (not back
    // through the MUX), with VIP:80 as its source.
    let reply = tcp(
        VM_MAC,
        VM_GW_MAC,
        VM_CA,
        client,
        DIP_PORT,
        5555,
        SYN | ACK,
        77,
        43,
        b"",
    );
    let (v, out) = run(&mut p, Direction::Out, &reply, secs(3) + 10);
    assert_eq!(v, Verdict::Forward);
    let d = decode_sent(&out);
    assert!(
        d.outer.is_none(),
        "direct server return: native, not to the MUX"
    );
    assert_eq!((d.inner.src, d.inner.sp), (VIP, 80));
    assert_eq!((d.inner.dst, d.inner.dp), (client, 5555));
    assert_eq!(
        p.counters().direction(Direction::Out).slow_path,
        0,
        "outbound partner made by simulation"
    );

    // Handshake completes through the MUX path.
    let ack = tcp(
        MacAddrs::MUX_INNER,
        VM_MAC,
        client,
        VIP,
        5555,
        80,
        ACK,
        43,
        78,
        b"",
    );
    let (v, _) = run(
        &mut p,
        Direction::In,
        &vxlan(GW_MAC, HOST_MAC, MUX_PA, HOST_PA, VNI, &ack),
        secs(3) + 20,
    );
    assert_eq!(v, Verdict::Forward);
    assert_eq!(p.counters().tcp.handshakes_completed, 1);
}

struct MacAddrs;
impl MacAddrs {
    const MUX_INNER: strata_packet::MacAddr = strata_packet::MacAddr([0x02, 0xbb, 0, 0, 0, 1]);
}

#[test]
fn acl_blocks_with_reasons_and_counters() {
    let mut p = port();
    // Infra's terminating block beats the customer group's allow.
    let (v, _) = run(
        &mut p,
        Direction::Out,
        &vm_tcp(peer(1, 9), 40001, 25, SYN, 1, 0, b""),
        secs(4),
    );
    assert_eq!(v.drop_reason(), Some(DropReason::RuleBlock));
    assert_eq!(p.counters().rule("acl", "infra-block-smtp").drops, 1);

    // Unsolicited inbound TCP to a closed port: default block.
    let (v, _) = run(
        &mut p,
        Direction::In,
        &peer_tcp(1, 9, 3333, 22, SYN, 1, 0, b""),
        secs(4),
    );
    assert_eq!(v.drop_reason(), Some(DropReason::DefaultBlock));
    // Repeated: the cached drop flow answers (fast path), still counted.
    let (v, _) = run(
        &mut p,
        Direction::In,
        &peer_tcp(1, 9, 3333, 22, SYN, 1, 0, b""),
        secs(4) + 5,
    );
    assert_eq!(v.drop_reason(), Some(DropReason::DefaultBlock));
    let c = p.counters();
    assert_eq!(c.drops_for(DropReason::DefaultBlock), 2);
    assert_eq!(c.drops_for(DropReason::RuleBlock), 1);
    assert_eq!(c.layer("acl").drops, 3);
    assert_eq!(c.direction(Direction::In).fast_path, 1);

    // Allowed inbound: ping (stateful ICMP rule), and its reply goes out.
    let (v, _) = run(
        &mut p,
        Direction::In,
        &vxlan(
            GW_MAC,
            HOST_MAC,
            remote_pa(1, 9),
            HOST_PA,
            VNI,
            &ping(remote_mac(1, 9), VM_MAC, peer(1, 9), VM_CA, 77, 1),
        ),
        secs(4),
    );
    assert_eq!(v, Verdict::Forward);
}

/// The agent installs `dst`'s mapping (host 5.5); `syn`, sent again, goes
/// through, encapsulated towards that host's PA.
fn send_after_mapping(p: &mut strata_engine::Port, dst: Ipv4Addr, syn: &[u8]) {
    p.set_mapping(MAPPING, IpAddr::V4(dst), mapping_for(5, 5))
        .expect("install");
    let (v, out) = run(p, Direction::Out, syn, secs(6));
    assert_eq!(v, Verdict::Forward);
    assert_eq!(decode_sent(&out).outer.expect("encap").dst, remote_pa(5, 5));
}

/// A CA mapped to a PA of the other address family than the port's own
/// cannot be encapsulated: the flow is dropped as `action-refused`, with
/// no layer state left behind, and a corrected mapping serves the next
/// packet.
#[test]
fn a_mapping_to_the_other_address_family_is_refused() {
    let mut p = four_layer_port(PortConfig::default(), 0).expect("port");
    let dst = Ipv4Addr::new(10, 1, 5, 5);
    let mut wrong = mapping_for(5, 5);
    wrong.pa = "2001:db8::5".parse().expect("ip");
    p.set_mapping(MAPPING, IpAddr::V4(dst), wrong)
        .expect("install");
    let syn = vm_tcp(dst, 40000, 80, SYN, 1, 0, b"");
    let (v, _) = run(&mut p, Direction::Out, &syn, secs(5));
    assert_eq!(v.drop_reason(), Some(DropReason::ActionRefused));
    assert_eq!(p.counters().drops_for(DropReason::ActionRefused), 1);
    assert_eq!(p.layer_flow_count("acl"), 0);
    send_after_mapping(&mut p, dst, &syn);
}

#[test]
fn mapping_miss_raises_event_then_reconciles() {
    let mut p = four_layer_port(PortConfig::default(), 0).expect("port");
    let events = p.subscribe_events();
    let dst = Ipv4Addr::new(10, 1, 5, 5);
    let syn = vm_tcp(dst, 40000, 80, SYN, 1, 0, b"");
    let (v, _) = run(&mut p, Direction::Out, &syn, secs(5));
    assert_eq!(v.drop_reason(), Some(DropReason::MappingMiss));
    let ev = events.try_recv().expect("a mapping-miss event");
    assert_eq!(
        ev,
        ResourceEvent::MappingMiss {
            table: MAPPING.into(),
            key: IpAddr::V4(dst)
        }
    );
    // No SNAT or layer state leaked by the dropped flow.
    assert_eq!(p.layer_flow_count("acl"), 0);
    // The agent answers; the retransmitted SYN goes through.
    send_after_mapping(&mut p, dst, &syn);
    assert_eq!(p.counters().direction(Direction::Out).reconciled, 1);
}

#[test]
fn malformed_frames_are_counted_drops() {
    let mut p = port();
    let good = vm_tcp(peer(1, 7), 40000, 80, SYN, 1, 0, b"");
    for cut in [0usize, 5, 13, 20, 33, 40] {
        let (v, _) = run(&mut p, Direction::Out, &good[..cut], secs(1));
        assert_eq!(v.drop_reason(), Some(DropReason::Malformed), "cut at {cut}");
    }
    let c = p.counters();
    assert_eq!(c.drops_for(DropReason::Malformed), 6);
    assert_eq!(c.malformed.values().sum::<u64>(), 6);
}

#[test]
fn vm_own_vxlan_overlay_is_carried_intact_inside_ours() {
    // A VM running its own overlay (e.g. Kubernetes flannel) sends VXLAN to
    // a peer VM. Strata must treat it as opaque UDP, not as its own tunnel.
    let mut p = port();
    let nested_inner = udp(
        strata_packet::MacAddr([0x0a, 0, 0, 0, 0, 1]),
        strata_packet::MacAddr([0x0a, 0, 0, 0, 0, 2]),
        Ipv4Addr::new(172, 30, 0, 1),
        Ipv4Addr::new(172, 30, 0, 2),
        1111,
        2222,
        b"pod traffic",
    );
    let vm_frame = vxlan(VM_MAC, VM_GW_MAC, VM_CA, peer(1, 7), 77, &nested_inner);
    let (v, out) = run(&mut p, Direction::Out, &vm_frame, secs(1));
    assert_eq!(v, Verdict::Forward);
    let d = decode_sent(&out);
    assert_eq!(d.outer.expect("our encap").dst, remote_pa(1, 7));
    assert_eq!(
        (d.inner.src, d.inner.dst, d.inner.dp),
        (VM_CA, peer(1, 7), 4789)
    );
    // The VM's VXLAN header (VNI 77) and its frame are untouched.
    assert_eq!(&d.inner.payload[4..7], &[0, 0, 77]);
    assert_eq!(&d.inner.payload[8..], &nested_inner[..]);
}
