//! Snapshots across releases: a port saved by the previous format version
//! restores in this build and then treats packets exactly as the same port
//! made in this build does (an upgrade keeps its connections), and a
//! port's reservation is part of its snapshot.
//!
//! `tests/data/four-layer-v6.snap` was written by the last build of format
//! version 6 (commit 5087b46) running `examples/snapshot_fixture.rs`: bytes
//! from the old code, not re-made by this one.

mod common;
use common::*;
use strata_engine::snapshot::{Envelope, OLDEST_READ, VERSION};
use strata_engine::{ActionRegistry, Direction, DropReason, Port, secs};

const V6: &[u8] = include_bytes!("data/four-layer-v6.snap");

/// Every layer's and rule's counters, and the port's by direction.
fn counts(p: &Port) -> Vec<String> {
    let c = p.counters();
    let mut out: Vec<String> = [Direction::Out, Direction::In]
        .iter()
        .map(|d| format!("{d:?} {:?}", c.direction(*d)))
        .collect();
    for spec in p.layer_specs() {
        out.push(format!("{} {:?}", spec.id, c.layer(&spec.id)));
        for g in &spec.groups {
            for r in &g.rules {
                out.push(format!(
                    "{}/{} {:?}",
                    spec.id,
                    r.id,
                    c.rule(&spec.id, &r.id)
                ));
            }
        }
    }
    out
}

#[test]
fn a_port_saved_by_the_previous_format_restores_and_forwards_alike() {
    let env: Envelope = postcard::from_bytes(V6).expect("envelope");
    assert_eq!(env.version, 6, "the fixture is a version 6 snapshot");
    // This build still reads the fixture's version (a build that stops
    // reading it needs the previous version's fixture here instead).
    const { assert!(OLDEST_READ == 6 && VERSION > 6) };

    let old = Port::restore(V6, ActionRegistry::default()).expect("version 6 restores");
    assert_eq!(
        old.reserved_connections(),
        0,
        "version 6 kept no reservation"
    );
    let (now, frames) = snapshot_scenario();
    assert_eq!(old.connection_count(), 32);
    forwards_alike(old, now, &frames);
}

/// Version 7 as written before layer tables kept their flows' own keys and
/// extra parts in pools (`tests/data/four-layer-v7-inbound.snap`, commit
/// 3e6efff, with connections whose ACL flows keep own keys and SNAT'd ones
/// whose NAT flows have extra parts): it restores into the pools and
/// forwards as the same port made in this build does.
#[test]
fn a_port_saved_before_the_flow_part_pools_restores_and_forwards_alike() {
    let bytes = include_bytes!("data/four-layer-v7-inbound.snap");
    let env: Envelope = postcard::from_bytes(bytes).expect("envelope");
    assert_eq!(env.version, 7);
    let old = Port::restore(bytes, ActionRegistry::default()).expect("restores");
    let (now, frames) = snapshot_scenario_with_inbound();
    assert_eq!(old.connection_count(), 48);
    forwards_alike(old, now, &frames);
}

/// Version 8 as written by its last build (`tests/data/four-layer-v8-inbound.snap`,
/// commit 70e4641, `INBOUND=1`), before the ICMP error counters were kept:
/// it restores with them at zero and forwards as the same port made in
/// this build does.
#[test]
fn a_port_saved_before_the_icmp_error_counters_restores_and_forwards_alike() {
    let bytes = include_bytes!("data/four-layer-v8-inbound.snap");
    let env: Envelope = postcard::from_bytes(bytes).expect("envelope");
    assert_eq!(env.version, 8);
    let old = Port::restore(bytes, ActionRegistry::default()).expect("restores");
    assert_eq!(old.icmp_error_counters(), Default::default());
    let (now, frames) = snapshot_scenario_with_inbound();
    assert_eq!(old.connection_count(), 48);
    forwards_alike(old, now, &frames);
}

/// Version 9 as written by its last build (`tests/data/four-layer-v9-inbound.snap`,
/// commit 7fa6927, `INBOUND=1`), before IP fragment tracking was kept: it
/// restores with no datagram tracked, nothing held and the fragment
/// counters at zero, and forwards as the same port made in this build
/// does.
#[test]
fn a_port_saved_before_fragment_tracking_restores_and_forwards_alike() {
    let bytes = include_bytes!("data/four-layer-v9-inbound.snap");
    let env: Envelope = postcard::from_bytes(bytes).expect("envelope");
    assert_eq!(env.version, 9);
    let old = Port::restore(bytes, ActionRegistry::default()).expect("restores");
    assert_eq!(old.fragment_counters(), Default::default());
    assert_eq!(old.held_fragments(), 0);
    for r in DropReason::ALL {
        assert_eq!(old.drops(r), 0, "{r}");
    }
    let (now, frames) = snapshot_scenario_with_inbound();
    assert_eq!(old.connection_count(), 48);
    forwards_alike(old, now, &frames);
}

