//! IP fragments through the four-layer stack (Meter, stateful ACL, SLB NAT
//! with SNAT, VNET VXLAN) and a NAT66 port: datagrams built whole by
//! etherparse and cut into fragments here (every IPv4 header written and
//! checksummed by etherparse; IPv6 with a fragment header), sent in order,
//! reordered, interleaved in bursts, across a snapshot. Every later
//! fragment must ride its first fragment's flow: the same SNAT address and
//! port (or ICMP echo identifier), the same un-NAT, the same ACL decision
//! (allowed by a connection, or blocked), the same load-balanced DIP, the
//! same tunnel (its outer UDP source port included). The outputs
//! are checked by reassembling them here (by offset, from the emitted IP
//! headers, each header checksum verified) and parsing the datagram with
//! etherparse, its UDP or TCP checksum verified against the translated
//! addresses and ports. Held fragments (before their first), their
//! release, their timeout and overflow, the end of a datagram's tracking
//! (complete, timed out, evicted) are checked with their counters; traces
//! tell the three cases apart; a burst matches frame-by-frame processing,
//! and a restored snapshot the original port, byte for byte.
//!
//! Most scenarios run twice, with a UDP datagram (no connection before it)
//! and with a TCP segment on a connection set up by a handshake.

mod common;
use common::*;
use etherparse::{
    Icmpv4Type, IpFragOffset, IpNumber, Ipv4Header, Ipv6Header, NetHeaders, PacketBuilder,
    PacketHeaders, TransportHeader,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use strata_engine::port::{FRAGMENT_TIMEOUT, MAX_HELD, MAX_HELD_PER_DATAGRAM};
use strata_engine::scenario::*;
use strata_engine::trace::FragmentHandling;
use strata_engine::{
    ActionRegistry, Backend, Direction, DropReason, Port, PortConfig, Time, Verdict, secs,
};
use strata_packet::PacketBuf;
use strata_packet::flow::{FiveTuple, MacAddr, tunnel_hash};

const WEB: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
const MUX_INNER: MacAddr = MacAddr([0x02, 0xbb, 0, 0, 0, 1]);
/// The VNET peer of these tests (its mapping is installed).
const PEER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 7);
const T0: Time = secs(1);

fn port() -> Port {
    let mut p = four_layer_port(PortConfig::default(), 0).expect("four-layer port");
    install_mappings(&mut p, 1).expect("mappings");
    p
}

// ----- fragments, built and read back ---------------------------------------

/// Cut Ethernet/IPv6 frame `frame` (no extension headers) into fragments
/// of identification `id` carrying `sizes` bytes, then the rest (RFC 8200
/// §4.5: a fragment header after the IPv6 header).
fn fragment_v6(frame: &[u8], id: u32, sizes: &[usize]) -> Vec<Vec<u8>> {
    let (eth, ip) = frame.split_at(14);
    let (h, rest) = Ipv6Header::from_slice(ip).expect("an IPv6 frame");
    let payload = &rest[..usize::from(h.payload_length)];
    let one = |off: usize, data: &[u8], more: bool| {
        let mut ip = h.clone();
        ip.next_header = IpNumber::IPV6_FRAGMENTATION_HEADER;
        ip.payload_length = u16::try_from(8 + data.len()).expect("payload length");
        let mut f = eth.to_vec();
        f.extend_from_slice(&ip.to_bytes());
        f.extend_from_slice(&frag_header6(h.next_header.0, off, more, id));
        f.extend_from_slice(data);
        f
    };
    let mut out = Vec::new();
    let mut off = 0;
    for &n in sizes {
        assert!(n.is_multiple_of(8) && off + n < payload.len());
        out.push(one(off, &payload[off..off + n], true));
        off += n;
    }
    out.push(one(off, &payload[off..], false));
    out
}

/// An IPv6 fragment header (RFC 8200 §4.5: offset in 8-byte units in the
/// top 13 bits of its third and fourth bytes, M the lowest bit), written
/// and read here: etherparse 0.19's `Ipv6FragmentHeader` puts the M flag
/// and the offset's low bits elsewhere.
fn frag_header6(next: u8, offset: usize, more: bool, id: u32) -> [u8; 8] {
    assert!(offset.is_multiple_of(8) && offset < 8 << 13);
    let field = (offset as u16 / 8) << 3 | u16::from(more);
    let [a, b] = field.to_be_bytes();
    let [c, d, e, f] = id.to_be_bytes();
    [next, 0, a, b, c, d, e, f]
}

/// An IPv6 fragment header, read (see [`frag_header6`]).
#[derive(Debug)]
struct Frag6 {
    next: u8,
    offset: usize,
    more: bool,
    id: u32,
}

impl Frag6 {
    fn read(h: &[u8]) -> Frag6 {
        let field = u16::from_be_bytes([h[2], h[3]]);
        assert_eq!(field & 6, 0, "reserved bits");
        Frag6 {
            next: h[0],
            offset: usize::from(field >> 3) * 8,
            more: field & 1 == 1,
            id: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        }
    }
}

/// A datagram reassembled from the fragments the switch sent, parsed by
/// etherparse.
#[derive(Debug, PartialEq, Eq)]
struct Datagram {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sp: u16,
    dp: u16,
    payload: Vec<u8>,
}

/// One fragment's part: where its data goes, whether more follow.
struct Piece {
    offset: usize,
    more: bool,
    data: Vec<u8>,
}

/// Put `pieces` (one datagram's, any order) together: they must cover it
/// exactly once, the last one without MF.
fn join(mut pieces: Vec<Piece>) -> Vec<u8> {
    pieces.sort_by_key(|p| p.offset);
    let mut data = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        assert_eq!(p.offset, data.len(), "fragment {i}: a gap or an overlap");
        assert_eq!(p.more, i + 1 < pieces.len(), "fragment {i}'s MF flag");
        data.extend_from_slice(&p.data);
    }
    data
}

/// Reassemble IPv4 packets `ips` (the fragments of one datagram, any
/// order, each IPv4 header checksum and total length verified): they must
/// agree on addresses, protocol and identification. The datagram is parsed
/// by etherparse, its L4 checksum verified.
fn reassemble(ips: &[&[u8]]) -> Datagram {
    let mut first: Option<Ipv4Header> = None;
    let mut pieces = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let (h, rest) = Ipv4Header::from_slice(ip).expect("etherparse reads the IPv4 header");
        assert_eq!(
            h.header_checksum,
            h.calc_header_checksum(),
            "fragment {i}'s header checksum"
        );
        assert_eq!(
            usize::from(h.total_len),
            ip.len(),
            "fragment {i}'s total length"
        );
        pieces.push(Piece {
            offset: usize::from(h.fragment_offset.byte_offset()),
            more: h.more_fragments,
            data: rest.to_vec(),
        });
        let same = |f: &Ipv4Header| (f.source, f.destination, f.protocol, f.identification);
        match &first {
            Some(f) => assert_eq!(same(&h), same(f), "fragment {i} of another datagram"),
            None => first = Some(h),
        }
    }
    let mut h = first.expect("fragments");
    let data = join(pieces);
    h.more_fragments = false;
    h.fragment_offset = IpFragOffset::ZERO;
    h.set_payload_len(data.len()).expect("datagram length");
    let mut whole = Vec::new();
    h.write(&mut whole).expect("write header");
    whole.extend_from_slice(&data);
    parse_datagram(&whole)
}

