//! Lazy reconciliation (VFP-13), NAT affinity, snapshot/restore (VFP-20),
//! transactional API errors, and traces (VFP-23).

mod common;

use common::*;
use std::net::{IpAddr, Ipv4Addr};
use strata_engine::action::ActionSpec;
use strata_engine::condition::{Condition, Field, MatchValue};
use strata_engine::policy::{Group, LayerSpec, Rule};
use strata_engine::scenario::*;
use strata_engine::trace::LayerDecision;
use strata_engine::{
    ActionRegistry, ApiError, DefaultAction, Direction, DropReason, Port, PortConfig, Verdict, secs,
};

fn port() -> Port {
    let mut p = four_layer_port(PortConfig::default(), 0).unwrap();
    install_mappings(&mut p, 2).unwrap();
    p
}

const PEER: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 7);
const WEB: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);

fn block_peer_group() -> Group {
    Group::new("infra-out", Direction::Out).with_rules(vec![
        Rule::new(
            "infra-block-peer",
            5,
            vec![Condition::new(
                Field::DstIp,
                vec![MatchValue::ip(IpAddr::V4(PEER))],
            )],
            ActionSpec::Block,
        )
        .terminating(),
        Rule::new("infra-allow-out", 1000, vec![], ActionSpec::Allow),
    ])
}

#[test]
fn rule_change_mid_connection_applies_to_the_next_packet_both_ways() {
    let mut p = port();
    assert!(forwards(
        &mut p,
        Direction::Out,
        &vm_tcp(PEER, 40000, 80, SYN, 1, 0, b""),
        1
    ));
    assert!(forwards(
        &mut p,
        Direction::In,
        &peer_tcp(1, 7, 80, 40000, SYN | ACK, 9, 2, b""),
        2
    ));
    assert!(forwards(
        &mut p,
        Direction::Out,
        &vm_tcp(PEER, 40000, 80, ACK, 2, 10, b""),
        3
    ));
    let gen_before = p.generation();

    // The infra controller blocks the peer: the very next packet, on the
    // fast path's cached flow, is re-simulated and dropped.
    p.set_group("acl", block_peer_group()).unwrap();
    assert!(p.generation() > gen_before);
    let (v, _) = run(
        &mut p,
        Direction::Out,
        &vm_tcp(PEER, 40000, 80, ACK, 2, 10, b"x"),
        4,
    );
    assert_eq!(v.drop_reason(), Some(DropReason::RuleBlock));
    // The return direction's stateful allow no longer stands either.
    let (v, _) = run(
        &mut p,
        Direction::In,
        &peer_tcp(1, 7, 80, 40000, ACK, 10, 3, b"y"),
        5,
    );
    assert_eq!(v.drop_reason(), Some(DropReason::DefaultBlock));
    assert!(p.counters().direction(Direction::Out).reconciled >= 1);
    assert!(p.counters().direction(Direction::In).reconciled >= 1);

    // Unblock: traffic of a new connection flows again.
    p.set_group(
        "acl",
        Group::new("infra-out", Direction::Out).with_rules(vec![Rule::new(
            "infra-allow-out",
            1000,
            vec![],
            ActionSpec::Allow,
        )]),
    )
    .unwrap();
    assert!(forwards(
        &mut p,
        Direction::Out,
        &vm_tcp(PEER, 40001, 80, SYN, 1, 0, b""),
        6
    ));
}

