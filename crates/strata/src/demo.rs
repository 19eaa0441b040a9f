//! `strata demo`: the canonical four-layer port (Meter, ACL, SLB NAT, VNET;
//! see `strata_engine::scenario`) under thousands of generated
//! connections, built as real frames with `etherparse`:
//!
//! - VM → VNET peers, TCP, full lifecycle: the VM's segments leave VXLAN
//!   encapsulated towards the peer's PA; the peer's answers arrive
//!   encapsulated from that PA and reach the VM decapsulated;
//! - VM → internet, TCP: SNAT to the VIP; the SNAT port is read from the
//!   switch's output frame and the replies are addressed to it;
//! - internet clients → VIP:80, arriving encapsulated from the MUX, DNAT
//!   to the VM's port 8080; the VM's replies leave directly from VIP:80
//!   (direct server return);
//! - VM ↔ VNET peers, UDP request/response, and pings from peers;
//! - traffic that must be dropped: outbound SMTP, unsolicited inbound TCP
//!   to closed ports, a VM packet to an unmapped CA (the mapping-miss event
//!   is read from the port's event channel), and malformed frames;
//! - a DNS server's "port unreachable" about the VM's query, relayed to
//!   the VM with its quote translated back, and an error about no
//!   connection, blocked;
//! - a large DNS answer in three IP fragments arriving last first: held
//!   until the first passes, then all three reach the VM un-NAT'd.
//!
//! Connections run concurrently on a synthetic clock (per-connection
//! RTTs, the VM answering in tens of microseconds), a few data segments
//! are retransmitted, and the port's expiry runs every second of
//! synthetic time, as `strata replay` does. Every frame the switch
//! forwards is re-parsed with `etherparse` and checked (addresses, encap,
//! NAT, checksums); any unexpected verdict or rewrite, any TCP-statistics
//! mismatch, and any flow or SNAT port left after expiry past TIME_WAIT is
//! an invariant failure, reported in [`DemoReport::failures`] (the binary
//! exits non-zero).

use crate::capture::{CaptureError, CaptureFormat, CaptureWriter};
use crate::frames::{self, Flags, Outer, Summary};
use crate::policy_file::{MappingTableSpec, PolicyError, PolicySpec};
use crate::replay::{DEFAULT_EXPIRE_INTERVAL_NS, Replayer};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use strata_engine::counters::CounterName;
use strata_engine::scenario::{
    self, DIP_PORT, GW_MAC, HOST_MAC, HOST_PA, LB_POOL, MAPPING, MUX_PA, SNAT_POOL, VIP, VM_CA,
    VM_GW_MAC, VM_MAC, VNI,
};
use strata_engine::{ApiError, Direction, DropReason, Port, PortConfig, ResourceEvent, Verdict};
use strata_packet::flow::MacAddr;

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub connections: usize,
    pub seed: u64,
    /// Write `demo.pcapng` and `policy.toml` here.
    pub write_pcap: Option<PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            connections: 5000,
            seed: 1,
            write_pcap: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("building the port: {0}")]
    Api(#[from] ApiError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What the demo did and found.
#[derive(Clone, Debug, Default)]
pub struct DemoReport {
    /// Broken invariants (empty = success).
    pub failures: Vec<String>,
    pub packets: u64,
    pub forwarded: u64,
    pub dropped: u64,
    pub tcp_connections: u64,
    pub udp_flows: u64,
    pub peak_connections: usize,
    pub connections_after_expiry: usize,
    /// Files written with `write_pcap`.
    pub written: Vec<PathBuf>,
}

/// Remote hosts 10.1.x.y with x < this are mapped.
const MAPPED_HOSTS_X: u8 = 4;
/// Synthetic clock start (ns since the epoch), so captures look real.
const T0: u64 = 1_700_000_000_000_000_000;
/// Ephemeral ports of the VM.
const VM_PORT_BASE: u16 = 20_000;

/// splitmix64: small, seedable, good enough for traffic shapes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    VnetTcp,
    InternetTcp,
    LbTcp,
    VnetUdp,
    PingIn,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::VnetTcp => "vnet-tcp",
            Kind::InternetTcp => "internet-tcp",
            Kind::LbTcp => "lb-tcp",
            Kind::VnetUdp => "vnet-udp",
            Kind::PingIn => "ping-in",
        }
    }
}

/// Who sends a step: the initiator (A) or the responder (B).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    A,
    B,
}

impl Side {
    fn i(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Syn,
    SynAck,
    Ack(Side),
    Data(Side, u16),
    Retransmit(Side),
    Fin(Side),
    Udp(Side, u16),
    EchoRequest,
    EchoReply,
}

impl Step {
    fn sender(self) -> Side {
        match self {
            Step::Syn | Step::EchoRequest => Side::A,
            Step::SynAck | Step::EchoReply => Side::B,
            Step::Ack(s)
            | Step::Data(s, _)
            | Step::Retransmit(s)
            | Step::Fin(s)
            | Step::Udp(s, _) => s,
        }
    }
}

/// One generated connection.
struct Conn {
    kind: Kind,
    /// The VM-side endpoint (10.1.0.4:port).
    vm: SocketAddrV4,
    /// The other endpoint: peer CA, internet host or client.
    remote: SocketAddrV4,
    /// Peer host coordinates (VNET kinds).
    peer: (u8, u8),
    steps: Vec<Step>,
    next: usize,
    /// Next sequence number per side, and the last data segment sent.
    seq: [u32; 2],
    last: [(u32, u16); 2],
    rtt: u64,
    /// The SNAT address learned from the switch's first output frame.
    snat: Option<SocketAddrV4>,
    /// Outer UDP source port the remote uses (VXLAN entropy).
    entropy: u16,
    broken: bool,
}

impl Conn {
    /// Which direction does `side` send in?
    fn direction(&self, side: Side) -> Direction {
        let vm_is_a = !matches!(self.kind, Kind::LbTcp | Kind::PingIn);
        match (side, vm_is_a) {
            (Side::A, true) | (Side::B, false) => Direction::Out,
            _ => Direction::In,
        }
    }
}

/// The demo's state: the port driver, clock, expectations and tallies.
struct Sim<'p> {
    r: Replayer<'p>,
    now: u64,
    failures: Vec<String>,
    failure_count: usize,
    record: Option<Vec<(u64, Direction, Vec<u8>)>>,
    peak: Peak,
    expected_retransmits: u64,
    /// Events read from the port's event channel.
    events: Vec<String>,
    /// Frames the port forwarded on releasing held IP fragments, since
    /// they were last taken.
    released: Vec<Vec<u8>>,
}

