//! Layer flows read their origin key from the connection that holds them
//! (memory per connection, issue 2). When that connection goes while
//! another still holds the flow, the flow must keep the key itself: its
//! reverse side still admits return traffic, revalidation still classifies
//! it, and a snapshot still restores it.

mod common;
use common::*;
use std::net::{IpAddr, Ipv4Addr};
use strata_engine::scenario::*;
use strata_engine::{ActionRegistry, Direction, Port, PortConfig, secs};
use strata_packet::MacAddr;

const PEER: (u8, u8) = (0, 9);

fn peer_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 1, PEER.0, PEER.1)
}

fn reply() -> Vec<u8> {
    reply_via(remote_mac(PEER.0, PEER.1), GW_MAC)
}

/// The peer's answer with inner source MAC `inner_mac`, tunnelled from
/// outer source MAC `outer_mac`.
fn reply_via(inner_mac: MacAddr, outer_mac: MacAddr) -> Vec<u8> {
    let inner = udp(inner_mac, VM_MAC, peer_ip(), VM_CA, 53, 5000, b"answer");
    vxlan(
        outer_mac,
        HOST_MAC,
        remote_pa(PEER.0, PEER.1),
        HOST_PA,
        VNI,
        &inner,
    )
}

#[test]
fn shared_layer_flow_outlives_the_connection_whose_key_it_read() {
    let cfg = PortConfig {
        udp_idle: secs(30),
        ..PortConfig::default()
    };
    let mut p = four_layer_port(cfg, 0).expect("port");
    install_mappings(&mut p, 4).expect("mappings");
    // Two VM-side sources differing only in MAC: two connections, one ACL
    // flow (connection tracking ignores MACs).
    let first = udp(VM_MAC, VM_GW_MAC, VM_CA, peer_ip(), 5000, 53, b"q");
    let other_mac = MacAddr([0x02, 0, 0, 0, 0, 0x99]);
    let second = udp(other_mac, VM_GW_MAC, VM_CA, peer_ip(), 5000, 53, b"q");
    assert!(forwards(&mut p, Direction::Out, &first, secs(1)));
    assert!(forwards(&mut p, Direction::Out, &second, secs(20)));
    assert_eq!(p.connection_count(), 2);
    assert_eq!(p.layer_flow_count("acl"), 1);

    // The first connection (whose key the ACL flow was created from) idles
    // out; the second still holds the flow.
    assert_eq!(p.expire(secs(40)), 1);
    assert_eq!(p.connection_count(), 1);
    assert_eq!(p.layer_flow_count("acl"), 1);

    // An unrelated change makes the held flow revalidate on the next packet.
    p.add_port_pool(
        "spare",
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 99)),
        vec![(1000, 1100)],
    )
    .expect("pool");
    let reconciled = p.direction_counters(Direction::Out).reconciled;
    assert!(forwards(&mut p, Direction::Out, &second, secs(41)));
    assert_eq!(
        p.direction_counters(Direction::Out).reconciled,
        reconciled + 1
    );
    let snapshot = p.snapshot().expect("snapshot");

    // Return traffic now needs the flow's reverse key (no unified flow has
    // it any more): admitted only if the flow kept its key.
    let (v, bytes) = run(&mut p, Direction::In, &reply(), secs(42));
    assert!(v.is_forward(), "{v:?}");

    // The same from the snapshot taken before the reply.
    let mut q = Port::restore(&snapshot, ActionRegistry::default()).expect("restore");
    assert_eq!(q.layer_flow_count("acl"), 1);
    let (w, restored) = run(&mut q, Direction::In, &reply(), secs(42));
    assert_eq!((w, restored), (v, bytes));

    // Everything goes when the last holder does.
    p.expire(secs(1000));
    assert_eq!(p.connection_count(), 0);
    assert_eq!(p.layer_flow_count("acl"), 0);
}

/// VM-side pairing (VFP-14) finds an inbound flow's outbound partner by
/// L3/L4 identity: a reply whose inner and outer MACs differ from the ones
/// the outbound simulation predicted (another router, a moved peer NIC)
/// joins the existing connection instead of starting one, and the
/// connection's unified flows then match it on the fast path. Also after a
/// snapshot restore (the index is rebuilt from the stored keys).
#[test]
fn reply_with_other_macs_joins_its_connection() {
    let mut p = four_layer_port(PortConfig::default(), 0).expect("port");
    install_mappings(&mut p, 4).expect("mappings");
    let query = udp(VM_MAC, VM_GW_MAC, VM_CA, peer_ip(), 5000, 53, b"q");
    assert!(forwards(&mut p, Direction::Out, &query, secs(1)));
    assert_eq!(
        (p.connection_count(), p.unified_flow_count()),
        (1, 1),
        "the return flow waits for the first reply"
    );
    let odd_reply = reply_via(
        MacAddr([0x02, 0x77, 0, 0, 0, 1]),
        MacAddr([0x02, 0x77, 0, 0, 0, 2]),
    );
    let snapshot = p.snapshot().expect("snapshot");
    let mut q = Port::restore(&snapshot, ActionRegistry::default()).expect("restore");
    for port in [&mut p, &mut q] {
        let slow = port.direction_counters(Direction::In).slow_path;
        let (v, _) = run(port, Direction::In, &odd_reply, secs(2));
        assert!(v.is_forward(), "{v:?}");
        assert_eq!(port.direction_counters(Direction::In).slow_path, slow + 1);
        assert_eq!(
            (port.connection_count(), port.unified_flow_count()),
            (1, 2),
            "the reply joined the query's connection"
        );
        let (v, _) = run(port, Direction::In, &odd_reply, secs(3));
        assert!(v.is_forward(), "{v:?}");
        assert_eq!(
            port.direction_counters(Direction::In).slow_path,
            slow + 1,
            "the next reply hits the joined flow"
        );
        assert!(forwards(port, Direction::Out, &query, secs(4)));
        assert_eq!(port.connection_count(), 1);
    }
}
