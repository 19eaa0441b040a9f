//! Counter slots of rules and layers that leave the policy (VFP-22): a
//! controller that replaces groups with fresh rule ids must not grow the
//! port's counter arena for ever. A removed rule's slot is retired, still
//! counts what flows created before the change send, and is freed (then
//! reused) once no flow refers to it; a rule re-added under the same id
//! keeps its counts; all of it survives snapshot/restore.

mod common;

use common::*;
use std::net::Ipv4Addr;
use strata_engine::action::ActionSpec;
use strata_engine::policy::{Group, LayerSpec, Rule};
use strata_engine::scenario::{VM_CA, VM_GW_MAC, VM_MAC};
use strata_engine::{ActionRegistry, DefaultAction, Direction, Field, Port, PortConfig, secs};

const PEER: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 7);

fn meter_group(rule: &str) -> Group {
    Group::new("meter-out", Direction::Out).with_rules(vec![Rule::new(
        rule,
        10,
        vec![],
        ActionSpec::Meter {
            by: Field::DstIp,
            prefix_len: None,
        },
    )])
}

fn acl_group(rule: &str) -> Group {
    Group::new("acl-out", Direction::Out).with_rules(vec![
        Rule::new(rule, 10, vec![], ActionSpec::Allow).stateful(),
    ])
}

/// A meter layer and a stateful ACL layer (default block).
fn port() -> Port {
    let mut p = Port::new("reclaim", PortConfig::default());
    let meter = LayerSpec {
        groups: vec![meter_group("meter-0")],
        ..LayerSpec::new("meter", DefaultAction::Allow, DefaultAction::Allow)
    };
    let acl = LayerSpec {
        groups: vec![acl_group("allow-0")],
        ..LayerSpec::new("acl", DefaultAction::Block, DefaultAction::Block)
    };
    p.add_layer(meter, None).unwrap();
    p.add_layer(acl, None).unwrap();
    p
}

fn out_udp(sp: u16) -> Vec<u8> {
    udp(VM_MAC, VM_GW_MAC, VM_CA, PEER, sp, 53, b"query")
}

fn replace(p: &mut Port, round: u32) {
    p.set_group("acl", acl_group(&format!("allow-{round}")))
        .unwrap();
    p.set_group("meter", meter_group(&format!("meter-{round}")))
        .unwrap();
}

#[test]
fn replaced_rules_free_their_slots_and_the_arena_stays_bounded() {
    let mut p = port();
    assert!(forwards(&mut p, Direction::Out, &out_udp(1000), secs(1)));
    let capacity = p.counters().arena.capacity();
    for round in 1..=40u32 {
        replace(&mut p, round);
        // The connection's next packet reconciles to the new rules.
        let now = secs(1) + u64::from(round);
        assert!(forwards(&mut p, Direction::Out, &out_udp(1000), now));
        assert_eq!(p.expire(now), 0, "the connection stays");
    }
    let c = p.counters();
    assert_eq!(c.arena.retired(), 0, "nothing left to reclaim");
    assert!(
        c.arena.capacity() <= capacity + 4,
        "arena grew from {capacity} to {} slots over 40 replacements",
        c.arena.capacity()
    );
    // The current rules count the packet they decided; the old ones are gone.
    assert_eq!(c.rule("acl", "allow-40").packets, 1);
    assert_eq!(c.meter("meter", "meter-40").len(), 1);
    assert_eq!(c.meter("meter", "meter-40")["10.1.1.7"].packets, 1);
    for old in 0..40 {
        assert_eq!(c.rule("acl", &format!("allow-{old}")).packets, 0);
        assert!(c.meter("meter", &format!("meter-{old}")).is_empty());
    }
    // Names and counters still line up for every live slot.
    assert_eq!(c.arena.len(), c.arena.all().len());
}