#[derive(Clone, Debug, Default)]
struct Peak {
    connections: usize,
    unified_flows: usize,
    layer_flows: Vec<(String, usize)>,
}

/// What the switch should do with a frame.
enum Expect {
    /// Forward, with the output checked by the closure.
    Forward,
    Drop(DropReason),
    /// Held: a later IP fragment before its first.
    Held,
}

impl<'p> Sim<'p> {
    fn fail(&mut self, msg: String) {
        self.failure_count += 1;
        if self.failures.len() < 200 {
            self.failures.push(msg);
        }
    }

    /// Send one frame; returns the output frame when forwarded.
    fn send(
        &mut self,
        d: Direction,
        frame: Vec<u8>,
        expect: Expect,
        what: &str,
    ) -> Option<Vec<u8>> {
        let p = self.r.process(d, &frame, self.now);
        if let Some(rec) = self.record.as_mut() {
            rec.push((self.now, d, frame));
        }
        for q in &p.released {
            match &q.output {
                Some(o) => self.released.push(o.clone()),
                None => self.fail(format!("{what}: a fragment it released: {:?}", q.verdict)),
            }
        }
        let c = self.r.port.connection_count();
        if c > self.peak.connections {
            let port = &*self.r.port;
            self.peak = Peak {
                connections: c,
                unified_flows: port.unified_flow_count(),
                layer_flows: port
                    .layer_ids()
                    .into_iter()
                    .map(|l| {
                        let n = port.layer_flow_count(&l);
                        (l, n)
                    })
                    .collect(),
            };
        }
        match (expect, p.verdict) {
            (Expect::Forward, Verdict::Forward) => p.output,
            (Expect::Drop(want), Verdict::Drop { reason, .. }) if want == reason => None,
            (Expect::Held, Verdict::Held) => None,
            (Expect::Held, v) => {
                self.fail(format!("{what}: expected held, got {v:?}"));
                None
            }
            (Expect::Forward, v) => {
                self.fail(format!("{what}: expected forward, got {v:?}"));
                None
            }
            (Expect::Drop(want), v) => {
                self.fail(format!("{what}: expected drop ({want}), got {v:?}"));
                None
            }
        }
    }

    /// Check an output frame; `ok` returns a complaint if something is off.
    fn check(
        &mut self,
        what: &str,
        out: &[u8],
        ok: impl FnOnce(&Summary) -> Option<String>,
    ) -> Option<Summary> {
        match frames::summarize(out) {
            Ok(s) => {
                if !s.checksums_ok {
                    self.fail(format!("{what}: bad checksum in output frame"));
                }
                if let Some(m) = ok(&s) {
                    self.fail(format!("{what}: {m}"));
                }
                Some(s)
            }
            Err(e) => {
                self.fail(format!("{what}: output does not parse: {e}"));
                None
            }
        }
    }
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// The mapping entries the demo installs (for the exported policy file).
fn demo_mappings() -> MappingTableSpec {
    let mut entries = Vec::new();
    for x in 0..MAPPED_HOSTS_X {
        for y in 1..=250u8 {
            if x == 0 && y == 4 {
                continue;
            }
            entries.push((
                IpAddr::V4(Ipv4Addr::new(10, 1, x, y)),
                scenario::mapping_for(x, y),
            ));
        }
    }
    MappingTableSpec {
        name: MAPPING.into(),
        entries,
    }
}

/// Build the connections.
fn make_conns(n: usize, rng: &mut Rng) -> Vec<Conn> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let kind = match i % 20 {
            0..=7 => Kind::VnetTcp,
            8..=12 => Kind::InternetTcp,
            13..=16 => Kind::LbTcp,
            _ => Kind::VnetUdp,
        };
        let vm_port = VM_PORT_BASE + (i % 40_000) as u16;
        let mut peer = (0, 0);
        let (vm, remote, rtt) = match kind {
            Kind::VnetTcp | Kind::VnetUdp => {
                let x = rng.range(0, u64::from(MAPPED_HOSTS_X) - 1) as u8;
                let mut y = rng.range(1, 250) as u8;
                if x == 0 && y == 4 {
                    y = 5;
                }
                peer = (x, y);
                let port = if kind == Kind::VnetUdp {
                    [53, 123, 5000][i % 3]
                } else {
                    [80, 443, 1433, 6379][i % 4]
                };
                (
                    SocketAddrV4::new(VM_CA, vm_port),
                    SocketAddrV4::new(Ipv4Addr::new(10, 1, x, y), port),
                    rng.range(80_000, 600_000),
                )
            }
            Kind::InternetTcp => (
                SocketAddrV4::new(VM_CA, vm_port),
                SocketAddrV4::new(
                    Ipv4Addr::new(93, 184, rng.range(0, 255) as u8, rng.range(1, 254) as u8),
                    if i % 2 == 0 { 443 } else { 80 },
                ),
                rng.range(5_000_000, 60_000_000),
            ),
            Kind::LbTcp | Kind::PingIn => (
                SocketAddrV4::new(VM_CA, DIP_PORT),
                SocketAddrV4::new(
                    Ipv4Addr::new(198, 51, 100 + (i % 3) as u8, rng.range(1, 254) as u8),
                    30_000 + (i % 30_000) as u16,
                ),
                rng.range(5_000_000, 60_000_000),
            ),
        };
        let mut steps = Vec::new();
        let retransmit = kind != Kind::VnetUdp && rng.range(0, 99) < 3;
        match kind {
            Kind::VnetUdp => {
                for _ in 0..rng.range(1, 3) {
                    steps.push(Step::Udp(Side::A, rng.range(40, 300) as u16));
                    steps.push(Step::Udp(Side::B, rng.range(40, 1200) as u16));
                }
            }
            Kind::PingIn => {
                steps.push(Step::EchoRequest);
                steps.push(Step::EchoReply);
            }
            _ => {
                steps.extend([Step::Syn, Step::SynAck, Step::Ack(Side::A)]);
                let rounds = rng.range(1, 3);
                for r in 0..rounds {
                    steps.push(Step::Data(Side::A, rng.range(60, 600) as u16));
                    if retransmit && r == 0 {
                        steps.push(Step::Retransmit(Side::A));
                    }
                    steps.push(Step::Data(Side::B, rng.range(200, 1400) as u16));
                    steps.push(Step::Ack(Side::A));
                }
                steps.extend([Step::Fin(Side::A), Step::Fin(Side::B), Step::Ack(Side::A)]);
            }
        }
        let isn_a = rng.next() as u32;
        let isn_b = rng.next() as u32;
        conns.push(Conn {
            kind,
            vm,
            remote,
            peer,
            steps,
            next: 0,
            seq: [isn_a, isn_b],
            last: [(0, 0); 2],
            rtt,
            snat: None,
            entropy: rng.range(49_152, 65_535) as u16,
            broken: false,
        });
    }
    conns
}

