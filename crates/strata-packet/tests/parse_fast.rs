//! The parser's shortcut for common shapes gives exactly what the general
//! parser gives: on every sample frame, every truncation of it, random
//! header-byte mutations of it (lengths, versions, flags, ports, tunnel
//! headers), frames built around random headers and plain random bytes,
//! `parse_with` returns the same `Parsed` or the same typed error as
//! `parse_general`, with tunnels decoded or not — and the shortcut is
//! really taken for the shapes it is meant for.

mod common;

use common::*;
use proptest::prelude::*;
use strata_packet::parse::{
    ParseOptions, Parsed, parse_general, parse_into, parse_with, takes_shortcut,
};

const OPTS: [ParseOptions; 2] = [
    ParseOptions {
        decode_tunnels: true,
    },
    ParseOptions {
        decode_tunnels: false,
    },
];

/// The sample frames plus more of the shapes the shortcut covers (VXLAN
/// around UDP, untagged TCP with options inside VXLAN, VXLAN inside VXLAN).
fn frames() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = all_frames()
        .into_iter()
        .map(|(n, f)| (n.to_string(), f))
        .collect();
    v.push(("vxlan_udp".into(), vxlan_v4(7, &udp_v4())));
    v.push(("vxlan_udp_nocsum".into(), vxlan_v4(7, &udp_v4_nocsum())));
    v.push(("vxlan_tcp_options".into(), vxlan_v4(7, &tcp_v4_options())));
    v.push(("vxlan_icmp".into(), vxlan_v4(7, &icmp_v4_echo_request())));
    v.push(("vxlan_fragment".into(), vxlan_v4(7, &udp_v4_fragment())));
    v.push(("vxlan_vlan".into(), vxlan_v4(7, &tcp_v4_vlan())));
    v.push(("vxlan_v6_inner".into(), vxlan_v4(7, &tcp_v6())));
    v.push((
        "vxlan_in_vxlan".into(),
        vxlan_v4(7, &vxlan_v4(8, &tcp_v4())),
    ));
    // Ethernet padding after the IP datagram.
    let mut padded = udp_v4();
    padded.extend_from_slice(&[0; 9]);
    v.push(("udp_v4_padded".into(), padded));
    let mut padded = vxlan_v4(7, &tcp_v4());
    padded.extend_from_slice(&[0xee; 5]);
    v.push(("vxlan_padded".into(), padded));
    v
}

/// Both parsers agree on `frame` with every option; `parse_into` over a
/// dirty `Parsed` too (the fast path writes every field).
fn agree(frame: &[u8]) -> Result<(), TestCaseError> {
    for opts in OPTS {
        let general = parse_general(frame, opts);
        prop_assert_eq!(parse_with(frame, opts), general, "{:02x?}", frame);
        let mut dirty = match parse_general(&vxlan_v4(3, &tcp_v4_vlan()), opts) {
            Ok(p) => p,
            Err(_) => Parsed::EMPTY,
        };
        let into = parse_into(frame, opts, &mut dirty);
        prop_assert_eq!(into.map(|()| dirty), general);
    }
    Ok(())
}

#[test]
fn every_truncation_agrees() {
    for (name, f) in frames() {
        for n in 0..=f.len() {
            agree(&f[..n]).unwrap_or_else(|e| panic!("{name} cut at {n}: {e}"));
        }
    }
}

/// Every single-bit flip, and every byte set to 0x00 or 0xff, in the
/// headers (first 128 bytes) of every sample: each flag, version, length
/// and port the shortcut checks, one at a time.
#[test]
fn every_header_bit_flip_agrees() {
    for (name, f) in frames() {
        for at in 0..f.len().min(128) {
            let mut g = f.clone();
            for bit in 0..8 {
                g[at] = f[at] ^ (1 << bit);
                agree(&g).unwrap_or_else(|e| panic!("{name} bit {bit} of byte {at}: {e}"));
            }
            for b in [0x00, 0xff] {
                g[at] = b;
                agree(&g).unwrap_or_else(|e| panic!("{name} byte {at} = {b:#x}: {e}"));
            }
        }
    }
}

