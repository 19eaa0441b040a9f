//! `Port::process_batch` (the pipelined path: bucket and entry prefetches,
//! candidate hints, key checks, first packets classified layer by layer
//! ahead of their walks) gives exactly what `Port::process` gives frame by
//! frame — verdicts, output bytes, counters — including when earlier frames
//! of a chunk create or evict the flows later frames' hints point at, when
//! a layer transposes or drops what later layers would see, and when a
//! frame does not parse.

mod common;
use common::*;
use strata_engine::scenario::*;
use strata_engine::{Direction, Port, PortConfig};

/// Runs of one direction: SYNs of ten connections then their third
/// packets (so a chunk holds a flow's creation and a packet that needs
/// it), the replies, and the closing packets; a truncated frame in each
/// outbound run.
fn runs(connections: u32) -> Vec<(Direction, Vec<Vec<u8>>)> {
    let mut runs = Vec::new();
    let all: Vec<_> = (0..connections).map(lifecycle).collect();
    for group in all.chunks(10) {
        let pick = |k: usize| group.iter().map(move |l| l[k].1.clone());
        let mut out: Vec<Vec<u8>> = pick(0).chain(pick(2)).collect();
        out.insert(7, out[3][..20].to_vec());
        runs.push((Direction::Out, out));
        runs.push((Direction::In, pick(1).collect()));
        runs.push((Direction::Out, pick(3).chain(pick(5)).collect()));
        runs.push((Direction::In, pick(4).collect()));
    }
    runs
}

fn port(max_connections: usize) -> Port {
    let cfg = PortConfig {
        max_connections,
        ..PortConfig::default()
    };
    let mut p = four_layer_port_with(cfg, 0, true).expect("port");
    install_mappings(&mut p, 4).expect("mappings");
    p
}

fn same_as_one_by_one(max_connections: usize, connections: u32) -> Port {
    same_runs_as_one_by_one(max_connections, runs(connections))
}

fn same_runs_as_one_by_one(max_connections: usize, runs: Vec<(Direction, Vec<Vec<u8>>)>) -> Port {
    let batched = bursts_match_one_by_one(|| port(max_connections), &runs);
    let (out, inbound) = (
        batched.direction_counters(Direction::Out),
        batched.direction_counters(Direction::In),
    );
    assert!(out.forwarded + inbound.forwarded > 0);
    assert!(out.fast_path > 0);
    batched
}

#[test]
fn batches_match_frame_by_frame() {
    let p = same_as_one_by_one(1 << 16, 200);
    assert_eq!(
        p.counters().drops[strata_engine::DropReason::Malformed.index()],
        20
    );
}

/// A policy change between bursts: a new first layer marks every
/// outbound packet's DSCP and blocks the connections to 10.1.0.0/25
/// (among them those of the group in flight, whose flows exist).
/// Established flows were compiled at the old generation, so the batch's
/// established-packet path must leave them to reconciliation: the
/// rewritten bytes, the blocked connections' drops and every counter are
/// those of frame-by-frame processing.
#[test]
fn batches_match_frame_by_frame_across_a_policy_change() {
    use strata_engine::{ActionSpec, Condition, DefaultAction, Field, Group, LayerSpec, Rule};
    let all = runs(200);
    // Mid-way through, after a group's SYN-ACKs: its ACKs and FINs (and
    // every later group's packets) meet the new policy.
    let at = all.len() / 2 + 2;
    let change = |k: usize, p: &mut Port| {
        if k != at {
            return;
        }
        let allow = DefaultAction::Allow;
        let mut mark = LayerSpec::new("mark", allow, allow);
        mark.groups
            .push(Group::new("out", Direction::Out).with_rules(vec![
                Rule::new(
                    "block-lower-peers",
                    1,
                    vec![Condition::ip_prefix(
                        Field::DstIp,
                        "10.1.0.0".parse().expect("ip"),
                        25,
                    )],
                    ActionSpec::Block,
                ),
                mark_dscp("mark", 9, 46),
            ]));
        p.add_layer(mark, Some(0)).expect("mark layer");
    };
    let batched = bursts_match_one_by_one_changing(|| port(1 << 16), &all, change);
    let out = batched.direction_counters(Direction::Out);
    assert!(out.reconciled > 0, "{out:?}");
    assert!(out.fast_path > out.reconciled, "{out:?}");
    assert!(out.dropped > 20, "{out:?}");
}