/// Build the frame for the connection's current step (and advance the
/// sequence numbers). Returns the direction, frame and a label.
fn build_step(c: &mut Conn, step: Step) -> (Direction, Vec<u8>) {
    let side = step.sender();
    let d = c.direction(side);
    let me = side.i();
    let other = 1 - me;
    let payload = |n: u16| vec![0x5au8; usize::from(n)];
    // Endpoint addresses as the sender writes them.
    let (src, dst, src_mac, dst_mac) = match (c.kind, d) {
        (_, Direction::Out) => (c.vm, c.remote, VM_MAC, VM_GW_MAC),
        (Kind::VnetTcp | Kind::VnetUdp, Direction::In) => (
            c.remote,
            c.vm,
            scenario::remote_mac(c.peer.0, c.peer.1),
            VM_MAC,
        ),
        (Kind::PingIn, Direction::In) => (
            c.remote,
            c.vm,
            scenario::remote_mac(c.peer.0, c.peer.1),
            VM_MAC,
        ),
        (Kind::InternetTcp, Direction::In) => (
            c.remote,
            c.snat.unwrap_or(SocketAddrV4::new(VIP, 0)),
            GW_MAC,
            HOST_MAC,
        ),
        (Kind::LbTcp, Direction::In) => (c.remote, SocketAddrV4::new(VIP, 80), GW_MAC, VM_MAC),
    };
    let ack = c.seq[other];
    let inner = match step {
        Step::Syn => {
            let f = frames::tcp(src_mac, dst_mac, src, dst, c.seq[me], 0, Flags::SYN, &[]);
            c.seq[me] = c.seq[me].wrapping_add(1);
            f
        }
        Step::SynAck => {
            let f = frames::tcp(
                src_mac,
                dst_mac,
                src,
                dst,
                c.seq[me],
                ack,
                Flags::SYN_ACK,
                &[],
            );
            c.seq[me] = c.seq[me].wrapping_add(1);
            f
        }
        Step::Ack(_) => frames::tcp(src_mac, dst_mac, src, dst, c.seq[me], ack, Flags::ACK, &[]),
        Step::Data(_, n) => {
            let f = frames::tcp(
                src_mac,
                dst_mac,
                src,
                dst,
                c.seq[me],
                ack,
                Flags::PSH_ACK,
                &payload(n),
            );
            c.last[me] = (c.seq[me], n);
            c.seq[me] = c.seq[me].wrapping_add(u32::from(n));
            f
        }
        Step::Retransmit(_) => {
            let (s, n) = c.last[me];
            frames::tcp(
                src_mac,
                dst_mac,
                src,
                dst,
                s,
                ack,
                Flags::PSH_ACK,
                &payload(n),
            )
        }
        Step::Fin(_) => {
            let f = frames::tcp(
                src_mac,
                dst_mac,
                src,
                dst,
                c.seq[me],
                ack,
                Flags::FIN_ACK,
                &[],
            );
            c.seq[me] = c.seq[me].wrapping_add(1);
            f
        }
        Step::Udp(_, n) => frames::udp(src_mac, dst_mac, src, dst, &payload(n)),
        Step::EchoRequest => {
            frames::icmp_echo_request(src_mac, dst_mac, *src.ip(), *dst.ip(), src.port(), 1)
        }
        Step::EchoReply => echo_reply(src_mac, dst_mac, *src.ip(), *dst.ip(), dst.port(), 1),
    };
    let frame = match (c.kind, d) {
        (Kind::VnetTcp | Kind::VnetUdp | Kind::PingIn, Direction::In) => frames::vxlan(
            &Outer {
                src_mac: GW_MAC,
                dst_mac: HOST_MAC,
                src_ip: scenario::remote_pa(c.peer.0, c.peer.1),
                dst_ip: HOST_PA,
                src_port: c.entropy,
                vni: VNI,
            },
            &inner,
        ),
        (Kind::LbTcp, Direction::In) => frames::vxlan(
            &Outer {
                src_mac: GW_MAC,
                dst_mac: HOST_MAC,
                src_ip: MUX_PA,
                dst_ip: HOST_PA,
                src_port: c.entropy,
                vni: VNI,
            },
            &inner,
        ),
        _ => inner,
    };
    (d, frame)
}

fn echo_reply(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    seq: u16,
) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_echo_reply(id, seq);
    let payload = b"strata-ping";
    let mut out = Vec::with_capacity(b.size(payload.len()));
    let _ = b.write(&mut out, payload);
    out
}

