//! TCP lifecycle, SYN floods, SNAT exhaustion and reuse after TIME_WAIT,
//! flow limits and eviction.

mod common;

use common::*;
use std::net::{IpAddr, Ipv4Addr};
use strata_engine::scenario::*;
use strata_engine::tcp::TcpState;
use strata_engine::{Direction, DropReason, Port, PortConfig, Verdict, secs};

fn state(p: &Port, frame: &[u8]) -> Option<TcpState> {
    let key = strata_packet::parse(frame).expect("parse").ufid;
    p.connection(Direction::Out, &key).and_then(|c| c.tcp_state)
}

const WEB: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);

/// Drive a full SNAT'd TCP connection; returns the NAT port.
fn full_connection(p: &mut Port, sp: u16, t0: u64) -> u16 {
    let (v, out) = run(
        p,
        Direction::Out,
        &vm_tcp(WEB, sp, 443, SYN, 100, 0, b""),
        t0,
    );
    assert_eq!(v, Verdict::Forward);
    let np = decode_sent(&out).inner.sp;
    let rx = |flags, seq, ack| tcp(GW_MAC, HOST_MAC, WEB, VIP, 443, np, flags, seq, ack, b"");
    assert!(forwards(
        p,
        Direction::In,
        &rx(SYN | ACK, 500, 101),
        t0 + 1_000
    ));
    assert!(forwards(
        p,
        Direction::Out,
        &vm_tcp(WEB, sp, 443, ACK, 101, 501, b""),
        t0 + 2_000
    ));
    assert_eq!(
        state(p, &vm_tcp(WEB, sp, 443, ACK, 101, 501, b"")),
        Some(TcpState::Established)
    );
    assert!(forwards(
        p,
        Direction::Out,
        &vm_tcp(WEB, sp, 443, FIN | ACK, 101, 501, b""),
        t0 + 3_000
    ));
    assert_eq!(
        state(p, &vm_tcp(WEB, sp, 443, ACK, 101, 501, b"")),
        Some(TcpState::FinWait)
    );
    assert!(forwards(
        p,
        Direction::In,
        &rx(FIN | ACK, 501, 102),
        t0 + 4_000
    ));
    assert_eq!(
        state(p, &vm_tcp(WEB, sp, 443, ACK, 101, 501, b"")),
        Some(TcpState::Closing)
    );
    assert!(forwards(
        p,
        Direction::Out,
        &vm_tcp(WEB, sp, 443, ACK, 102, 502, b""),
        t0 + 5_000
    ));
    assert_eq!(
        state(p, &vm_tcp(WEB, sp, 443, ACK, 102, 502, b"")),
        Some(TcpState::TimeWait)
    );
    np
}

#[test]
fn full_tcp_lifecycle_retires_all_state_after_time_wait() {
    let mut p = four_layer_port(PortConfig::default(), 0).unwrap();
    full_connection(&mut p, 40000, secs(10));
    assert_eq!(p.connection_count(), 1);
    assert_eq!(p.layer_flow_count("acl"), 1);
    assert_eq!(p.layer_flow_count("slb"), 1);
    // TIME_WAIT holds everything, including the SNAT port.
    assert_eq!(p.expire(secs(10) + secs(30)), 0);
    assert_eq!(p.resources().port_pools[SNAT_POOL].in_use(), 1);
    // After 2·MSL it all goes.
    assert_eq!(p.expire(secs(10) + secs(61)), 1);
    assert_eq!(p.connection_count(), 0);
    assert_eq!(p.unified_flow_count(), 0);
    assert_eq!(p.layer_flow_count("acl"), 0);
    assert_eq!(p.layer_flow_count("slb"), 0);
    assert_eq!(p.resources().port_pools[SNAT_POOL].in_use(), 0);
    let c = p.counters();
    assert_eq!(c.tcp.handshakes_completed, 1);
    assert_eq!(c.flows.connections_closed, 1);
    assert!(c.tcp.avg_rtt_ns().is_some());
}

#[test]
fn rst_closes_and_idle_established_expires() {
    let mut p = four_layer_port(PortConfig::default(), 0).unwrap();
    let (_, out) = run(
        &mut p,
        Direction::Out,
        &vm_tcp(WEB, 40000, 443, SYN, 1, 0, b""),
        0,
    );
    let np = decode_sent(&out).inner.sp;
    run(
        &mut p,
        Direction::In,
        &tcp(GW_MAC, HOST_MAC, WEB, VIP, 443, np, RST | ACK, 0, 2, b""),
        10,
    );
    assert_eq!(
        state(&p, &vm_tcp(WEB, 40000, 443, SYN, 1, 0, b"")),
        Some(TcpState::Closed)
    );
    assert_eq!(p.counters().tcp.resets, 1);
    assert_eq!(p.expire(secs(2)), 1);
    assert_eq!(p.resources().port_pools[SNAT_POOL].in_use(), 0);
}