/// [`reassemble`] for IPv6 packets with a fragment header.
fn reassemble6(ips: &[&[u8]]) -> Datagram {
    let mut first: Option<(Ipv6Header, Frag6)> = None;
    let mut pieces = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let (h, rest) = Ipv6Header::from_slice(ip).expect("etherparse reads the IPv6 header");
        assert_eq!(
            usize::from(h.payload_length),
            rest.len(),
            "fragment {i}'s length"
        );
        assert_eq!(h.next_header, IpNumber::IPV6_FRAGMENTATION_HEADER);
        let (fh, data) = rest.split_at(8);
        let fh = Frag6::read(fh);
        pieces.push(Piece {
            offset: fh.offset,
            more: fh.more,
            data: data.to_vec(),
        });
        let same = |h: &Ipv6Header, f: &Frag6| (h.source, h.destination, f.next, f.id);
        match &first {
            Some((fh0, ff0)) => {
                assert_eq!(
                    same(&h, &fh),
                    same(fh0, ff0),
                    "fragment {i} of another datagram"
                )
            }
            None => first = Some((h, fh)),
        }
    }
    let (mut h, fh) = first.expect("fragments");
    let data = join(pieces);
    h.next_header = IpNumber(fh.next);
    h.payload_length = u16::try_from(data.len()).expect("datagram length");
    let mut whole = h.to_bytes().to_vec();
    whole.extend_from_slice(&data);
    parse_datagram(&whole)
}

/// Parse a whole IP datagram with etherparse, verifying its UDP (which
/// must carry a checksum) or TCP checksum and UDP length.
fn parse_datagram(ip: &[u8]) -> Datagram {
    let ph = PacketHeaders::from_ip_slice(ip).expect("etherparse parses the datagram");
    let payload = ph.payload.slice().to_vec();
    let (src, dst, proto) = match &ph.net {
        Some(NetHeaders::Ipv4(h, _)) => (
            IpAddr::from(h.source),
            IpAddr::from(h.destination),
            h.protocol.0,
        ),
        Some(NetHeaders::Ipv6(h, _)) => (
            IpAddr::from(h.source),
            IpAddr::from(h.destination),
            h.next_header.0,
        ),
        other => panic!("not IP: {other:?}"),
    };
    let (sp, dp) = match (&ph.transport, &ph.net) {
        (Some(TransportHeader::Udp(u)), Some(net)) => {
            assert_ne!(u.checksum, 0, "the datagrams here carry a UDP checksum");
            let want = match net {
                NetHeaders::Ipv4(h, _) => u.calc_checksum_ipv4(h, &payload),
                NetHeaders::Ipv6(h, _) => u.calc_checksum_ipv6(h, &payload),
                _ => unreachable!(),
            };
            assert_eq!(
                u.checksum,
                want.expect("calc"),
                "UDP checksum of the datagram"
            );
            assert_eq!(usize::from(u.length), 8 + payload.len(), "UDP length");
            (u.source_port, u.destination_port)
        }
        (Some(TransportHeader::Tcp(t)), Some(net)) => {
            let want = match net {
                NetHeaders::Ipv4(h, _) => t.calc_checksum_ipv4(h, &payload),
                NetHeaders::Ipv6(h, _) => t.calc_checksum_ipv6(h, &payload),
                _ => unreachable!(),
            };
            assert_eq!(
                t.checksum,
                want.expect("calc"),
                "TCP checksum of the datagram"
            );
            (t.source_port, t.destination_port)
        }
        (Some(TransportHeader::Icmpv4(i)), _) => {
            assert_eq!(
                i.checksum,
                i.icmp_type.calc_checksum(&payload),
                "ICMP checksum of the datagram"
            );
            match &i.icmp_type {
                Icmpv4Type::EchoRequest(e) | Icmpv4Type::EchoReply(e) => (e.id, e.seq),
                other => panic!("ICMP {other:?}"),
            }
        }
        (other, _) => panic!("transport {other:?}"),
    };
    Datagram {
        src,
        dst,
        proto,
        sp,
        dp,
        payload,
    }
}

/// The IP packet of a frame sent natively.
fn ip_of(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

/// The IP packets of frames sent natively.
fn ips(frames: &[Vec<u8>]) -> Vec<&[u8]> {
    frames.iter().map(|f| ip_of(f)).collect()
}

/// The inner IP packet of a VXLAN frame the switch sent (outer IPv4
/// without options, inner Ethernet untagged).
fn inner_ip(frame: &[u8]) -> &[u8] {
    &frame[14 + 20 + 8 + 8 + 14..]
}

/// The L4 ports at the start of a first fragment's data (IPv4).
fn first_ports(ip: &[u8]) -> (u16, u16) {
    let l4 = usize::from(ip[0] & 0xf) * 4;
    (
        u16::from_be_bytes([ip[l4], ip[l4 + 1]]),
        u16::from_be_bytes([ip[l4 + 2], ip[l4 + 3]]),
    )
}

/// `n` bytes of payload no two datagrams of a test share.
fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 8) as u8 ^ seed)
        .collect()
}

// ----- the traffic ------------------------------------------------------------

/// The transport of a scenario's datagrams: UDP (the datagram is the
/// flow's first packet) or TCP (a data segment of a connection that went
/// through its handshake, see [`open`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L4 {
    Udp,
    Tcp,
}

impl L4 {
    fn number(self) -> u8 {
        match self {
            L4::Udp => 17,
            L4::Tcp => 6,
        }
    }

    /// A frame of this transport; a TCP one is an ACK with data (sequence
    /// numbers of a connection opened by [`open`]).
    #[allow(clippy::too_many_arguments)]
    fn frame(
        self,
        macs: (MacAddr, MacAddr),
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sp: u16,
        dp: u16,
        from_vm: bool,
        data: &[u8],
    ) -> Vec<u8> {
        match self {
            L4::Udp => udp(macs.0, macs.1, src, dst, sp, dp, data),
            L4::Tcp if from_vm => tcp(macs.0, macs.1, src, dst, sp, dp, ACK, 2, 901, data),
            L4::Tcp => tcp(macs.0, macs.1, src, dst, sp, dp, ACK, 901, 2, data),
        }
    }

    /// The VM's datagram to `dst`.
    fn out(self, dst: Ipv4Addr, sp: u16, dp: u16, data: &[u8]) -> Vec<u8> {
        self.frame((VM_MAC, VM_GW_MAC), VM_CA, dst, sp, dp, true, data)
    }

    /// A datagram from internet host `src` to the VIP, arriving natively.
    fn to_vip(self, src: Ipv4Addr, sp: u16, dp: u16, data: &[u8]) -> Vec<u8> {
        self.frame((GW_MAC, HOST_MAC), src, VIP, sp, dp, false, data)
    }
}

/// Open the VM's connection to `dst` (an internet host or a VNET peer
/// `10.1.0.y`) for `l4`: a TCP handshake (the answer natively to the VIP,
/// or encapsulated from the peer's host); nothing for UDP. The SNAT port
/// for TCP to the internet.
fn open(p: &mut Port, l4: L4, dst: Ipv4Addr, sp: u16, dp: u16) -> Option<u16> {
    if l4 == L4::Udp {
        return None;
    }
    let syn = relay(p, Direction::Out, &vm_tcp(dst, sp, dp, SYN, 1, 0, b""), T0);
    let nat = decode(&syn).inner.sp;
    let answer = if dst.octets()[..2] == [10, 1] {
        let [_, _, x, y] = dst.octets();
        peer_tcp(x, y, dp, sp, SYN | ACK, 900, 2, b"")
    } else {
        internet_answer(dst, dp, nat, SYN | ACK, 2)
    };
    relay(p, Direction::In, &answer, T0 + 10);
    relay(
        p,
        Direction::Out,
        &vm_tcp(dst, sp, dp, ACK, 2, 901, b""),
        T0 + 20,
    );
    (dst.octets()[..2] != [10, 1]).then_some(nat)
}

