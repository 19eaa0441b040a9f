//! Connections through more stateful layers than their slot holds layer
//! flows for inline (two): the rest of each list lives in the flow
//! table's overflow blocks. Such lists survive a snapshot (stored as plain
//! sequences, as before the blocks), every flow is let go of when its
//! connection ends, and the blocks are reused.

#[path = "common/mod.rs"]
mod common;
use common::*;
use strata_engine::port::parse_options;
use strata_engine::scenario::*;
use strata_engine::{
    ActionRegistry, ActionSpec, DefaultAction, Direction, Group, LayerSpec, Port, PortConfig, Rule,
    secs,
};
use strata_packet::parse::parse_with;

/// Stateful layers a connection to a VNET peer passes: the ACL (the SLB
/// NAT's stateful rules are for its VIP and the internet) and nine that
/// track everything outbound: ten layer flows a connection, two inline
/// and eight in two overflow blocks.
const TRACKED: [&str; 10] = ["t0", "t1", "t2", "t3", "t4", "acl", "t5", "t6", "t7", "t8"];

/// The four-layer port with the nine tracking layers, five above the ACL
/// and four between it and the SLB NAT (all above VNET's encapsulation).
fn port() -> Port {
    let mut p = four_layer_port(PortConfig::default(), 0).expect("port");
    install_mappings(&mut p, 4).expect("mappings");
    let ids = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8"];
    for (n, id) in ids.into_iter().enumerate() {
        // Meter first, then t0..t4, the ACL, t5..t8, the SLB NAT, VNET.
        let at = if n < 5 { 1 + n } else { 2 + n };
        let mut l = LayerSpec::new(id, DefaultAction::Allow, DefaultAction::Allow);
        l.groups
            .push(Group::new("track", Direction::Out).with_rules(vec![
                Rule::new("all-out", 1, vec![], ActionSpec::Allow).stateful(),
            ]));
        p.add_layer(l, Some(at)).expect("a tracking layer");
    }
    p
}

fn layer_flows(p: &Port, i: u32) -> Option<usize> {
    let (d, syn) = lifecycle(i)[0].clone();
    let parsed = parse_with(&syn, parse_options(d)).expect("parses");
    p.connection(d, &parsed.ufid).map(|c| c.layer_flows)
}

/// Connection `i`'s `frames` through both ports: forwarded, byte for byte
/// alike.
fn forward_alike(
    a: &mut Port,
    b: &mut Port,
    i: u32,
    frames: impl IntoIterator<Item = (Direction, Vec<u8>)>,
    now: u64,
) {
    for (d, f) in frames {
        let (va, oa) = run(a, d, &f, now);
        let (vb, ob) = run(b, d, &f, now);
        assert!(va.is_forward(), "connection {i}: {va:?}");
        assert_eq!((va, oa), (vb, ob), "connection {i}");
    }
}

#[test]
fn long_layer_flow_lists_survive_a_snapshot_and_are_let_go_of() {
    let mut a = port();
    let layers = TRACKED;
    for i in 0..300 {
        for (d, f) in lifecycle(i).into_iter().take(3) {
            assert!(forwards(&mut a, d, &f, secs(1)), "connection {i}");
        }
    }
    for i in [0, 150, 299] {
        assert_eq!(layer_flows(&a, i), Some(10), "connection {i}");
    }
    for l in layers {
        assert_eq!(a.layer_flow_count(l), 300, "{l}");
    }

    let bytes = a.snapshot().expect("snapshot");
    let mut b = Port::restore(&bytes, ActionRegistry::default()).expect("restore");
    for i in [0, 150, 299] {
        assert_eq!(layer_flows(&b, i), Some(10), "restored connection {i}");
    }

    // Half the connections close on both ports, byte for byte alike.
    for i in 0..150 {
        forward_alike(&mut a, &mut b, i, lifecycle(i).into_iter().skip(3), secs(2));
    }
    // Past TIME_WAIT (60 s), within the established idle time (300 s).
    for p in [&mut a, &mut b] {
        p.expire(secs(100));
        assert_eq!(p.connection_count(), 150);
        for l in layers {
            assert_eq!(p.layer_flow_count(l), 150, "{l}");
        }
    }
    // New connections take the freed blocks; then everything ends.
    for i in 300..450 {
        forward_alike(&mut a, &mut b, i, lifecycle(i), secs(101));
    }
    for p in [&mut a, &mut b] {
        p.expire(secs(1_000_000));
        assert_eq!(p.connection_count(), 0);
        for l in layers {
            assert_eq!(p.layer_flow_count(l), 0, "{l}");
        }
        assert_eq!(p.resources().port_pools[SNAT_POOL].in_use(), 0);
    }
}
