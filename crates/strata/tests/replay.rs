//! Replay end to end: captures built with etherparse go through the port
//! from the example policy; the forwarded frames are re-parsed with
//! etherparse and the verdict log is checked line by line. Also through the
//! built binary, with snapshots carrying state from one replay to the next.

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use strata::capture::{CaptureFormat, CaptureReader, CaptureWriter};
use strata::replay::{self, ReplayOptions, VerdictLine};
use strata_engine::{Direction, policy::PortConfig, scenario};

const VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x04];
const GW_VM: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const HOST_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x10];
const GW_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("strata-replay-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn policy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/four-layer.toml")
}

fn tcp_syn(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64240)
        .syn();
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("build");
    v
}

fn tcp_synack(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 5000, 64240)
        .syn()
        .ack(1001);
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("build");
    v
}

/// The outbound test capture: expected verdicts alongside.
fn outbound_frames() -> Vec<(Vec<u8>, &'static str)> {
    vec![
        // 0: to a mapped VNET peer: encapsulated towards 192.168.1.5.
        (
            tcp_syn(VM_MAC, GW_VM, [10, 1, 0, 4], 40000, [10, 1, 0, 5], 80),
            "forward",
        ),
        // 1: to the internet: SNAT to the VIP.
        (
            tcp_syn(VM_MAC, GW_VM, [10, 1, 0, 4], 40001, [93, 184, 216, 34], 443),
            "forward",
        ),
        // 2: SMTP: blocked by the infra ACL.
        (
            tcp_syn(VM_MAC, GW_VM, [10, 1, 0, 4], 40002, [93, 184, 216, 34], 25),
            "rule-block",
        ),
        // 3: a runt.
        (vec![0u8; 9], "malformed"),
        // 4: an unmapped CA.
        (
            tcp_syn(VM_MAC, GW_VM, [10, 1, 9, 9], 40003, [10, 1, 9, 9], 80),
            "mapping-miss",
        ),
        // 5: the same VNET flow again: fast path.
        (
            tcp_syn(VM_MAC, GW_VM, [10, 1, 0, 4], 40000, [10, 1, 0, 5], 80),
            "forward",
        ),
    ]
}

fn write_pcap(path: &Path, frames: &[(Vec<u8>, &str)]) {
    let f = std::fs::File::create(path).expect("create");
    let mut w = PcapWriter::new(f).expect("writer");
    for (i, (data, _)) in frames.iter().enumerate() {
        let ts = Duration::from_micros(1_000_000 + i as u64 * 10);
        w.write_packet(&PcapPacket::new(ts, data.len() as u32, data))
            .expect("write");
    }
}

fn read_pcap(path: &Path) -> Vec<(Duration, Vec<u8>)> {
    let f = std::fs::File::open(path).expect("open");
    let mut r = PcapReader::new(f).expect("reader");
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.expect("packet");
        out.push((p.timestamp, p.data.into_owned()));
    }
    out
}