#[test]
fn a_retired_slot_lives_while_a_flow_can_count_into_it() {
    let mut p = port();
    for i in 0..3 {
        assert!(forwards(
            &mut p,
            Direction::Out,
            &out_udp(2000),
            secs(1) + i
        ));
    }
    replace(&mut p, 1);
    // Pending fast-path counts land in the retired slots. The connection's
    // stateful ACL flow still names rule allow-0 (it is revalidated on the
    // next packet), so that slot stays; the meter rule's slot was only in
    // the (now stale) unified flow, so it is freed with its buckets.
    p.expire(secs(2));
    let c = p.counters();
    assert_eq!(c.rule("acl", "allow-0").packets, 3);
    assert_eq!(c.arena.retired(), 1);
    assert_eq!(c.rule("meter", "meter-0").packets, 0);
    assert!(c.meter("meter", "meter-0").is_empty());
    // A new name does not take the retired slot (it takes a freed one).
    let capacity = c.arena.capacity();
    p.set_group("acl", acl_group("allow-1b")).unwrap();
    p.set_group("acl", acl_group("allow-1c")).unwrap();
    p.set_group("meter", meter_group("meter-1b")).unwrap();
    assert_eq!(p.counters().arena.capacity(), capacity + 1);

    // The next packet reconciles (the ACL flow moves to the new rule);
    // after that nothing refers to the old rules and the sweep frees them.
    assert!(forwards(&mut p, Direction::Out, &out_udp(2000), secs(3)));
    p.expire(secs(3));
    let c = p.counters();
    assert_eq!(c.arena.retired(), 0);
    assert_eq!(c.rule("acl", "allow-0").packets, 0);
    assert_eq!(c.rule("acl", "allow-1c").packets, 1);
    assert_eq!(c.meter("meter", "meter-1b")["10.1.1.7"].packets, 1);
    assert_eq!(p.layer_flow_count("acl"), 1);
    // Freed slots are handed to the next new names first.
    let capacity = c.arena.capacity();
    replace(&mut p, 2);
    assert_eq!(p.counters().arena.capacity(), capacity);
}

#[test]
fn a_rule_re_added_before_the_sweep_keeps_its_counts() {
    let mut p = port();
    assert!(forwards(&mut p, Direction::Out, &out_udp(3000), secs(1)));
    p.remove_group("acl", "acl-out").unwrap();
    p.set_group("acl", acl_group("allow-0")).unwrap();
    assert!(forwards(&mut p, Direction::Out, &out_udp(3000), secs(2)));
    p.expire(secs(2));
    let c = p.counters();
    assert_eq!(c.arena.retired(), 0);
    assert_eq!(c.rule("acl", "allow-0").packets, 2);
}

#[test]
fn removed_layers_free_their_slots() {
    let mut p = port();
    assert!(forwards(&mut p, Direction::Out, &out_udp(4000), secs(1)));
    let before = p.counters();
    assert_eq!(before.layer("meter").packets, 1);
    p.remove_layer("meter").unwrap();
    // Only the connection's unified flow (stale now) named the layer's
    // slots: once its pending counts are added, they are freed.
    assert_eq!(p.expire(secs(1)), 0);
    let c = p.counters();
    assert_eq!(c.arena.retired(), 0);
    assert_eq!(c.layer("meter").packets, 0);
    assert!(c.meter("meter", "meter-0").is_empty());
    assert_eq!(c.arena.len(), before.arena.len() - 3, "layer, rule, bucket");
    assert_eq!(
        c.rule("acl", "allow-0").packets,
        1,
        "other layers untouched"
    );
    // Re-adding the layer reuses the freed slots.
    let meter = LayerSpec {
        groups: vec![meter_group("meter-9")],
        ..LayerSpec::new("meter", DefaultAction::Allow, DefaultAction::Allow)
    };
    p.add_layer(meter, Some(0)).unwrap();
    assert!(forwards(&mut p, Direction::Out, &out_udp(4000), secs(2)));
    let c = p.counters();
    assert_eq!(c.arena.capacity(), before.arena.capacity());
    assert_eq!(c.meter("meter", "meter-9")["10.1.1.7"].packets, 1);
    assert_eq!(c.layer("meter").packets, 1, "counts restart at zero");
}

