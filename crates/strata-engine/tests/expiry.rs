//! Bounded expiry (`Port::expire_some`): a cycle of small calls leaves the
//! port exactly as one `Port::expire` does (connections, layer flows, SNAT
//! ports, counters — compared through snapshots), no call examines more
//! than its budget, and counter slots are reclaimed only from marks no
//! retirement has made stale.

mod common;

use common::*;
use strata_engine::scenario::*;
use strata_engine::{Port, PortConfig, secs};

/// The four-layer port with a mix of states at t = 1..3 s: finished TCP
/// connections (TIME_WAIT), established SNAT'd ones, half-open ones.
fn busy_port() -> Port {
    let mut p = four_layer_port(PortConfig::default(), 0).unwrap();
    install_mappings(&mut p, 2).unwrap();
    for i in 0..300 {
        let lc = lifecycle(i);
        let n = match i % 3 {
            0 => 6, // closed
            1 => 3, // established
            _ => 1, // half-open
        };
        for (d, f) in &lc[..n] {
            run(&mut p, *d, f, secs(1));
        }
    }
    for i in 0..100 {
        nat_conn(&mut p, i);
    }
    p
}

/// Run `expire_some` with `budget` until a cycle ends; every call within
/// budget. Returns the connections removed.
fn cycle(p: &mut Port, now: u64, budget: usize) -> usize {
    let mut removed = 0;
    for _ in 0..100_000 {
        let r = p.expire_some(now, budget);
        assert!(r.examined <= budget, "{r:?}");
        removed += r.removed;
        if r.cycle_ended {
            p.verify_flow_state()
                .expect("flow state after an expiry cycle");
            return removed;
        }
    }
    panic!("no cycle end");
}

#[test]
fn cycles_of_small_calls_do_what_one_expire_does() {
    // Nothing due; the half-open; and the closed; everything.
    for (now, expected) in [
        (secs(2), 0),
        (secs(40), 100),
        (secs(100), 200),
        (secs(100_000), 400),
    ] {
        let mut a = busy_port();
        let slots = a.connection_count();
        let removed_a = a.expire(now);
        let mut c = busy_port();
        let removed_c = cycle(&mut c, now, 7);
        assert_eq!(removed_c, removed_a, "at {now}: of {slots}");
        assert_eq!(removed_a, expected, "at {now}: of {slots}");
        assert_eq!(c.connection_count(), a.connection_count());
        for layer in ["acl", "slb"] {
            assert_eq!(c.layer_flow_count(layer), a.layer_flow_count(layer));
        }
        assert_eq!(c.counters().flows, a.counters().flows);
        assert_eq!(c.counters().arena.all(), a.counters().arena.all());
        assert_eq!(
            c.resources().port_pools[SNAT_POOL].in_use(),
            a.resources().port_pools[SNAT_POOL].in_use()
        );
        // And both go on alike: every connection's packets again, later.
        let later = now + secs(1);
        for i in 0..300 {
            for (d, f) in lifecycle(i).iter().take(3) {
                assert_eq!(run(&mut c, *d, f, later), run(&mut a, *d, f, later));
            }
        }
        assert_eq!(c.counters().dir, a.counters().dir);
    }
}

/// A rule's TTL bounds the idle time of the flows it decides, and a TTL
/// longer than nanoseconds count saturates: 20 billion seconds once
/// wrapped to 49 years when turned into nanoseconds.
#[test]
fn rule_ttls_bound_idle_time_and_saturate() {
    use std::net::Ipv4Addr;
    use strata_engine::condition::{Condition, Field};
    use strata_engine::{ActionSpec, DefaultAction, Direction, Group, LayerSpec, Rule};
    let mut p = Port::new("ttl", PortConfig::default());
    let mut acl = LayerSpec::new("acl", DefaultAction::Allow, DefaultAction::Allow);
    acl.groups
        .push(Group::new("g", Direction::Out).with_rules(vec![
        Rule::new(
            "short",
            1,
            vec![Condition::exact(Field::DstPort, 53)],
            ActionSpec::Allow,
        )
        .ttl(5),
        Rule::new("long", 2, vec![], ActionSpec::Allow).ttl(20_000_000_000),
    ]));
    p.add_layer(acl, None).expect("layer");
    let to = |dp: u16| {
        udp(
            VM_MAC,
            VM_GW_MAC,
            VM_CA,
            Ipv4Addr::new(10, 9, 9, 9),
            4000,
            dp,
            b"x",
        )
    };
    for dp in [53, 54] {
        assert!(forwards(&mut p, Direction::Out, &to(dp), secs(1)));
    }
    assert_eq!(p.connection_count(), 2);
    p.expire(secs(7));
    assert_eq!(p.connection_count(), 1, "the 5 s rule's flow went idle");
    const YEAR: u64 = 365 * 24 * 3600;
    p.expire(secs(60 * YEAR));
    assert_eq!(p.connection_count(), 1, "the long rule's flow stays");
}