#[test]
fn nat_affinity_survives_unrelated_changes() {
    let mut p = port();
    // An SNAT connection and a load-balanced connection.
    let (_, out) = run(
        &mut p,
        Direction::Out,
        &vm_tcp(WEB, 40000, 443, SYN, 1, 0, b""),
        1,
    );
    let nat_port = decode_sent(&out).inner.sp;
    let client = Ipv4Addr::new(198, 51, 100, 7);
    let lb = |sp: u16, flags: u8| {
        vxlan(
            GW_MAC,
            HOST_MAC,
            MUX_PA,
            HOST_PA,
            VNI,
            &tcp(GW_MAC, VM_MAC, client, VIP, sp, 80, flags, 1, 0, b""),
        )
    };
    let (_, out) = run(&mut p, Direction::In, &lb(5555, SYN), 1);
    assert_eq!(decode_sent(&out).inner.dst, VM_CA);

    // Unrelated changes: a new ACL group rule set, a mapping update, and the
    // LB pool moving to another backend.
    p.set_group("acl", block_peer_group()).unwrap();
    p.set_mapping(
        MAPPING,
        IpAddr::V4(Ipv4Addr::new(10, 1, 1, 99)),
        mapping_for(1, 99),
    )
    .unwrap();
    let other_dip = Ipv4Addr::new(10, 1, 0, 5);
    p.set_backend_pool(
        LB_POOL,
        vec![strata_engine::Backend {
            ip: IpAddr::V4(other_dip),
            port: Some(DIP_PORT),
        }],
    )
    .unwrap();

    // Existing connections keep their NAT state.
    let (v, out) = run(
        &mut p,
        Direction::Out,
        &vm_tcp(WEB, 40000, 443, ACK, 2, 5, b"a"),
        2,
    );
    assert!(v.is_forward());
    assert_eq!(decode_sent(&out).inner.sp, nat_port, "SNAT port kept");
    let (v, out) = run(&mut p, Direction::In, &lb(5555, ACK), 2);
    assert!(v.is_forward());
    assert_eq!(
        decode_sent(&out).inner.dst,
        VM_CA,
        "existing LB connection keeps its DIP"
    );
    // A new connection gets the new backend.
    let (_, out) = run(&mut p, Direction::In, &lb(5556, SYN), 2);
    assert_eq!(
        decode_sent(&out).inner.dst,
        other_dip,
        "new connections use the new pool"
    );
    assert_eq!(p.resources().port_pools[SNAT_POOL].in_use(), 1);
}

#[test]
fn snapshot_restore_processes_identically() {
    let mut a = port();
    let mut frames = Vec::new();
    for i in 0..50u16 {
        frames.push((Direction::Out, vm_tcp(PEER, 41000 + i, 80, SYN, 1, 0, b"")));
        frames.push((Direction::Out, vm_tcp(WEB, 42000 + i, 443, SYN, 1, 0, b"")));
    }
    for (d, f) in &frames {
        run(&mut a, *d, f, secs(1));
    }
    let bytes = a.snapshot().unwrap();
    let mut b = Port::restore(&bytes, ActionRegistry::default()).unwrap();
    assert_eq!(b.connection_count(), a.connection_count());
    assert_eq!(b.layer_flow_count("slb"), a.layer_flow_count("slb"));
    assert_eq!(b.layer_specs(), a.layer_specs());

    // Next packets of existing connections (fast path) and new connections
    // (slow path, SNAT allocation order) give identical bytes and verdicts.
    let mut next = Vec::new();
    for i in 0..50u16 {
        next.push((
            Direction::Out,
            vm_tcp(PEER, 41000 + i, 80, ACK, 2, 9, b"data"),
        ));
        next.push((
            Direction::Out,
            vm_tcp(WEB, 42000 + i, 443, ACK, 2, 9, b"data"),
        ));
        next.push((Direction::Out, vm_tcp(WEB, 43000 + i, 443, SYN, 1, 0, b"")));
        next.push((Direction::Out, vm_tcp(PEER, 25000 + i, 25, SYN, 1, 0, b"")));
    }
    for (d, f) in &next {
        let ra = run(&mut a, *d, f, secs(2));
        let rb = run(&mut b, *d, f, secs(2));
        assert_eq!(ra, rb);
    }
    assert_eq!(
        a.counters().direction(Direction::Out),
        b.counters().direction(Direction::Out)
    );
    assert_eq!(a.counters().drops, b.counters().drops);
    assert_eq!(a.counters().arena.all(), b.counters().arena.all());
    assert_eq!(a.unified_flow_count(), b.unified_flow_count());
    assert_eq!(
        a.resources().port_pools[SNAT_POOL].in_use(),
        b.resources().port_pools[SNAT_POOL].in_use()
    );
    // Corrupt or foreign input is a clear error.
    assert!(matches!(
        Port::restore(&bytes[..bytes.len() / 2], ActionRegistry::default()),
        Err(ApiError::Snapshot(_))
    ));
    assert!(matches!(
        Port::restore(b"hello", ActionRegistry::default()),
        Err(ApiError::Snapshot(_))
    ));
    // Format versions before the oldest this build reads, and versions
    // from the future, are refused by name, not misread.
    let mut env: strata_engine::snapshot::Envelope = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(env.version, strata_engine::snapshot::VERSION);
    let unread = (1..strata_engine::snapshot::OLDEST_READ)
        .chain([strata_engine::snapshot::VERSION + 1, u32::MAX]);
    for version in unread {
        env.version = version;
        let old = postcard::to_allocvec(&env).unwrap();
        match Port::restore(&old, ActionRegistry::default()) {
            Err(ApiError::Snapshot(m)) => {
                assert!(m.contains(&format!("version {version}")), "{m}")
            }
            other => panic!(
                "version {version} snapshot accepted: {:?}",
                other.map(|p| p.name().to_string())
            ),
        }
    }
}

