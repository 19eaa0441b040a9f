//! A first packet's walk hashes its own key for the layers ahead of the
//! first one that may transpose, before it classifies anything (to
//! prefetch their flow-table buckets; see `Port::simulate`). Those hashes
//! must be used only where the key they hash is the key the layer sees:
//! here a stateful NAT layer sits between two stateful ACL layers whose
//! defaults block both ways, so a layer flow stored under a wrong hash is
//! missed by the reply, which its ACL then drops.

mod common;
use common::*;
use std::net::Ipv4Addr;
use strata_engine::scenario::{VM_CA, VM_GW_MAC, VM_MAC};
use strata_engine::{
    ActionSpec, Condition, DefaultAction, Direction, DropReason, Field, Group, LayerSpec, Port,
    PortConfig, Rule,
};

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

/// `acl-vm` (VM side) → `nat` (rewrites destination port 80 to 8080
/// outbound) → `acl-net` (lets out only what goes to port 8080). Every
/// layer's default blocks: a packet passes only by a rule or a layer flow.
fn port() -> Port {
    let mut p = Port::new("early", PortConfig::default());
    let acl = |id: &str, port: u16| {
        let mut l = LayerSpec::new(id, DefaultAction::Block, DefaultAction::Block);
        l.groups
            .push(Group::new("out", Direction::Out).with_rules(vec![
                    Rule::new(
                        "allow-out",
                        1,
                        vec![Condition::exact(Field::DstPort, u128::from(port))],
                        ActionSpec::Allow,
                    )
                    .stateful(),
                ]));
        l
    };
    let mut nat = LayerSpec::new("nat", DefaultAction::Block, DefaultAction::Block);
    nat.groups
        .push(Group::new("out", Direction::Out).with_rules(vec![
                Rule::new(
                    "to-8080",
                    1,
                    vec![Condition::exact(Field::DstPort, 80)],
                    ActionSpec::Nat {
                        src_ip: None,
                        dst_ip: None,
                        src_port: None,
                        dst_port: Some(8080),
                    },
                )
                .stateful(),
            ]));
    p.add_layer(acl("acl-vm", 80), None).expect("acl-vm");
    p.add_layer(nat, None).expect("nat");
    p.add_layer(acl("acl-net", 8080), None).expect("acl-net");
    p
}

fn server_tcp(sp: u16, dp: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    tcp(
        VM_GW_MAC, VM_MAC, SERVER, VM_CA, sp, dp, flags, seq, ack, b"",
    )
}

#[test]
fn every_stateful_layer_finds_its_flow_around_a_transposing_layer() {
    let mut p = port();
    // Many connections, so the tables hold other flows too (an empty
    // table is skipped without hashing).
    for (i, sp) in (40000..40064u16).enumerate() {
        let t = 1 + i as u64;
        let (v, out) = run(
            &mut p,
            Direction::Out,
            &vm_tcp(SERVER, sp, 80, SYN, 1, 0, b""),
            t,
        );
        assert!(v.is_forward(), "SYN {sp}: {v:?}");
        let d = decode_sent(&out).inner;
        assert_eq!((d.sp, d.dp), (sp, 8080), "SYN {sp} leaves NATed");

        // The reply comes from port 8080: `acl-net` lets it in by its
        // layer flow (keyed after the NAT), `nat` turns 8080 back into 80,
        // and `acl-vm` lets it in by its flow (keyed before the NAT).
        let (v, out) = run(
            &mut p,
            Direction::In,
            &server_tcp(8080, sp, SYN | ACK, 9, 2),
            t,
        );
        assert!(v.is_forward(), "SYN-ACK {sp}: {v:?}");
        let d = decode_sent(&out).inner;
        assert_eq!((d.sp, d.dp), (80, sp), "SYN-ACK {sp} un-NATed");
    }
    for layer in ["acl-vm", "nat", "acl-net"] {
        assert_eq!(p.layer_flow_count(layer), 64, "{layer}");
    }
    assert_eq!(p.connection_count(), 64);
    let c = p.counters();
    assert_eq!(c.direction(Direction::In).dropped, 0);
    assert_eq!(c.flows.layer_flows_created, 3 * 64);

    // A reply to no connection is dropped by the first layer it meets.
    let (v, _) = run(
        &mut p,
        Direction::In,
        &server_tcp(8080, 39999, SYN | ACK, 9, 2),
        100,
    );
    assert_eq!(v.drop_reason(), Some(DropReason::DefaultBlock));
}
