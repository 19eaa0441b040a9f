//! Test support: frames built with `etherparse` (an independent
//! implementation), and a decoder that re-parses our output with it and
//! verifies every checksum — a second opinion on the bytes Strata writes.
#![allow(dead_code)]

pub mod counting;

use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};
use std::net::Ipv4Addr;
use strata_engine::scenario::*;
use strata_engine::{Direction, Port, Verdict, secs};
use strata_packet::PacketBuf;
use strata_packet::flow::MacAddr;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

/// A new outbound TCP flow's SYN aimed at probe target `i` (cycled), from
/// the VM's MAC, its source port varying with `i` (the 10 × 10 × 5k
/// benches' first packets).
pub fn probe_syn(probes: &[ProbeTarget], i: u32) -> Vec<u8> {
    let (s, d, dp) = probes[i as usize % probes.len()];
    tcp(
        VM_MAC,
        VM_GW_MAC,
        s,
        d,
        (i % 60000) as u16 + 1024,
        dp,
        SYN,
        1,
        0,
        b"",
    )
}

/// An IPv4 TCP frame.
#[allow(clippy::too_many_arguments)]
pub fn tcp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sp: u16,
    dp: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sp, dp, seq, 64240);
    if flags & SYN != 0 {
        b = b.syn();
    }
    if flags & FIN != 0 {
        b = b.fin();
    }
    if flags & RST != 0 {
        b = b.rst();
    }
    if flags & ACK != 0 {
        b = b.ack(ack);
    }
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("build tcp");
    out
}

/// An IPv4 UDP frame.
pub fn udp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sp: u16,
    dp: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sp, dp);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("build udp");
    out
}

/// An ICMPv4 echo request.
pub fn ping(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    seq: u16,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_echo_request(id, seq);
    let mut out = Vec::new();
    b.write(&mut out, b"ping").expect("build icmp");
    out
}

/// A native answer from internet host `from`:`sp` to the VIP and SNAT
/// port `nat_port` (a SYN-ACK to the VM's SYN, say), from the underlay
/// gateway.
pub fn internet_answer(from: Ipv4Addr, sp: u16, nat_port: u16, flags: u8, ack: u32) -> Vec<u8> {
    tcp(
        GW_MAC, HOST_MAC, from, VIP, sp, nat_port, flags, 900, ack, b"",
    )
}

/// An ICMPv4 error frame from `src` to `dst` quoting `quote` (an IP
/// packet's leading bytes).
pub fn icmp_error(
    macs: (MacAddr, MacAddr),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    kind: etherparse::Icmpv4Type,
    quote: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0.0, macs.1.0)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4(kind);
    let mut out = Vec::new();
    b.write(&mut out, quote).expect("build icmp error");
    out
}

/// Wrap an inner frame in Ethernet/IPv4/UDP/VXLAN.
pub fn vxlan(
    outer_src_mac: MacAddr,
    outer_dst_mac: MacAddr,
    src_pa: Ipv4Addr,
    dst_pa: Ipv4Addr,
    vni: u32,
    inner: &[u8],
) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    let b = PacketBuilder::ethernet2(outer_src_mac.0, outer_dst_mac.0)
        .ipv4(src_pa.octets(), dst_pa.octets(), 64)
        .udp(50000, 4789);
    let mut out = Vec::new();
    b.write(&mut out, &payload).expect("build vxlan");
    out
}

/// Decoded inner (or only) headers of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inner {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub sp: u16,
    pub dp: u16,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub payload: Vec<u8>,
    pub dscp: u8,
}

/// Decoded outer headers of a VXLAN frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outer {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub udp_sp: u16,
    pub udp_dp: u16,
    pub vni: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub outer: Option<Outer>,
    pub inner: Inner,
}