#[test]
fn bad_api_calls_return_typed_errors_and_change_nothing() {
    let mut p = port();
    run(
        &mut p,
        Direction::Out,
        &vm_tcp(PEER, 40000, 80, SYN, 1, 0, b""),
        1,
    );
    let before = p.snapshot().unwrap();
    let generation = p.generation();

    assert!(matches!(
        p.add_layer(
            LayerSpec::new("acl", DefaultAction::Allow, DefaultAction::Allow),
            None
        ),
        Err(ApiError::LayerExists(_))
    ));
    assert!(matches!(
        p.add_layer(
            LayerSpec::new("x", DefaultAction::Allow, DefaultAction::Allow),
            Some(9)
        ),
        Err(ApiError::BadPosition { .. })
    ));
    assert!(matches!(
        p.add_layer(
            LayerSpec::new("bad id!", DefaultAction::Allow, DefaultAction::Allow),
            None
        ),
        Err(ApiError::BadId(_))
    ));
    assert!(matches!(
        p.remove_layer("nope"),
        Err(ApiError::NoSuchLayer(_))
    ));
    assert!(matches!(
        p.remove_group("acl", "nope"),
        Err(ApiError::NoSuchGroup { .. })
    ));
    // A group whose last rule is invalid: nothing of it is applied.
    let bad = Group::new("customer-out", Direction::Out).with_rules(vec![
        Rule::new("ok", 1, vec![], ActionSpec::Block),
        Rule::new(
            "bad",
            2,
            vec![Condition::new(
                Field::DstPort,
                vec![MatchValue::Range { lo: 9, hi: 3 }],
            )],
            ActionSpec::Allow,
        ),
    ]);
    assert!(matches!(
        p.set_group("acl", bad),
        Err(ApiError::InvalidCondition { .. })
    ));
    let dup = Group::new("g2", Direction::Out).with_rules(vec![Rule::new(
        "allow-out",
        1,
        vec![],
        ActionSpec::Allow,
    )]);
    assert!(matches!(
        p.set_group("acl", dup),
        Err(ApiError::DuplicateRule { .. })
    ));
    let unknown = Group::new("g3", Direction::Out).with_rules(vec![Rule::new(
        "c",
        1,
        vec![],
        ActionSpec::Custom {
            name: "nope".into(),
            params: Default::default(),
        },
    )]);
    assert!(matches!(
        p.set_group("acl", unknown),
        Err(ApiError::UnknownAction(_))
    ));
    let stateless_snat = Group::new("g4", Direction::Out).with_rules(vec![Rule::new(
        "s",
        1,
        vec![],
        ActionSpec::Snat {
            pool: SNAT_POOL.into(),
        },
    )]);
    assert!(matches!(
        p.set_group("slb", stateless_snat),
        Err(ApiError::InvalidAction { .. })
    ));
    // The same checks for groups large enough to be prepared on two
    // threads (the rule-id check and counter look-ups run beside the
    // classifier build).
    let big = |extra: Rule| {
        let mut g = generated_acl_group(strata_engine::policy::PARALLEL_PREPARE_MIN, 5, "big-");
        g.id = "g-big".into();
        g.rules.push(extra);
        g
    };
    assert!(matches!(
        p.set_group(
            "acl",
            big(Rule::new("allow-out", 1, vec![], ActionSpec::Allow))
        ),
        Err(ApiError::DuplicateRule { .. })
    ));
    assert!(matches!(
        p.set_group("acl", big(Rule::new("big-7", 1, vec![], ActionSpec::Allow))),
        Err(ApiError::DuplicateRule { .. })
    ));
    assert!(matches!(
        p.set_group("nope", big(Rule::new("x", 1, vec![], ActionSpec::Allow))),
        Err(ApiError::NoSuchLayer(_))
    ));
    assert!(matches!(
        p.set_group(
            "nope",
            big(Rule::new(
                "x",
                1,
                vec![Condition::new(
                    Field::DstPort,
                    vec![MatchValue::Range { lo: 9, hi: 3 }],
                )],
                ActionSpec::Allow
            ))
        ),
        Err(ApiError::InvalidCondition { .. })
    ));
    assert!(matches!(
        p.set_mapping("nope", IpAddr::V4(PEER), mapping_for(1, 7)),
        Err(ApiError::NoSuchResource(_))
    ));
    assert!(matches!(
        p.add_port_pool(SNAT_POOL, IpAddr::V4(VIP), vec![(1, 2)]),
        Err(ApiError::ResourceExists(_))
    ));
    assert!(matches!(
        p.add_port_pool("p2", IpAddr::V4(VIP), vec![(10, 5)]),
        Err(ApiError::InvalidResource { .. })
    ));

    assert_eq!(p.generation(), generation);
    assert!(p.snapshot().unwrap() == before, "state exactly as it was");
}