/// Check the switch's output for one step of a connection.
fn check_output(sim: &mut Sim<'_>, c: &mut Conn, d: Direction, out: &[u8], what: &str) {
    let kind = c.kind;
    let (vm, remote, peer) = (c.vm, c.remote, c.peer);
    let snat = c.snat;
    let s = sim.check(what, out, |s| {
        let remote_ip = IpAddr::V4(*remote.ip());
        let vm_ip = IpAddr::V4(*vm.ip());
        match (kind, d) {
            (Kind::VnetTcp | Kind::VnetUdp | Kind::PingIn, Direction::Out) => {
                let Some(o) = s.outer else {
                    return Some("VNET packet left without encap".into());
                };
                let want_pa = IpAddr::V4(scenario::remote_pa(peer.0, peer.1));
                if o.dst_ip != want_pa || o.src_ip != IpAddr::V4(HOST_PA) || o.vni != VNI {
                    return Some(format!(
                        "encap {} -> {} vni {}, expected {HOST_PA} -> {want_pa} vni {VNI}",
                        o.src_ip, o.dst_ip, o.vni
                    ));
                }
                if o.src_mac != HOST_MAC || o.dst_mac != GW_MAC {
                    return Some(format!("outer MACs {} -> {}", o.src_mac, o.dst_mac));
                }
                if s.dst_mac != scenario::remote_mac(peer.0, peer.1) {
                    return Some(format!("inner dst MAC {} is not the peer's", s.dst_mac));
                }
                if s.src_ip != Some(vm_ip) || s.dst_ip != Some(remote_ip) {
                    return Some("inner addresses changed".into());
                }
                None
            }
            (Kind::InternetTcp, Direction::Out) => {
                if s.outer.is_some() {
                    return Some("internet packet was encapsulated".into());
                }
                if s.src_ip != Some(IpAddr::V4(VIP)) || s.dst() != Some(remote) {
                    return Some(format!(
                        "not SNATed to the VIP: {:?} -> {:?}",
                        s.src(),
                        s.dst()
                    ));
                }
                if let Some(sn) = snat
                    && s.src() != Some(sn)
                {
                    return Some(format!(
                        "SNAT port changed mid-connection: {sn} then {:?}",
                        s.src()
                    ));
                }
                if s.src_mac != HOST_MAC || s.dst_mac != GW_MAC {
                    return Some(format!("MACs {} -> {}", s.src_mac, s.dst_mac));
                }
                None
            }
            (Kind::LbTcp, Direction::Out) => {
                if s.outer.is_some() {
                    return Some("DSR reply was encapsulated".into());
                }
                if s.src() != Some(SocketAddrV4::new(VIP, 80)) || s.dst() != Some(remote) {
                    return Some(format!(
                        "DSR reply {:?} -> {:?}, expected from {VIP}:80",
                        s.src(),
                        s.dst()
                    ));
                }
                None
            }
            (Kind::LbTcp, Direction::In) => {
                if s.outer.is_some() {
                    return Some("not decapsulated".into());
                }
                if s.dst() != Some(SocketAddrV4::new(VM_CA, DIP_PORT)) || s.src() != Some(remote) {
                    return Some(format!("LB DNAT gave {:?} -> {:?}", s.src(), s.dst()));
                }
                if s.src_mac != VM_GW_MAC || s.dst_mac != VM_MAC {
                    return Some(format!("MACs {} -> {}", s.src_mac, s.dst_mac));
                }
                None
            }
            (_, Direction::In) => {
                if s.outer.is_some() {
                    return Some("not decapsulated".into());
                }
                if s.dst_ip != Some(vm_ip) || s.src_ip != Some(remote_ip) {
                    return Some(format!("delivered {:?} -> {:?}", s.src_ip, s.dst_ip));
                }
                if kind != Kind::PingIn && s.dst() != Some(vm) {
                    return Some(format!("delivered to {:?}, expected {vm}", s.dst()));
                }
                if s.src_mac != VM_GW_MAC || s.dst_mac != VM_MAC {
                    return Some(format!("MACs {} -> {}", s.src_mac, s.dst_mac));
                }
                None
            }
        }
    });
    if kind == Kind::InternetTcp
        && d == Direction::Out
        && c.snat.is_none()
        && let Some(s) = s
        && let (Some(ip), port) = (s.src_ip.and_then(v4), s.src_port)
    {
        c.snat = Some(SocketAddrV4::new(ip, port));
    }
}