/// The tunnel source port an established packet's VXLAN header gets is
/// the one its connection keeps (worked out when a side is set,
/// recompiled or restored) rather than hashed again per packet: it must
/// follow the flow's translated 5-tuple when a policy change moves it,
/// and survive a snapshot. Mid-way, a new first layer rewrites the
/// destination port of the connections to 10.1.0.0/25 (flows in flight
/// among them), so their reconciled flows push other source ports; later
/// both ports are restored from snapshots. Batches (the kept port) must
/// give the bytes of frame-by-frame processing, and every connection's
/// kept port must be the one worked out from scratch
/// (`verify_flow_state`).
#[test]
fn batches_keep_tunnel_ports_across_a_nat_change_and_a_restore() {
    use strata_engine::{
        ActionRegistry, ActionSpec, Condition, DefaultAction, Field, Group, LayerSpec, Rule,
    };
    let all = runs(200);
    let (moved, restored) = (all.len() / 2 + 2, all.len() * 3 / 4 + 1);
    let change = |k: usize, p: &mut Port| {
        if k == moved {
            let allow = DefaultAction::Allow;
            let mut nat = LayerSpec::new("move-port", allow, allow);
            nat.groups
                .push(Group::new("out", Direction::Out).with_rules(vec![Rule::new(
                    "to-8080",
                    1,
                    vec![Condition::ip_prefix(
                        Field::DstIp,
                        "10.1.0.0".parse().expect("ip"),
                        25,
                    )],
                    ActionSpec::Nat {
                        src_ip: None,
                        dst_ip: None,
                        src_port: None,
                        dst_port: Some(8080),
                    },
                )]));
            p.add_layer(nat, Some(0)).expect("NAT layer");
        } else if k == restored {
            p.verify_flow_state()
                .expect("flow state before the snapshot");
            let snap = p.snapshot().expect("snapshot");
            *p = Port::restore(&snap, ActionRegistry::default()).expect("restore");
            p.verify_flow_state().expect("restored flow state");
        }
    };
    let batched = bursts_match_one_by_one_changing(|| port(1 << 16), &all, change);
    let out = batched.direction_counters(Direction::Out);
    assert!(out.reconciled > 0, "{out:?}");
    assert!(out.fast_path > out.reconciled, "{out:?}");
}

/// With room for a few connections, chunks evict and reuse slots that
/// later frames' candidates name: each candidate is key-checked.
#[test]
fn batches_match_frame_by_frame_under_eviction() {
    let p = same_as_one_by_one(8, 120);
    let f = p.counters().flows;
    assert!(f.evicted_half_open + f.evicted_established > 0, "{f:?}");
}

/// Calls of every length around the pipeline's sizes: shorter than its
/// lookahead (1–3 frames), exactly a chunk (32), and several chunks with a
/// partial last one (75), the frames of one call mixing new connections'
/// first packets with packets of flows made earlier in the same call.
#[test]
fn batches_of_every_size_around_the_chunk_and_lookahead() {
    let all: Vec<_> = (0..120).map(lifecycle).collect();
    let mut runs = Vec::new();
    let mut next = 0;
    for len in [1usize, 2, 3, 32, 75] {
        let group = &all[next..next + len];
        next += len;
        // SYN then, further on, the same connection's ACK: both in one call.
        let mut out: Vec<Vec<u8>> = group.iter().map(|l| l[0].1.clone()).collect();
        out.extend(group.iter().map(|l| l[2].1.clone()));
        runs.push((Direction::Out, out));
        runs.push((
            Direction::In,
            group.iter().map(|l| l[1].1.clone()).collect(),
        ));
        runs.push((
            Direction::Out,
            group.iter().map(|l| l[2].1.clone()).collect(),
        ));
    }
    let p = same_runs_as_one_by_one(1 << 16, runs);
    assert_eq!(p.connection_count(), 113);
}

