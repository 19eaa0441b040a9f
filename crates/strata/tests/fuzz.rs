//! Fuzz targets (bolero) for every input the tools parse besides packets
//! (those are fuzzed in `strata-packet`): policy files (TOML and JSON),
//! port snapshots, and pcap / pcapng captures. Each must be refused with an
//! error, never a panic or an unbounded allocation; what is accepted must
//! then work (a port built from a mangled policy or snapshot processes
//! packets; a capture yields frames until its end or first error).
//!
//! Under `cargo test` the targets run a bounded number of generated inputs
//! (bolero's test-harness mode, stable Rust). Coverage-guided:
//!
//! ```text
//! cargo +nightly bolero test -p strata --test fuzz fuzz_policy_files
//! ```
//!
//! A longer local run without cargo-bolero: `STRATA_FUZZ_ITERATIONS=100000
//! cargo test --release -p strata --test fuzz fuzz_snapshots`.
//!
//! Inputs are structure-aware mutations of valid samples (byte edits and a
//! cut), so they reach deep into each format instead of failing at its
//! first byte.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use strata::capture::{CaptureFormat, CaptureReader, CaptureWriter};
use strata::policy_file::{Format, parse_str};
use strata_engine::scenario::{four_layer_port, install_mappings};
use strata_engine::{
    ActionRegistry, ActionSpec, DefaultAction, Direction, Group, LayerSpec, Port, PortConfig, Rule,
    secs,
};
use strata_packet::PacketBuf;

/// Inputs per target when `STRATA_FUZZ_ITERATIONS` is set (else bolero's
/// default for the mode it runs in).
fn fuzz_iterations() -> Option<usize> {
    std::env::var("STRATA_FUZZ_ITERATIONS").ok()?.parse().ok()
}

/// `bolero::check!()` with the iteration budget of [`fuzz_iterations`].
macro_rules! fuzz_check {
    () => {{
        let target = bolero::check!();
        match fuzz_iterations() {
            Some(n) => target.with_iterations(n),
            None => target,
        }
    }};
}

/// Few edits per input: with many, nearly every input dies at the first
/// syntax or length check.
const MAX_EDITS: usize = 3;

/// A sample with (up to [`MAX_EDITS`]) byte edits applied, then cut when
/// `cut` is odd.
fn mutate(sample: &[u8], edits: &[(u16, u8)], cut: u16) -> Vec<u8> {
    let mut m = sample.to_vec();
    if !m.is_empty() {
        for &(pos, val) in edits.iter().take(MAX_EDITS) {
            let i = usize::from(pos) % m.len();
            m[i] = val;
        }
    }
    let keep = if cut & 1 == 1 {
        usize::from(cut >> 1) % (m.len() + 1)
    } else {
        m.len()
    };
    m.truncate(keep);
    m
}

/// A few frames the port knows how to handle (outbound VNET and internet
/// TCP, an inbound VXLAN packet).
fn frames() -> &'static [(Direction, Vec<u8>)] {
    static F: OnceLock<Vec<(Direction, Vec<u8>)>> = OnceLock::new();
    F.get_or_init(|| {
        use strata::frames::*;
        let vm = std::net::SocketAddrV4::new(strata_engine::scenario::VM_CA, 40000);
        let peer = std::net::SocketAddrV4::new([10, 1, 0, 9].into(), 80);
        let web = std::net::SocketAddrV4::new([93, 184, 216, 34].into(), 443);
        let out = |dst| {
            tcp(
                strata_engine::scenario::VM_MAC,
                strata_engine::scenario::VM_GW_MAC,
                vm,
                dst,
                1,
                0,
                Flags::SYN,
                b"",
            )
        };
        vec![(Direction::Out, out(peer)), (Direction::Out, out(web))]
    })
}

/// Run the sample frames through a port, read its counters, change its
/// policy, expire everything (which sweeps counters and flows); nothing
/// may panic, and the flow table's shared parts stay counted exactly.
fn exercise_port(port: &mut Port) {
    let mut buf = PacketBuf::with_capacity(2048);
    for (d, f) in frames() {
        buf.reset(f);
        let _ = port.process(*d, &mut buf, secs(1));
    }
    let _ = port.counters();
    let _ = port.snapshot();
    if let Some(layer) = port.layer_ids().first() {
        let _ = port.remove_layer(layer);
    }
    for (d, f) in frames() {
        buf.reset(f);
        let _ = port.process(*d, &mut buf, secs(2));
    }
    if let Err(e) = port.verify_flow_state() {
        panic!("flow state after traffic: {e}");
    }
    let _ = port.expire(secs(1_000_000));
    if let Err(e) = port.verify_flow_state() {
        panic!("flow state after expiry: {e}");
    }
}

// ----- policy files -------------------------------------------------------

fn policy_samples() -> &'static [(Format, Vec<u8>)] {
    static S: OnceLock<Vec<(Format, Vec<u8>)>> = OnceLock::new();
    S.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/four-layer.toml");
        let toml = std::fs::read_to_string(path).expect("example policy");
        let spec = parse_str(&toml, Format::Toml).expect("example parses");
        let json = spec.to_json().expect("json");
        vec![
            (Format::Toml, toml.into_bytes()),
            (Format::Json, json.into_bytes()),
        ]
    })
}

/// Characters policy texts are made of: edits with these keep most inputs
/// well-formed enough to reach validation.
const POLICY_CHARS: &[u8] = b"0123456789abcdefxo.-:/\"[]{}=, \n";