/// Run the demo, printing the report to `out`.
pub fn run(opts: &DemoOptions, out: &mut dyn Write) -> Result<DemoReport, DemoError> {
    let mut port = scenario::four_layer_port(PortConfig::default(), 0)?;
    scenario::install_mappings(&mut port, MAPPED_HOSTS_X)?;
    let policy = PolicySpec::from_port(&port, &[demo_mappings()]);
    let events = port.subscribe_events();
    let mut drain = move || events.try_iter().collect::<Vec<_>>();
    let config = port.config().clone();

    let mut rng = Rng(opts.seed ^ 0x5354_5241_5441_0001);
    let mut conns = make_conns(opts.connections, &mut rng);
    let pings = opts.connections / 100 + 2;
    for i in 0..pings {
        let x = (i % usize::from(MAPPED_HOSTS_X)) as u8;
        let y = 10 + (i % 200) as u8;
        conns.push(Conn {
            kind: Kind::PingIn,
            vm: SocketAddrV4::new(VM_CA, 0),
            remote: SocketAddrV4::new(Ipv4Addr::new(10, 1, x, y), 0x4000 + i as u16),
            peer: (x, y),
            steps: vec![Step::EchoRequest, Step::EchoReply],
            next: 0,
            seq: [0, 0],
            last: [(0, 0); 2],
            rtt: 200_000,
            snat: None,
            entropy: 50_000 + i as u16,
            broken: false,
        });
    }

    // Sized for every connection it will see, as an operator who knows its
    // scale would: no table grows inside a packet.
    port.reserve(conns.len().min(config.max_connections))?;
    let reserved_bytes = port.flow_memory().total();

    let mut report = DemoReport::default();
    let mut sim = Sim {
        r: Replayer::new(&mut port, false, Some(DEFAULT_EXPIRE_INTERVAL_NS)),
        now: T0,
        failures: Vec::new(),
        failure_count: 0,
        record: opts.write_pcap.as_ref().map(|_| Vec::new()),
        peak: Peak::default(),
        expected_retransmits: 0,
        events: Vec::new(),
        released: Vec::new(),
    };

    // Connections start over a window of ~200 µs per connection (1 s per
    // 5000), so thousands are open at once.
    let window = (conns.len() as u64).max(1) * 200_000;
    let mut queue: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    for i in 0..conns.len() {
        queue.push(Reverse((T0 + rng.range(0, window), i)));
    }
    let mut sample_out_vnet: Option<String> = None;
    let mut sample_in_lb: Option<String> = None;
    let mut tcp_conns = 0u64;
    let mut udp_flows = 0u64;
    for c in &conns {
        match c.kind {
            Kind::VnetTcp | Kind::InternetTcp | Kind::LbTcp => tcp_conns += 1,
            Kind::VnetUdp => udp_flows += 1,
            Kind::PingIn => {}
        }
        sim.expected_retransmits += c
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Retransmit(_)))
            .count() as u64;
    }

    // Blocked and malformed traffic is sent at fixed points in the run.
    let mut extras_done = false;
    let extras_at = T0 + window / 2;

    while let Some(Reverse((t, ci))) = queue.pop() {
        if !extras_done && t >= extras_at {
            sim.now = extras_at;
            send_blocked(&mut sim, &mut drain, out)?;
            send_icmp_errors(&mut sim);
            send_fragments(&mut sim);
            extras_done = true;
        }
        sim.now = sim.now.max(t);
        let c = &mut conns[ci];
        if c.broken || c.next >= c.steps.len() {
            continue;
        }
        let step = c.steps[c.next];
        let (d, frame) = build_step(c, step);
        let what = format!(
            "{} {} -> {} step {} ({:?}, {})",
            c.kind.name(),
            c.vm,
            c.remote,
            c.next,
            step,
            d.name()
        );
        // One sample trace of each kind, taken before the first packet.
        if c.next == 0 && c.kind == Kind::VnetTcp && sample_out_vnet.is_none() {
            sample_out_vnet = sim
                .r
                .port
                .trace_frame(d, &frame, sim.now)
                .ok()
                .map(|t| t.to_string());
        }
        if c.next == 0 && c.kind == Kind::LbTcp && sample_in_lb.is_none() {
            sample_in_lb = sim
                .r
                .port
                .trace_frame(d, &frame, sim.now)
                .ok()
                .map(|t| t.to_string());
        }
        match sim.send(d, frame, Expect::Forward, &what) {
            Some(o) => check_output(&mut sim, c, d, &o, &what),
            None => c.broken = true,
        }
        c.next += 1;
        if c.next < c.steps.len() {
            let next = c.steps[c.next];
            let delay = if matches!(next, Step::Retransmit(_)) {
                3 * c.rtt
            } else if next.sender() == step.sender() {
                10_000
            } else if c.direction(next.sender()) == Direction::In {
                // The network answers after a round trip.
                c.rtt
            } else {
                // The VM answers quickly.
                rng.range(20_000, 120_000)
            };
            queue.push(Reverse((sim.now + delay, ci)));
        }
    }
    if !extras_done {
        send_blocked(&mut sim, &mut drain, out)?;
        send_icmp_errors(&mut sim);
        send_fragments(&mut sim);
    }
    let end = sim.now;
    let Sim {
        r,
        failures: mut_failures,
        failure_count: traffic_failures,
        record,
        peak,
        expected_retransmits,
        events: event_lines,
        ..
    } = sim;
    let summary = r.finish();
    let mut failures = mut_failures;
    let mut failure_count = traffic_failures;
    let failures_traffic = traffic_failures;

    // ----- report ---------------------------------------------------------
    let cn = port.counters().clone();
    writeln!(
        out,
        "strata demo: {} connections ({} TCP, {} UDP, {} pings) + blocked and malformed traffic, seed {}",
        conns.len(),
        tcp_conns,
        udp_flows,
        pings,
        opts.seed
    )?;
    writeln!(out, "synthetic time: {:.3} s", (end - T0) as f64 / 1e9)?;
    writeln!(out, "\n== per direction")?;
    writeln!(
        out,
        "  {:<4} {:>9} {:>11} {:>9} {:>8} {:>9} {:>9} {:>10}",
        "dir", "packets", "bytes", "forward", "dropped", "fast", "slow", "reconciled"
    )?;
    for d in [Direction::Out, Direction::In] {
        let c = cn.direction(d);
        writeln!(
            out,
            "  {:<4} {:>9} {:>11} {:>9} {:>8} {:>9} {:>9} {:>10}",
            d.name(),
            c.packets,
            c.bytes,
            c.forwarded,
            c.dropped,
            c.fast_path,
            c.slow_path,
            c.reconciled
        )?;
    }
    writeln!(out, "\n== drops by reason")?;
    for r in DropReason::ALL {
        let n = cn.drops_for(r);
        if n > 0 {
            writeln!(out, "  {:<16} {n}", r.name())?;
        }
    }
    for (r, n) in &cn.malformed {
        writeln!(out, "    malformed: {r:<24} {n}")?;
    }
    writeln!(out, "\n== blocked traffic")?;
    writeln!(
        out,
        "  outbound SMTP (2 attempts), unsolicited inbound TCP to VIP:22 and to VM:22 from a peer,"
    )?;
    writeln!(
        out,
        "  a SYN to unmapped CA 10.1.200.7, 5 malformed frames; events from the port's channel:"
    )?;
    for e in &event_lines {
        writeln!(out, "    {e}")?;
    }
    let ie = port.icmp_error_counters();
    writeln!(out, "\n== ICMP errors")?;
    writeln!(
        out,
        "  {} relayed to their connection (quote translated back), {} about no connection \
         (left to the policy), {} unreadable",
        ie.relayed, ie.unrelated, ie.unreadable
    )?;
    let fc = port.fragment_counters();
    writeln!(out, "\n== IP fragments")?;
    writeln!(
        out,
        "  {} datagrams tracked from their first fragment, {} completed; {} later fragments \
         followed their first, {} held for it and {} released; {} timed out, {} overflowed",
        fc.first, fc.completed, fc.followed, fc.held, fc.released, fc.timed_out, fc.overflow
    )?;
    writeln!(out, "\n== layers (VM side first)")?;
    for l in port.layer_ids() {
        let c = cn.layer(&l);
        writeln!(
            out,
            "  {:<6} packets {:>9}  bytes {:>11}  drops {:>5}",
            l, c.packets, c.bytes, c.drops
        )?;
    }
    writeln!(out, "\n== rules")?;
    for (name, c) in cn.arena.all() {
        if let CounterName::Rule { layer, rule } = name {
            writeln!(
                out,
                "  {:<6} {:<18} packets {:>9}  bytes {:>11}  drops {:>5}",
                layer, rule, c.packets, c.bytes, c.drops
            )?;
        }
    }
    writeln!(out, "\n== meter buckets (top 5 by packets)")?;
    for (rule, label) in [
        ("meter-dst", "outbound, per destination"),
        ("meter-src", "inbound, per source"),
    ] {
        let mut buckets: Vec<_> = cn.meter("meter", rule).into_iter().collect();
        buckets.sort_by(|a, b| b.1.packets.cmp(&a.1.packets).then(a.0.cmp(&b.0)));
        writeln!(out, "  {rule} ({label}; {} buckets):", buckets.len())?;
        for (b, c) in buckets.iter().take(5) {
            writeln!(
                out,
                "    {:<18} packets {:>6}  bytes {:>9}",
                b, c.packets, c.bytes
            )?;
        }
    }
    let tcp = cn.tcp;
    writeln!(out, "\n== TCP")?;
    writeln!(
        out,
        "  handshakes {}  invalid {}  resets {}  retransmits {}  ECN CE {}",
        tcp.handshakes_completed,
        tcp.invalid_handshakes,
        tcp.resets,
        tcp.retransmits,
        tcp.ecn_ce_marks
    )?;
    match tcp.avg_rtt_ns() {
        Some(ns) => writeln!(
            out,
            "  avg RTT {:.3} ms over {} samples (synthetic)",
            ns as f64 / 1e6,
            tcp.rtt_samples
        )?,
        None => writeln!(out, "  no RTT samples")?,
    }
    writeln!(out, "\n== flows")?;
    writeln!(
        out,
        "  sized ahead (Port::reserve) for {} connections: {:.1} MB of flow tables before the first packet",
        port.reserved_connections(),
        reserved_bytes as f64 / 1e6
    )?;
    writeln!(
        out,
        "  peak: {} connections, {} unified flows, layer flows: {}",
        peak.connections,
        peak.unified_flows,
        layer_flow_text(&peak.layer_flows)
    )?;
    writeln!(
        out,
        "  at end of traffic: {} connections, {} unified flows ({} expired by housekeeping)",
        port.connection_count(),
        port.unified_flow_count(),
        summary.expired_connections
    )?;
    let pool_in_use_before = snat_in_use(&port);

    // Expire everything: past TIME_WAIT, UDP and half-open timeouts.
    let horizon = [
        config.tcp_time_wait,
        config.udp_idle,
        config.tcp_half_open_idle,
        config.tcp_established_idle,
        config.other_idle,
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    let later = end + horizon + 1_000_000_000;
    let expired = port.expire(later);
    let layer_after: Vec<(String, usize)> = port
        .layer_ids()
        .into_iter()
        .map(|l| {
            let n = port.layer_flow_count(&l);
            (l, n)
        })
        .collect();
    writeln!(
        out,
        "  after expire(+{} s): {} connections expired; {} connections, {} unified flows, layer flows: {}",
        (later - end) / 1_000_000_000,
        expired,
        port.connection_count(),
        port.unified_flow_count(),
        layer_flow_text(&layer_after)
    )?;
    let f = port.counters().flows;
    writeln!(
        out,
        "  totals: connections created {}, closed {}, expired {}; layer flows created {}",
        f.connections_created, f.connections_closed, f.connections_expired, f.layer_flows_created
    )?;
    writeln!(
        out,
        "  SNAT ports in use: {} at end of traffic, {} after expiry",
        pool_in_use_before,
        snat_in_use(&port)
    )?;

    writeln!(out, "\n== sample trace: outbound VNET flow (first packet)")?;
    write!(
        out,
        "{}",
        sample_out_vnet
            .as_deref()
            .unwrap_or("  (no VNET connection)\n")
    )?;
    writeln!(
        out,
        "\n== sample trace: inbound load-balanced flow (first packet)"
    )?;
    write!(
        out,
        "{}",
        sample_in_lb.as_deref().unwrap_or("  (no LB connection)\n")
    )?;

    // ----- invariants -----------------------------------------------------
    let mut fail = |m: String| {
        failure_count += 1;
        failures.push(m);
    };
    let all_tcp_ok = failures_traffic == 0;
    if all_tcp_ok && tcp.handshakes_completed != tcp_conns {
        fail(format!(
            "{} TCP handshakes completed, expected {tcp_conns}",
            tcp.handshakes_completed
        ));
    }
    if all_tcp_ok && tcp.retransmits != expected_retransmits {
        fail(format!(
            "{} retransmits counted, {expected_retransmits} were sent",
            tcp.retransmits
        ));
    }
    if tcp.invalid_handshakes != 0 {
        fail(format!("{} invalid handshakes", tcp.invalid_handshakes));
    }
    if port.connection_count() != 0 || port.unified_flow_count() != 0 {
        fail(format!(
            "{} connections / {} unified flows left after expiry",
            port.connection_count(),
            port.unified_flow_count()
        ));
    }
    for (l, n) in &layer_after {
        if *n != 0 {
            fail(format!("{n} layer flows left in layer {l} after expiry"));
        }
    }
    if snat_in_use(&port) != 0 {
        fail(format!(
            "{} SNAT ports still in use after expiry",
            snat_in_use(&port)
        ));
    }
    let total = cn.direction(Direction::Out).packets + cn.direction(Direction::In).packets;
    if total != summary.packets_in {
        fail(format!(
            "port counted {total} packets, {} were sent",
            summary.packets_in
        ));
    }
    if !port.resources().backend_pools.contains_key(LB_POOL) {
        fail("backend pool missing".into());
    }
    writeln!(out, "\n== invariants")?;
    if failure_count == 0 {
        writeln!(
            out,
            "  all checks passed ({} packets, every verdict and rewrite as expected)",
            summary.packets_in
        )?;
    } else {
        writeln!(out, "  {failure_count} FAILED")?;
    }

    // ----- files ----------------------------------------------------------
    if let (Some(dir), Some(rec)) = (&opts.write_pcap, record) {
        std::fs::create_dir_all(dir)?;
        let pcap = dir.join("demo.pcapng");
        let mut w = CaptureWriter::create(&pcap, CaptureFormat::PcapNg)?;
        for (ts, d, frame) in &rec {
            w.write(*ts, frame, *d)?;
        }
        w.finish()?;
        let pol = dir.join("policy.toml");
        let header = "# The policy of `strata demo` (scenario::four_layer_port with its\n\
                      # mappings), exported by `strata demo --write-pcap`.\n\n";
        std::fs::write(&pol, format!("{header}{}", policy.to_toml()?))?;
        writeln!(
            out,
            "\nwrote {} frames to {} and the policy to {}\ntry: strata replay --policy {} --in {} --out {} --log {}",
            rec.len(),
            pcap.display(),
            pol.display(),
            pol.display(),
            pcap.display(),
            dir.join("forwarded.pcapng").display(),
            dir.join("verdicts.jsonl").display()
        )?;
        report.written = vec![pcap, pol];
    }

    report.failures = failures;
    report.packets = summary.packets_in;
    report.forwarded = summary.packets_out;
    report.dropped = summary.packets_in - summary.packets_out;
    report.tcp_connections = tcp_conns;
    report.udp_flows = udp_flows;
    report.peak_connections = peak.connections;
    report.connections_after_expiry = port.connection_count();
    if failure_count > report.failures.len() {
        report.failures.push(format!(
            "... and {} more",
            failure_count - report.failures.len()
        ));
    }
    Ok(report)
}

