//! IPv6 connections end to end: keys that do not fit the packed IPv4 form
//! (stored boxed) through a stateful ACL and a stateful NAT66, both
//! directions, with outputs re-parsed and checksums verified by etherparse,
//! and a snapshot/restore round trip of that state.

mod common;
use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};
use std::net::Ipv6Addr;
use strata_engine::{ActionRegistry, Direction, DropReason, Port, Verdict, secs};
use strata_packet::PacketBuf;

const VM: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 4);
const PUBLIC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const PEER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
const OTHER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xeeee, 0, 0, 0, 0, 1);
const SYN: u8 = 2;
const ACK: u8 = 16;

fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, sp: u16, dp: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    // The VM's frames go VM -> gateway MAC, replies come back the other way
    // (the partner flow's key has the MACs reversed).
    let (vm_mac, gw_mac) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let (sm, dm) = if src == VM {
        (vm_mac, gw_mac)
    } else {
        (gw_mac, vm_mac)
    };
    let mut b = PacketBuilder::ethernet2(sm, dm)
        .ipv6(src.octets(), dst.octets(), 64)
        .tcp(sp, dp, 1000, 64240);
    if flags & SYN != 0 {
        b = b.syn();
    }
    if flags & ACK != 0 {
        b = b.ack(1);
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build");
    out
}

/// Addresses and ports of an IPv6 TCP frame, after checking its TCP
/// checksum and payload length with etherparse.
fn decode6(frame: &[u8]) -> (Ipv6Addr, Ipv6Addr, u16, u16) {
    let h = PacketHeaders::from_ethernet_slice(frame).expect("etherparse rejects our frame");
    let Some(NetHeaders::Ipv6(ip, _)) = &h.net else {
        panic!("not ipv6: {:?}", h.net)
    };
    assert_eq!(usize::from(ip.payload_length), frame.len() - 14 - 40);
    let Some(TransportHeader::Tcp(t)) = &h.transport else {
        panic!("not tcp")
    };
    let payload = h.payload.slice();
    assert_eq!(
        t.checksum,
        t.calc_checksum_ipv6(ip, payload).expect("checksum calc"),
        "TCP checksum"
    );
    (
        Ipv6Addr::from(ip.source),
        Ipv6Addr::from(ip.destination),
        t.source_port,
        t.destination_port,
    )
}

fn port() -> Port {
    common::nat66_port(VM, PUBLIC)
}

fn run(p: &mut Port, d: Direction, f: &[u8], now: u64) -> (Verdict, Vec<u8>) {
    let mut buf = PacketBuf::with_capacity(2048);
    buf.reset(f);
    let v = p.process(d, &mut buf, now);
    (v, buf.as_slice().to_vec())
}