/// Mangled policy files: a parse error (with a place) or a policy that
/// builds a working port.
#[test]
fn fuzz_policy_files() {
    fuzz_check!()
        .with_type::<(bool, Vec<(u16, u8)>, u16)>()
        .for_each(|(json, edits, cut)| {
            let (format, sample) = &policy_samples()[usize::from(*json)];
            let edits: Vec<(u16, u8)> = edits
                .iter()
                .map(|&(p, v)| (p, POLICY_CHARS[usize::from(v) % POLICY_CHARS.len()]))
                .collect();
            // Cut rarely: a truncated policy is just a syntax error.
            let cut = if cut % 8 == 1 { *cut } else { 0 };
            let text = mutate(sample, &edits, cut);
            let Ok(text) = std::str::from_utf8(&text) else {
                return;
            };
            if let Ok(spec) = parse_str(text, *format)
                && let Ok(mut port) = spec.build_port(ActionRegistry::default())
            {
                exercise_port(&mut port);
            }
        });
}

/// Arbitrary text in either format.
#[test]
fn fuzz_policy_text() {
    fuzz_check!()
        .with_type::<(bool, String)>()
        .for_each(|(json, text)| {
            let format = if *json { Format::Json } else { Format::Toml };
            let _ = parse_str(text, format);
        });
}

// ----- snapshots ----------------------------------------------------------

/// Snapshots to mangle: this build's format without and with a
/// reservation, and the previous format's (read for upgrades: the fixture
/// the last version-6 build wrote).
fn snapshot_samples() -> &'static [Vec<u8>] {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| {
        let mut port = four_layer_port(PortConfig::default(), 2).expect("port");
        install_mappings(&mut port, 1).expect("mappings");
        exercise_port(&mut port);
        let plain = port.snapshot().expect("snapshot");
        port.reserve(64).expect("reserve");
        let reserved = port.snapshot().expect("snapshot");
        let v6 = include_bytes!("../../strata-engine/tests/data/four-layer-v6.snap");
        // Three more stateful layers: connections hold more layer flows
        // than fit inline, the rest in the flow table's overflow blocks.
        let mut tracked = four_layer_port(PortConfig::default(), 2).expect("port");
        install_mappings(&mut tracked, 1).expect("mappings");
        for (id, at) in [("t0", 0), ("t1", 2), ("t2", 4)] {
            let mut l = LayerSpec::new(id, DefaultAction::Allow, DefaultAction::Allow);
            l.groups
                .push(Group::new("track", Direction::Out).with_rules(vec![
                    Rule::new("all-out", 1, vec![], ActionSpec::Allow).stateful(),
                ]));
            tracked.add_layer(l, Some(at)).expect("a tracking layer");
        }
        let mut buf = PacketBuf::with_capacity(2048);
        for (d, f) in frames() {
            buf.reset(f);
            let _ = tracked.process(*d, &mut buf, secs(1));
        }
        for l in ["t0", "t1", "t2", "acl"] {
            assert!(tracked.layer_flow_count(l) > 0, "{l} holds flows");
        }
        let long_lists = tracked.snapshot().expect("snapshot");
        // Own keys (connections from VNET peers) and NAT'd flows' extra
        // parts, in the pools, as the build before them wrote them.
        let v7_pools = include_bytes!("../../strata-engine/tests/data/four-layer-v7-inbound.snap");
        vec![plain, reserved, v6.to_vec(), long_lists, v7_pools.to_vec()]
    })
}

/// Mangled snapshots: refused with an error, or restored into a port that
/// processes packets and snapshots again.
#[test]
fn fuzz_snapshots() {
    fuzz_check!()
        .with_type::<(u8, Vec<(u16, u8)>, u16)>()
        .for_each(|(which, edits, cut)| {
            let samples = snapshot_samples();
            let sample = &samples[usize::from(*which) % samples.len()];
            let bytes = mutate(sample, edits, *cut);
            if let Ok(mut port) = Port::restore(&bytes, ActionRegistry::default()) {
                exercise_port(&mut port);
            }
        });
}

// ----- captures -----------------------------------------------------------

fn tmp_path(ext: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "strata-fuzz-{}-{}.{ext}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn capture_samples() -> &'static [Vec<u8>] {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| {
        [CaptureFormat::Pcap, CaptureFormat::PcapNg]
            .into_iter()
            .map(|format| {
                let path = tmp_path("cap");
                let mut w = CaptureWriter::create(&path, format).expect("create");
                for (i, (d, f)) in frames().iter().enumerate() {
                    w.write(1_000 + i as u64, f, *d).expect("write");
                }
                w.finish().expect("finish");
                let bytes = std::fs::read(&path).expect("read back");
                let _ = std::fs::remove_file(&path);
                bytes
            })
            .collect()
    })
}

/// Mangled pcap and pcapng files: frames until the end or the first error.
#[test]
fn fuzz_captures() {
    fuzz_check!()
        .with_type::<(bool, Vec<(u16, u8)>, u16)>()
        .for_each(|(ng, edits, cut)| {
            let bytes = mutate(&capture_samples()[usize::from(*ng)], edits, *cut);
            let path = tmp_path("cap");
            std::fs::write(&path, &bytes).expect("write sample");
            if let Ok(mut r) = CaptureReader::open(&path) {
                let mut n = 0;
                while let Some(f) = r.next_frame() {
                    n += 1;
                    if f.is_err() || n > 1000 {
                        break;
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        });
}