/// Parse one Ethernet/IPv4 frame with etherparse, verifying the IPv4 header
/// checksum and the TCP/UDP/ICMP checksum. Panics (test failure) on any
/// inconsistency.
fn decode_plain(frame: &[u8]) -> Inner {
    let h = PacketHeaders::from_ethernet_slice(frame).expect("etherparse rejects our frame");
    let eth = h
        .link
        .clone()
        .and_then(|l| l.ethernet2())
        .expect("ethernet");
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else {
        panic!("not ipv4: {:?}", h.net)
    };
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 header checksum"
    );
    assert_eq!(
        usize::from(ip.total_len),
        frame.len() - 14,
        "IPv4 total length matches the frame"
    );
    let payload = h.payload.slice().to_vec();
    let mut inner = Inner {
        src_mac: MacAddr(eth.source),
        dst_mac: MacAddr(eth.destination),
        src: Ipv4Addr::from(ip.source),
        dst: Ipv4Addr::from(ip.destination),
        proto: ip.protocol.0,
        sp: 0,
        dp: 0,
        tcp_flags: 0,
        seq: 0,
        ack: 0,
        payload: payload.clone(),
        dscp: ip.dscp.value(),
    };
    match &h.transport {
        Some(TransportHeader::Tcp(t)) => {
            let want = t
                .calc_checksum_ipv4(ip, &payload)
                .expect("tcp checksum calc");
            assert_eq!(t.checksum, want, "TCP checksum");
            inner.sp = t.source_port;
            inner.dp = t.destination_port;
            inner.seq = t.sequence_number;
            inner.ack = t.acknowledgment_number;
            inner.tcp_flags = u8::from(t.fin)
                | u8::from(t.syn) << 1
                | u8::from(t.rst) << 2
                | u8::from(t.psh) << 3
                | u8::from(t.ack) << 4;
        }
        Some(TransportHeader::Udp(u)) => {
            if u.checksum != 0 {
                let want = u
                    .calc_checksum_ipv4(ip, &payload)
                    .expect("udp checksum calc");
                assert_eq!(u.checksum, want, "UDP checksum");
            }
            inner.sp = u.source_port;
            inner.dp = u.destination_port;
        }
        Some(TransportHeader::Icmpv4(i)) => {
            assert_eq!(
                i.checksum,
                i.icmp_type.calc_checksum(&payload),
                "ICMP checksum"
            );
            if let etherparse::Icmpv4Type::EchoRequest(e) | etherparse::Icmpv4Type::EchoReply(e) =
                i.icmp_type
            {
                inner.sp = e.id;
            }
        }
        _ => {}
    }
    inner
}

/// Decode a frame the switch sent, checking too that a VXLAN header's
/// UDP source port is its inner flow's (RFC 7348 §5: the inner flow's
/// entropy, the same for each of its packets: `tunnel_src_port` of the
/// `tunnel_hash` of the inner 5-tuple, worked out here from the decoded
/// inner headers).
pub fn decode_sent(frame: &[u8]) -> Decoded {
    let d = decode(frame);
    if let Some(outer) = &d.outer
        && matches!(d.inner.proto, 6 | 17)
    {
        let i = &d.inner;
        let flow = strata_packet::flow::FiveTuple {
            src_ip: i.src.into(),
            dst_ip: i.dst.into(),
            proto: i.proto,
            src_port: i.sp,
            dst_port: i.dp,
        };
        let want = strata_packet::emit::tunnel_src_port(strata_packet::flow::tunnel_hash(&flow));
        assert_eq!(
            outer.udp_sp, want,
            "tunnel source port of the inner flow {flow:?}"
        );
    }
    d
}

/// Decode a frame, unwrapping VXLAN (UDP 4789) if present.
pub fn decode(frame: &[u8]) -> Decoded {
    let plain = decode_plain(frame);
    // UDP to 4789 is ours only if it carries a VXLAN header (I flag); a VM's
    // own datagrams to that port are opaque payload. Tests expecting our
    // encap assert on `outer`, so a missing header still fails them.
    let p = &plain.payload;
    if plain.proto == 17 && plain.dp == 4789 && p.len() >= 8 + 14 && p[0] & 0x08 == 0x08 {
        let vni = u32::from_be_bytes([0, p[4], p[5], p[6]]);
        let inner = decode_plain(&p[8..]);
        Decoded {
            outer: Some(Outer {
                src_mac: plain.src_mac,
                dst_mac: plain.dst_mac,
                src: plain.src,
                dst: plain.dst,
                udp_sp: plain.sp,
                udp_dp: plain.dp,
                vni,
            }),
            inner,
        }
    } else {
        Decoded {
            outer: None,
            inner: plain,
        }
    }
}