#[test]
fn trace_shows_each_layer_and_changes_nothing() {
    let mut p = port();
    let before = p.snapshot().unwrap();
    let f = vm_tcp(WEB, 40000, 443, SYN, 1, 0, b"");
    let t = p.trace_frame(Direction::Out, &f, 1).unwrap();
    assert_eq!(t.verdict, Verdict::Forward);
    let names: Vec<_> = t.layers.iter().map(|l| l.layer.as_str()).collect();
    assert_eq!(names, ["meter", "acl", "slb", "vnet"]);
    assert!(
        matches!(&t.layers[2].decision, LayerDecision::Rule { rule, stateful: true, .. } if rule == "snat-internet")
    );
    assert!(
        t.transposition.contains("src_ip=203.0.113.10"),
        "{}",
        t.transposition
    );
    assert!(p.snapshot().unwrap() == before, "a trace changes nothing");
    // Inbound traces run bottom to top; a blocked one names the layer.
    let t = p
        .trace_frame(Direction::In, &peer_tcp(1, 7, 3333, 22, SYN, 1, 0, b""), 1)
        .unwrap();
    let names: Vec<_> = t.layers.iter().map(|l| l.layer.as_str()).collect();
    assert_eq!(names, ["vnet", "slb", "acl"]);
    assert_eq!(t.verdict.drop_reason(), Some(DropReason::DefaultBlock));
    assert!(t.to_string().contains("DROP default-block"));
}

#[test]
fn layers_inserted_and_removed_at_runtime() {
    let mut p = port();
    assert!(forwards(
        &mut p,
        Direction::Out,
        &vm_tcp(PEER, 40000, 80, SYN, 1, 0, b""),
        1
    ));
    // A new layer at the VM side that marks DSCP 46 on everything outbound.
    let mut spec = LayerSpec::new("qos", DefaultAction::Allow, DefaultAction::Allow);
    spec.groups
        .push(Group::new("mark", Direction::Out).with_rules(vec![mark_dscp("ef", 1, 46)]));
    p.add_layer(spec, Some(0)).unwrap();
    assert_eq!(p.layer_ids(), ["qos", "meter", "acl", "slb", "vnet"]);
    let (_, out) = run(
        &mut p,
        Direction::Out,
        &vm_tcp(PEER, 40000, 80, ACK, 2, 2, b""),
        2,
    );
    assert_eq!(
        decode_sent(&out).inner.dscp,
        46,
        "the new layer applies to the existing flow's next packet"
    );
    p.remove_layer("qos").unwrap();
    let (_, out) = run(
        &mut p,
        Direction::Out,
        &vm_tcp(PEER, 40000, 80, ACK, 2, 2, b""),
        3,
    );
    assert_eq!(decode_sent(&out).inner.dscp, 0);
}