fn snat_in_use(port: &Port) -> usize {
    port.resources()
        .port_pools
        .get(SNAT_POOL)
        .map_or(0, |p| p.in_use())
}

fn layer_flow_text(v: &[(String, usize)]) -> String {
    v.iter()
        .map(|(l, n)| format!("{l} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Traffic that must be dropped, and malformed frames.
fn send_blocked(
    sim: &mut Sim<'_>,
    events: &mut dyn FnMut() -> Vec<ResourceEvent>,
    _out: &mut dyn Write,
) -> Result<(), DemoError> {
    let vm = |p| SocketAddrV4::new(VM_CA, p);
    // Outbound SMTP: blocked by the infra ACL group (terminating rule);
    // the second attempt hits the cached drop flow.
    for attempt in 0..2u32 {
        let f = frames::tcp(
            VM_MAC,
            VM_GW_MAC,
            vm(61_000),
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 25), 25),
            1000 + attempt,
            0,
            Flags::SYN,
            &[],
        );
        sim.send(
            Direction::Out,
            f,
            Expect::Drop(DropReason::RuleBlock),
            "outbound SMTP",
        );
        sim.now += 1_000_000;
    }
    // Unsolicited inbound TCP to closed ports: natively to the VIP, and
    // from a VNET peer to the VM.
    let f = frames::tcp(
        GW_MAC,
        HOST_MAC,
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 7, 7), 40_000),
        SocketAddrV4::new(VIP, 22),
        77,
        0,
        Flags::SYN,
        &[],
    );
    sim.send(
        Direction::In,
        f,
        Expect::Drop(DropReason::DefaultBlock),
        "inbound to VIP:22",
    );
    let inner = frames::tcp(
        scenario::remote_mac(0, 9),
        VM_MAC,
        SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 9), 40_001),
        vm(22),
        78,
        0,
        Flags::SYN,
        &[],
    );
    let f = frames::vxlan(
        &Outer {
            src_mac: GW_MAC,
            dst_mac: HOST_MAC,
            src_ip: scenario::remote_pa(0, 9),
            dst_ip: HOST_PA,
            src_port: 50_123,
            vni: VNI,
        },
        &inner,
    );
    sim.send(
        Direction::In,
        f,
        Expect::Drop(DropReason::DefaultBlock),
        "VNET peer to VM:22",
    );
    // A CA with no mapping: dropped, and the agent is told.
    let unmapped = SocketAddrV4::new(Ipv4Addr::new(10, 1, 200, 7), 80);
    let f = frames::tcp(
        VM_MAC,
        VM_GW_MAC,
        vm(61_001),
        unmapped,
        5,
        0,
        Flags::SYN,
        &[],
    );
    sim.send(
        Direction::Out,
        f,
        Expect::Drop(DropReason::MappingMiss),
        "unmapped CA",
    );
    let got = events();
    if got.is_empty() {
        sim.fail("no mapping-miss event for 10.1.200.7".into());
    }
    sim.events.extend(got.iter().map(|e| format!("{e:?}")));
    // Malformed frames.
    let good = frames::tcp(
        VM_MAC,
        VM_GW_MAC,
        vm(61_002),
        SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 9), 80),
        9,
        0,
        Flags::SYN,
        &[],
    );
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    let mut bad_len = good.clone();
    bad_len[16] = 0x07;
    bad_len[17] = 0xd0;
    let mut bad_doff = good.clone();
    bad_doff[14 + 20 + 12] = 0x20;
    let mut bad_vxlan = frames::vxlan(
        &Outer {
            src_mac: GW_MAC,
            dst_mac: HOST_MAC,
            src_ip: scenario::remote_pa(0, 9),
            dst_ip: HOST_PA,
            src_port: 50_124,
            vni: VNI,
        },
        &good,
    );
    bad_vxlan[14 + 20 + 8] = 0;
    // Tunnels are decoded only on the network side, so the broken VXLAN
    // header is sent inbound (a VM's own VXLAN is opaque payload).
    let malformed: [(&str, Direction, Vec<u8>); 5] = [
        ("runt frame", Direction::Out, good[..10].to_vec()),
        ("IPv4 IHL 4", Direction::In, bad_ihl),
        ("IPv4 total length past the frame", Direction::Out, bad_len),
        ("TCP data offset 2", Direction::Out, bad_doff),
        ("VXLAN without the I flag", Direction::In, bad_vxlan),
    ];
    for (what, d, f) in malformed {
        sim.send(d, f, Expect::Drop(DropReason::Malformed), what);
        sim.now += 1_000;
    }
    Ok(())
}

