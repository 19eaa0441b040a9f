//! Actions plug in through the `Action` trait (VFP-5): a custom action is
//! registered by name, compiled from a rule's parameters, runs per new flow,
//! keeps per-flow state, and is torn down when the flow ends — with no
//! engine change. Snapshots name it, so restoring needs it registered.
//! An action that declares a fixed verdict (`Action::fixed_verdict`, as
//! the built-in allow and block do) is not called for stateless rules,
//! which still count and trace like any other.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use strata_engine::action::{Action, ActionCx, ActionOutput, ActionRegistry, ActionSpec};
use strata_engine::policy::{Group, LayerSpec, Rule};
use strata_engine::resource::{ActionState, Resources};
use strata_engine::trace::LayerDecision;
use strata_engine::{
    ApiError, Condition, DefaultAction, Direction, DropReason, Field, Port, PortConfig, Verdict,
    secs,
};
use strata_packet::{MacAddr, PacketBuf, Transposition};

/// Marks DSCP by destination port class; counts flows it tore down.
#[derive(Debug)]
struct ClassMark {
    dscp: u8,
    torn_down: Arc<AtomicUsize>,
}

impl Action for ClassMark {
    fn process(&self, cx: &mut ActionCx<'_>) -> ActionOutput {
        let mut out = ActionOutput::allow(Transposition {
            dscp: Some(self.dscp),
            ..Transposition::default()
        });
        if !cx.dry_run {
            out.state = ActionState::Custom(cx.flow.inner.dst_port.to_be_bytes().to_vec());
        }
        out
    }

    fn teardown(&self, state: &ActionState, _resources: &mut Resources) {
        if matches!(state, ActionState::Custom(b) if b.len() == 2) {
            self.torn_down.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn registry(torn_down: Arc<AtomicUsize>) -> ActionRegistry {
    let mut r = ActionRegistry::default();
    r.register(
        "class-mark",
        Arc::new(move |params: &BTreeMap<String, String>| {
            let dscp: u8 = params
                .get("dscp")
                .ok_or("missing parameter dscp")?
                .parse()
                .map_err(|e| format!("dscp: {e}"))?;
            Ok(Arc::new(ClassMark {
                dscp,
                torn_down: torn_down.clone(),
            }) as Arc<dyn Action>)
        }),
    );
    r
}

fn layer(dscp: &str) -> LayerSpec {
    let mut l = LayerSpec::new("qos", DefaultAction::Allow, DefaultAction::Allow);
    l.groups
        .push(Group::new("g", Direction::Out).with_rules(vec![
        Rule::new(
            "mark",
            1,
            vec![],
            ActionSpec::Custom {
                name: "class-mark".into(),
                params: [("dscp".to_string(), dscp.to_string())].into(),
            },
        )
        .stateful(),
    ]));
    l
}

#[test]
fn custom_action_runs_keeps_state_and_tears_down() {
    let torn = Arc::new(AtomicUsize::new(0));
    let mut p = Port::with_registry("c", PortConfig::default(), registry(torn.clone()));
    assert!(matches!(
        p.add_layer(layer("nope"), None),
        Err(ApiError::InvalidAction { .. })
    ));
    p.add_layer(layer("34"), None).unwrap();

    let (a, b) = (MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2]));
    let frame = tcp(
        a,
        b,
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        1000,
        443,
        SYN,
        1,
        0,
        b"",
    );
    let mut buf = PacketBuf::from_frame(&frame);
    assert_eq!(
        p.process(Direction::Out, &mut buf, secs(1)),
        Verdict::Forward
    );
    assert_eq!(decode(buf.as_slice()).inner.dscp, 34);
    assert_eq!(p.layer_flow_count("qos"), 1);

    // A snapshot restores only where the action is registered.
    let snap = p.snapshot().unwrap();
    assert!(matches!(
        Port::restore(&snap, ActionRegistry::default()),
        Err(ApiError::UnknownAction(_))
    ));
    let mut q = Port::restore(&snap, registry(torn.clone())).unwrap();
    let mut buf = PacketBuf::from_frame(&frame);
    assert_eq!(
        q.process(Direction::Out, &mut buf, secs(2)),
        Verdict::Forward
    );
    assert_eq!(decode(buf.as_slice()).inner.dscp, 34);

    // Half-open flow expires: the action's teardown sees its state.
    assert_eq!(p.expire(secs(60)), 1);
    assert_eq!(torn.load(Ordering::SeqCst), 1);
    assert_eq!(p.layer_flow_count("qos"), 0);
}

/// Blocks everything, says so through `fixed_verdict`, and counts its calls.
#[derive(Debug)]
struct CountedBlock {
    calls: Arc<AtomicUsize>,
}

impl Action for CountedBlock {
    fn process(&self, _cx: &mut ActionCx<'_>) -> ActionOutput {
        self.calls.fetch_add(1, Ordering::SeqCst);
        ActionOutput::drop(DropReason::RuleBlock)
    }

