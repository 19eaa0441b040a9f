//! Random policies and packets for the engine's property tests (shared
//! by `fast_slow_prop` and `snapshot_props`): up to four layers of up to
//! three groups of up to six rules over IPv4 5-tuple conditions, with every
//! built-in action (NAT, SNAT from a pool, modify, VXLAN/Geneve encap,
//! decap, meter, allow, block), stateful and terminating rules; frames are
//! a VM's TCP SYNs, UDP datagrams and pings among a few addresses, so
//! rules overlap and flows repeat. Included by path (`mod common;` must be
//! declared beside it).

#![allow(dead_code)]

use rand::Rng;
use rand::rngs::StdRng;
use std::net::{IpAddr, Ipv4Addr};
use strata_engine::action::ActionSpec;
use strata_engine::condition::{Condition, Field, MatchValue};
use strata_engine::policy::{Group, LayerSpec, Rule};
use strata_engine::{DefaultAction, Direction, Port, PortConfig};
use strata_packet::flow::{MacAddr, TunnelKind};

pub fn ip(rng: &mut StdRng) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        rng.random_range(0..3),
        rng.random_range(0..3),
        rng.random_range(1..5),
    )
}

pub fn condition(rng: &mut StdRng) -> Condition {
    match rng.random_range(0..6) {
        0 => Condition::ip_prefix(Field::DstIp, IpAddr::V4(ip(rng)), rng.random_range(8..=32)),
        1 => Condition::ip_prefix(Field::SrcIp, IpAddr::V4(ip(rng)), rng.random_range(8..=32)),
        2 => {
            let lo = rng.random_range(0..2000u16);
            Condition::range(
                Field::DstPort,
                u128::from(lo),
                u128::from(lo + rng.random_range(0..3000)),
            )
        }
        3 => Condition::new(
            Field::Proto,
            vec![MatchValue::Exact(6), MatchValue::Exact(17)],
        ),
        4 => Condition::exact(
            Field::Proto,
            u128::from([1u8, 6, 17][rng.random_range(0..3)]),
        ),
        _ => Condition::range(Field::SrcPort, 0, u128::from(rng.random_range(0..65535u16))),
    }
}

pub fn action(rng: &mut StdRng, allow_snat: bool) -> (ActionSpec, bool) {
    match rng.random_range(0..10) {
        0 => (ActionSpec::Block, false),
        1 => (
            ActionSpec::Nat {
                src_ip: rng.random_bool(0.5).then(|| IpAddr::V4(ip(rng))),
                dst_ip: rng.random_bool(0.5).then(|| IpAddr::V4(ip(rng))),
                src_port: rng.random_bool(0.5).then(|| rng.random_range(1..65535)),
                dst_port: rng.random_bool(0.5).then(|| rng.random_range(1..65535)),
            },
            rng.random_bool(0.5),
        ),
        2 => (
            ActionSpec::Modify {
                src_mac: rng
                    .random_bool(0.5)
                    .then(|| MacAddr([2, 0, 0, 0, 0, rng.random()])),
                dst_mac: rng
                    .random_bool(0.5)
                    .then(|| MacAddr([2, 0, 0, 0, 1, rng.random()])),
                dscp: rng.random_bool(0.5).then(|| rng.random_range(0..64)),
                vlan: None,
            },
            false,
        ),
        3 => (
            ActionSpec::Encap {
                tunnel: if rng.random_bool(0.5) {
                    TunnelKind::Vxlan
                } else {
                    TunnelKind::Geneve
                },
                vni: rng.random_range(1..0xffffff),
                local_pa: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1)),
                remote_pa: IpAddr::V4(Ipv4Addr::new(192, 168, 0, rng.random_range(2..200))),
                local_mac: MacAddr([2, 0xaa, 0, 0, 0, 1]),
                next_hop_mac: MacAddr([2, 0xaa, 0, 0, 0, 2]),
                inner_dst_mac: rng
                    .random_bool(0.5)
                    .then_some(MacAddr([2, 0xcc, 0, 0, 0, 2])),
            },
            false,
        ),
        4 if allow_snat => (
            ActionSpec::Snat {
                pool: "pool".into(),
            },
            true,
        ),
        5 => (
            ActionSpec::Meter {
                by: Field::DstIp,
                prefix_len: Some(120),
            },
            false,
        ),
        6 => (ActionSpec::Decap, false),
        _ => (ActionSpec::Allow, rng.random_bool(0.5)),
    }
}