#[test]
fn retired_and_free_slots_survive_snapshot_restore() {
    let mut p = port();
    assert!(forwards(&mut p, Direction::Out, &out_udp(5000), secs(1)));
    assert!(forwards(&mut p, Direction::Out, &out_udp(5001), secs(1)));
    replace(&mut p, 1);
    // One connection reconciles (its old slots could go); the other still
    // holds the old rules.
    assert!(forwards(&mut p, Direction::Out, &out_udp(5000), secs(2)));
    p.expire(secs(2));
    let before = p.counters();
    assert!(before.arena.retired() > 0);

    let mut q = Port::restore(&p.snapshot().unwrap(), ActionRegistry::default()).unwrap();
    let after = q.counters();
    assert_eq!(after.arena.all(), before.arena.all());
    assert_eq!(after.arena.retired(), before.arena.retired());
    assert_eq!(after.arena.capacity(), before.arena.capacity());

    // Both ports go on identically: the second connection reconciles, the
    // sweep frees the old rules, new names reuse the same slots.
    for port in [&mut p, &mut q] {
        assert!(forwards(port, Direction::Out, &out_udp(5001), secs(3)));
        port.expire(secs(3));
        replace(port, 2);
        assert!(forwards(port, Direction::Out, &out_udp(5001), secs(4)));
        port.expire(secs(4));
    }
    let (a, b) = (p.counters(), q.counters());
    // Connection 5000's ACL flow (not reconciled since) names allow-1.
    assert_eq!(a.arena.retired(), 1);
    assert_eq!(b.arena.retired(), 1);
    assert_eq!(a.arena.all(), b.arena.all());
    assert_eq!(a.arena.capacity(), b.arena.capacity());
    assert_eq!(a.rule("acl", "allow-2").packets, 1);
}

/// A meter rule keeps at most `MAX_METER_BUCKETS` buckets of its own; more
/// values share "other" and are not remembered one by one, so a VM
/// spraying destinations cannot grow the port's memory.
#[test]
fn meter_buckets_are_capped_per_rule() {
    use strata_engine::action::MAX_METER_BUCKETS;
    let mut p = port();
    let extra = 300u32;
    let n = MAX_METER_BUCKETS as u32 + extra;
    let mut buf = strata_packet::PacketBuf::with_capacity(256);
    for i in 0..n {
        let dst = Ipv4Addr::from(0x0b00_0000 + i);
        buf.reset(&udp(VM_MAC, VM_GW_MAC, VM_CA, dst, 1000, 53, b"q"));
        assert!(p.process(Direction::Out, &mut buf, secs(1)).is_forward());
    }
    let c = p.counters();
    let buckets = c.meter("meter", "meter-0");
    assert_eq!(buckets.len(), MAX_METER_BUCKETS + 1);
    assert_eq!(buckets["other"].packets, u64::from(extra));
    assert_eq!(buckets["11.0.0.0"].packets, 1);
    assert_eq!(c.arena.meter_values(), MAX_METER_BUCKETS);
    // Another meter rule (in a layer of its own) has a cap of its own.
    let by_port = LayerSpec {
        groups: vec![
            Group::new("meter-out", Direction::Out).with_rules(vec![Rule::new(
                "meter-port",
                10,
                vec![],
                ActionSpec::Meter {
                    by: Field::DstPort,
                    prefix_len: None,
                },
            )]),
        ],
        ..LayerSpec::new("meter2", DefaultAction::Allow, DefaultAction::Allow)
    };
    p.add_layer(by_port, Some(0)).unwrap();
    buf.reset(&udp(VM_MAC, VM_GW_MAC, VM_CA, PEER, 1000, 53, b"q"));
    assert!(p.process(Direction::Out, &mut buf, secs(2)).is_forward());
    let c = p.counters();
    assert_eq!(c.meter("meter2", "meter-port")["53"].packets, 1);
    assert_eq!(
        c.meter("meter", "meter-0")["other"].packets,
        u64::from(extra) + 1
    );
}

/// `expire_some` until a cycle ends.
fn expiry_cycle(p: &mut Port, now: u64) {
    for _ in 0..1000 {
        if p.expire_some(now, 2).cycle_ended {
            return;
        }
    }
    panic!("no cycle end");
}

/// Bounded expiry frees retired slots too, once a whole cycle has seen
/// that no flow counts into them.
#[test]
fn bounded_expiry_reclaims_after_a_full_cycle() {
    let mut p = port();
    for sp in [7000, 7001, 7002] {
        assert!(forwards(&mut p, Direction::Out, &out_udp(sp), secs(1)));
    }
    replace(&mut p, 1);
    for sp in [7000, 7001, 7002] {
        assert!(forwards(&mut p, Direction::Out, &out_udp(sp), secs(2)));
    }
    assert!(p.counters().arena.retired() > 0);
    expiry_cycle(&mut p, secs(2));
    let c = p.counters();
    assert_eq!(c.arena.retired(), 0);
    assert_eq!(c.rule("acl", "allow-0").packets, 0);
    assert_eq!(c.rule("acl", "allow-1").packets, 3);
}