/// `old` (restored) and `now` (made in this build) hold the same flows and
/// counters, and treat `frames` byte for byte alike on their fast paths.
fn forwards_alike(mut old: Port, mut now: Port, frames: &[(Direction, Vec<u8>)]) {
    assert_eq!(old.connection_count(), now.connection_count());
    assert_eq!(old.unified_flow_count(), now.unified_flow_count());
    for layer in old.layer_ids() {
        assert_eq!(
            old.layer_flow_count(&layer),
            now.layer_flow_count(&layer),
            "{layer}"
        );
    }
    assert_eq!(counts(&old), counts(&now), "counters as saved");

    let slow =
        |p: &Port| [Direction::Out, Direction::In].map(|d| p.direction_counters(d).slow_path);
    let slow_before = (slow(&old), slow(&now));
    for (i, (d, f)) in frames.iter().enumerate() {
        let (va, a) = run(&mut old, *d, f, secs(2));
        let (vb, b) = run(&mut now, *d, f, secs(2));
        assert!(vb.is_forward(), "frame {i}: {vb:?}");
        assert_eq!(va, vb, "frame {i}: verdict");
        assert_eq!(a, b, "frame {i}: bytes out");
        // Checked by an independent parser too (checksums included).
        decode(&a);
    }
    // Every frame was a known connection's: no slow path on either port.
    assert_eq!((slow(&old), slow(&now)), slow_before);
    assert_eq!(counts(&old), counts(&now), "counters after the same frames");
    let c = old.counters();
    assert_eq!(c.tcp.handshakes_completed, old.connection_count() as u64);

    // After a policy change every flow is reconciled through the layers,
    // which find each connection's layer flows by their keys (own keys
    // included): a key lost on restore would make a second flow.
    let flows = |p: &Port| {
        p.layer_ids()
            .iter()
            .map(|l| p.layer_flow_count(l))
            .collect::<Vec<_>>()
    };
    let held = flows(&now);
    assert_eq!(flows(&old), held);
    for p in [&mut old, &mut now] {
        let acl = p
            .layer_specs()
            .into_iter()
            .find(|l| l.id == "acl")
            .expect("acl");
        for g in acl.groups {
            p.set_group("acl", g).expect("the same group again");
        }
    }
    for (i, (d, f)) in frames.iter().enumerate().filter(|(_, (_, f))| is_data(f)) {
        let (va, a) = run(&mut old, *d, f, secs(3));
        let (vb, b) = run(&mut now, *d, f, secs(3));
        assert!(vb.is_forward(), "frame {i} again: {vb:?}");
        assert_eq!((va, a), (vb, b), "frame {i} again");
    }
    assert_eq!(flows(&old), held, "no layer flow made twice");
    assert_eq!(flows(&now), held);
}

/// Whether a frame carries payload (the data frames, not the closing ones:
/// sent again, those stay in both ports' connections as they were).
fn is_data(frame: &[u8]) -> bool {
    !decode(frame).inner.payload.is_empty()
}

#[test]
fn a_snapshot_keeps_the_ports_reservation() {
    let (mut p, _) = snapshot_scenario();
    let unreserved = p.snapshot().expect("snapshot");
    p.reserve(1000).expect("within the limit");
    let reserved = p.snapshot().expect("snapshot");
    let r = Port::restore(&reserved, ActionRegistry::default()).expect("restores");
    assert_eq!(r.reserved_connections(), 1000);
    // Sized for its 1,000 connections, as the same port restored without
    // the reservation and then reserved, not by its 32 connections.
    let mut by_hand = Port::restore(&unreserved, ActionRegistry::default()).expect("restores");
    let by_content = by_hand.flow_memory().total();
    assert_eq!(by_hand.reserved_connections(), 0);
    by_hand.reserve(1000).expect("within the limit");
    assert_eq!(r.flow_memory(), by_hand.flow_memory());
    assert!(r.flow_memory().total() > by_content);
}

/// A reservation the port's limit does not allow (a forged or damaged
/// snapshot) is a clear error, not a port sized past its limit.
#[test]
fn a_reservation_beyond_the_limit_is_refused_on_restore() {
    let (p, _) = snapshot_scenario();
    let bytes = p.snapshot().expect("snapshot");
    let mut env: Envelope = postcard::from_bytes(&bytes).expect("envelope");
    // The payload ends with the reservation, a varint (0 is one zero
    // byte), then the list of shadowed layer flows (empty: its length, 0),
    // then the three ICMP error counters (each 0), then the fragment
    // tracking: its nine counters, no datagram, nothing held (each 0).
    const AFTER: usize = 1 + 3 + 9 + 2;
    for _ in 0..=AFTER {
        assert_eq!(env.payload.pop(), Some(0));
    }
    env.payload
        .extend(postcard::to_allocvec(&1_000_000_000u64).expect("varint"));
    env.payload.extend([0; AFTER]);
    let forged = postcard::to_allocvec(&env).expect("envelope");
    match Port::restore(&forged, ActionRegistry::default()) {
        Err(strata_engine::ApiError::Snapshot(m)) => {
            assert!(m.contains("bad reservation"), "{m}");
            assert!(m.contains("1000000000"), "{m}");
        }
        other => panic!("accepted: {:?}", other.map(|p| p.reserved_connections())),
    }
}