/// Send `frame`; it must be forwarded: the frame out.
fn relay(p: &mut Port, d: Direction, frame: &[u8], now: Time) -> Vec<u8> {
    let (v, out) = run(p, d, frame, now);
    assert_eq!(v, Verdict::Forward, "{d:?} frame not forwarded");
    out
}

/// Send each of `frames` (in order, a microsecond apart from `now`); each
/// must be forwarded: the frames out.
fn relay_all(p: &mut Port, d: Direction, frames: &[Vec<u8>], now: Time) -> Vec<Vec<u8>> {
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (v, out) = run(p, d, f, now + 1000 * i as u64);
            assert_eq!(v, Verdict::Forward, "{d:?} fragment {i} not forwarded");
            out
        })
        .collect()
}

/// A fragment [`Port::drain_released`] handed out: direction, verdict,
/// frame, hold number, when held.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rel {
    d: Direction,
    v: Verdict,
    frame: Vec<u8>,
    hold: u64,
    since: Time,
}

type Released = Vec<Rel>;

fn drain(p: &mut Port) -> Released {
    let mut out = Vec::new();
    let n = p.drain_released(|r| {
        out.push(Rel {
            d: r.direction,
            v: r.verdict,
            frame: r.frame.as_slice().to_vec(),
            hold: r.hold,
            since: r.held_since,
        })
    });
    assert_eq!(n, out.len());
    assert_eq!(p.released_fragments(), 0, "drained");
    out
}

/// A scenario as two tests: with UDP, with TCP.
macro_rules! udp_and_tcp {
    ($scenario:ident: $udp:ident, $tcp:ident) => {
        #[test]
        fn $udp() {
            $scenario(L4::Udp);
        }
        #[test]
        fn $tcp() {
            $scenario(L4::Tcp);
        }
    };
}

// ----- the tests --------------------------------------------------------------