/// An outbound connection's inbound flow is made by its first reply: SYNs
/// nobody answers (a VM scanning, or flooding out) cost one unified flow
/// each; the one that is answered gets its inbound flow from the SYN-ACK's
/// slow path, in the same connection, and everything after is fast path.
#[test]
fn unanswered_outbound_syns_cost_one_flow_and_a_reply_joins_its_connection() {
    let mut p = four_layer_port(PortConfig::default(), 0).unwrap();
    install_mappings(&mut p, 4).unwrap();
    let conns: Vec<_> = (0..200u32).map(lifecycle).collect();
    for c in &conns {
        assert!(forwards(&mut p, c[0].0, &c[0].1, secs(1)));
    }
    assert_eq!(p.connection_count(), 200);
    assert_eq!(
        p.unified_flow_count(),
        200,
        "no inbound flow before a reply"
    );
    let layer_flows = p.layer_flow_count("acl");

    // Connection 7 completes its whole lifecycle.
    let (slow_in, slow_out) = (
        p.direction_counters(Direction::In).slow_path,
        p.direction_counters(Direction::Out).slow_path,
    );
    for (d, f) in &conns[7][1..] {
        assert!(forwards(&mut p, *d, f, secs(2)), "{d:?}");
    }
    assert_eq!(p.direction_counters(Direction::In).slow_path, slow_in + 1);
    assert_eq!(p.direction_counters(Direction::Out).slow_path, slow_out);
    assert_eq!(p.connection_count(), 200, "the reply joined connection 7");
    assert_eq!(p.unified_flow_count(), 201);
    assert_eq!(
        p.layer_flow_count("acl"),
        layer_flows,
        "the SYN's layer flows served the reply"
    );
    assert_eq!(p.counters().tcp.handshakes_completed, 1);
    let key = strata_packet::parse(&conns[7][0].1).unwrap().ufid;
    let c = p.connection(Direction::Out, &key).expect("connection 7");
    assert!(c.in_flow.is_some() && c.out_flow.is_some(), "paired");
    assert_eq!(c.tcp_state, Some(TcpState::TimeWait));
    p.verify_flow_state().expect("flow state");

    // The half-open rest ages out on the short TTL.
    assert_eq!(p.expire(secs(20)), 199);
}

#[test]
fn syn_flood_leaves_only_half_open_flows_that_expire_fast() {
    let mut p = four_layer_port(PortConfig::default(), 0).unwrap();
    install_mappings(&mut p, 1).unwrap();
    // Inbound SYN flood against the allowed web port, via the MUX path.
    for i in 0..500u32 {
        let client = Ipv4Addr::from(0xc633_6400 + i);
        let inner = tcp(
            GW_MAC,
            VM_MAC,
            client,
            VIP,
            1024 + i as u16,
            80,
            SYN,
            i,
            0,
            b"",
        );
        let f = vxlan(GW_MAC, HOST_MAC, MUX_PA, HOST_PA, VNI, &inner);
        assert!(forwards(&mut p, Direction::In, &f, secs(1)));
    }
    // A bogus final ACK (wrong numbers) does not establish anything.
    let client = Ipv4Addr::from(0xc633_6400);
    let bad = tcp(
        GW_MAC, VM_MAC, client, VIP, 1024, 80, ACK, 999_999, 12345, b"",
    );
    run(
        &mut p,
        Direction::In,
        &vxlan(GW_MAC, HOST_MAC, MUX_PA, HOST_PA, VNI, &bad),
        secs(1),
    );
    assert_eq!(p.connection_count(), 500);
    assert_eq!(p.counters().tcp.handshakes_completed, 0);
    assert!(p.counters().tcp.invalid_handshakes >= 1);
    // Half-open flows use the short TTL (10 s), established ones 300 s.
    assert_eq!(p.expire(secs(5)), 0);
    assert_eq!(p.expire(secs(12)), 500);
    assert_eq!(p.connection_count(), 0);
    assert_eq!(p.layer_flow_count("slb"), 0);
}

#[test]
fn eviction_under_flow_limit_prefers_half_open_and_is_counted() {
    let cfg = PortConfig {
        max_connections: 64,
        ..PortConfig::default()
    };
    let mut p = four_layer_port(cfg, 0).unwrap();
    // 32 established connections.
    for i in 0..32u16 {
        full_handshake(&mut p, 30000 + i);
    }
    // Then a flood of half-open ones well past the limit.
    for i in 0..400u16 {
        run(
            &mut p,
            Direction::Out,
            &vm_tcp(WEB, 50000 + i, 443, SYN, 1, 0, b""),
            secs(2),
        );
    }
    assert!(p.connection_count() <= 64);
    let f = p.counters().flows;
    assert!(f.evicted_half_open > 0);
    let established = (0..32u16)
        .filter(|i| {
            state(&p, &vm_tcp(WEB, 30000 + i, 443, ACK, 2, 2, b"")) == Some(TcpState::Established)
        })
        .count();
    assert!(
        established >= 24,
        "established connections survive a SYN flood: {established}/32, {f:?}"
    );
    // Ports of evicted connections went back to the pool.
    assert_eq!(
        p.resources().port_pools[SNAT_POOL].in_use(),
        p.layer_flow_count("slb")
    );
    // Eviction left every surviving flow indexed and counted once.
    p.verify_flow_state().expect("flow state after eviction");
}