fn two_rule_acl(web: &str, other: &str) -> Group {
    Group::new("acl-out", Direction::Out).with_rules(vec![
        Rule::new(
            web,
            5,
            vec![strata_engine::Condition::exact(Field::DstPort, 80)],
            ActionSpec::Allow,
        )
        .stateful(),
        Rule::new(other, 10, vec![], ActionSpec::Allow).stateful(),
    ])
}

/// A retirement during a cycle voids its marks: a connection made behind
/// the cursor, whose rule is then removed, still has packets to add to
/// that rule's slot; freeing the slot at the cycle's end would hand those
/// packets to whichever new name took it.
#[test]
fn a_retirement_during_a_cycle_voids_its_marks() {
    let mut p = port();
    p.set_group("acl", two_rule_acl("allow-web", "allow-other"))
        .unwrap();
    let udp_idle = PortConfig::default().udp_idle;
    // A (slot 0) idles out first; B and C (slots 1, 2) stay.
    assert!(forwards(&mut p, Direction::Out, &out_udp(7100), secs(1)));
    for sp in [7101, 7102] {
        assert!(forwards(&mut p, Direction::Out, &out_udp(sp), udp_idle));
    }
    let now = udp_idle + secs(2);
    // Retired slots waiting (the old meter rule): the next cycle marks.
    p.set_group("meter", meter_group("meter-1")).unwrap();
    let first = p.expire_some(now, 1);
    assert_eq!((first.examined, first.removed), (1, 1));
    // D takes A's slot, behind the cursor, with three packets pending for
    // rule allow-web.
    let web = udp(VM_MAC, VM_GW_MAC, VM_CA, PEER, 7103, 80, b"get");
    for _ in 0..3 {
        assert!(forwards(&mut p, Direction::Out, &web, now));
    }
    // allow-web leaves the policy before the cycle ends.
    p.set_group("acl", two_rule_acl("web-2", "other-2"))
        .unwrap();
    expiry_cycle(&mut p, now);
    // A new name after the cycle; then D's next packet adds its three
    // pending packets to allow-web's slot.
    p.set_group("meter", meter_group("meter-2")).unwrap();
    assert!(forwards(&mut p, Direction::Out, &web, now));
    let c = p.counters();
    assert_eq!(c.rule("acl", "allow-web").packets, 3);
    assert_eq!(c.rule("acl", "web-2").packets, 1);
    assert_eq!(c.rule("meter", "meter-2").packets, 1);
}

/// A group prepared on another thread against a policy snapshot installs
/// with the counter slots it found: a rule kept across the replacement
/// keeps counting.
#[test]
fn prepared_against_a_snapshot_keeps_counter_slots() {
    let mut p = port();
    assert!(forwards(&mut p, Direction::Out, &out_udp(8000), secs(1)));
    let (policy, registry) = (p.policy().clone(), p.registry().clone());
    let prepared = std::thread::spawn(move || {
        let layer = policy.layer("acl").expect("acl layer");
        acl_group("allow-0").prepare_for(&registry, layer)
    })
    .join()
    .expect("preparing thread")
    .expect("valid group");
    p.install_group("acl", prepared).unwrap();
    assert!(forwards(&mut p, Direction::Out, &out_udp(8000), secs(2)));
    assert_eq!(p.counters().rule("acl", "allow-0").packets, 2);
}

/// When the layer changed between preparing and installing, the port checks
/// the rule ids again: a clash made meanwhile is refused, nothing changes.
#[test]
fn a_layer_changed_since_preparing_is_checked_again() {
    let mut p = port();
    let policy = p.policy().clone();
    let prepared = Group::new("g2", Direction::Out)
        .with_rules(vec![Rule::new("dup", 1, vec![], ActionSpec::Allow)])
        .prepare_for(p.registry(), policy.layer("acl").expect("acl layer"))
        .expect("no clash yet");
    p.set_group(
        "acl",
        Group::new("g3", Direction::Out).with_rules(vec![Rule::new(
            "dup",
            1,
            vec![],
            ActionSpec::Allow,
        )]),
    )
    .unwrap();
    let generation = p.generation();
    assert!(matches!(
        p.install_group("acl", prepared),
        Err(strata_engine::ApiError::DuplicateRule { .. })
    ));
    assert_eq!(p.generation(), generation);
}

