//! Mangled frames through a whole port: the four-layer stack holding a
//! few connections takes frames made from real samples (SYNs, answers,
//! datagrams, pings, and ICMP errors quoting what the port sent, native
//! and VXLAN-encapsulated) with bytes overwritten and cut, in either
//! direction. Nothing may panic; every frame is forwarded, or dropped and
//! counted; a forwarded frame parses again; the flow state stays sound.
//! (`PROPTEST_CASES` for a longer run.)

mod common;
use common::*;
use etherparse::{Icmpv4Type, icmpv4};
use proptest::prelude::*;
use std::net::Ipv4Addr;
use std::sync::OnceLock;
use strata_engine::port::FRAGMENT_TIMEOUT;
use strata_engine::scenario::*;
use strata_engine::{Direction, DropReason, Port, PortConfig, Verdict, secs};
use strata_packet::PacketBuf;
use strata_packet::parse::parse_with;

const WEB: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);

fn port() -> Port {
    let mut p = four_layer_port(PortConfig::default(), 0).expect("port");
    install_mappings(&mut p, 4).expect("mappings");
    p
}

/// The port with its connections, and the sample frames.
fn samples() -> &'static [(Direction, Vec<u8>)] {
    static S: OnceLock<Vec<(Direction, Vec<u8>)>> = OnceLock::new();
    S.get_or_init(|| {
        let mut p = port();
        let mut out = Vec::new();
        let mut send = |p: &mut Port, d, f: Vec<u8>| {
            let (_, sent) = run(p, d, &f, secs(1));
            out.push((d, f));
            sent
        };
        let syn = vm_tcp(WEB, 41000, 443, SYN, 1, 0, b"");
        let syn_out = send(&mut p, Direction::Out, syn);
        let dns = udp(VM_MAC, VM_GW_MAC, VM_CA, WEB, 5353, 53, b"query");
        let dns_out = send(&mut p, Direction::Out, dns);
        let vnet = udp(
            VM_MAC,
            VM_GW_MAC,
            VM_CA,
            Ipv4Addr::new(10, 1, 2, 3),
            7,
            9,
            b"x",
        );
        let vnet_out = send(&mut p, Direction::Out, vnet);
        send(
            &mut p,
            Direction::Out,
            ping(VM_MAC, VM_GW_MAC, VM_CA, WEB, 3, 1),
        );
        let nat_port = decode_sent(&syn_out).inner.sp;
        let answer = internet_answer(WEB, 443, nat_port, SYN | ACK, 2);
        send(&mut p, Direction::In, answer);
        let unreachable = Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port);
        for sent in [&syn_out, &dns_out] {
            let e = icmp_error(
                (GW_MAC, HOST_MAC),
                WEB,
                VIP,
                unreachable.clone(),
                &sent[14..],
            );
            send(&mut p, Direction::In, e);
        }
        let inner = &vnet_out[14 + 20 + 8 + 8..];
        let e = icmp_error(
            (remote_mac(2, 3), VM_MAC),
            Ipv4Addr::new(10, 1, 2, 3),
            VM_CA,
            unreachable,
            &inner[14..],
        );
        let framed = vxlan(GW_MAC, HOST_MAC, remote_pa(2, 3), HOST_PA, VNI, &e);
        send(&mut p, Direction::In, framed);
        out
    })
}

/// Run every sample once (so the port holds their connections), then the
/// mangled frame.
fn check(pick: usize, edits: &[(u16, u8)], cut: u16, flip: bool) {
    let samples = samples();
    let mut p = port();
    for (d, f) in samples {
        run(&mut p, *d, f, secs(1));
    }
    let (d, f) = &samples[pick % samples.len()];
    let d = if flip { d.opposite() } else { *d };
    let mut m = f.clone();
    for &(pos, val) in edits {
        let i = usize::from(pos) % m.len();
        m[i] = val;
    }
    m.truncate(if cut & 1 == 1 {
        usize::from(cut >> 1) % (m.len() + 1)
    } else {
        m.len()
    });
    let before = p.direction_counters(d);
    let mut buf = PacketBuf::with_capacity(2048);
    buf.reset(&m);
    let v = p.process(d, &mut buf, secs(2));
    let after = p.direction_counters(d);
    if v == Verdict::Held {
        // A later fragment (a mangled offset) waits for a first fragment
        // that never comes: counted once, when expiry drops it.
        assert_eq!(after, before);
        assert_eq!(p.held_fragments(), 1);
        p.expire(secs(2) + FRAGMENT_TIMEOUT);
        assert_eq!(p.held_fragments(), 0);
        let dropped = p.direction_counters(d);
        assert_eq!(
            (dropped.packets, dropped.dropped),
            (before.packets + 1, before.dropped + 1)
        );
        assert_eq!(p.drops(DropReason::FragmentTimeout), 1);
        p.verify_flow_state().expect("flow state");
        return;
    }
    assert_eq!(after.packets, before.packets + 1);
    if v.is_forward() {
        assert_eq!(after.forwarded, before.forwarded + 1);
        // What leaves parses (tunnels not decoded: a VM's own datagrams
        // to a tunnel port are opaque payload).
        let next = strata_packet::ParseOptions {
            decode_tunnels: false,
        };
        assert!(
            parse_with(buf.as_slice(), next).is_ok(),
            "forwarded frame does not parse: {:?}",
            parse_with(buf.as_slice(), next)
        );
    } else {
        assert_eq!(after.dropped, before.dropped + 1);
        let reason = v.drop_reason().expect("a drop has a reason");
        assert!(p.drops(reason) >= 1);
    }
    p.verify_flow_state().expect("flow state");
    p.expire(secs(1_000_000));
    p.verify_flow_state().expect("flow state after expiry");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn mangled_frames_never_crash_a_port(
        pick in any::<usize>(),
        edits in proptest::collection::vec(any::<(u16, u8)>(), 0..6),
        cut in any::<u16>(),
        flip in any::<bool>(),
    ) {
        check(pick, &edits, cut, flip);
    }
}

#[test]
fn the_samples_reach_every_path() {
    let mut p = port();
    for (d, f) in samples() {
        run(&mut p, *d, f, secs(1));
    }
    let c = p.icmp_error_counters();
    assert_eq!(c.relayed, 3, "each sample error is about a connection");
}
