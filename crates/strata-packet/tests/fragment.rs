//! IP fragments: each part of a fragmented UDP datagram (IPv4 and IPv6,
//! built with etherparse and split here) parses, with the L4 header read
//! from the first fragment only (its length field naming the whole
//! datagram); `fragment_of` names the datagram and the part; and a NAT
//! applied to every fragment — ports on the first, addresses on all —
//! gives fragments that etherparse reassembles into a datagram whose UDP
//! checksum holds for the translated header.

use etherparse::{
    IpFragOffset, IpNumber, Ipv4Header, Ipv6Header, PacketBuilder, PacketHeaders, TransportHeader,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use strata_packet::emit::{PacketBuf, apply};
use strata_packet::fragment::{Fragment, fragment_of};
use strata_packet::parse::{L4Kind, parse};
use strata_packet::transposition::Transposition;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];

/// A UDP datagram over IPv4 with a `len`-byte payload, as one frame.
fn udp_v4(len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(5353, 53)
        .write(&mut out, &payload)
        .expect("frame");
    out
}

const V6_A: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_B: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// A UDP datagram over IPv6 from `src` to `dst` with `ports`, as one frame.
fn udp_v6(src: [u8; 16], dst: [u8; 16], ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(src, dst, 64)
        .udp(ports.0, ports.1)
        .write(&mut out, payload)
        .expect("frame");
    out
}

/// Split the IPv4 datagram of `frame` into fragments of at most `size`
/// payload bytes (a multiple of 8), identification `id`.
fn fragment_v4(frame: &[u8], size: usize, id: u16) -> Vec<Vec<u8>> {
    let (ip, rest) = Ipv4Header::from_slice(&frame[14..]).expect("IPv4");
    let payload = &rest[..usize::from(ip.total_len) - ip.header_len()];
    payload
        .chunks(size)
        .enumerate()
        .map(|(i, part)| {
            let mut h = ip.clone();
            h.identification = id;
            h.fragment_offset = IpFragOffset::try_new((i * size / 8) as u16).expect("offset");
            h.more_fragments = (i + 1) * size < payload.len();
            h.dont_fragment = false;
            h.set_payload_len(part.len()).expect("length");
            h.header_checksum = h.calc_header_checksum();
            let mut f = frame[..14].to_vec();
            h.write(&mut f).expect("header");
            f.extend_from_slice(part);
            f
        })
        .collect()
}