/// The VM sends a 3000-byte datagram to an internet host in three
/// fragments: all leave SNAT'd to the VIP, the first with the SNAT port,
/// and they make one datagram again whose checksum is right for the
/// translated header. One connection, one SNAT port: the later fragments
/// (no ports) rode the first's flow instead of making their own.
fn outbound_snat(l4: L4) {
    let mut p = port();
    let tcp_nat = open(&mut p, l4, WEB, 41000, 5001);
    let before = p.direction_counters(Direction::Out);
    let data = payload(3000, 1);
    let frags = fragment_v4(&l4.out(WEB, 41000, 5001, &data), 0x1234, &[1208, 1200]);
    assert_eq!(frags.len(), 3);
    let out = relay_all(&mut p, Direction::Out, &frags, secs(2));
    for (i, o) in out.iter().enumerate() {
        let d = decode(o);
        assert!(d.outer.is_none(), "internet traffic leaves natively");
        assert_eq!(
            (d.inner.src_mac, d.inner.dst_mac),
            (HOST_MAC, GW_MAC),
            "{i}"
        );
        assert_eq!(
            (d.inner.src, d.inner.dst),
            (VIP, WEB),
            "fragment {i} SNAT'd"
        );
    }
    let (nat, dp) = first_ports(ip_of(&out[0]));
    assert_eq!(dp, 5001);
    assert_ne!(nat, 41000, "source port translated");
    if let Some(n) = tcp_nat {
        assert_eq!(nat, n, "the connection's SNAT port");
    }
    let dg = reassemble(&ips(&out));
    assert_eq!(
        (dg.src, dg.dst, dg.proto, dg.sp, dg.dp),
        (VIP.into(), WEB.into(), l4.number(), nat, 5001)
    );
    assert_eq!(dg.payload, data);

    let c = p.fragment_counters();
    assert_eq!((c.first, c.followed, c.completed), (1, 2, 1), "{c:?}");
    assert_eq!(
        (c.held, c.released, c.timed_out, c.overflow, c.forgotten),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(p.connection_count(), 1, "one connection for the datagram");
    assert_eq!(
        p.resources().port_pools[SNAT_POOL].in_use(),
        1,
        "one SNAT port"
    );
    let after = p.direction_counters(Direction::Out);
    assert_eq!(after.packets - before.packets, 3);
    assert_eq!(after.forwarded - before.forwarded, 3);
    assert_eq!(after.dropped, before.dropped);
}
udp_and_tcp!(outbound_snat: outbound_udp_fragments_take_the_first_ones_snat, outbound_tcp_fragments_take_the_first_ones_snat);

/// The internet host's large answer comes back fragmented to the SNAT
/// address and port: the stateful ACL (which blocks unsolicited inbound
/// traffic) lets every fragment in by the connection, and every one is
/// un-NAT'd to the VM. An unrelated datagram from another host, in order,
/// is blocked whole: its later fragments follow its first one's drop.
fn inbound_answer(l4: L4) {
    let mut p = port();
    let nat = match open(&mut p, l4, WEB, 41000, 5001) {
        Some(n) => n,
        None => {
            let q = relay(
                &mut p,
                Direction::Out,
                &l4.out(WEB, 41000, 5001, b"query"),
                T0,
            );
            decode(&q).inner.sp
        }
    };
    let data = payload(2900, 2);
    let frags = fragment_mtu(&l4.to_vip(WEB, 5001, nat, &data), 0x4321, 1500);
    assert_eq!(frags.len(), 2);
    let out = relay_all(&mut p, Direction::In, &frags, secs(2));
    for (i, o) in out.iter().enumerate() {
        let d = decode(o);
        assert!(d.outer.is_none());
        assert_eq!(
            (d.inner.src_mac, d.inner.dst_mac),
            (VM_GW_MAC, VM_MAC),
            "{i}"
        );
        assert_eq!(
            (d.inner.src, d.inner.dst),
            (WEB, VM_CA),
            "fragment {i} un-NAT'd"
        );
    }
    let dg = reassemble(&ips(&out));
    assert_eq!(
        (dg.src, dg.dst, dg.proto, dg.sp, dg.dp),
        (WEB.into(), VM_CA.into(), l4.number(), 5001, 41000)
    );
    assert_eq!(dg.payload, data);
    let c = p.fragment_counters();
    assert_eq!((c.first, c.followed, c.completed), (1, 1, 1), "{c:?}");
    assert_eq!(p.connection_count(), 1);

    // Unsolicited: blocked by the ACL's default, every fragment.
    let frags = fragment_mtu(&l4.to_vip(OTHER, 5001, nat, &data), 0x4322, 1000);
    assert_eq!(frags.len(), 3);
    for (i, f) in frags.iter().enumerate() {
        let (v, _) = run(&mut p, Direction::In, f, secs(3));
        assert_eq!(
            v.drop_reason(),
            Some(DropReason::DefaultBlock),
            "fragment {i}"
        );
    }
    let c = p.fragment_counters();
    assert_eq!(
        (c.first, c.followed, c.completed, c.held),
        (2, 3, 2, 0),
        "{c:?}"
    );
    assert_eq!(p.counters().drops_for(DropReason::DefaultBlock), 3);
}
udp_and_tcp!(inbound_answer: inbound_udp_answer_fragments_pass_the_acl_un_natted, inbound_tcp_answer_fragments_pass_the_acl_un_natted);

/// Later fragments whose first never comes are held, then dropped as
/// `fragment-timeout`, by `expire` or by a later fragment's arrival; each
/// counted once in its direction, when dropped.
#[test]
fn later_fragments_without_their_first_are_held_then_time_out() {
    let mut p = port();
    let frags = fragment_v4(
        &L4::Udp.to_vip(OTHER, 5353, 40000, &payload(3000, 3)),
        0x5555,
        &[1000, 1000],
    );
    for f in &frags[1..] {
        assert_eq!(run(&mut p, Direction::In, f, T0).0, Verdict::Held);
    }
    assert_eq!(p.held_fragments(), 2);
    let dc = p.direction_counters(Direction::In);
    assert_eq!(
        (dc.packets, dc.forwarded, dc.dropped),
        (0, 0, 0),
        "not counted while held"
    );
    let c = p.fragment_counters();
    assert_eq!(
        (c.held, c.timed_out, c.first, c.followed),
        (2, 0, 0, 0),
        "{c:?}"
    );

    // Not yet.
    p.expire(T0 + FRAGMENT_TIMEOUT - 1);
    assert_eq!(p.held_fragments(), 2);
    assert_eq!(p.counters().drops_for(DropReason::FragmentTimeout), 0);
    p.expire(T0 + secs(6));
    assert_eq!(p.held_fragments(), 0);
    assert_eq!(p.fragment_counters().timed_out, 2);
    let cn = p.counters();
    assert_eq!(cn.drops_for(DropReason::FragmentTimeout), 2);
    let dc = cn.direction(Direction::In);
    assert_eq!((dc.packets, dc.forwarded, dc.dropped), (2, 0, 2));
    assert!(drain(&mut p).is_empty(), "nothing released");
    assert_eq!(p.connection_count(), 0, "no flow made");

    // A later fragment's arrival ends the hold of one whose time came.
    let t1 = secs(20);
    assert_eq!(run(&mut p, Direction::In, &frags[1], t1).0, Verdict::Held);
    let other = fragment_v4(
        &L4::Udp.to_vip(OTHER, 5353, 40000, &payload(3000, 4)),
        0x5556,
        &[1000, 1000],
    );
    assert_eq!(
        run(&mut p, Direction::In, &other[2], t1 + secs(6)).0,
        Verdict::Held
    );
    assert_eq!(p.held_fragments(), 1, "the newer one only");
    assert_eq!(p.fragment_counters().timed_out, 3);
    // And `expire_some` ends the rest.
    p.expire_some(t1 + secs(12), 16);
    assert_eq!(p.held_fragments(), 0);
    let cn = p.counters();
    assert_eq!(cn.drops_for(DropReason::FragmentTimeout), 4);
    assert_eq!(cn.direction(Direction::In).dropped, 4);
    assert_eq!(cn.direction(Direction::In).packets, 4);
    assert_eq!(p.fragment_counters().held, 4);
}

/// The last fragment comes first, then the middle one: both held; the
/// call that passes the first releases them, processed in arrival order,
/// translated exactly as the same fragments in order would be on a twin
/// port.
fn reordered(l4: L4) {
    let (mut p, mut twin) = (port(), port());
    open(&mut p, l4, WEB, 41000, 5001);
    open(&mut twin, l4, WEB, 41000, 5001);
    let data = payload(3000, 5);
    let frags = fragment_v4(&l4.out(WEB, 41000, 5001, &data), 0x0777, &[1000, 1000]);
    let in_order = relay_all(&mut twin, Direction::Out, &frags, secs(2));

    let before = p.direction_counters(Direction::Out);
    let t = secs(2);
    assert_eq!(run(&mut p, Direction::Out, &frags[2], t).0, Verdict::Held);
    assert_eq!(
        run(&mut p, Direction::Out, &frags[1], t + 1000).0,
        Verdict::Held
    );
    assert_eq!((p.held_fragments(), p.released_fragments()), (2, 0));
    assert_eq!(
        p.direction_counters(Direction::Out),
        before,
        "held: not counted yet"
    );
    assert!(drain(&mut p).is_empty());

    let first = relay(&mut p, Direction::Out, &frags[0], t + 2000);
    assert_eq!((p.held_fragments(), p.released_fragments()), (0, 2));
    let released = drain(&mut p);
    let rel = |frame: &Vec<u8>, hold, since| Rel {
        d: Direction::Out,
        v: Verdict::Forward,
        frame: frame.clone(),
        hold,
        since,
    };
    assert_eq!(
        released,
        vec![rel(&in_order[2], 1, t), rel(&in_order[1], 2, t + 1000)],
        "released in arrival order, translated as in order"
    );
    assert_eq!(first, in_order[0]);
    let dg = reassemble(&[
        ip_of(&first),
        ip_of(&released[0].frame),
        ip_of(&released[1].frame),
    ]);
    assert_eq!((dg.src, dg.dst), (VIP.into(), WEB.into()));
    assert_eq!((dg.sp, dg.dp), first_ports(ip_of(&first)));
    assert_eq!(dg.payload, data);

    let c = p.fragment_counters();
    assert_eq!(
        (c.first, c.followed, c.held, c.released, c.completed),
        (1, 2, 2, 2, 1),
        "{c:?}"
    );
    let after = p.direction_counters(Direction::Out);
    assert_eq!(after.packets - before.packets, 3);
    assert_eq!(after.forwarded - before.forwarded, 3);
    assert_eq!(p.connection_count(), twin.connection_count());
    assert_eq!(p.connection_count(), 1);
}
udp_and_tcp!(reordered: reordered_udp_fragments_are_held_then_released_in_order, reordered_tcp_fragments_are_held_then_released_in_order);

/// Two datagrams' fragments interleaved in one burst, one datagram's
/// first fragment after its later ones: `process_batch` gives the same
/// verdicts, bytes, released fragments and counters as `process` frame
/// by frame.
fn burst(l4: L4) {
    let (mut one, mut batched) = (port(), port());
    for p in [&mut one, &mut batched] {
        open(p, l4, WEB, 41000, 5001);
        open(p, l4, WEB, 41001, 5001);
    }
    let (da, db) = (payload(2500, 6), payload(2700, 7));
    let a = fragment_v4(&l4.out(WEB, 41000, 5001, &da), 0x0a0a, &[1000, 1000]);
    let b = fragment_v4(&l4.out(WEB, 41001, 5001, &db), 0x0b0b, &[1000, 1000]);
    let order = [&a[0], &b[2], &a[1], &b[1], &b[0], &a[2]];
    let now = secs(2);

    let mut bufs: Vec<PacketBuf> = order.iter().map(|f| PacketBuf::from_frame(f)).collect();
    let mut verdicts = vec![Verdict::Forward; bufs.len()];
    batched.process_batch(Direction::Out, &mut bufs, now, &mut verdicts);
    let released_batched = drain(&mut batched);

    let mut released_one = Released::new();
    for (i, f) in order.iter().enumerate() {
        let (v, bytes) = run(&mut one, Direction::Out, f, now);
        assert_eq!(verdicts[i], v, "frame {i}");
        if v.is_forward() {
            assert_eq!(bufs[i].as_slice(), &bytes[..], "frame {i}");
        }
        released_one.extend(drain(&mut one));
    }
    assert_eq!(
        verdicts,
        [
            Verdict::Forward,
            Verdict::Held,
            Verdict::Forward,
            Verdict::Held,
            Verdict::Forward,
            Verdict::Forward
        ]
    );
    assert_eq!(released_batched, released_one, "released alike");
    assert_eq!(released_batched.len(), 2);
    assert!(released_batched.iter().all(|r| r.v == Verdict::Forward));

    // Datagram a: frames 0, 2, 5; b: 4, then the released 1 and 3.
    let dga = reassemble(&[
        ip_of(bufs[0].as_slice()),
        ip_of(bufs[2].as_slice()),
        ip_of(bufs[5].as_slice()),
    ]);
    let dgb = reassemble(&[
        ip_of(bufs[4].as_slice()),
        ip_of(&released_batched[0].frame),
        ip_of(&released_batched[1].frame),
    ]);
    assert_eq!((dga.src, dgb.src), (VIP.into(), VIP.into()));
    assert_ne!(dga.sp, dgb.sp, "two connections, two SNAT ports");
    assert_eq!((dga.payload, dgb.payload), (da, db));

    for d in [Direction::Out, Direction::In] {
        assert_eq!(batched.direction_counters(d), one.direction_counters(d));
    }
    assert_eq!(batched.fragment_counters(), one.fragment_counters());
    let c = batched.fragment_counters();
    assert_eq!(
        (c.first, c.followed, c.held, c.released, c.completed),
        (2, 4, 2, 2, 2)
    );
    assert_eq!(batched.counters().drops, one.counters().drops);
    assert_eq!(all_counters(&batched), all_counters(&one));
    assert_eq!(batched.connection_count(), 2);
    batched
        .verify_flow_state()
        .expect("batched port's flow state");
}
udp_and_tcp!(burst: a_burst_of_udp_fragments_matches_one_by_one, a_burst_of_tcp_fragments_matches_one_by_one);

/// A held fragment whose datagram a duplicate completes within the same
/// burst (`[last, first, middle, last again]`): the held one is still
/// released translated, never held a second time, so a burst puts every
/// byte of the datagram out once. (One frame at a time the duplicate
/// comes after the datagram ended and waits for a first fragment that
/// does not come; either way the receiver sees the datagram whole.)
#[test]
fn a_duplicate_completing_a_datagram_in_a_burst_does_not_hold_its_fragment_again() {
    let mut p = port();
    let data = payload(2500, 9);
    let f = fragment_v4(&L4::Udp.out(WEB, 42000, 5001, &data), 0x0c0c, &[1000, 1000]);
    let order = [&f[2], &f[0], &f[1], &f[2]];
    let mut bufs: Vec<PacketBuf> = order.iter().map(|x| PacketBuf::from_frame(x)).collect();
    let mut verdicts = vec![Verdict::Forward; bufs.len()];
    p.process_batch(Direction::Out, &mut bufs, secs(2), &mut verdicts);
    assert_eq!(
        verdicts,
        [
            Verdict::Held,
            Verdict::Forward,
            Verdict::Forward,
            Verdict::Forward
        ]
    );
    let released = drain(&mut p);
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].v, Verdict::Forward, "released, not held again");
    assert_eq!(p.held_fragments(), 0);
    let dg = reassemble(&[
        ip_of(bufs[1].as_slice()),
        ip_of(bufs[2].as_slice()),
        ip_of(&released[0].frame),
    ]);
    assert_eq!((dg.src, dg.payload), (VIP.into(), data));
    // The duplicate went out translated like the original.
    assert_eq!(bufs[3].as_slice(), &released[0].frame[..]);
    let c = p.fragment_counters();
    assert_eq!((c.held, c.released, c.timed_out), (1, 1, 0));
}