/// An outbound TCP frame from the VM.
pub fn vm_tcp(
    dst: Ipv4Addr,
    sp: u16,
    dp: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    tcp(
        VM_MAC, VM_GW_MAC, VM_CA, dst, sp, dp, flags, seq, ack, payload,
    )
}

/// An inbound TCP frame from VNET peer `10.1.x.y`, VXLAN-encapsulated from
/// its host.
#[allow(clippy::too_many_arguments)]
pub fn peer_tcp(
    x: u8,
    y: u8,
    sp: u16,
    dp: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    let inner = tcp(
        remote_mac(x, y),
        VM_MAC,
        Ipv4Addr::new(10, 1, x, y),
        VM_CA,
        sp,
        dp,
        flags,
        seq,
        ack,
        payload,
    );
    vxlan(GW_MAC, HOST_MAC, remote_pa(x, y), HOST_PA, VNI, &inner)
}

/// Run one frame through a port; the verdict and the resulting bytes.
pub fn run(p: &mut Port, d: Direction, frame: &[u8], now: u64) -> (Verdict, Vec<u8>) {
    let mut b = PacketBuf::from_frame(frame);
    let v = p.process(d, &mut b, now);
    (v, b.as_slice().to_vec())
}

/// Whether the port forwards the frame.
pub fn forwards(p: &mut Port, d: Direction, frame: &[u8], now: u64) -> bool {
    run(p, d, frame, now).0.is_forward()
}

/// Remote CA `(x, y)` (10.1.x.y) for generated connection `i`, never the
/// VM's own 10.1.0.4.
pub fn peer_of(i: u32) -> (u8, u8) {
    let (x, y) = (((i / 250) % 4) as u8, (i % 250) as u8 + 1);
    if (x, y) == (0, 4) { (0, 251) } else { (x, y) }
}

/// The six packets of a full TCP lifecycle (SYN, SYN-ACK, ACK, FIN,
/// FIN-ACK, ACK) of generated VNET connection `i`: the VM to 10.1.x.y, the
/// replies VXLAN-encapsulated from the remote host.
pub fn lifecycle(i: u32) -> [(Direction, Vec<u8>); 6] {
    let (x, y) = peer_of(i);
    let peer = Ipv4Addr::new(10, 1, x, y);
    let sp = 1024 + ((i / 1000) % 60_000) as u16;
    let out = |fl, s, a| {
        (
            Direction::Out,
            tcp(VM_MAC, VM_GW_MAC, VM_CA, peer, sp, 80, fl, s, a, b""),
        )
    };
    let inb = |fl, s, a| {
        let inner = tcp(remote_mac(x, y), VM_MAC, peer, VM_CA, 80, sp, fl, s, a, b"");
        (
            Direction::In,
            vxlan(GW_MAC, HOST_MAC, remote_pa(x, y), HOST_PA, VNI, &inner),
        )
    };
    [
        out(SYN, 100, 0),
        inb(SYN | ACK, 500, 101),
        out(ACK, 101, 501),
        out(FIN | ACK, 101, 501),
        inb(FIN | ACK, 501, 102),
        out(ACK, 102, 502),
    ]
}

/// The SYN opening generated VNET connection `i` of the slow-path bench
/// (the VM to 10.1.x.y; source port by thousands, destination port
/// 1000–1999), distinct for 60 million connections.
pub fn vnet_syn(i: u32) -> Vec<u8> {
    let (x, y) = peer_of(i);
    let sp = 1024 + ((i / 1000) % 60_000) as u16;
    let dp = 1000 + (i % 1000) as u16;
    let peer = Ipv4Addr::new(10, 1, x, y);
    tcp(VM_MAC, VM_GW_MAC, VM_CA, peer, sp, dp, SYN, 1, 0, b"")
}

/// 64 bytes of payload for data frames.
pub const PAYLOAD: [u8; 64] = [0x5a; 64];