/// Four layers, walk order outbound: a stateless screen (blocks ports
/// 7000-7999 out, 9000-9999 in), a stateful ACL (skipped when classifying
/// ahead; unsolicited inbound blocked), a stateless NAT that moves ports
/// 8000-8099 to 80 (the last layer classified ahead: it may transpose),
/// and a stateless layer that blocks port 80 towards 10.9.0.0/16, which
/// only the rewritten packets reach: classified with the packet's own
/// port it would let them through. Every group also holds 20 UDP rules
/// no test packet matches, so the planner indexes it: only layers with
/// an indexed group are classified ahead (small scans are left to the
/// walk).
fn layered_port() -> Port {
    use strata_engine::{ActionSpec, Condition, DefaultAction, Field, Group, LayerSpec, Rule};
    let mut p = Port::new("layered", PortConfig::default());
    let allow = DefaultAction::Allow;
    let range = |f: Field, lo: u128, hi: u128| Condition::range(f, lo, hi);
    let indexed = |group: &str, mut rules: Vec<Rule>| {
        rules.extend(unmatched_udp_rules(group, Field::DstPort, 20));
        rules
    };
    let mut screen = LayerSpec::new("screen", allow, allow);
    screen
        .groups
        .push(Group::new("out", Direction::Out).with_rules(indexed(
            "out",
            vec![
                Rule::new(
                    "block-7k",
                    1,
                    vec![range(Field::DstPort, 7000, 7999)],
                    ActionSpec::Block,
                ),
                Rule::new("rest", 9, vec![], ActionSpec::Allow),
            ],
        )));
    screen
        .groups
        .push(Group::new("in", Direction::In).with_rules(indexed(
            "in",
            vec![Rule::new(
                "block-9k",
                1,
                vec![range(Field::SrcPort, 9000, 9999)],
                ActionSpec::Block,
            )],
        )));
    p.add_layer(screen, None).expect("screen");
    let mut acl = LayerSpec::new("acl", allow, DefaultAction::Block);
    acl.groups
        .push(Group::new("out", Direction::Out).with_rules(vec![
            Rule::new("all", 1, vec![], ActionSpec::Allow).stateful(),
        ]));
    p.add_layer(acl, None).expect("acl");
    let mut nat = LayerSpec::new("nat", allow, allow);
    nat.groups
        .push(Group::new("out", Direction::Out).with_rules(indexed(
            "out",
            vec![Rule::new(
                "to-80",
                1,
                vec![range(Field::DstPort, 8000, 8099)],
                ActionSpec::Nat {
                    src_ip: None,
                    dst_ip: None,
                    src_port: None,
                    dst_port: Some(80),
                },
            )],
        )));
    p.add_layer(nat, None).expect("nat");
    let mut after = LayerSpec::new("after", allow, allow);
    after
        .groups
        .push(Group::new("out", Direction::Out).with_rules(indexed(
            "out",
            vec![
                Rule::new(
                    "block-80-to-10.9",
                    1,
                    vec![
                        Condition::exact(Field::DstPort, 80),
                        Condition::ip_prefix(Field::DstIp, "10.9.0.0".parse().expect("ip"), 16),
                    ],
                    ActionSpec::Block,
                ),
                Rule::new("rest", 9, vec![], ActionSpec::Allow),
            ],
        )));
    p.add_layer(after, None).expect("after");
    // The stateless layers are indexed (so classified ahead), the
    // stateful ACL is not (a scan: it would be skipped anyway); inbound,
    // only the screen has a group.
    let indexed =
        |d: Direction| -> Vec<bool> { p.policy().layers.iter().map(|l| l.indexed(d)).collect() };
    assert_eq!(indexed(Direction::Out), [true, false, true, true]);
    assert_eq!(indexed(Direction::In), [true, false, false, false]);
    p
}