#[test]
fn shortcut_covers_the_usual_shapes() {
    let on = OPTS[0];
    let off = OPTS[1];
    for f in [
        tcp_v4(),
        udp_v4(),
        udp_v4_nocsum(),
        vxlan_v4(5000, &tcp_v4()),
        vxlan_v4(1, &udp_v4()),
    ] {
        assert!(takes_shortcut(&f, on), "{f:02x?}");
        assert!(takes_shortcut(&f, off), "{f:02x?}");
    }
    for f in [
        tcp_v4_options(),
        tcp_v4_vlan(),
        udp_v4_fragment(),
        icmp_v4_echo_request(),
        tcp_v6(),
        arp_request(),
        geneve_v4(77, GENEVE_OPTS, &tcp_v4()),
        nvgre_v4(1, 2, &tcp_v4()),
        vxlan_v4(1, &tcp_v4_vlan()),
        vxlan_v4(1, &tcp_v6()),
    ] {
        assert!(!takes_shortcut(&f, on), "{f:02x?}");
    }
    // Undecoded, a Geneve frame is plain UDP.
    assert!(takes_shortcut(&geneve_v4(77, GENEVE_OPTS, &tcp_v4()), off));
}

/// A frame, a list of (offset, byte) overwrites and a cut.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let fs = frames();
    (
        0..fs.len(),
        prop::collection::vec((0usize..140, any::<u8>()), 0..4),
        prop::option::weighted(0.3, any::<prop::sample::Index>()),
    )
        .prop_map(move |(i, writes, cut)| {
            let mut f = fs[i].1.clone();
            for (at, b) in writes {
                if let Some(x) = f.get_mut(at) {
                    *x = b;
                }
            }
            if let Some(c) = cut {
                f.truncate(c.index(f.len() + 1));
            }
            f
        })
}

/// Nudges to the fields the shortcut checks: a length, a version/IHL byte,
/// flags, a port, by small amounts around their valid values.
fn nudged() -> impl Strategy<Value = Vec<u8>> {
    let fs = frames();
    // Offsets of 16-bit fields the checks read, for plain and VXLAN frames:
    // ethertype, IP total length, fragment word, UDP ports and length, the
    // VXLAN flags, and the same in the inner frame.
    const FIELDS: [usize; 16] = [
        12, 16, 20, 34, 36, 38, 42, 46, 62, 66, 70, 84, 88, 96, 14, 64,
    ];
    (
        0..fs.len(),
        prop::sample::select(FIELDS.to_vec()),
        -40i32..40,
    )
        .prop_map(move |(i, at, by)| {
            let mut f = fs[i].1.clone();
            if let Some(w) = f.get_mut(at..at + 2) {
                let v = u16::from_be_bytes([w[0], w[1]]).wrapping_add_signed(by as i16);
                w.copy_from_slice(&v.to_be_bytes());
            }
            f
        })
}

/// Random bytes behind a header prefix of a common shape, so the random
/// part lands in the fields the shortcut decides on.
fn prefixed() -> impl Strategy<Value = Vec<u8>> {
    let fs = frames();
    (
        0..fs.len(),
        0usize..100,
        prop::collection::vec(any::<u8>(), 0..120),
    )
        .prop_map(move |(i, keep, tail)| {
            let f = &fs[i].1;
            let mut v = f[..keep.min(f.len())].to_vec();
            v.extend_from_slice(&tail);
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn mutated_frames_agree(f in mutated()) {
        agree(&f)?;
    }

    #[test]
    fn nudged_fields_agree(f in nudged()) {
        agree(&f)?;
    }

    #[test]
    fn prefixed_random_bytes_agree(f in prefixed()) {
        agree(&f)?;
    }

    #[test]
    fn random_bytes_agree(f in prop::collection::vec(any::<u8>(), 0..160)) {
        agree(&f)?;
    }
}