/// Fragmented TCP data to the VIP through the MUX: every fragment goes to
/// the DIP its connection's first packet chose, decapsulated and
/// DNAT'd; several connections spread over the DIPs.
#[test]
fn load_balanced_fragments_reach_their_connections_dip() {
    let mut p = port();
    let pool: Vec<Ipv4Addr> = (4..7).map(|y| Ipv4Addr::new(10, 1, 0, y)).collect();
    p.set_backend_pool(
        LB_POOL,
        pool.iter()
            .map(|ip| Backend {
                ip: IpAddr::V4(*ip),
                port: Some(DIP_PORT),
            })
            .collect(),
    )
    .expect("pool");
    let via_mux = |inner: &[u8]| vxlan(GW_MAC, HOST_MAC, MUX_PA, HOST_PA, VNI, inner);
    let mut chosen = Vec::new();
    for k in 0..12u16 {
        let sp = 50000 + k;
        let seg = |flags, seq, ack, data: &[u8]| {
            tcp(
                MUX_INNER, VM_MAC, CLIENT, VIP, sp, 80, flags, seq, ack, data,
            )
        };
        let syn = decode(&relay(
            &mut p,
            Direction::In,
            &via_mux(&seg(SYN, 42, 0, b"")),
            T0,
        ));
        let dip = syn.inner.dst;
        assert!(pool.contains(&dip));
        let syn_ack = tcp(
            VM_MAC,
            VM_GW_MAC,
            dip,
            CLIENT,
            DIP_PORT,
            sp,
            SYN | ACK,
            77,
            43,
            b"",
        );
        let back = decode(&relay(&mut p, Direction::Out, &syn_ack, T0 + 10));
        assert_eq!(
            (back.inner.src, back.inner.sp),
            (VIP, 80),
            "direct server return"
        );
        relay(
            &mut p,
            Direction::In,
            &via_mux(&seg(ACK, 43, 78, b"")),
            T0 + 20,
        );

        let data = payload(2500, k as u8);
        // Each fragment encapsulated with its own outer UDP source port
        // (a MUX hashing each fragment's headers: a later one has no
        // ports), its outer UDP checksum left out.
        let frags: Vec<Vec<u8>> = fragment_mtu(&seg(ACK, 43, 78, &data), 0x100 + k, 1000)
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut f = via_mux(f);
                f[34..36].copy_from_slice(&(49152 + 7 * i as u16 + k).to_be_bytes());
                f[40..42].copy_from_slice(&[0, 0]);
                f
            })
            .collect();
        assert_eq!(frags.len(), 3);
        let out = relay_all(&mut p, Direction::In, &frags, secs(2));
        for (i, o) in out.iter().enumerate() {
            let d = decode(o);
            assert!(d.outer.is_none(), "decapsulated");
            assert_eq!(
                (d.inner.src, d.inner.dst),
                (CLIENT, dip),
                "connection {k} fragment {i}"
            );
        }
        let dg = reassemble(&ips(&out));
        assert_eq!((dg.src, dg.dst), (CLIENT.into(), dip.into()));
        assert_eq!((dg.sp, dg.dp), (sp, DIP_PORT));
        assert_eq!(dg.payload, data);
        chosen.push(dip);
    }
    chosen.sort();
    chosen.dedup();
    assert!(chosen.len() >= 2, "the connections spread: {chosen:?}");
    let c = p.fragment_counters();
    assert_eq!(
        (c.first, c.followed, c.completed, c.held),
        (12, 24, 12, 0),
        "{c:?}"
    );
    assert_eq!(p.connection_count(), 12);
}

/// The VM's fragmented datagram to a VNET peer: every fragment is VXLAN
/// encapsulated to the peer's host, with the same outer UDP source port —
/// the one of the inner flow (its 5-tuple with the ports), as an
/// unfragmented packet of the flow would have.
fn vnet(l4: L4) {
    let mut p = port();
    open(&mut p, l4, PEER, 40000, 7000);
    let data = payload(3000, 8);
    let frags = fragment_v4(&l4.out(PEER, 40000, 7000, &data), 0x0999, &[1400, 1400]);
    let out = relay_all(&mut p, Direction::Out, &frags, secs(2));
    let flow = FiveTuple {
        src_ip: VM_CA.into(),
        dst_ip: PEER.into(),
        proto: l4.number(),
        src_port: 40000,
        dst_port: 7000,
    };
    let entropy = strata_packet::emit::tunnel_src_port(tunnel_hash(&flow));
    for (i, o) in out.iter().enumerate() {
        let d = decode(o);
        let outer = d.outer.expect("VXLAN encapsulated");
        assert_eq!(
            (outer.src, outer.dst),
            (HOST_PA, remote_pa(0, 7)),
            "fragment {i}"
        );
        assert_eq!((outer.vni, outer.udp_dp), (VNI, 4789));
        assert_eq!(
            outer.udp_sp, entropy,
            "fragment {i}: the inner flow's source port"
        );
        assert_eq!(
            (d.inner.src_mac, d.inner.dst_mac),
            (VM_MAC, remote_mac(0, 7))
        );
        assert_eq!((d.inner.src, d.inner.dst), (VM_CA, PEER));
    }
    let inner: Vec<&[u8]> = out.iter().map(|o| inner_ip(o)).collect();
    let dg = reassemble(&inner);
    assert_eq!(
        (dg.src, dg.dst, dg.proto, dg.sp, dg.dp),
        (VM_CA.into(), PEER.into(), l4.number(), 40000, 7000)
    );
    assert_eq!(dg.payload, data);
    assert_eq!(p.connection_count(), 1);
    assert_eq!(p.fragment_counters().completed, 1);
}
udp_and_tcp!(vnet: vnet_udp_fragments_share_the_tunnel, vnet_tcp_fragments_share_the_tunnel);

