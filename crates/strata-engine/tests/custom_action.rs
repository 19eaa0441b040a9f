//! Actions plug in through the `Action` trait (VFP-5): a custom action is
//! registered by name, compiled from a rule's parameters, runs per new flow,
//! keeps per-flow state, and is torn down when the flow ends — with no
//! engine change. Snapshots name it, so restoring needs it registered.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use strata_engine::action::{Action, ActionCx, ActionOutput, ActionRegistry, ActionSpec};
use strata_engine::policy::{Group, LayerSpec, Rule};
use strata_engine::resource::{ActionState, Resources};
use strata_engine::{ApiError, DefaultAction, Direction, Port, PortConfig, Verdict, secs};
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