/// Establish SNAT'd internet connection `i` (NAT + VXLAN to the gateway);
/// its outbound and inbound data frames (64-byte payload), which then take
/// the fast path.
pub fn nat_conn(p: &mut Port, i: u32) -> [(Direction, Vec<u8>); 2] {
    let dst = Ipv4Addr::new(93, 184, (i >> 8) as u8, i as u8);
    let sp = 20000 + (i % 40000) as u16;
    let (v, out) = run(
        p,
        Direction::Out,
        &vm_tcp(dst, sp, 443, SYN, 1, 0, b""),
        secs(1),
    );
    assert!(v.is_forward(), "{v:?}");
    let nat_port = strata_packet::parse(&out)
        .expect("parses")
        .ufid
        .inner
        .src_port;
    let inb = |fl, payload: &[u8]| {
        let inner = tcp(GW_MAC, VM_MAC, dst, VIP, 443, nat_port, fl, 9, 2, payload);
        vxlan(GW_MAC, HOST_MAC, INET_GW_PA, HOST_PA, VNI, &inner)
    };
    assert!(forwards(p, Direction::In, &inb(SYN | ACK, b""), secs(1)));
    assert!(forwards(
        p,
        Direction::Out,
        &vm_tcp(dst, sp, 443, ACK, 2, 10, b""),
        secs(1)
    ));
    [
        (Direction::Out, vm_tcp(dst, sp, 443, ACK, 2, 10, &PAYLOAD)),
        (Direction::In, inb(ACK, &PAYLOAD)),
    ]
}

/// Rules the planner counts but no test frame (all TCP) matches: `n`
/// UDP allows on ports 1000.. of `field`, ids `{prefix}-udp-{i}`. Added to
/// a group of a few rules, they make it indexed (more entries than it
/// scans), so bursts classify its layer ahead (see `preclassify`).
pub fn unmatched_udp_rules(
    prefix: &str,
    field: strata_engine::Field,
    n: u16,
) -> Vec<strata_engine::Rule> {
    use strata_engine::{ActionSpec, Condition, Field, Rule};
    (0..n)
        .map(|i| {
            Rule::new(
                &format!("{prefix}-udp-{i}"),
                9,
                vec![
                    Condition::exact(Field::Proto, 17),
                    Condition::exact(field, u128::from(1000 + i)),
                ],
                ActionSpec::Allow,
            )
        })
        .collect()
}

/// Run `frames` through the port in direction `d` as receive bursts of
/// 32 (`Port::process_batch`, as a datapath reads its rings), the buffers
/// reused from burst to burst (the examples' `BATCH=1` rounds).
pub fn process_in_bursts(port: &mut Port, d: Direction, frames: &[Vec<u8>], now: u64) {
    let mut bufs: Vec<PacketBuf> = (0..32).map(|_| PacketBuf::with_capacity(2048)).collect();
    let mut out = vec![Verdict::Forward; 32];
    for chunk in frames.chunks(32) {
        for (b, f) in bufs.iter_mut().zip(chunk) {
            b.reset(f);
        }
        port.process_batch(d, &mut bufs[..chunk.len()], now, &mut out);
        std::hint::black_box(&out);
    }
}

/// The number in environment variable `name` (profiling knobs of the
/// examples), or `default` when unset or not a number.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The four-layer port (internet traffic SNATed and sent to the gateway)
/// with its CA → PA mappings, room for `connections` established
/// connections and an hour's idle timeout: the port of the profiling
/// examples.
pub fn port_for(connections: u32) -> Port {
    let cfg = strata_engine::PortConfig {
        max_connections: connections as usize + 1024,
        tcp_established_idle: secs(3600),
        ..strata_engine::PortConfig::default()
    };
    let mut port = four_layer_port_with(cfg, 0, true).expect("port");
    install_mappings(&mut port, 4).expect("mappings");
    port
}

/// The port of the snapshot-format fixtures (`tests/data/`, written by
/// `examples/snapshot_fixture.rs`): the four-layer port with 16 SNAT'd
/// internet connections established and 16 VNET connections through
/// their handshake, at time 1 s. Returns the frames to send next (each
/// internet connection's data both ways, then each VNET connection's
/// closing packets) with their directions: a restored port and a port
/// made again by this function must treat them alike.
pub fn snapshot_scenario() -> (Port, Vec<(Direction, Vec<u8>)>) {
    let mut port = port_for(64);
    let mut next = Vec::new();
    for i in 0..16 {
        next.extend(nat_conn(&mut port, i));
    }
    for i in 0..16 {
        let [syn, synack, ack, closing @ ..] = lifecycle(i);
        for (d, f) in [syn, synack, ack] {
            assert!(forwards(&mut port, d, &f, secs(1)), "VNET {i} handshake");
        }
        next.extend(closing);
    }
    (port, next)
}