/// Split a UDP-over-IPv6 frame into fragments (fragment header, id `id`).
fn fragment_v6(frame: &[u8], size: usize, id: u32) -> Vec<Vec<u8>> {
    let (ip, rest) = Ipv6Header::from_slice(&frame[14..]).expect("IPv6");
    let payload = &rest[..usize::from(ip.payload_length)];
    payload
        .chunks(size)
        .enumerate()
        .map(|(i, part)| {
            let mut h = ip.clone();
            h.next_header = IpNumber::IPV6_FRAGMENTATION_HEADER;
            h.payload_length = (8 + part.len()) as u16;
            // By hand: etherparse 0.19 writes the offset and M flag in the
            // wrong bits (its issue #150, fixed in 0.20).
            let more = u16::from((i + 1) * size < payload.len());
            let word = ((i * size / 8) as u16) << 3 | more;
            let mut f = frame[..14].to_vec();
            h.write(&mut f).expect("header");
            f.extend_from_slice(&[ip.next_header.0, 0]);
            f.extend_from_slice(&word.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(part);
            f
        })
        .collect()
}

/// Reassemble the datagram of fragments (IPv4 or IPv6) into one frame
/// with the first fragment's headers, checking each IPv4 header's
/// checksum on the way.
fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut parts: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut head = None;
    for f in frags {
        let h = PacketHeaders::from_ethernet_slice(f).expect("fragment parses");
        match h.net.expect("IP") {
            etherparse::NetHeaders::Ipv4(ip, _) => {
                assert_eq!(ip.header_checksum, ip.calc_header_checksum());
                let off = usize::from(ip.fragment_offset.value()) * 8;
                let data = &f[14 + ip.header_len()..14 + usize::from(ip.total_len)];
                if off == 0 {
                    let mut whole = ip.clone();
                    whole.fragment_offset = IpFragOffset::ZERO;
                    whole.more_fragments = false;
                    head = Some((f[..14].to_vec(), Some(whole), None));
                }
                parts.push((off, data.to_vec()));
            }
            etherparse::NetHeaders::Ipv6(ip, _) => {
                // The fragment header read by hand (see `fragment_v6`).
                assert_eq!(ip.next_header, IpNumber::IPV6_FRAGMENTATION_HEADER);
                let fh = &f[54..62];
                let off = usize::from(u16::from_be_bytes([fh[2], fh[3]]) >> 3) * 8;
                let data = &f[14 + 40 + 8..14 + 40 + usize::from(ip.payload_length)];
                if off == 0 {
                    let mut whole = ip.clone();
                    whole.next_header = IpNumber(fh[0]);
                    head = Some((f[..14].to_vec(), None, Some(whole)));
                }
                parts.push((off, data.to_vec()));
            }
            _ => panic!("not IP"),
        }
    }
    parts.sort_by_key(|(o, _)| *o);
    let mut payload = Vec::new();
    for (o, d) in parts {
        assert_eq!(o, payload.len(), "fragments cover the datagram");
        payload.extend_from_slice(&d);
    }
    let (mut out, v4, v6) = head.expect("a first fragment");
    if let Some(mut ip) = v4 {
        ip.set_payload_len(payload.len()).expect("length");
        ip.header_checksum = ip.calc_header_checksum();
        ip.write(&mut out).expect("header");
    }
    if let Some(mut ip) = v6 {
        ip.payload_length = payload.len() as u16;
        ip.write(&mut out).expect("header");
    }
    out.extend_from_slice(&payload);
    out
}

/// The UDP checksum of a whole frame holds (etherparse recomputes it).
fn udp_checksum_holds(frame: &[u8]) -> (IpAddr, u16) {
    let h = PacketHeaders::from_ethernet_slice(frame).expect("datagram parses");
    let Some(TransportHeader::Udp(u)) = h.transport else {
        panic!("not UDP")
    };
    let (src, sum) = match h.net.expect("IP") {
        etherparse::NetHeaders::Ipv4(ip, _) => (
            IpAddr::V4(Ipv4Addr::from(ip.source)),
            u.calc_checksum_ipv4(&ip, h.payload.slice()).expect("sum"),
        ),
        etherparse::NetHeaders::Ipv6(ip, _) => (
            IpAddr::V6(Ipv6Addr::from(ip.source)),
            u.calc_checksum_ipv6(&ip, h.payload.slice()).expect("sum"),
        ),
        _ => panic!("not IP"),
    };
    assert_eq!(u.checksum, sum, "UDP checksum of the reassembled datagram");
    (src, u.source_port)
}