/// More later fragments of one datagram than a datagram may have held:
/// the excess dropped as `fragment-overflow`; then more datagrams until
/// the port's hold is full, and one more fragment is dropped too. The
/// first fragment then releases its datagram's held ones (translated);
/// the rest time out.
fn overflow(l4: L4) {
    assert_eq!(
        MAX_HELD % MAX_HELD_PER_DATAGRAM,
        0,
        "the test fills the hold by datagrams"
    );
    let mut p = port();
    open(&mut p, l4, WEB, 41000, 5001);
    let before = p.direction_counters(Direction::Out);
    // Small fragments, the first one large enough for the L4 header.
    let cut = |id: u16, seed: u8| {
        let n = MAX_HELD_PER_DATAGRAM + 8;
        let mut sizes = vec![8; n];
        sizes[0] = 48;
        fragment_v4(
            &l4.out(WEB, 41000, 5001, &payload(8 * n + 80, seed)),
            id,
            &sizes,
        )
    };
    let frags = cut(9, 9);
    let excess = 4;
    let mut overflowed = 0;
    for (i, f) in frags[1..=MAX_HELD_PER_DATAGRAM + excess].iter().enumerate() {
        let (v, _) = run(&mut p, Direction::Out, f, secs(2));
        if i < MAX_HELD_PER_DATAGRAM {
            assert_eq!(v, Verdict::Held, "fragment {i}");
        } else {
            assert_eq!(
                v,
                Verdict::Drop {
                    reason: DropReason::FragmentOverflow,
                    layer: None
                },
                "fragment {i}"
            );
            overflowed += 1;
        }
    }
    assert_eq!(p.held_fragments(), MAX_HELD_PER_DATAGRAM);
    for id in 1..(MAX_HELD / MAX_HELD_PER_DATAGRAM) as u16 {
        for f in &cut(9 + id, id as u8)[1..=MAX_HELD_PER_DATAGRAM] {
            assert_eq!(run(&mut p, Direction::Out, f, secs(2)).0, Verdict::Held);
        }
    }
    assert_eq!(p.held_fragments(), MAX_HELD);
    let late = cut(100, 100);
    let (v, _) = run(&mut p, Direction::Out, &late[3], secs(2));
    assert_eq!(
        v.drop_reason(),
        Some(DropReason::FragmentOverflow),
        "the port's hold is full"
    );
    overflowed += 1;
    let c = p.fragment_counters();
    assert_eq!((c.held, c.overflow), (MAX_HELD as u64, overflowed), "{c:?}");
    let cn = p.counters();
    assert_eq!(cn.drops_for(DropReason::FragmentOverflow), overflowed);
    let dc = cn.direction(Direction::Out);
    assert_eq!(dc.dropped - before.dropped, overflowed);
    assert_eq!(dc.packets - before.packets, overflowed);

    // Datagram 9's first fragment: its held ones follow it.
    let first = relay(&mut p, Direction::Out, &frags[0], secs(3));
    let nat = first_ports(ip_of(&first)).0;
    let released = drain(&mut p);
    assert_eq!(released.len(), MAX_HELD_PER_DATAGRAM);
    for (i, r) in released.iter().enumerate() {
        assert_eq!(
            (r.d, r.v),
            (Direction::Out, Verdict::Forward),
            "released {i}"
        );
        assert_eq!(r.hold, i as u64 + 1, "released {i}: in the order held");
        let dec = decode(&r.frame);
        assert_eq!((dec.inner.src, dec.inner.dst), (VIP, WEB), "released {i}");
    }
    // The overflowed and the rest sent again (as a sender's retransmission
    // of the datagram would): the datagram is whole.
    let rest = relay_all(
        &mut p,
        Direction::Out,
        &frags[MAX_HELD_PER_DATAGRAM + 1..],
        secs(3),
    );
    let mut all = vec![ip_of(&first)];
    all.extend(released.iter().map(|r| ip_of(&r.frame)));
    all.extend(rest.iter().map(|f| ip_of(f)));
    let dg = reassemble(&all);
    assert_eq!((dg.src, dg.sp), (VIP.into(), nat));
    let c = p.fragment_counters();
    assert_eq!(
        (c.released, c.completed),
        (MAX_HELD_PER_DATAGRAM as u64, 1),
        "{c:?}"
    );
    assert_eq!(p.held_fragments(), MAX_HELD - MAX_HELD_PER_DATAGRAM);

    p.expire(secs(2) + FRAGMENT_TIMEOUT);
    assert_eq!(p.held_fragments(), 0);
    assert_eq!(p.connection_count(), 1, "released on the first's flow");
    assert_eq!(p.resources().port_pools[SNAT_POOL].in_use(), 1);
    let timed_out = (MAX_HELD - MAX_HELD_PER_DATAGRAM) as u64;
    assert_eq!(p.fragment_counters().timed_out, timed_out);
    assert_eq!(
        p.counters().drops_for(DropReason::FragmentTimeout),
        timed_out
    );
}
udp_and_tcp!(overflow: udp_fragments_overflow_the_hold, tcp_fragments_overflow_the_hold);

/// A trace of a later fragment before its first tells it would be held
/// (and holds nothing); after the first, that it follows it: looked up by
/// the first fragment's ports, translated by its flow.
fn trace(l4: L4) {
    let mut p = port();
    open(&mut p, l4, WEB, 41000, 5001);
    let frags = fragment_v4(
        &l4.out(WEB, 41000, 5001, &payload(3000, 10)),
        0x0abc,
        &[1200, 1200],
    );
    let counters = p.fragment_counters();

    let t = p
        .trace_frame(Direction::Out, &frags[1], secs(2))
        .expect("parses");
    let f = t.fragment.expect("a fragment");
    assert_eq!(
        (f.id, f.offset, f.more, f.handling),
        (0x0abc, 1200, true, FragmentHandling::Held)
    );
    assert_eq!(t.verdict, Verdict::Held);
    assert!(t.to_string().contains("held for its first fragment"), "{t}");
    assert_eq!(p.held_fragments(), 0, "a trace holds nothing");
    assert_eq!(p.fragment_counters(), counters, "a trace counts nothing");

    let t = p
        .trace_frame(Direction::Out, &frags[0], secs(2))
        .expect("parses");
    let f = t.fragment.expect("a fragment");
    assert_eq!(
        (f.offset, f.more, f.handling),
        (0, true, FragmentHandling::First)
    );
    assert_eq!(
        (t.input.inner.src_port, t.input.inner.dst_port),
        (41000, 5001)
    );

    let first = relay(&mut p, Direction::Out, &frags[0], secs(2));
    let nat = first_ports(ip_of(&first)).0;
    let t = p
        .trace_frame(Direction::Out, &frags[2], secs(2))
        .expect("parses");
    let f = t.fragment.expect("a fragment");
    assert_eq!(
        (f.offset, f.more, f.handling),
        (2400, false, FragmentHandling::Follows)
    );
    assert_eq!(
        (t.input.inner.src_port, t.input.inner.dst_port),
        (41000, 5001),
        "looked up by the first fragment's ports"
    );
    assert!(t.verdict.is_forward(), "{t}");
    assert_eq!(t.output.inner.src_ip, IpAddr::V4(VIP));
    assert_eq!(
        (t.output.inner.src_port, t.output.inner.dst_port),
        (nat, 5001)
    );
    assert!(t.cached.is_some(), "the first fragment's flow");
    assert!(
        t.to_string().contains("takes its first fragment's flow"),
        "{t}"
    );
    assert_eq!(
        p.fragment_counters().followed,
        counters.followed,
        "a trace counts nothing"
    );

    // Once every byte has passed, the datagram is no longer tracked.
    relay_all(&mut p, Direction::Out, &frags[1..], secs(2));
    assert_eq!(p.fragment_counters().completed, 1);
    let t = p
        .trace_frame(Direction::Out, &frags[2], secs(2))
        .expect("parses");
    assert_eq!(t.fragment.map(|f| f.handling), Some(FragmentHandling::Held));
}
udp_and_tcp!(trace: trace_of_udp_fragments_shows_held_then_follows, trace_of_tcp_fragments_shows_held_then_follows);

