//! Issue 3, engine level: a 50,000-rule ACL group is built off the datapath
//! (on another thread) while traffic keeps flowing through the port, then
//! swapped in at once. Every packet before the swap sees exactly the old
//! policy, every packet after it exactly the new one (no half-built table),
//! and established flows reconcile to the new policy on their next packet.

mod common;

use common::*;
use std::net::Ipv4Addr;
use std::sync::mpsc;
use strata_engine::action::ActionSpec;
use strata_engine::classifier::RuleMatch;
use strata_engine::policy::{Group, Rule};
use strata_engine::scenario::*;
use strata_engine::{Direction, DropReason, PortConfig, Verdict, rulegen};
use strata_packet::PacketBuf;

/// 50k generated ACL rules as *allow* rules (so the group cannot block by
/// accident), plus one high-priority block of TCP to 10.1.1.7:80.
fn big_group() -> Group {
    let mut rules: Vec<Rule> = rulegen::acl(50_000, 7)
        .into_iter()
        .enumerate()
        .map(
            |(
                i,
                RuleMatch {
                    priority,
                    conditions,
                },
            )| {
                Rule::new(
                    &format!("gen-{i}"),
                    priority + 10,
                    conditions,
                    ActionSpec::Allow,
                )
            },
        )
        .collect();
    rules.push(
        Rule::new(
            "block-peer-web",
            0,
            vec![
                strata_engine::Condition::new(
                    strata_engine::Field::DstIp,
                    vec![strata_engine::MatchValue::ip(
                        Ipv4Addr::new(10, 1, 1, 7).into(),
                    )],
                ),
                strata_engine::Condition::exact(strata_engine::Field::DstPort, 80),
            ],
            ActionSpec::Block,
        )
        .terminating(),
    );
    Group::new("bulk-acl", Direction::Out).with_rules(rules)
}

#[test]
fn replace_50k_rule_group_while_traffic_flows() {
    let mut p = four_layer_port(PortConfig::default(), 0).unwrap();
    install_mappings(&mut p, 2).unwrap();
    let peer = Ipv4Addr::new(10, 1, 1, 7);
    let run = |p: &mut strata_engine::Port, f: &[u8], now| {
        let mut b = PacketBuf::from_frame(f);
        p.process(Direction::Out, &mut b, now)
    };
    // An established flow that the new group will block.
    assert!(run(&mut p, &vm_tcp(peer, 40000, 80, SYN, 1, 0, b""), 1).is_forward());

    // Build the new group on another thread, against a snapshot of the
    // policy (the datapath never waits).
    let registry = p.registry().clone();
    let policy = p.policy().clone();
    let (tx, rx) = mpsc::channel();
    let builder = std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        let layer = policy.layer("acl").expect("acl layer");
        let prepared = big_group()
            .prepare_for(&registry, layer)
            .expect("valid group");
        tx.send((prepared, t0.elapsed())).expect("send");
    });

    // Traffic flows meanwhile, all under the old policy.
    let mut now = 2;
    let mut during = 0u32;
    let (prepared, build_time) = loop {
        match rx.try_recv() {
            Ok(x) => break x,
            Err(mpsc::TryRecvError::Empty) => {
                let sp = 41000 + (during % 20000) as u16;
                let v = run(&mut p, &vm_tcp(peer, sp, 80, SYN, 1, 0, b""), now);
                assert_eq!(v, Verdict::Forward, "old policy until the swap");
                assert!(run(&mut p, &vm_tcp(peer, 40000, 80, ACK, 2, 1, b"x"), now).is_forward());
                during += 1;
                now += 1;
            }
            Err(e) => panic!("builder died: {e}"),
        }
    };
    builder.join().expect("builder thread");
    eprintln!(
        "built 50,001-rule group off the datapath in {build_time:?} while {during} packets passed"
    );

    let generation = p.generation();
    p.install_group("acl", prepared).expect("install");
    assert!(p.generation() > generation);

    // The very next packet of the established flow sees the new policy.
    let v = run(&mut p, &vm_tcp(peer, 40000, 80, ACK, 2, 1, b"y"), now);
    assert_eq!(v.drop_reason(), Some(DropReason::RuleBlock));
    // New flows too; other traffic is still allowed by the generated rules
    // or the customer group.
    assert_eq!(
        run(&mut p, &vm_tcp(peer, 50000, 80, SYN, 1, 0, b""), now).drop_reason(),
        Some(DropReason::RuleBlock)
    );
    assert!(run(&mut p, &vm_tcp(peer, 50001, 443, SYN, 1, 0, b""), now).is_forward());
    let t = p
        .trace_frame(
            Direction::Out,
            &vm_tcp(peer, 50002, 80, SYN, 1, 0, b""),
            now,
        )
        .unwrap();
    assert!(t.to_string().contains("block-peer-web"), "{t}");
}