#[test]
fn removals_and_defaults_reconcile_and_emit_failures_are_counted() {
    let mut p = port();
    let peer_key = |sp| vm_tcp(PEER, sp, 80, SYN, 1, 0, b"");
    assert!(forwards(&mut p, Direction::Out, &peer_key(40000), 1));
    // Removing the peer's mapping: the cached flow reconciles to a miss.
    p.remove_mapping(MAPPING, PEER.into()).unwrap();
    let (v, _) = run(&mut p, Direction::Out, &peer_key(40000), 2);
    assert_eq!(v.drop_reason(), Some(DropReason::MappingMiss));
    // With both outbound groups gone, the ACL's default decides: block.
    p.remove_group("acl", "customer-out").unwrap();
    p.remove_group("acl", "infra-out").unwrap();
    let (v, _) = run(
        &mut p,
        Direction::Out,
        &vm_tcp(WEB, 40001, 443, SYN, 1, 0, b""),
        3,
    );
    assert_eq!(v.drop_reason(), Some(DropReason::DefaultBlock));
    // Opening the ACL's outbound default lets it through again.
    p.set_layer_defaults("acl", DefaultAction::Allow, DefaultAction::Block)
        .unwrap();
    assert!(forwards(
        &mut p,
        Direction::Out,
        &vm_tcp(WEB, 40001, 443, SYN, 1, 0, b""),
        4
    ));

    // An IPv4 SNAT applied to an IPv6 flow cannot be emitted: a counted
    // drop, the frame is not forwarded.
    let v6 = {
        let b = etherparse::PacketBuilder::ethernet2(VM_MAC.0, VM_GW_MAC.0)
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(1000, 443, 1, 1000)
            .syn();
        let mut out = Vec::new();
        b.write(&mut out, b"").unwrap();
        out
    };
    let mut q = Port::new("v6", PortConfig::default());
    let mut l = LayerSpec::new("nat", DefaultAction::Allow, DefaultAction::Allow);
    l.groups
        .push(Group::new("g", Direction::Out).with_rules(vec![Rule::new(
            "v4-nat",
            1,
            vec![],
            ActionSpec::Nat {
                src_ip: Some(VIP.into()),
                dst_ip: None,
                src_port: None,
                dst_port: None,
            },
        )]));
    q.add_layer(l, None).unwrap();
    let (v, _) = run(&mut q, Direction::Out, &v6, 1);
    assert_eq!(v.drop_reason(), Some(DropReason::EmitFailed));
    assert_eq!(q.drops(DropReason::EmitFailed), 1);
}

/// A flow re-simulated after a policy change stays the connection's flow,
/// keyed as before: the packet after the reconciling one hits the fast
/// path (no second slow path, no new connection), whether the change gave
/// it a new action (forward → drop, drop → forward) or kept it.
#[test]
fn reconciled_flows_keep_their_keys() {
    let mut p = port();
    let syn = vm_tcp(PEER, 40000, 80, SYN, 1, 0, b"");
    assert!(forwards(&mut p, Direction::Out, &syn, 1));
    let conns = p.connection_count();
    let mut t = 2;
    let mut step = |p: &mut Port, group: Group, want_drop: bool| {
        p.set_group("acl", group).unwrap();
        let before = p.direction_counters(Direction::Out);
        for i in 0..2 {
            t += 1;
            let (v, _) = run(p, Direction::Out, &syn, t);
            assert_eq!(v.drop_reason().is_some(), want_drop, "packet {i}: {v:?}");
        }
        let after = p.direction_counters(Direction::Out);
        assert_eq!(after.slow_path, before.slow_path, "both found the flow");
        assert_eq!(after.reconciled, before.reconciled + 1, "reconciled once");
        assert_eq!(after.fast_path, before.fast_path + 2);
        assert_eq!(p.connection_count(), conns);
    };
    step(&mut p, block_peer_group(), true);
    let allow = || {
        Group::new("infra-out", Direction::Out).with_rules(vec![Rule::new(
            "infra-allow-out",
            1000,
            vec![],
            ActionSpec::Allow,
        )])
    };
    step(&mut p, allow(), false);
    // Same action, another rule id: the flow keeps its action.
    step(
        &mut p,
        Group::new("infra-out", Direction::Out).with_rules(vec![Rule::new(
            "infra-allow-out-2",
            1000,
            vec![],
            ActionSpec::Allow,
        )]),
        false,
    );
}