/// Slots found against a layer that changed since are not used: the one
/// found for `allow-0` was freed (its rule removed, nothing counting into
/// it) and handed to a new name before the install.
#[test]
fn slots_found_against_an_older_layer_are_looked_up_again() {
    let mut p = port();
    let policy = p.policy().clone();
    let prepared = acl_group("allow-0")
        .prepare_for(p.registry(), policy.layer("acl").expect("acl layer"))
        .expect("valid group");
    p.set_group("acl", acl_group("allow-1")).unwrap();
    p.expire(secs(1));
    assert_eq!(p.counters().arena.retired(), 0, "allow-0's slot freed");
    p.set_group("meter", meter_group("meter-new")).unwrap();
    p.install_group("acl", prepared).unwrap();
    assert!(forwards(&mut p, Direction::Out, &out_udp(8100), secs(2)));
    let c = p.counters();
    assert_eq!(c.rule("acl", "allow-0").packets, 1);
    assert_eq!(c.rule("meter", "meter-new").packets, 1);
}

/// Twin ports under the same random traffic, policy changes and clock: one
/// maintained with `expire`, the other with `expire_some` of random budgets
/// (two cycles at each maintenance time, so every slot is examined at that
/// time). Every verdict, the live state and the current rules' counters
/// stay the same, and the bounded one's arena stays as small.
#[test]
fn bounded_and_whole_table_expiry_agree_under_churn() {
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let (mut a, mut b) = (port(), port());
    let mut now = secs(1);
    let mut round = 0;
    for _ in 0..3000 {
        match next(10) {
            0..=5 => {
                let f = out_udp(9000 + next(60) as u16);
                assert_eq!(
                    run(&mut a, Direction::Out, &f, now),
                    run(&mut b, Direction::Out, &f, now)
                );
            }
            6 => {
                round += 1;
                replace(&mut a, round);
                replace(&mut b, round);
            }
            7 => now += secs(next(40)),
            _ => {
                let removed = a.expire(now);
                let mut removed_b = 0;
                for _ in 0..2 {
                    loop {
                        let p = b.expire_some(now, 1 + next(9) as usize);
                        removed_b += p.removed;
                        if p.cycle_ended {
                            break;
                        }
                    }
                }
                assert_eq!(removed_b, removed, "at {now}");
            }
        }
        // Shared flow parts are counted exactly and bounded by the flows.
        for p in [&a, &b] {
            p.verify_flow_state().expect("reference counts");
            let (contexts, lists) = p.shared_flow_parts();
            let flows = p.unified_flow_count();
            assert!(
                contexts <= flows && lists <= flows,
                "{contexts} {lists} {flows}"
            );
        }
    }
    a.expire(now);
    for _ in 0..2 {
        while !b.expire_some(now, 5).cycle_ended {}
    }
    assert_eq!(a.connection_count(), b.connection_count());
    assert_eq!(a.layer_flow_count("acl"), b.layer_flow_count("acl"));
    let (ca, cb) = (a.counters(), b.counters());
    assert_eq!(ca.dir, cb.dir);
    assert_eq!(ca.flows, cb.flows);
    let (r, m) = (format!("allow-{round}"), format!("meter-{round}"));
    assert_eq!(ca.rule("acl", &r), cb.rule("acl", &r));
    assert_eq!(ca.meter("meter", &m), cb.meter("meter", &m));
    assert!(round > 100, "{round} replacements");
    assert!(ca.flows.connections_expired > 500, "{:?}", ca.flows);
    assert!(cb.arena.capacity() <= ca.arena.capacity() + 8);
    assert!(ca.arena.capacity() < 40, "{} slots", ca.arena.capacity());
    // With every flow gone, so is every shared part.
    let later = now + secs(100_000);
    a.expire(later);
    while !b.expire_some(later, 7).cycle_ended {}
    for p in [&a, &b] {
        assert_eq!(p.connection_count(), 0);
        assert_eq!(p.shared_flow_parts(), (0, 0));
        p.verify_flow_state().expect("reference counts");
    }
}