/// The internet DNS server the VM queries in the extras.
const DNS_SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 53, 53), 53);

/// The VM at `vm` sends [`DNS_SERVER`] a query; the frame the switch sent
/// (SNAT'd to the VIP), if forwarded.
fn send_dns_query(
    sim: &mut Sim<'_>,
    vm: SocketAddrV4,
    query: &[u8],
    what: &str,
) -> Option<Vec<u8>> {
    let frame = frames::udp(VM_MAC, VM_GW_MAC, vm, DNS_SERVER, query);
    sim.send(Direction::Out, frame, Expect::Forward, what)
}

/// A large DNS answer to the VM, split by a router into three IPv4
/// fragments that arrive last first: the two later ones are held, the
/// first passes the SNAT and ACL as the query's answer and releases them,
/// and all three reach the VM un-NAT'd, reassembling (here, with
/// etherparse) into the answer with its UDP checksum intact.
fn send_fragments(sim: &mut Sim<'_>) {
    let vm = SocketAddrV4::new(VM_CA, 61_054);
    let server = DNS_SERVER;
    let Some(sent) = send_dns_query(sim, vm, b"a query for a large record", "DNS query (EDNS)")
    else {
        return;
    };
    let Ok(q) = frames::summarize(&sent) else {
        sim.fail("DNS query (EDNS): output does not parse".into());
        return;
    };
    let Some(IpAddr::V4(nat_ip)) = q.src_ip else {
        sim.fail("DNS query (EDNS): no IPv4 source".into());
        return;
    };
    let mut answer = Vec::new();
    let record: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let _ = etherparse::PacketBuilder::ethernet2(GW_MAC.0, HOST_MAC.0)
        .ipv4(server.ip().octets(), nat_ip.octets(), 60)
        .udp(server.port(), q.src_port)
        .write(&mut answer, &record);
    let Some(frags) = frames::fragment_v4(&answer, 1480, 0x5eed) else {
        sim.fail("DNS answer: not fragmented".into());
        return;
    };
    sim.released.clear();
    let mut outs = Vec::new();
    for (i, f) in frags.iter().enumerate().rev() {
        sim.now += 1_000;
        let what = format!("DNS answer fragment {i} of {}", frags.len());
        let expect = if i == 0 {
            Expect::Forward
        } else {
            Expect::Held
        };
        if let Some(o) = sim.send(Direction::In, f.clone(), expect, &what) {
            outs.push(o);
        }
    }
    outs.append(&mut sim.released);
    let what = "the reassembled DNS answer";
    match frames::reassemble_v4(&outs) {
        Ok(whole) => {
            sim.check(what, &whole, |s| {
                (s.dst_ip != Some(IpAddr::V4(VM_CA))
                    || s.dst_port != vm.port()
                    || s.payload_len != record.len())
                .then(|| {
                    format!(
                        "to {:?}:{} with {} bytes",
                        s.dst_ip, s.dst_port, s.payload_len
                    )
                })
            });
        }
        Err(e) => sim.fail(format!("{what}: {e}")),
    }
}

