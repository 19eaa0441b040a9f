//! ICMP errors' quotes: read from errors of each kind (IPv4 and IPv6,
//! TCP / UDP behind extension headers / echo, whole or minimal quotes),
//! rewritten in place with every checksum kept right — checked by
//! etherparse's own checksum functions — and refused when they cannot
//! name a connection.

mod common;

use common::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use strata_packet::icmp_error::{QuoteError, read_quote, rewrite_quote};
use strata_packet::parse::parse;

fn quote_of(frame: &[u8]) -> Result<strata_packet::icmp_error::Quote, QuoteError> {
    let p = parse(frame).expect("parses");
    read_quote(frame, &p.ufid.inner, &p.layout)
}

#[test]
fn quotes_are_read_from_each_kind_of_error() {
    let q = quote_of(&icmp_v4_frag_needed_tcp()).expect("quote");
    assert_eq!(
        (q.src_ip, q.dst_ip, q.proto, q.src_port, q.dst_port),
        (IpAddr::from(V4_A), IpAddr::from(V4_B), 6, 40000, 80)
    );
    let q = quote_of(&icmp_v4_time_exceeded_echo()).expect("quote");
    assert_eq!(
        (q.proto, q.src_port, q.dst_port, q.icmp_type),
        (1, 0x1234, 0, 8)
    );
    assert_eq!(q.len(), 28, "the minimal quote");
    let q = quote_of(&icmp_v6_too_big_udp_ext()).expect("quote");
    assert_eq!(
        (q.src_ip, q.proto),
        (IpAddr::from(V6_A), 17),
        "past the extension headers"
    );
    let q = quote_of(&icmp_v6_unreachable_tcp()).expect("quote");
    assert_eq!((q.proto, q.src_port, q.dst_port), (6, 40000, 8080));
}

#[test]
fn a_rewritten_quote_keeps_every_checksum() {
    for (name, frame) in [
        ("frag needed", icmp_v4_frag_needed_tcp()),
        ("time exceeded", icmp_v4_time_exceeded_echo()),
        ("too big", icmp_v6_too_big_udp_ext()),
        ("unreachable v6", icmp_v6_unreachable_tcp()),
    ] {
        let before = icmp_error_checksums(&frame).expect(name);
        assert!(before.0, "{name}: the sample's own checksum");
        assert_ne!(before.1, Some(false), "{name}");
        assert_ne!(before.2, Some(false), "{name}");
        let q = quote_of(&frame).expect(name);
        let (src, dst) = if q.is_v6() {
            (
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 4)),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, 1)),
            )
        } else {
            (
                IpAddr::V4(Ipv4Addr::new(10, 1, 0, 4)),
                IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34)),
            )
        };
        let mut m = frame.clone();
        rewrite_quote(&mut m, &q, src, dst, 41000, 443).expect(name);
        let after = icmp_error_checksums(&m).expect(name);
        assert!(after.0, "{name}: the error's checksum");
        assert_eq!(after.1, before.1, "{name}: the quoted IPv4 header checksum");
        assert_eq!(after.2, before.2, "{name}: the quoted L4 checksum");
        let q2 = quote_of(&m).expect(name);
        assert_eq!((q2.src_ip, q2.dst_ip), (src, dst), "{name}");
        // Nothing but the quote's fields changed.
        let changed = frame.iter().zip(&m).filter(|(a, b)| a != b).count();
        assert!(changed <= 2 + 2 + 32 + 2 + 4 + 2, "{name}: {changed} bytes");
        // Whole quotes hold their L4 checksum: it was checked, not skipped.
        if name != "time exceeded" {
            assert_eq!(after.2, Some(true), "{name}");
        }
        exercise_quote(&frame);
    }
}

#[test]
fn quotes_that_name_no_connection_are_refused() {
    // A plain echo is not an error.
    assert_eq!(
        quote_of(&icmp_v4_echo_request()),
        Err(QuoteError::NotAnError)
    );
    // A quote cut inside the ports.
    let mut cut = icmp_v4_frag_needed_tcp();
    cut.truncate(14 + 20 + 8 + 20 + 3);
    let ip_len = (cut.len() - 14) as u16;
    cut[16..18].copy_from_slice(&ip_len.to_be_bytes());
    // (the error's own IPv4 checksum is not the quote's concern)
    assert_eq!(quote_of(&cut), Err(QuoteError::Truncated));
    // A later fragment of the quoted packet.
    let mut frag = icmp_v4_frag_needed_tcp();
    let at = 14 + 20 + 8 + 6;
    frag[at..at + 2].copy_from_slice(&0x0010u16.to_be_bytes());
    assert_eq!(quote_of(&frag), Err(QuoteError::Fragment));
    // An error about an error.
    let mut nested = icmp_v4_unreachable();
    // The sample quotes 0x45 bytes: make the quoted packet a first
    // fragment of ICMP, whose type is an error (3).
    nested[14 + 20 + 8 + 6..14 + 20 + 8 + 8].fill(0);
    nested[14 + 20 + 8 + 9] = 1;
    nested[14 + 20 + 8 + 20] = 3;
    assert_eq!(quote_of(&nested), Err(QuoteError::Protocol));
    // New addresses of the other family: refused, nothing written.
    let frame = icmp_v4_frag_needed_tcp();
    let q = quote_of(&frame).expect("quote");
    let mut m = frame.clone();
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    assert_eq!(
        rewrite_quote(&mut m, &q, v6, q.dst_ip, 1, 2),
        Err(QuoteError::Family)
    );
    assert_eq!(m, frame);
    // An IPv6 quote in an ICMPv4 error.
    let mut v6_in_v4 = icmp_v4_frag_needed_tcp();
    v6_in_v4[14 + 20 + 8] = 0x65;
    assert_eq!(quote_of(&v6_in_v4), Err(QuoteError::BadHeader));
}