#[test]
fn ipv6_connection_through_stateful_acl_and_nat66() {
    let mut p = port();
    // Outbound SYN: slow path; the source becomes the public address.
    let (v, out) = run(
        &mut p,
        Direction::Out,
        &tcp6(VM, PEER, 40000, 443, SYN, b""),
        secs(1),
    );
    assert_eq!(v, Verdict::Forward);
    assert_eq!(decode6(&out), (PUBLIC, PEER, 40000, 443));
    assert_eq!(p.connection_count(), 1);
    assert_eq!(p.layer_flow_count("acl"), 1);
    assert_eq!(p.layer_flow_count("nat"), 1);

    // The reply takes the slow path once (its simulation meets the ACL and
    // NAT layer flows, so the NAT reverses itself), joins the SYN's
    // connection, and is translated back to the VM.
    let reply = tcp6(PEER, PUBLIC, 443, 40000, SYN | ACK, b"");
    let (v, out) = run(&mut p, Direction::In, &reply, secs(1) + 1000);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(decode6(&out), (PEER, VM, 443, 40000));
    let inb = p.direction_counters(Direction::In);
    assert_eq!((inb.fast_path, inb.slow_path), (0, 1));
    assert_eq!(p.connection_count(), 1, "the reply joined the connection");

    // Data outbound: fast path, same translation.
    let data = tcp6(VM, PEER, 40000, 443, ACK, b"hello over v6");
    let (v, out) = run(&mut p, Direction::Out, &data, secs(2));
    assert_eq!(v, Verdict::Forward);
    assert_eq!(decode6(&out), (PUBLIC, PEER, 40000, 443));
    assert_eq!(p.direction_counters(Direction::Out).fast_path, 1);

    // Unsolicited inbound from another address: the ACL blocks it.
    let (v, _) = run(
        &mut p,
        Direction::In,
        &tcp6(OTHER, PUBLIC, 443, 40000, SYN, b""),
        secs(2),
    );
    assert_eq!(v.drop_reason(), Some(DropReason::DefaultBlock));

    // Snapshot and restore: the restored port continues the connection with
    // identical bytes in both directions.
    let snap = p.snapshot().unwrap();
    let mut q = Port::restore(&snap, ActionRegistry::default()).unwrap();
    assert_eq!(q.connection_count(), p.connection_count());
    for (d, f) in [(Direction::Out, &data), (Direction::In, &reply)] {
        let a = run(&mut p, d, f, secs(3));
        let b = run(&mut q, d, f, secs(3));
        assert_eq!(a, b);
        assert_eq!(a.0, Verdict::Forward);
    }
    // Counters travel with the snapshot: both ports counted the same.
    for d in [Direction::Out, Direction::In] {
        assert_eq!(q.direction_counters(d), p.direction_counters(d));
    }
    // The first reply and the unsolicited SYN; the replies after the
    // restore hit the fast path on both ports.
    assert_eq!(q.direction_counters(Direction::In).slow_path, 2);
    // Wide (IPv6) keys are indexed and shared consistently, before and
    // after the restore.
    p.verify_flow_state().expect("flow state");
    q.verify_flow_state().expect("restored flow state");

    // Retired, the connection leaves nothing behind: its wide keys are
    // found in the index by their hash and removed (a wrong hash would
    // leave entries the flow-state check counts).
    for port in [&mut p, &mut q] {
        assert!(port.expire(u64::MAX / 2) >= 1);
        assert_eq!(port.connection_count(), 0);
        assert_eq!(port.unified_flow_count(), 0);
        port.verify_flow_state().expect("flow state after retiring");
    }
}

/// A router's "packet too big" about the VM's unanswered SYN reaches the
/// VM behind NAT66 (the stateful ACL lets it in only by its quote): the
/// error's destination and its quote's source are the VM's again, with
/// the ICMPv6 checksum (pseudo-header included) and the quoted TCP
/// checksum right.
#[test]
fn packet_too_big_reaches_the_vm_behind_nat66() {
    let mut p = port();
    let (v, sent) = run(
        &mut p,
        Direction::Out,
        &tcp6(VM, PEER, 40000, 443, SYN, b""),
        secs(1),
    );
    assert_eq!(v, Verdict::Forward);
    let flows = (p.connection_count(), p.unified_flow_count());
    let router = Ipv6Addr::new(0x2001, 0xdb8, 0x5555, 0, 0, 0, 0, 1);
    let mut err = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv6(router.octets(), PUBLIC.octets(), 64)
        .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut err, &sent[14..])
        .expect("build");
    let (v, out) = run(&mut p, Direction::In, &err, secs(2));
    assert_eq!(v, Verdict::Forward);
    let h = PacketHeaders::from_ethernet_slice(&out).expect("etherparse");
    let Some(NetHeaders::Ipv6(ip, _)) = &h.net else {
        panic!("not ipv6")
    };
    assert_eq!(
        (Ipv6Addr::from(ip.source), Ipv6Addr::from(ip.destination)),
        (router, VM)
    );
    let Some(TransportHeader::Icmpv6(icmp)) = &h.transport else {
        panic!("not icmpv6")
    };
    let quote = h.payload.slice();
    assert_eq!(
        icmp.checksum,
        icmp.icmp_type
            .calc_checksum(ip.source, ip.destination, quote)
            .expect("calc"),
        "ICMPv6 checksum"
    );
    assert_eq!(
        icmp.icmp_type,
        etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 }
    );
    let q = PacketHeaders::from_ip_slice(quote).expect("quoted packet");
    let Some(NetHeaders::Ipv6(qip, _)) = &q.net else {
        panic!("quote not ipv6")
    };
    let Some(TransportHeader::Tcp(t)) = &q.transport else {
        panic!("quote not tcp")
    };
    assert_eq!(
        (Ipv6Addr::from(qip.source), t.source_port),
        (VM, 40000),
        "the SYN as the VM sent it"
    );
    assert_eq!(
        t.checksum,
        t.calc_checksum_ipv6(qip, q.payload.slice()).expect("calc"),
        "quoted TCP checksum"
    );
    assert_eq!((p.connection_count(), p.unified_flow_count()), flows);
    assert_eq!(p.icmp_error_counters().relayed, 1);
}