/// ICMP errors about the VM's traffic: a DNS server's "port unreachable"
/// about a datagram the VM sent (SNAT'd to the VIP) reaches the VM with
/// its quote translated back; one about a datagram never sent is blocked
/// by the ACL like any unsolicited packet.
fn send_icmp_errors(sim: &mut Sim<'_>) {
    let vm = SocketAddrV4::new(VM_CA, 61_053);
    let server = DNS_SERVER;
    let Some(sent) = send_dns_query(sim, vm, b"a query", "DNS query") else {
        return;
    };
    let error = |quote: &[u8]| {
        let mut f = Vec::new();
        let b = etherparse::PacketBuilder::ethernet2(GW_MAC.0, HOST_MAC.0)
            .ipv4(server.ip().octets(), VIP.octets(), 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ));
        let _ = b.write(&mut f, quote);
        f
    };
    let quote = sent.get(14..).unwrap_or_default().to_vec();
    sim.now += 1_000;
    let what = "port unreachable about the DNS query";
    if let Some(o) = sim.send(Direction::In, error(&quote), Expect::Forward, what) {
        // The quote names the VM's own address and port again.
        let q = 14 + 20 + 8;
        let quoted = (
            o.get(q + 12..q + 16)
                .map(|a| Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            o.get(q + 20..q + 22)
                .map(|p| u16::from_be_bytes([p[0], p[1]])),
        );
        sim.check(what, &o, |s| {
            (s.dst_ip != Some(IpAddr::V4(VM_CA)) || quoted != (Some(*vm.ip()), Some(vm.port())))
                .then(|| format!("relayed to {:?} quoting {quoted:?}", s.dst_ip))
        });
    }
    // A quote of a datagram the VM never sent (another source port).
    let mut forged = quote;
    if let Some(p) = forged.get_mut(20..22) {
        p.copy_from_slice(&7u16.to_be_bytes());
    }
    sim.now += 1_000;
    sim.send(
        Direction::In,
        error(&forged),
        Expect::Drop(DropReason::DefaultBlock),
        "port unreachable about no connection",
    );
}