/// Bursts of first packets are classified layer by layer ahead of their
/// walks: the results are those of walking them one by one, past a
/// stateful layer, up to a transposing one and not beyond (packets the
/// NAT moves to port 80 are then blocked), with packets the screen drops,
/// the same connection's SYN twice in a burst, its replies (found by the
/// stateful ACL's layer flows; those from ports 9000-9999 then blocked by
/// the screen), unsolicited inbound packets and frames that do not parse.
#[test]
fn bursts_of_first_packets_classified_ahead_match_frame_by_frame() {
    let vm = "10.0.0.5".parse().expect("ip");
    let peer = |i: u32| std::net::Ipv4Addr::new(10, 8 + (i / 4 % 2) as u8, 0, (i % 200) as u8 + 1);
    let dport = |i: u32| match i % 4 {
        0 => 7000 + (i % 1000) as u16,
        1 => 8000 + (i % 100) as u16,
        2 => 9000 + (i % 1000) as u16,
        _ => 443,
    };
    let syn = |i: u32| {
        tcp(
            VM_MAC,
            VM_GW_MAC,
            vm,
            peer(i),
            20000 + i as u16,
            dport(i),
            0x02,
            1,
            0,
            b"",
        )
    };
    let syn_ack = |i: u32, sport: u16| {
        tcp(
            VM_GW_MAC,
            VM_MAC,
            peer(i),
            vm,
            sport,
            20000 + i as u16,
            0x12,
            9,
            2,
            b"",
        )
    };
    let mut runs = Vec::new();
    for burst in 0..4u32 {
        let ids: Vec<u32> = (burst * 40..burst * 40 + 40).collect();
        let mut out: Vec<Vec<u8>> = ids.iter().map(|&i| syn(i)).collect();
        // The same SYN again, later in the burst, and a frame that does
        // not parse.
        out.insert(30, syn(ids[3]));
        out.insert(12, out[5][..20].to_vec());
        runs.push((Direction::Out, out));
        // Replies (from the NAT'd port for the moved ones), and
        // unsolicited packets, some from the blocked source ports.
        let mut inbound: Vec<Vec<u8>> = ids
            .iter()
            .map(|&i| syn_ack(i, if i % 4 == 1 { 80 } else { dport(i) }))
            .collect();
        inbound.extend((0..8).map(|k| {
            tcp(
                VM_GW_MAC,
                VM_MAC,
                peer(k),
                vm,
                9000 + k as u16 * 100,
                22,
                0x02,
                1,
                0,
                b"",
            )
        }));
        runs.push((Direction::In, inbound));
    }
    let p = bursts_match_one_by_one(layered_port, &runs);
    let c = p.counters();
    // Each kind of fate was met.
    assert!(c.rule("after", "block-80-to-10.9").drops > 0);
    assert!(c.rule("nat", "to-80").packets > 0);
    assert!(c.rule("screen", "block-7k").drops > 0);
    assert!(c.rule("screen", "block-9k").drops > 0);
    assert!(c.direction(Direction::In).forwarded > 0);
    assert!(c.direction(Direction::Out).forwarded > 0);
}

/// The issue-3 shape in small: six layers of four groups of 300 generated
/// rules, bursts of 32 first packets (some the same flow twice).
#[test]
fn bursts_through_many_large_layers_match_frame_by_frame() {
    let (_, probes) = acl_layers_port(6, 4, 300, 256).expect("port");
    let first = |i: u32| probe_syn(&probes, i);
    let runs: Vec<_> = (0..8u32)
        .map(|b| {
            let mut f: Vec<Vec<u8>> = (b * 32..b * 32 + 31).map(first).collect();
            f.insert(20, first(b * 32 + 2));
            (Direction::Out, f)
        })
        .collect();
    let p = bursts_match_one_by_one(|| acl_layers_port(6, 4, 300, 256).expect("port").0, &runs);
    assert_eq!(p.connection_count(), 8 * 31);
}