fn full_handshake(p: &mut Port, sp: u16) {
    let (_, out) = run(
        p,
        Direction::Out,
        &vm_tcp(WEB, sp, 443, SYN, 1, 0, b""),
        secs(1),
    );
    let np = decode_sent(&out).inner.sp;
    run(
        p,
        Direction::In,
        &tcp(GW_MAC, HOST_MAC, WEB, VIP, 443, np, SYN | ACK, 10, 2, b""),
        secs(1),
    );
    run(
        p,
        Direction::Out,
        &vm_tcp(WEB, sp, 443, ACK, 2, 11, b""),
        secs(1),
    );
}

#[test]
fn snat_exhaustion_is_a_clear_drop_and_ports_return_after_time_wait() {
    let mut p = Port::new("small", PortConfig::default());
    let spec = four_layer_specs(0)
        .into_iter()
        .find(|l| l.id == "slb")
        .unwrap();
    p.add_port_pool(SNAT_POOL, IpAddr::V4(VIP), vec![(2000, 2001)])
        .unwrap();
    p.set_backend_pool(LB_POOL, vec![]).unwrap();
    p.add_layer(spec, None).unwrap();

    let np1 = full_connection(&mut p, 40000, secs(1));
    // A second, established connection holds the other port.
    let (v, out) = run(
        &mut p,
        Direction::Out,
        &vm_tcp(WEB, 40001, 443, SYN, 1, 0, b""),
        secs(1),
    );
    assert!(v.is_forward());
    let np2 = decode_sent(&out).inner.sp;
    assert_ne!(np1, np2);
    run(
        &mut p,
        Direction::In,
        &tcp(GW_MAC, HOST_MAC, WEB, VIP, 443, np2, SYN | ACK, 10, 2, b""),
        secs(1),
    );
    run(
        &mut p,
        Direction::Out,
        &vm_tcp(WEB, 40001, 443, ACK, 2, 11, b""),
        secs(1),
    );
    assert_eq!(
        state(&p, &vm_tcp(WEB, 40001, 443, ACK, 2, 11, b"")),
        Some(TcpState::Established)
    );
    // Pool of two is used up: the third connection is refused, clearly.
    let (v, _) = run(
        &mut p,
        Direction::Out,
        &vm_tcp(WEB, 40002, 443, SYN, 1, 0, b""),
        secs(1),
    );
    assert_eq!(v.drop_reason(), Some(DropReason::SnatExhausted));
    assert_eq!(p.counters().drops_for(DropReason::SnatExhausted), 1);
    // Still exhausted while the first connection is in TIME_WAIT.
    p.expire(secs(30));
    let (v, _) = run(
        &mut p,
        Direction::Out,
        &vm_tcp(WEB, 40002, 443, SYN, 1, 0, b""),
        secs(30),
    );
    assert_eq!(v.drop_reason(), Some(DropReason::SnatExhausted));
    // After TIME_WAIT the port is reused by a new connection.
    p.expire(secs(62));
    let (v, out) = run(
        &mut p,
        Direction::Out,
        &vm_tcp(WEB, 40003, 443, SYN, 1, 0, b""),
        secs(62),
    );
    assert!(v.is_forward(), "{v:?}");
    assert_eq!(
        decode_sent(&out).inner.sp,
        np1,
        "the port freed after TIME_WAIT is reused"
    );
}

#[test]
fn tcp_stats_count_retransmits_and_ecn() {
    let mut p = four_layer_port(PortConfig::default(), 0).unwrap();
    full_handshake(&mut p, 40000);
    let data = vm_tcp(WEB, 40000, 443, ACK, 2, 11, b"hello");
    run(&mut p, Direction::Out, &data, secs(2));
    run(&mut p, Direction::Out, &data, secs(3));
    assert_eq!(p.counters().tcp.retransmits, 1);
    let mut ce = vm_tcp(WEB, 40000, 443, ACK, 7, 11, b"world");
    ce[15] |= 0x03; // ECN CE in the IPv4 ToS byte
    // (fix the header checksum for the changed ToS byte)
    let h = etherparse::Ipv4HeaderSlice::from_slice(&ce[14..])
        .unwrap()
        .to_header();
    let sum = h.calc_header_checksum().to_be_bytes();
    ce[24] = sum[0];
    ce[25] = sum[1];
    run(&mut p, Direction::Out, &ce, secs(4));
    assert_eq!(p.counters().tcp.ecn_ce_marks, 1);
    assert_eq!(
        p.counters().tcp.retransmits,
        1,
        "new data is not a retransmit"
    );
}