pub fn random_port(rng: &mut StdRng) -> Port {
    let mut port = Port::new("prop", PortConfig::default());
    port.add_port_pool(
        "pool",
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        vec![(1000, 60000)],
    )
    .expect("pool");
    for li in 0..rng.random_range(1..=4) {
        let mut spec = LayerSpec::new(
            &format!("l{li}"),
            if rng.random_bool(0.85) {
                DefaultAction::Allow
            } else {
                DefaultAction::Block
            },
            DefaultAction::Allow,
        );
        // SNAT in one layer only: a dry-run trace cannot predict the second
        // of two allocations made by one slow path.
        let snat_here = li == 0;
        for gi in 0..rng.random_range(1..=3) {
            let mut rules = Vec::new();
            for ri in 0..rng.random_range(1..=6) {
                let conds = (0..rng.random_range(0..3))
                    .map(|_| condition(rng))
                    .collect();
                let (a, stateful) = action(rng, snat_here);
                let mut r = Rule::new(&format!("r{gi}-{ri}"), rng.random_range(0..5), conds, a);
                r.stateful = stateful;
                r.terminating = rng.random_bool(0.2);
                rules.push(r);
            }
            spec.groups
                .push(Group::new(&format!("g{gi}"), Direction::Out).with_rules(rules));
        }
        port.add_layer(spec, None).expect("valid random layer");
    }
    port
}

pub fn random_frame(rng: &mut StdRng) -> Vec<u8> {
    let (sm, dm) = (MacAddr([2, 0, 0, 0, 0, 4]), MacAddr([2, 0, 0, 0, 0, 1]));
    let (s, d) = (ip(rng), ip(rng));
    let (sp, dp) = (rng.random_range(1..5000), rng.random_range(1..5000));
    match rng.random_range(0..3) {
        0 => crate::common::tcp(
            sm,
            dm,
            s,
            d,
            sp,
            dp,
            crate::common::SYN,
            rng.random(),
            0,
            b"payload",
        ),
        1 => crate::common::udp(sm, dm, s, d, sp, dp, b"datagram!"),
        _ => crate::common::ping(sm, dm, s, d, sp, 1),
    }
}

/// A peer's answer to `sent`, a frame the port forwarded outbound: its
/// addresses and ports swapped (a TCP SYN answered by a SYN-ACK), inside
/// the same tunnel, swapped too, if it left VXLAN-encapsulated; `None` for
/// what is no TCP, UDP or ping. (A Geneve frame reads as plain UDP here:
/// its answer is a datagram back to the tunnel port.)
pub fn reply(sent: &[u8]) -> Option<Vec<u8>> {
    use crate::common::{ACK, SYN, decode, ping, tcp, udp, vxlan};
    let d = decode(sent);
    let i = &d.inner;
    let inner = match i.proto {
        6 => tcp(
            i.dst_mac,
            i.src_mac,
            i.dst,
            i.src,
            i.dp,
            i.sp,
            SYN | ACK,
            7,
            i.seq.wrapping_add(1),
            b"",
        ),
        17 => udp(i.dst_mac, i.src_mac, i.dst, i.src, i.dp, i.sp, b"answer"),
        1 => ping(i.dst_mac, i.src_mac, i.dst, i.src, i.sp, 2),
        _ => return None,
    };
    Some(match &d.outer {
        Some(o) => vxlan(o.dst_mac, o.src_mac, o.dst, o.src, o.vni, &inner),
        None => inner,
    })
}

/// An ICMP error about `sent`, a frame the port forwarded outbound: a
/// port unreachable from its destination, or (`from_router`) a time
/// exceeded from a router on the way, quoting the whole packet or
/// (`short`) its IP header and 8 bytes, inside the same tunnel (swapped)
/// if it left VXLAN-encapsulated.
pub fn error_about(sent: &[u8], from_router: bool, short: bool) -> Vec<u8> {
    use crate::common::{decode, icmp_error, vxlan};
    use etherparse::{Icmpv4Type, icmpv4};
    let d = decode(sent);
    let i = &d.inner;
    let ip = match &d.outer {
        Some(_) => &sent[14 + 20 + 8 + 8 + 14..],
        None => &sent[14..],
    };
    let quote = if short { &ip[..ip.len().min(28)] } else { ip };
    let (src, kind) = if from_router {
        (
            Ipv4Addr::new(198, 18, 0, 1),
            Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit),
        )
    } else {
        (
            i.dst,
            Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port),
        )
    };
    let err = icmp_error((i.dst_mac, i.src_mac), src, i.src, kind, quote);
    match &d.outer {
        Some(o) => vxlan(o.dst_mac, o.src_mac, o.dst, o.src, o.vni, &err),
        None => err,
    }
}