    fn fixed_verdict(&self) -> Option<Result<(), DropReason>> {
        Some(Err(DropReason::RuleBlock))
    }
}

fn udp_from(sp: u16) -> Vec<u8> {
    udp(
        MacAddr([2, 0, 0, 0, 0, 1]),
        MacAddr([2, 0, 0, 0, 0, 2]),
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        sp,
        53,
        b"query",
    )
}

/// A rule whose action declares a fixed verdict is decided without a call
/// (stateless, or a block whatever its flag); its counters and drops are
/// those of any rule.
#[test]
fn fixed_verdict_actions_are_not_called() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut r = ActionRegistry::default();
    let c = calls.clone();
    r.register(
        "counted-block",
        Arc::new(move |_: &BTreeMap<String, String>| {
            Ok(Arc::new(CountedBlock { calls: c.clone() }) as Arc<dyn Action>)
        }),
    );
    let mut p = Port::with_registry("f", PortConfig::default(), r);
    let spec = ActionSpec::Custom {
        name: "counted-block".into(),
        params: BTreeMap::new(),
    };
    let mut l = LayerSpec::new("acl", DefaultAction::Allow, DefaultAction::Allow);
    l.groups
        .push(Group::new("g", Direction::Out).with_rules(vec![
        Rule::new("stateless", 1, vec![Condition::exact(Field::SrcPort, 1000)], spec.clone()),
        Rule::new("stateful", 1, vec![Condition::exact(Field::SrcPort, 2000)], spec).stateful(),
    ]));
    p.add_layer(l, None).unwrap();
    for sp in [1000, 1000, 2000] {
        assert!(!forwards(&mut p, Direction::Out, &udp_from(sp), secs(1)));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let c = p.counters();
    assert_eq!(c.rule("acl", "stateless").drops, 2);
    assert_eq!(c.rule("acl", "stateful").drops, 1);
    assert_eq!(c.drops_for(DropReason::RuleBlock), 3);
}

/// Stateless allow and block rules (decided on the slow path without an
/// action call) count their packets and drops like any other rule, on the
/// first packet and on the unified flow's later ones, and a trace still
/// names them.
#[test]
fn stateless_allow_and_block_rules_count() {
    let mut p = Port::new("stateless", PortConfig::default());
    let acl = LayerSpec {
        groups: vec![Group::new("acl-out", Direction::Out).with_rules(vec![
            Rule::new(
                "block-from-1000",
                5,
                vec![Condition::exact(Field::SrcPort, 1000)],
                ActionSpec::Block,
            ),
            Rule::new("allow-rest", 10, vec![], ActionSpec::Allow),
        ])],
        ..LayerSpec::new("acl", DefaultAction::Block, DefaultAction::Block)
    };
    p.add_layer(acl, None).unwrap();
    for i in 0..3 {
        assert!(forwards(
            &mut p,
            Direction::Out,
            &udp_from(2000),
            secs(1 + i)
        ));
    }
    for i in 0..2 {
        assert!(!forwards(
            &mut p,
            Direction::Out,
            &udp_from(1000),
            secs(1 + i)
        ));
    }
    let c = p.counters();
    assert_eq!(c.rule("acl", "allow-rest").packets, 3);
    assert_eq!(c.rule("acl", "allow-rest").drops, 0);
    assert_eq!(c.rule("acl", "block-from-1000").drops, 2);
    assert_eq!(c.layer("acl").packets, 3);
    assert_eq!(c.layer("acl").drops, 2);
    let ufid = strata_packet::parse(&udp_from(2000)).expect("parses").ufid;
    let t = p.trace(Direction::Out, &ufid, secs(5));
    assert!(
        matches!(&t.layers[0].decision, LayerDecision::Rule { rule, .. } if rule == "allow-rest"),
        "{t}"
    );
}