fn read_log(path: &Path) -> Vec<VerdictLine> {
    std::fs::read_to_string(path)
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// (outer dst IP, inner src IP, inner src port) of a frame.
fn addresses(frame: &[u8]) -> (Option<Ipv4Addr>, Ipv4Addr, u16) {
    let s = SlicedPacket::from_ethernet(frame).expect("parses");
    let Some(NetSlice::Ipv4(ip)) = &s.net else {
        panic!("not ipv4")
    };
    match &s.transport {
        Some(TransportSlice::Udp(u)) if u.destination_port() == 4789 => {
            let inner = SlicedPacket::from_ethernet(&u.payload()[8..]).expect("inner");
            let Some(NetSlice::Ipv4(iip)) = &inner.net else {
                panic!("inner not ipv4")
            };
            let Some(TransportSlice::Tcp(t)) = &inner.transport else {
                panic!("inner not tcp")
            };
            (
                Some(ip.header().destination_addr()),
                iip.header().source_addr(),
                t.source_port(),
            )
        }
        Some(TransportSlice::Tcp(t)) => (None, ip.header().source_addr(), t.source_port()),
        Some(TransportSlice::Udp(u)) => (None, ip.header().source_addr(), u.source_port()),
        _ => panic!("unexpected transport"),
    }
}

#[test]
fn replay_library_end_to_end() {
    let dir = tmp("lib");
    let input = dir.join("in.pcap");
    let frames = outbound_frames();
    write_pcap(&input, &frames);
    let mut port = strata::policy_file::load_port(&policy()).expect("policy");
    let opts = ReplayOptions {
        output: Some(dir.join("out.pcap")),
        log: Some(dir.join("verdicts.jsonl")),
        direction: Some(Direction::Out),
        ..ReplayOptions::new(&input)
    };
    let summary = replay::replay(&mut port, &opts).expect("replay");
    assert_eq!(summary.packets_in, 6);
    assert_eq!(summary.packets_out, 3);
    assert_eq!(summary.drops.get("rule-block"), Some(&1));
    assert_eq!(summary.drops.get("malformed"), Some(&1));
    assert_eq!(summary.drops.get("mapping-miss"), Some(&1));
    assert_eq!(summary.malformed.get("truncated-ethernet"), Some(&1));

    // Forwarded frames, re-parsed independently, keep their timestamps.
    let out = read_pcap(&dir.join("out.pcap"));
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].0, Duration::from_micros(1_000_000));
    assert_eq!(out[1].0, Duration::from_micros(1_000_010));
    assert_eq!(out[2].0, Duration::from_micros(1_000_050));
    let (outer, src, _) = addresses(&out[0].1);
    assert_eq!(outer, Some(Ipv4Addr::new(192, 168, 1, 5)));
    assert_eq!(src, Ipv4Addr::new(10, 1, 0, 4));
    let (outer, src, sport) = addresses(&out[1].1);
    assert_eq!(outer, None);
    assert_eq!(src, Ipv4Addr::new(203, 0, 113, 10));
    assert_eq!(sport, 1024, "first port of the SNAT pool");
    assert_eq!(out[2].1, out[0].1, "same flow, same rewrite");

    // The verdict log: one line per packet, decisions from the trace.
    let log = read_log(&dir.join("verdicts.jsonl"));
    assert_eq!(log.len(), 6);
    for (i, (l, (_, want))) in log.iter().zip(&frames).enumerate() {
        assert_eq!(l.index, i as u64);
        assert_eq!(l.direction, "out");
        let got = l.drop_reason.as_deref().unwrap_or(&l.verdict);
        assert_eq!(got, *want, "packet {i}: {l:?}");
    }
    assert_eq!(log[0].path, "slow");
    assert_eq!(log[5].path, "fast");
    let rules: Vec<_> = log[0]
        .layers
        .iter()
        .map(|l| l.rule.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        rules,
        ["meter-dst", "allow-out", "vnet-no-nat", "vnet-local"]
    );
    assert_eq!(log[0].layers[3].group.as_deref(), Some("vnet-routes"));
    assert!(
        log[0].layers[3]
            .transposition
            .contains("push Vxlan vni 5001"),
        "{:?}",
        log[0]
    );
    assert_eq!(log[1].layers[2].rule.as_deref(), Some("snat-internet"));
    assert!(
        log[1].layers[2]
            .transposition
            .contains("src_ip=203.0.113.10, src_port=1024")
    );
    assert_eq!(log[2].drop_layer.as_deref(), Some("acl"));
    assert_eq!(
        log[2].layers.last().and_then(|l| l.rule.as_deref()),
        Some("infra-block-smtp")
    );
    assert_eq!(
        log[2].layers.last().and_then(|l| l.dropped.as_deref()),
        Some("rule-block")
    );
    assert_eq!(log[3].parse_error.as_deref(), Some("truncated-ethernet"));
    assert_eq!(log[3].path, "none");
    assert!(log[3].layers.is_empty());
    assert_eq!(log[4].drop_layer.as_deref(), Some("vnet"));
    // The repeat of flow 0 was traced after its flow existed: the ACL
    // decision is now its layer flow.
    assert_eq!(log[5].layers[1].decision, "layer_flow");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pcapng_directions_and_snapshots_through_the_binary() {
    let dir = tmp("bin");
    let exe = env!("CARGO_BIN_EXE_strata");
    // Capture 1 (pcapng): the VM opens a connection to the internet; the
    // SYN-ACK comes back to VIP:1024 on the "in" interface.
    let first = dir.join("first.pcapng");
    let mut w = CaptureWriter::create(&first, CaptureFormat::PcapNg).expect("writer");
    let syn = tcp_syn(VM_MAC, GW_VM, [10, 1, 0, 4], 41000, [93, 184, 216, 34], 443);
    let synack = tcp_synack(
        GW_MAC,
        HOST_MAC,
        [93, 184, 216, 34],
        443,
        [203, 0, 113, 10],
        1024,
    );
    w.write(5_000_000_123, &syn, Direction::Out).expect("write");
    w.write(5_020_000_456, &synack, Direction::In)
        .expect("write");
    w.finish().expect("finish");
    // Our reader gets nanosecond timestamps and directions back.
    let frames: Vec<_> = CaptureReader::open(&first)
        .expect("open")
        .collect::<Result<_, _>>()
        .expect("frames");
    assert_eq!(frames[1].ts_ns, 5_020_000_456);
    assert_eq!(frames[1].direction, Some(Direction::In));

    let out = dir.join("first-out.pcapng");
    let log = dir.join("first.jsonl");
    let snap = dir.join("after.ssr");
    let o = Command::new(exe)
        .args(["replay", "--policy"])
        .arg(policy())
        .arg("--in")
        .arg(&first)
        .arg("--out")
        .arg(&out)
        .arg("--log")
        .arg(&log)
        .arg("--save-snapshot")
        .arg(&snap)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("packets in: 2, forwarded (out): 2, dropped: 0"),
        "{stdout}"
    );
    let lines = read_log(&log);
    assert_eq!(lines[1].direction, "in");
    assert_eq!(
        lines[1].path, "slow",
        "the first reply makes the return flow (paired with the SYN's connection)"
    );
    assert_eq!(lines[1].layers[1].decision, "layer_flow");
    assert_eq!(lines[1].layers[1].reverse, Some(true));
    let fwd: Vec<_> = CaptureReader::open(&out)
        .expect("open")
        .collect::<Result<_, _>>()
        .expect("frames");
    assert_eq!(fwd.len(), 2);
    assert_eq!(fwd[1].direction, Some(Direction::In));
    let s = SlicedPacket::from_ethernet(&fwd[1].data).expect("parse");
    let Some(NetSlice::Ipv4(ip)) = &s.net else {
        panic!()
    };
    assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(10, 1, 0, 4));
    let Some(TransportSlice::Tcp(t)) = &s.transport else {
        panic!()
    };
    assert_eq!(t.destination_port(), 41000, "SNAT reversed");

    // Capture 2 (pcap, direction forced to in): the server's SYN-ACK again
    // (a retransmission), replayed on the port restored from the snapshot:
    // it is still the same connection, served by the fast path.
    let second = dir.join("second.pcap");
    let data = tcp_synack(
        GW_MAC,
        HOST_MAC,
        [93, 184, 216, 34],
        443,
        [203, 0, 113, 10],
        1024,
    );
    write_pcap(&second, &[(data, "forward")]);
    let log2 = dir.join("second.jsonl");
    let o = Command::new(exe)
        .args(["replay", "--snapshot"])
        .arg(&snap)
        .arg("--in")
        .arg(&second)
        .args(["--direction", "in", "--log"])
        .arg(&log2)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = read_log(&log2);
    assert_eq!(lines[0].verdict, "forward");
    assert_eq!(lines[0].path, "fast");

    // Trace one frame of the capture by index, warmed up, and by hex.
    let o = Command::new(exe)
        .args(["trace", "--policy"])
        .arg(policy())
        .arg("--pcap")
        .arg(&first)
        .args(["--index", "1", "--warm"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        text.contains("layer flow of rule snat-internet (reverse)"),
        "{text}"
    );
    assert!(text.contains("verdict: forward"), "{text}");
    let o = Command::new(exe)
        .args(["trace", "--policy"])
        .arg(policy())
        .args(["--direction", "out", "--frame-hex"])
        .arg(strata::frames::to_hex(&tcp_syn(
            VM_MAC,
            GW_VM,
            [10, 1, 0, 4],
            40002,
            [1, 1, 1, 1],
            25,
        )))
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("rule infra-block-smtp"), "{text}");
    assert!(text.contains("verdict: drop (rule-block)"), "{text}");

    // snapshot subcommand, then replay from it.
    let snap2 = dir.join("fresh.ssr");
    let o = Command::new(exe)
        .args(["snapshot", "--policy"])
        .arg(policy())
        .arg("--out")
        .arg(&snap2)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let port = strata::replay::PortSource::Snapshot(snap2)
        .open()
        .expect("restore");
    let reference = scenario::four_layer_port(PortConfig::default(), 0).expect("scenario");
    assert_eq!(port.layer_specs(), reference.layer_specs());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = tmp("bad");
    let exe = env!("CARGO_BIN_EXE_strata");
    let junk = dir.join("junk.pcap");
    std::fs::write(&junk, b"this is not a capture").expect("write");
    let o = Command::new(exe)
        .args(["replay", "--policy"])
        .arg(policy())
        .arg("--in")
        .arg(&junk)
        .output()
        .expect("run");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a pcap or pcapng file"), "{err}");
    // A truncated capture: the frames before the damage are replayed, then
    // a clear error.
    let good = dir.join("good.pcap");
    write_pcap(&good, &outbound_frames());
    let mut bytes = std::fs::read(&good).expect("read");
    bytes.truncate(bytes.len() - 20);
    let cut = dir.join("cut.pcap");
    std::fs::write(&cut, bytes).expect("write");
    let o = Command::new(exe)
        .args(["replay", "--policy"])
        .arg(policy())
        .arg("--in")
        .arg(&cut)
        .output()
        .expect("run");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cut.pcap"));
    // Bad policy: the message names the place, exit status 1.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[port]\nname = \"x\"\n[[layer]]\nid = 5\n").expect("write");
    let o = Command::new(exe)
        .args(["check", "--policy"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.toml:4:6: invalid type: integer `5`, expected a string"),
        "{err}"
    );
    // Bad hex.
    let o = Command::new(exe)
        .args(["trace", "--policy"])
        .arg(policy())
        .args(["--frame-hex", "0g"])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A router's "fragmentation needed" about an SNAT'd connection: the log
/// line names the connection it is about and the translation it was
/// relayed with (the layers show what the policy alone would have made of
/// it: the ACL's default block), and the relayed error reaches the VM.
#[test]
fn an_icmp_error_about_a_connection_is_logged_as_related() {
    let mut port = strata::policy_file::load_port(&policy()).expect("policy");
    let mut r = replay::Replayer::new(&mut port, true, None);
    let syn = tcp_syn(VM_MAC, GW_VM, [10, 1, 0, 4], 40001, [93, 184, 216, 34], 443);
    let sent = r
        .process(Direction::Out, &syn, 1_000)
        .output
        .expect("forwarded");
    let mut err = Vec::new();
    PacketBuilder::ethernet2(GW_MAC, HOST_MAC)
        .ipv4([198, 18, 0, 1], [203, 0, 113, 10], 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut err, &sent[14..])
        .expect("build");
    let p = r.process(Direction::In, &err, 2_000);
    let line = p.line.expect("logged");
    assert_eq!(line.verdict, "forward");
    let related = line.related.as_deref().expect("related");
    assert!(related.contains("203.0.113.10"), "{related}");
    assert!(
        line.transposition
            .as_deref()
            .is_some_and(|t| t.contains("10.1.0.4")),
        "{line:?}"
    );
    assert_eq!(
        line.layers.last().and_then(|l| l.dropped.as_deref()),
        Some("default-block"),
        "{line:?}"
    );
    let out = p.output.expect("relayed");
    let ip = etherparse::SlicedPacket::from_ethernet(&out).expect("parses");
    let Some(NetSlice::Ipv4(v4)) = ip.net else {
        panic!("not ipv4")
    };
    assert_eq!(
        (v4.header().source_addr(), v4.header().destination_addr()),
        (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(10, 1, 0, 4)),
        "from the router's own address, to the VM"
    );
}

/// A large DNS answer in three IP fragments, captured last first, after
/// the VM's query: the log shows the last one held and, on the first
/// fragment's line, the frames it released (logged under their own index,
/// `released_by` the first's); the output capture has every fragment
/// un-NAT'd, the released one after the first. A fragment of a datagram
/// whose first never comes is held and then dropped by the replay's
/// expiry as `fragment-timeout`.
#[test]
fn fragments_held_for_their_first_are_released_into_the_output() {
    let dir = tmp("fragments");
    let input = dir.join("in.pcapng");
    let vm = ([10, 1, 0, 4], 53_000);
    let query = |port: &mut strata_engine::Port| {
        let mut q = Vec::new();
        PacketBuilder::ethernet2(VM_MAC, GW_VM)
            .ipv4(vm.0, [93, 184, 216, 34], 64)
            .udp(vm.1, 53)
            .write(&mut q, b"query")
            .expect("build");
        let mut r = replay::Replayer::new(port, false, None);
        (q.clone(), r.process(Direction::Out, &q, 1_000).output)
    };
    // The SNAT port the query gets (the same on a port made alike).
    let mut probe = strata::policy_file::load_port(&policy()).expect("policy");
    let (q, sent) = query(&mut probe);
    let sent = sent.expect("the query is forwarded");
    let (_, nat_ip, nat_port) = addresses(&sent);
    let mut answer = Vec::new();
    PacketBuilder::ethernet2(GW_MAC, HOST_MAC)
        .ipv4([93, 184, 216, 34], nat_ip.octets(), 60)
        .udp(53, nat_port)
        .write(&mut answer, &[0x61; 2000])
        .expect("build");
    let frags = strata::frames::fragment_v4(&answer, 800, 0x4242).expect("fragments");
    assert_eq!(frags.len(), 3);
    let mut orphan = strata::frames::fragment_v4(&answer, 800, 0x4343).expect("fragments");
    let mut w = CaptureWriter::create(&input, CaptureFormat::PcapNg).expect("writer");
    w.write(1_000, &q, Direction::Out).expect("write");
    w.write(2_000, &frags[2], Direction::In).expect("write");
    w.write(3_000, &frags[0], Direction::In).expect("write");
    w.write(4_000, &frags[1], Direction::In).expect("write");
    w.write(5_000, &orphan.remove(1), Direction::In)
        .expect("write");
    // Seven seconds later: the orphan's first never came.
    w.write(7_000_005_000, &q, Direction::Out).expect("write");
    w.finish().expect("finish");

    let mut port = strata::policy_file::load_port(&policy()).expect("policy");
    let opts = ReplayOptions {
        output: Some(dir.join("out.pcapng")),
        log: Some(dir.join("verdicts.jsonl")),
        expire_interval_ns: Some(1_000_000_000),
        ..ReplayOptions::new(&input)
    };
    let summary = replay::replay(&mut port, &opts).expect("replay");
    assert_eq!(summary.packets_in, 6);
    assert_eq!(summary.packets_out, 5, "{summary}");
    assert_eq!(summary.drops.get("fragment-timeout"), Some(&1), "{summary}");
    assert_eq!(summary.dir[Direction::In.index()].held, 2);
    assert_eq!(summary.held_at_end, 0);
    // Each frame counted once, on the path the port took (the released
    // one on its flow).
    for d in [Direction::Out, Direction::In] {
        let (mine, theirs) = (summary.dir[d.index()], port.direction_counters(d));
        assert_eq!(
            (mine.packets, mine.fast_path, mine.slow_path, mine.dropped),
            (
                theirs.packets,
                theirs.fast_path,
                theirs.slow_path,
                theirs.dropped
            ),
            "{d:?}"
        );
    }

    let log = read_log(&dir.join("verdicts.jsonl"));
    let verdicts: Vec<(u64, &str, &str, Option<u64>)> = log
        .iter()
        .map(|l| (l.index, l.verdict.as_str(), l.path.as_str(), l.released_by))
        .collect();
    assert_eq!(
        verdicts,
        [
            (0, "forward", "slow", None),
            (1, "held", "none", None),
            // The answer's first packet: its inbound flow is made now.
            (2, "forward", "slow", None),
            (1, "forward", "released", Some(2)),
            (3, "forward", "fast", None),
            (4, "held", "none", None),
            (5, "forward", "fast", None),
        ]
    );
    let out: Vec<Vec<u8>> = CaptureReader::open(&dir.join("out.pcapng"))
        .expect("output")
        .map(|f| f.expect("frame").data)
        .collect();
    assert_eq!(out.len(), 5);
    let datagram = &out[1..4];
    // The first fragment, then the released last one, then the middle.
    for (f, off) in datagram.iter().zip([0u16, 200, 100]) {
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&f[14..]).expect("IPv4");
        assert_eq!(ip.fragments_offset().value(), off);
        assert_eq!(ip.destination_addr(), Ipv4Addr::from(vm.0), "un-NAT'd");
    }
    let whole = strata::frames::reassemble_v4(datagram).expect("reassembles");
    let s = strata::frames::summarize(&whole).expect("parses");
    assert!(s.checksums_ok, "UDP checksum of the un-NAT'd datagram");
    assert_eq!((s.dst_port, s.payload_len), (vm.1, 2000));
}
