//! Layer flows wanting one key: a static NAT that maps a VM's UDP flows
//! onto one tuple, so the answers to all look alike. The flow that came
//! first keeps the key (the answers are un-NATed to it); when it goes, the
//! next flow takes the key over; and a port saved meanwhile and restored
//! treats the answers exactly as the saved port does, whichever slots the
//! flows sit in.

mod common;
use common::{SYN, decode, run, tcp, udp};
use std::net::{IpAddr, Ipv4Addr};
use strata_engine::action::ActionSpec;
use strata_engine::condition::{Condition, Field};
use strata_engine::policy::{Group, LayerSpec, Rule};
use strata_engine::{ActionRegistry, DefaultAction, Direction, Port, PortConfig, secs};
use strata_packet::flow::MacAddr;

const VM: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 9);
const VM_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const GW_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

/// Every UDP datagram from the VM goes to 10.9.9.9:53 from source port
/// 5000; TCP connections are tracked (a stateful allow); the rest passes.
fn port() -> Port {
    let cfg = PortConfig {
        udp_idle: secs(30),
        tcp_half_open_idle: secs(10),
        ..PortConfig::default()
    };
    let mut p = Port::new("collide", cfg);
    let mut spec = LayerSpec::new("nat", DefaultAction::Allow, DefaultAction::Allow);
    let mut nat = Rule::new(
        "to-dns",
        1,
        vec![Condition::exact(Field::Proto, 17)],
        ActionSpec::Nat {
            src_ip: None,
            dst_ip: Some(IpAddr::V4(DNS)),
            src_port: Some(5000),
            dst_port: Some(53),
        },
    );
    nat.stateful = true;
    let mut track = Rule::new(
        "track-tcp",
        1,
        vec![Condition::exact(Field::Proto, 6)],
        ActionSpec::Allow,
    );
    track.stateful = true;
    spec.groups
        .push(Group::new("g", Direction::Out).with_rules(vec![nat, track]));
    p.add_layer(spec, None).expect("layer");
    p
}

fn from_vm(sp: u16, dst: Ipv4Addr) -> Vec<u8> {
    udp(VM_MAC, GW_MAC, VM, dst, sp, 80, b"question")
}

/// The server's answer to both flows (they look alike after the NAT).
fn answer() -> Vec<u8> {
    udp(GW_MAC, VM_MAC, DNS, VM, 53, 5000, b"answer")
}

/// Whose flow an answer was un-NATed to: `(source, destination port)`.
fn answered(p: &mut Port, now: u64) -> (Ipv4Addr, u16) {
    let (v, out) = run(p, Direction::In, &answer(), now);
    assert!(v.is_forward(), "{v:?}");
    let i = decode(&out).inner;
    (i.src, i.dp)
}

fn sent(p: &mut Port, frame: &[u8], now: u64) {
    let (v, out) = run(p, Direction::Out, frame, now);
    assert!(v.is_forward(), "{v:?}");
    let i = decode(&out).inner;
    assert_eq!((i.dst, i.sp, i.dp), (DNS, 5000, 53), "NATed");
}

#[test]
fn the_first_flow_keeps_the_key_then_hands_it_on_and_a_restore_agrees() {
    let x_dst = Ipv4Addr::new(10, 2, 0, 1);
    let y_dst = Ipv4Addr::new(10, 2, 0, 2);
    let mut p = port();
    // A TCP connection that is never answered leaves early, so the second
    // of the colliding flows reuses its slot: the flow keeping the key
    // sits in the higher slot (a restore that gave keys out in slot order
    // would give this one to the second flow).
    let syn = tcp(
        VM_MAC,
        GW_MAC,
        VM,
        Ipv4Addr::new(10, 3, 0, 1),
        999,
        443,
        SYN,
        1,
        0,
        b"",
    );
    assert!(run(&mut p, Direction::Out, &syn, secs(1)).0.is_forward());
    sent(&mut p, &from_vm(1111, x_dst), secs(20));
    p.expire(secs(40));
    assert_eq!(p.layer_flow_count("nat"), 1, "the early flow left");
    sent(&mut p, &from_vm(2222, y_dst), secs(40));
    assert_eq!(p.layer_flow_count("nat"), 2);
    p.verify_flow_state().expect("flow state");
    // Saved before any answer came (an answer makes a unified flow, which
    // later answers would find without asking the layer).
    let mut q = Port::restore(&p.snapshot().expect("snapshot"), ActionRegistry::default())
        .expect("restore");
    q.verify_flow_state().expect("restored flow state");
    assert_eq!(
        answered(&mut p, secs(41)),
        (x_dst, 1111),
        "the first flow's"
    );
    assert_eq!(
        answered(&mut q, secs(41)),
        (x_dst, 1111),
        "restored: the same"
    );

    // The first flow idles out (last seen with the answer at 41 s); the
    // second, kept busy, takes the key over (its answers now find it), in
    // the saved port and the restored one.
    for p in [&mut p, &mut q] {
        sent(p, &from_vm(2222, y_dst), secs(65));
        p.expire(secs(80));
        assert_eq!(p.layer_flow_count("nat"), 1, "the first flow left");
        p.verify_flow_state()
            .expect("flow state after the hand-over");
        assert_eq!(answered(p, secs(81)), (y_dst, 2222), "the second flow's");
    }
}