/// A snapshot taken with a datagram tracked (its first fragment passed)
/// and fragments held (one whose first comes later, one whose first never
/// comes): the restored port goes on as the original, byte for byte,
/// releases, timeouts and counters included.
fn snapshot(l4: L4) {
    let mut p = port();
    open(&mut p, l4, WEB, 41000, 5001);
    open(&mut p, l4, WEB, 41001, 5001);
    let a = fragment_v4(
        &l4.out(WEB, 41000, 5001, &payload(2500, 11)),
        1,
        &[1000, 1000],
    );
    let b = fragment_v4(
        &l4.out(WEB, 41001, 5001, &payload(2500, 12)),
        2,
        &[1000, 1000],
    );
    let c = fragment_v4(
        &l4.out(WEB, 41001, 5001, &payload(2500, 13)),
        3,
        &[1000, 1000],
    );
    let first_a = relay(&mut p, Direction::Out, &a[0], secs(2));
    assert_eq!(run(&mut p, Direction::Out, &b[2], secs(2)).0, Verdict::Held);
    assert_eq!(run(&mut p, Direction::Out, &c[1], secs(2)).0, Verdict::Held);

    let bytes = p.snapshot().expect("snapshot");
    let mut q = Port::restore(&bytes, ActionRegistry::default()).expect("restore");
    assert_eq!(q.held_fragments(), 2);
    assert_eq!(q.fragment_counters(), p.fragment_counters());

    let next = [&a[1], &b[0], &b[1], &a[2]];
    let mut outs = Vec::new();
    for port in [&mut p, &mut q] {
        let mut out = Vec::new();
        for (i, f) in next.iter().enumerate() {
            let (v, bytes) = run(port, Direction::Out, f, secs(3) + i as u64);
            out.push((v, bytes, drain(port)));
        }
        // c's fragment is held until its time comes, no sooner.
        port.expire(secs(2) + FRAGMENT_TIMEOUT - 1);
        assert_eq!(port.held_fragments(), 1);
        port.expire(secs(2) + FRAGMENT_TIMEOUT);
        outs.push(out);
    }
    assert_eq!(outs[0], outs[1], "the restored port acts as the original");
    let out = &outs[1];
    assert!(out.iter().all(|o| o.0 == Verdict::Forward));
    assert_eq!(
        out[1].2.len(),
        1,
        "b's first fragment releases its held one"
    );
    let dga = reassemble(&[ip_of(&first_a), ip_of(&out[0].1), ip_of(&out[3].1)]);
    let dgb = reassemble(&[
        ip_of(&out[1].1),
        ip_of(&out[2].1),
        ip_of(&out[1].2[0].frame),
    ]);
    assert_eq!((dga.src, dgb.src), (VIP.into(), VIP.into()));
    assert_ne!(dga.sp, dgb.sp);

    assert_eq!(q.fragment_counters(), p.fragment_counters());
    let fc = q.fragment_counters();
    assert_eq!(
        (
            fc.first,
            fc.followed,
            fc.held,
            fc.released,
            fc.completed,
            fc.timed_out
        ),
        (2, 4, 2, 1, 2, 1),
        "{fc:?}"
    );
    assert_eq!(q.counters().drops, p.counters().drops);
    assert_eq!(q.counters().drops_for(DropReason::FragmentTimeout), 1);
    for d in [Direction::Out, Direction::In] {
        assert_eq!(q.direction_counters(d), p.direction_counters(d));
    }
    assert_eq!(q.held_fragments(), 0);
    // The later fragments made no flows of their own.
    assert_eq!((p.connection_count(), q.connection_count()), (2, 2));
    assert_eq!(q.resources().port_pools[SNAT_POOL].in_use(), 2);
}
udp_and_tcp!(snapshot: snapshot_keeps_udp_fragment_tracking, snapshot_keeps_tcp_fragment_tracking);

/// The ACL's terminating block of outbound SMTP blocks a fragmented
/// segment whole — its later fragments (no ports, which no rule about
/// port 25 matches) take the first one's drop, in order or held for it.
#[test]
fn a_blocked_port_blocks_every_fragment() {
    let mut p = port();
    let data = payload(3000, 16);
    let smtp = |id| fragment_v4(&L4::Tcp.out(WEB, 41000, 25, &data), id, &[1000, 1000]);
    let blocked = Verdict::Drop {
        reason: DropReason::RuleBlock,
        layer: Some(1),
    };
    for (i, f) in smtp(1).iter().enumerate() {
        let (v, _) = run(&mut p, Direction::Out, f, secs(2));
        assert_eq!(v.drop_reason(), Some(DropReason::RuleBlock), "fragment {i}");
    }
    let frags = smtp(2);
    for f in frags[1..].iter().rev() {
        assert_eq!(run(&mut p, Direction::Out, f, secs(3)).0, Verdict::Held);
    }
    let (v, _) = run(&mut p, Direction::Out, &frags[0], secs(3));
    assert_eq!(v, blocked);
    let released = drain(&mut p);
    assert_eq!(
        released.iter().map(|r| r.v).collect::<Vec<_>>(),
        [blocked, blocked],
        "the held ones share their first's drop"
    );
    let cn = p.counters();
    assert_eq!(cn.drops_for(DropReason::RuleBlock), 6);
    assert_eq!(cn.rule("acl", "infra-block-smtp").drops, 6);
    let dc = cn.direction(Direction::Out);
    assert_eq!((dc.packets, dc.forwarded, dc.dropped), (6, 0, 6));
    let c = p.fragment_counters();
    assert_eq!(
        (c.first, c.followed, c.held, c.released, c.completed),
        (2, 4, 2, 2, 2),
        "{c:?}"
    );
}