/// [`snapshot_scenario`] and 16 connections from VNET peers to the VM's
/// web port: they arrive encapsulated, so their ACL flows keep keys of
/// their own (neither of the connection's keys is the decapsulated one);
/// with the next frames of each.
pub fn snapshot_scenario_with_inbound() -> (Port, Vec<(Direction, Vec<u8>)>) {
    let (mut port, mut next) = snapshot_scenario();
    for i in 0..16 {
        let (x, y) = peer_of(i);
        let peer = Ipv4Addr::new(10, 1, x, y);
        let sp = 3000 + i as u16;
        for (d, f) in inbound_handshake(i, sp) {
            assert!(forwards(&mut port, d, &f, secs(1)), "inbound {i} handshake");
        }
        next.push((
            Direction::In,
            peer_tcp(x, y, sp, 8080, ACK, 2, 10, &PAYLOAD),
        ));
        next.push((Direction::Out, vm_tcp(peer, 8080, sp, ACK, 10, 2, &PAYLOAD)));
    }
    (port, next)
}

/// The handshake of a connection from VNET peer [`peer_of`]`(i)`, source
/// port `sp`, to the VM's web port: it arrives encapsulated, so the
/// connection's ACL flow keeps a key of its own.
pub fn inbound_handshake(i: u32, sp: u16) -> [(Direction, Vec<u8>); 3] {
    let (x, y) = peer_of(i);
    let peer = Ipv4Addr::new(10, 1, x, y);
    [
        (Direction::In, peer_tcp(x, y, sp, 8080, SYN, 1, 0, b"")),
        (Direction::Out, vm_tcp(peer, 8080, sp, SYN | ACK, 9, 2, b"")),
        (Direction::In, peer_tcp(x, y, sp, 8080, ACK, 2, 10, b"")),
    ]
}

/// Every counter of the port, by name (rule, layer and meter counters
/// included), after the flows' pending counts are added.
pub fn all_counters(
    p: &Port,
) -> Vec<(
    strata_engine::counters::CounterName,
    strata_engine::counters::Counter,
)> {
    p.counters().arena.all()
}

/// Batched and frame-by-frame runs of the same frames leave two ports
/// alike: verdicts, bytes, every counter, the flow tables' state.
pub fn bursts_match_one_by_one(
    make: impl Fn() -> Port,
    runs: &[(Direction, Vec<Vec<u8>>)],
) -> Port {
    bursts_match_one_by_one_changing(make, runs, |_, _| {})
}

/// [`bursts_match_one_by_one`], calling `change(k, port)` on both ports
/// before run `k` (a policy change between bursts).
pub fn bursts_match_one_by_one_changing(
    make: impl Fn() -> Port,
    runs: &[(Direction, Vec<Vec<u8>>)],
    change: impl Fn(usize, &mut Port),
) -> Port {
    let (mut one, mut batched) = (make(), make());
    for (k, (d, frames)) in runs.iter().enumerate() {
        change(k, &mut one);
        change(k, &mut batched);
        let d = *d;
        let mut bufs: Vec<PacketBuf> = frames.iter().map(|f| PacketBuf::from_frame(f)).collect();
        let mut verdicts = vec![Verdict::Forward; bufs.len()];
        batched.process_batch(d, &mut bufs, secs(1), &mut verdicts);
        for (i, f) in frames.iter().enumerate() {
            let (v, bytes) = run(&mut one, d, f, secs(1));
            assert_eq!(verdicts[i], v, "{d:?} frame {i}");
            if v.is_forward() {
                assert_eq!(bufs[i].as_slice(), &bytes[..], "{d:?} frame {i}");
                if d == Direction::Out {
                    decode_sent(&bytes);
                }
            }
        }
    }
    for d in [Direction::Out, Direction::In] {
        assert_eq!(batched.direction_counters(d), one.direction_counters(d));
    }
    assert_eq!(batched.counters().flows, one.counters().flows);
    assert_eq!(batched.counters().drops, one.counters().drops);
    assert_eq!(all_counters(&batched), all_counters(&one));
    batched
        .verify_flow_state()
        .expect("batched port's flow state");
    batched
}

