//! The demo is a real check: it runs clean at small sizes, through the
//! library and the binary, and what it writes replays to the same result.

use std::process::Command;
use strata::demo::{self, DemoOptions};
use strata::replay::{self, ReplayOptions};

#[test]
fn demo_passes_its_invariants() {
    let mut out = Vec::new();
    let opts = DemoOptions {
        connections: 120,
        seed: 7,
        write_pcap: None,
    };
    let r = demo::run(&opts, &mut out).expect("demo runs");
    let text = String::from_utf8_lossy(&out);
    assert!(r.failures.is_empty(), "{:?}\n{text}", r.failures);
    assert_eq!(r.tcp_connections, 102);
    assert_eq!(r.udp_flows, 18);
    assert!(r.peak_connections >= 120, "{text}");
    assert_eq!(r.connections_after_expiry, 0);
    assert_eq!(
        r.dropped, 11,
        "2 SMTP, 2 unsolicited, 1 mapping miss, 5 malformed, 1 unrelated ICMP error"
    );
    for section in [
        "== per direction",
        "== drops by reason",
        "MappingMiss { table: \"vnet-5001\", key: 10.1.200.7 }",
        "== rules",
        "== meter buckets (top 5 by packets)",
        "avg RTT",
        "peak:",
        "after expire",
        "trace out tcp 10.1.0.4:",
        "[vnet] group vnet-routes rule vnet-local -> push Vxlan vni 5001",
        "trace in [Vxlan vni 5001 192.168.255.1 -> 192.168.0.10]",
        "[slb] group slb-in rule vip-web (stateful) -> dst_ip=10.1.0.4, dst_port=8080",
        "1 relayed to their connection (quote translated back), 1 about no connection",
        "1 datagrams tracked from their first fragment, 1 completed; 2 later fragments \
         followed their first, 2 held for it and 2 released; 0 timed out, 0 overflowed",
        "all checks passed",
    ] {
        assert!(text.contains(section), "missing {section:?} in\n{text}");
    }
}

#[test]
fn demo_binary_exits_zero() {
    let o = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["demo", "--connections", "60", "--seed", "3"])
        .output()
        .expect("run");
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("all checks passed"));
}

#[test]
fn demo_capture_replays_identically() {
    let dir = std::env::temp_dir().join(format!("strata-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = DemoOptions {
        connections: 80,
        seed: 11,
        write_pcap: Some(dir.clone()),
    };
    let r = demo::run(&opts, &mut std::io::sink()).expect("demo runs");
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    let mut port =
        strata::policy_file::load_port(&dir.join("policy.toml")).expect("exported policy loads");
    let opts = ReplayOptions {
        output: Some(dir.join("forwarded.pcapng")),
        log: Some(dir.join("verdicts.jsonl")),
        ..ReplayOptions::new(&dir.join("demo.pcapng"))
    };
    let s = replay::replay(&mut port, &opts).expect("replay");
    assert_eq!(s.packets_in, r.packets);
    assert_eq!(s.packets_out, r.forwarded);
    assert_eq!(s.drops.values().sum::<u64>(), r.dropped);
    // The replayer's own fast/slow accounting agrees with the port's.
    let c = port.counters();
    for d in [strata_engine::Direction::Out, strata_engine::Direction::In] {
        let (mine, port_dir) = (&s.dir[d.index()], c.direction(d));
        assert_eq!(mine.packets, port_dir.packets, "{d:?}");
        assert_eq!(mine.fast_path, port_dir.fast_path, "{d:?}");
        assert_eq!(mine.slow_path, port_dir.slow_path, "{d:?}");
        assert_eq!(mine.forwarded, port_dir.forwarded, "{d:?}");
    }
    assert_eq!(s.malformed, c.malformed);
    let log = std::fs::read_to_string(dir.join("verdicts.jsonl")).expect("log");
    // A line per frame, and one more per held fragment when released.
    let held: u64 = s.dir.iter().map(|t| t.held).sum();
    assert_eq!(held, 2, "the DNS answer's two later fragments");
    assert_eq!(s.held_at_end, 0);
    assert_eq!(log.lines().count() as u64, r.packets + held);
    let released = log
        .lines()
        .filter(|l| l.contains("\"path\":\"released\""))
        .count();
    assert_eq!(released as u64, held);
    let _ = std::fs::remove_dir_all(&dir);
}