#[test]
fn ipv4_fragments_parse_and_name_their_datagram() {
    let whole = udp_v4(100);
    assert_eq!(
        fragment_of(&whole, &parse(&whole).expect("parses").layout),
        None
    );
    let frags = fragment_v4(&whole, 48, 0x1234);
    assert_eq!(frags.len(), 3);
    let first = parse(&frags[0]).expect("the first fragment parses");
    assert!(first.layout.fragment && !first.layout.non_first_fragment);
    assert_eq!(first.layout.l4_kind, L4Kind::Udp);
    assert_eq!(
        (first.ufid.inner.src_port, first.ufid.inner.dst_port),
        (5353, 53)
    );
    // Its UDP length names all 108 bytes; 40 of the payload are here.
    assert_eq!(first.meta.l4_payload_len, 40);
    let expect = [(0, 48, true), (48, 48, true), (96, 12, false)];
    for (f, (offset, len, more)) in frags.iter().zip(expect) {
        let p = parse(f).expect("fragment parses");
        assert_eq!(
            fragment_of(f, &p.layout),
            Some(Fragment {
                id: 0x1234,
                offset,
                len,
                more
            })
        );
        if offset > 0 {
            assert!(p.layout.non_first_fragment);
            assert_eq!(p.layout.l4_kind, L4Kind::None);
            assert_eq!((p.ufid.inner.src_port, p.ufid.inner.dst_port), (0, 0));
            assert_eq!(p.ufid.inner.proto, 17);
        }
    }
    assert_eq!(
        fragment_of(&frags[2], &parse(&frags[2]).unwrap().layout)
            .unwrap()
            .end(),
        108
    );
    // A first fragment too short for its UDP header is refused.
    let short = fragment_v4(&whole, 8, 1);
    assert!(parse(&short[0]).is_ok());
    let mut cut = short[0].clone();
    cut.truncate(cut.len() - 4);
    cut[16..18].copy_from_slice(&24u16.to_be_bytes());
    assert!(parse(&cut).is_err());
}

#[test]
fn ipv6_fragments_parse_and_name_their_datagram() {
    let whole = udp_v6(V6_A, V6_B, (4000, 443), &[0x42; 200]);
    let frags = fragment_v6(&whole, 104, 0xdead_beef);
    assert_eq!(frags.len(), 2);
    let first = parse(&frags[0]).expect("parses");
    assert_eq!(first.layout.l4_kind, L4Kind::Udp);
    assert_eq!(first.ufid.inner.src_port, 4000);
    let f0 = fragment_of(&frags[0], &first.layout).expect("a fragment");
    assert_eq!(
        (f0.id, f0.offset, f0.len, f0.more),
        (0xdead_beef, 0, 104, true)
    );
    let later = parse(&frags[1]).expect("parses");
    assert!(later.layout.non_first_fragment);
    assert_eq!((later.ufid.inner.proto, later.ufid.inner.src_port), (17, 0));
    let f1 = fragment_of(&frags[1], &later.layout).expect("a fragment");
    assert_eq!(
        (f1.id, f1.offset, f1.len, f1.more),
        (0xdead_beef, 104, 104, false)
    );
    assert_eq!(f1.end(), 208);
}

/// A SNAT applied to each fragment as the engine applies a flow's
/// transposition (the first fragment's key gives the ports): the
/// reassembled datagram is the translated one, its checksum intact.
#[test]
fn nat_of_every_fragment_reassembles_into_the_translated_datagram() {
    let snat = |src: IpAddr| Transposition {
        src_ip: Some(src),
        src_port: Some(40_001),
        ..Transposition::default()
    };
    let ula = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let whole6 = udp_v6(ula, V6_B, (5353, 53), &[7; 300]);
    let v6_src: IpAddr = "2001:db8::99".parse().expect("address");
    let cases = [
        (
            fragment_v4(&udp_v4(1000), 400, 77),
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
        ),
        (fragment_v6(&whole6, 96, 78), v6_src),
    ];
    for (frags, src) in cases {
        let t = snat(src);
        let mut out = Vec::new();
        for f in &frags {
            let p = parse(f).expect("parses");
            let mut buf = PacketBuf::from_frame(f);
            apply(&t, &mut buf, &p).expect("applies");
            out.push(buf.as_slice().to_vec());
        }
        // Every fragment carries the new source; the port is the first's.
        for f in &out {
            let p = parse(f).expect("output parses");
            assert_eq!(p.ufid.inner.src_ip, src);
        }
        // Reassembled before the NAT, it was the original.
        assert_eq!(udp_checksum_holds(&reassemble(&frags)).1, 5353);
        assert_eq!(udp_checksum_holds(&reassemble(&out)), (src, 40_001));
    }
}
