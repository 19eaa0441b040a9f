//! Classifying a packet allocates nothing, whatever structure the planner
//! built (and whatever path the lookup takes: trees, tries, residual rules,
//! out-of-width fallbacks); nor does a first packet's walk through a sized
//! port's layers.

#[path = "common/mod.rs"]
mod common;
use common::counting::{Counting, allocation_calls};
use strata_engine::classifier::plan::{Strategy, build_with};
use strata_engine::classifier::tree::TreeConfig;
use strata_engine::classifier::{MatchType, RuleMatch, best_match_many, build};
use strata_engine::condition::{Condition, Field, FieldValues, MatchValue};
use strata_engine::rulegen;

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn best_match_does_not_allocate() {
    let mut acl = rulegen::acl(3000, 5);
    // A rule beyond the LPM expansion cap (residual) and one hulled.
    let many: Vec<MatchValue> = (0..300u128)
        .map(|i| MatchValue::Prefix {
            value: (0xffff << 32) | (i << 12),
            len: 116,
        })
        .collect();
    acl.push(RuleMatch {
        priority: 3,
        conditions: vec![
            Condition::new(Field::DstIp, many.clone()),
            Condition::new(Field::DstIp, many.clone()),
            Condition::new(Field::DstIp, many),
        ],
    });
    let mut routes = rulegen::routes_v4(5000, 2);
    routes.extend(rulegen::routes_v6(2000, 2));
    routes.extend(rulegen::acl(50, 3));
    let cases = [
        (acl.clone(), MatchType::Priority),
        (acl.clone(), MatchType::Lpm(Field::DstIp)),
        (routes.clone(), MatchType::Lpm(Field::DstIp)),
        (rulegen::routes_v4(5000, 4), MatchType::Lpm(Field::DstIp)),
        (acl[..10].to_vec(), MatchType::Priority),
    ];
    for (rules, mt) in cases {
        let mut packets = rulegen::packets(&rules, 2000, 7);
        packets.push(FieldValues::from_pairs(&[
            (Field::Vlan, 70_000),
            (Field::DstIp, 5),
        ]));
        packets.push(FieldValues::from_pairs(&[]));
        let cfg = TreeConfig {
            blocks: true,
            ..TreeConfig::default()
        };
        let classifiers = [
            build(&rules, mt),
            build_with(&rules, mt, Strategy::Scan),
            build_with(&rules, mt, Strategy::Tree(cfg)),
            build_with(&rules, mt, Strategy::Lpm(cfg)),
        ];
        for c in &classifiers {
            let before = allocation_calls();
            let mut hits = 0usize;
            for p in &packets {
                hits += usize::from(c.best_match(p).is_some());
            }
            assert_eq!(allocation_calls(), before, "{} allocated", c.kind());
            assert!(hits > 0);
        }
        // Several groups at once (trees walked in lock-step).
        let mut out = [None; 4];
        let before = allocation_calls();
        for p in &packets {
            best_match_many(classifiers.iter().map(|c| c.as_ref()), p, &mut out);
        }
        assert_eq!(allocation_calls(), before, "best_match_many allocated");
    }
}

/// A new connection's first packet through sixteen stateless ACL layers
/// allocates nothing once the port has seen its verdict: the simulation's
/// counter list holds two counters per layer inline (it spilled to the heap
/// beyond eight layers), and the flow's action and counter list are shared
/// copies found, not made.
#[test]
fn a_first_packet_through_sixteen_layers_does_not_allocate() {
    use common::tcp;
    use strata_engine::scenario::{VM_GW_MAC, VM_MAC, acl_layers_port};
    use strata_engine::{Direction, Verdict, secs};
    use strata_packet::PacketBuf;

    let (mut port, mut probes) = acl_layers_port(16, 2, 40, 32).expect("port");
    probes.sort();
    probes.dedup();
    let mut buf = PacketBuf::with_capacity(2048);
    let mut first = |port: &mut strata_engine::Port, sp: u16| {
        let frames: Vec<Vec<u8>> = probes
            .iter()
            .map(|&(s, d, dp)| tcp(VM_MAC, VM_GW_MAC, s, d, sp, dp, 0x02, 1, 0, b""))
            .collect();
        let before = (allocation_calls(), port.connection_count());
        for f in &frames {
            buf.reset(f);
            let v = port.process(Direction::Out, &mut buf, secs(1));
            assert_eq!(v, Verdict::Forward);
        }
        (
            allocation_calls() - before.0,
            port.connection_count() - before.1,
        )
    };
    // Room for the connections (no table grows), then the verdicts'
    // actions and counter lists interned.
    port.reserve(2 * probes.len()).expect("reserve");
    let (_, created) = first(&mut port, 1000);
    assert_eq!(created, probes.len());
    // Other source ports: new connections, decided by the same rules.
    let (allocations, created) = first(&mut port, 2000);
    assert_eq!(created, probes.len());
    assert_eq!(allocations, 0, "first packets allocated");
}