/// A rule of priority `priority` that sets DSCP `dscp` on every packet.
pub fn mark_dscp(id: &str, priority: u32, dscp: u8) -> strata_engine::Rule {
    strata_engine::Rule::new(
        id,
        priority,
        vec![],
        strata_engine::ActionSpec::Modify {
            src_mac: None,
            dst_mac: None,
            dscp: Some(dscp),
            vlan: None,
        },
    )
}

/// Cut Ethernet/IPv4 frame `frame` into fragments of identification `id`:
/// fragment `i` carries `sizes[i]` bytes of the IP payload (a multiple of
/// 8), one more fragment the rest. Each fragment's IPv4 header (total
/// length, MF, offset, checksum) is written by etherparse.
pub fn fragment_v4(frame: &[u8], id: u16, sizes: &[usize]) -> Vec<Vec<u8>> {
    let (eth, ip) = frame.split_at(14);
    let (mut h, rest) = etherparse::Ipv4Header::from_slice(ip).expect("an IPv4 frame");
    let payload = &rest[..usize::from(h.total_len) - h.header_len()];
    h.identification = id;
    h.dont_fragment = false;
    let one = |off: usize, data: &[u8], more: bool| {
        let mut h = h.clone();
        h.more_fragments = more;
        h.fragment_offset =
            etherparse::IpFragOffset::try_new(u16::try_from(off / 8).expect("offset"))
                .expect("fragment offset");
        h.set_payload_len(data.len()).expect("payload length");
        h.header_checksum = h.calc_header_checksum();
        let mut f = eth.to_vec();
        f.extend_from_slice(&h.to_bytes());
        f.extend_from_slice(data);
        f
    };
    let mut out = Vec::new();
    let mut off = 0;
    for &n in sizes {
        assert!(n.is_multiple_of(8) && n > 0, "fragment size {n}");
        assert!(
            off + n < payload.len(),
            "no data left for the last fragment"
        );
        out.push(one(off, &payload[off..off + n], true));
        off += n;
    }
    out.push(one(off, &payload[off..], false));
    out
}

/// [`fragment_v4`] for a link MTU: every fragment as large as fits.
pub fn fragment_mtu(frame: &[u8], id: u16, mtu: usize) -> Vec<Vec<u8>> {
    let payload = frame.len() - 14 - 20;
    let per = (mtu - 20) / 8 * 8;
    fragment_v4(frame, id, &vec![per; payload.div_ceil(per) - 1])
}

/// A port of two layers for IPv6 (`tests/ipv6.rs`, `tests/fragments.rs`):
/// a stateful ACL allowing the VM's IPv6 traffic out (and its answers
/// in), and a stateful NAT66 of `vm`'s address to `public`.
pub fn nat66_port(vm: std::net::Ipv6Addr, public: std::net::Ipv6Addr) -> Port {
    use std::net::IpAddr;
    use strata_engine::{
        ActionSpec, Condition, DefaultAction, Field, Group, LayerSpec, MatchValue, PortConfig, Rule,
    };
    let mut p = Port::new("v6", PortConfig::default());
    let v6 = Condition::exact(Field::EtherType, 0x86dd);
    let mut acl = LayerSpec::new("acl", DefaultAction::Block, DefaultAction::Block);
    acl.groups
        .push(Group::new("out", Direction::Out).with_rules(vec![
            Rule::new("allow-v6-out", 10, vec![v6.clone()], ActionSpec::Allow).stateful(),
        ]));
    p.add_layer(acl, None).expect("acl");
    let mut nat = LayerSpec::new("nat", DefaultAction::Allow, DefaultAction::Allow);
    nat.groups
        .push(Group::new("out", Direction::Out).with_rules(vec![
            Rule::new(
                "nat66",
                10,
                vec![v6, Condition::new(Field::SrcIp, vec![MatchValue::ip(IpAddr::V6(vm))])],
                ActionSpec::Nat {
                    src_ip: Some(IpAddr::V6(public)),
                    dst_ip: None,
                    src_port: None,
                    dst_port: None,
                },
            )
            .stateful(),
        ]));
    p.add_layer(nat, None).expect("nat");
    p
}