/// A large ping: its echo identifier is SNAT'd in the first fragment, the
/// later ones follow; the fragmented reply comes back to the VM's
/// identifier (the ICMP checksum of both reassembled datagrams right).
#[test]
fn a_fragmented_ping_and_its_reply() {
    let mut p = port();
    let data = payload(3000, 17);
    let echo = |macs: (MacAddr, MacAddr), src: Ipv4Addr, dst: Ipv4Addr, ty: Icmpv4Type| {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(macs.0.0, macs.1.0)
            .ipv4(src.octets(), dst.octets(), 64)
            .icmpv4(ty)
            .write(&mut out, &data)
            .expect("build ping");
        out
    };
    let req = |id| Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id, seq: 7 });
    let frags = fragment_v4(
        &echo((VM_MAC, VM_GW_MAC), VM_CA, WEB, req(77)),
        0x0ccc,
        &[1480],
    );
    let out = relay_all(&mut p, Direction::Out, &frags, secs(2));
    let dg = reassemble(&ips(&out));
    assert_eq!((dg.src, dg.dst, dg.proto), (VIP.into(), WEB.into(), 1));
    let nat_id = dg.sp;
    assert_ne!(nat_id, 77, "the echo identifier is SNAT'd");
    assert_eq!(dg.dp, 7);
    assert_eq!(dg.payload, data);
    assert_eq!(p.connection_count(), 1);

    let rep = Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id: nat_id, seq: 7 });
    let frags = fragment_v4(&echo((GW_MAC, HOST_MAC), WEB, VIP, rep), 0x0ddd, &[1480]);
    let back = relay_all(&mut p, Direction::In, &frags, secs(3));
    let dg = reassemble(&ips(&back));
    assert_eq!(
        (dg.src, dg.dst, dg.sp, dg.dp),
        (WEB.into(), VM_CA.into(), 77, 7)
    );
    assert_eq!(dg.payload, data);
    let c = p.fragment_counters();
    assert_eq!((c.first, c.followed, c.completed), (2, 2, 2), "{c:?}");
    assert_eq!(p.connection_count(), 1);
}

/// A datagram is tracked for [`FRAGMENT_TIMEOUT`] from its first fragment,
/// and at most `MAX_DATAGRAMS` at once: a later fragment after either is
/// held like one before its first (and the datagram counted forgotten).
#[test]
fn tracking_ends_by_timeout_and_by_the_datagram_limit() {
    use strata_engine::port::MAX_DATAGRAMS;
    let mut p = port();
    let data = payload(2000, 18);
    let cut = |id: u16| fragment_v4(&L4::Udp.out(WEB, 41000, 5001, &data), id, &[1000]);
    let first = cut(1);
    relay(&mut p, Direction::Out, &first[0], secs(2));
    // Still tracked just before its time.
    relay(&mut p, Direction::Out, &cut(2)[0], secs(2));
    relay(
        &mut p,
        Direction::Out,
        &cut(2)[1],
        secs(2) + FRAGMENT_TIMEOUT - 1,
    );
    assert_eq!(p.fragment_counters().completed, 1);
    let (v, _) = run(
        &mut p,
        Direction::Out,
        &first[1],
        secs(2) + FRAGMENT_TIMEOUT,
    );
    assert_eq!(v, Verdict::Held, "its datagram is no longer tracked");
    assert_eq!(p.fragment_counters().forgotten, 1);
    p.expire(secs(20));
    assert_eq!(p.fragment_counters().timed_out, 1);

    // One datagram more than a port tracks: the oldest is forgotten.
    let now = secs(30);
    let firsts: Vec<Vec<u8>> = (0..=MAX_DATAGRAMS as u16)
        .map(|i| cut(1000 + i).swap_remove(0))
        .collect();
    let mut bufs: Vec<PacketBuf> = firsts.iter().map(|f| PacketBuf::from_frame(f)).collect();
    let mut verdicts = vec![Verdict::Held; bufs.len()];
    for (b, v) in bufs.chunks_mut(32).zip(verdicts.chunks_mut(32)) {
        p.process_batch(Direction::Out, b, now, v);
    }
    assert!(verdicts.iter().all(|v| v.is_forward()));
    assert_eq!(p.fragment_counters().forgotten, 2);
    let (v, _) = run(&mut p, Direction::Out, &cut(1000)[1], now);
    assert_eq!(v, Verdict::Held, "the oldest is forgotten");
    relay(&mut p, Direction::Out, &cut(1001)[1], now);
    relay(
        &mut p,
        Direction::Out,
        &cut(1000 + MAX_DATAGRAMS as u16)[1],
        now,
    );
    assert_eq!(p.fragment_counters().completed, 3);
    assert_eq!(p.connection_count(), 1);
}

// ----- IPv6 -------------------------------------------------------------------

const VM6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 4);
const PUBLIC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);

/// The NAT66 port of `tests/ipv6.rs` ([`nat66_port`]).
fn port6() -> Port {
    nat66_port(VM6, PUBLIC6)
}

/// An IPv6 frame of `l4` (TCP: an ACK with data).
fn frame6(
    l4: L4,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sp: u16,
    dp: u16,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let (vm_mac, gw_mac) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let macs = if src == VM6 {
        (vm_mac, gw_mac)
    } else {
        (gw_mac, vm_mac)
    };
    let ip = PacketBuilder::ethernet2(macs.0, macs.1).ipv6(src.octets(), dst.octets(), 64);
    let mut out = Vec::new();
    match l4 {
        L4::Udp => ip.udp(sp, dp).write(&mut out, data),
        L4::Tcp => {
            let mut b = ip.tcp(sp, dp, if src == VM6 { 2 } else { 901 }, 64240);
            if flags & SYN != 0 {
                b = b.syn();
            }
            if flags & ACK != 0 {
                b = b.ack(if src == VM6 { 901 } else { 2 });
            }
            b.write(&mut out, data)
        }
    }
    .expect("build");
    out
}

/// Fragmented datagrams both ways through NAT66: out, every fragment from
/// the public address; the peer's fragmented answer in (the ACL lets it
/// in by the connection), every fragment to the VM again. An unrelated
/// datagram's later fragment is held.
fn ipv6(l4: L4) {
    let mut p = port6();
    if l4 == L4::Tcp {
        relay(
            &mut p,
            Direction::Out,
            &frame6(l4, VM6, PEER6, 40000, 443, SYN, b""),
            T0,
        );
        let syn_ack = frame6(l4, PEER6, PUBLIC6, 443, 40000, SYN | ACK, b"");
        relay(&mut p, Direction::In, &syn_ack, T0 + 10);
    }
    let conns = p.connection_count();
    let data = payload(3000, 14);
    let frags = fragment_v6(
        &frame6(l4, VM6, PEER6, 40000, 443, ACK, &data),
        0xdead_beef,
        &[1232, 1232],
    );
    let out = relay_all(&mut p, Direction::Out, &frags, secs(2));
    let dg = reassemble6(&ips(&out));
    assert_eq!(
        (dg.src, dg.dst, dg.proto, dg.sp, dg.dp),
        (PUBLIC6.into(), PEER6.into(), l4.number(), 40000, 443)
    );
    assert_eq!(dg.payload, data);
    assert_eq!(
        p.connection_count(),
        conns.max(1),
        "the datagram's connection only"
    );

    let answer = payload(2000, 15);
    let frags = fragment_v6(
        &frame6(l4, PEER6, PUBLIC6, 443, 40000, ACK, &answer),
        7,
        &[1000],
    );
    let back = relay_all(&mut p, Direction::In, &frags, secs(3));
    let dg = reassemble6(&ips(&back));
    assert_eq!(
        (dg.src, dg.dst, dg.sp, dg.dp),
        (PEER6.into(), VM6.into(), 443, 40000)
    );
    assert_eq!(dg.payload, answer);
    let c = p.fragment_counters();
    assert_eq!(
        (c.first, c.followed, c.completed, c.held),
        (2, 3, 2, 0),
        "{c:?}"
    );

    let other = fragment_v6(
        &frame6(l4, PEER6, PUBLIC6, 443, 40000, ACK, &answer),
        8,
        &[1000],
    );
    assert_eq!(
        run(&mut p, Direction::In, &other[1], secs(3)).0,
        Verdict::Held
    );
    assert_eq!(p.held_fragments(), 1);
}
udp_and_tcp!(ipv6: ipv6_udp_fragments_through_nat66, ipv6_tcp_fragments_through_nat66);
