//! Fuzz targets (bolero) and the regression corpus.
//!
//! Under `cargo test` `bolero::check!()` runs in test-harness mode: it
//! feeds a bounded number of generated inputs, on stable Rust. For
//! coverage-guided fuzzing run the same targets with cargo-bolero (the
//! libFuzzer engine needs a nightly toolchain for its sanitizer flags):
//!
//! ```text
//! cargo install cargo-bolero
//! cargo +nightly bolero test -p strata-packet --test fuzz fuzz_raw_bytes
//! cargo +nightly bolero test -p strata-packet --test fuzz fuzz_mutated_samples
//! ```
//!
//! Inputs that ever crashed (or that exercise a tricky path) belong in
//! `tests/corpus/`, which `corpus_replays` runs on every `cargo test`;
//! `tests/corpus/expected.txt` pins each file's parse outcome.

mod common;

use common::{all_frames, exercise};
use std::collections::BTreeMap;
use std::path::Path;
use strata_packet::parse::parse;

/// Arbitrary bytes: parse, and if that succeeds, apply NAT / encap / pop.
#[test]
fn fuzz_raw_bytes() {
    bolero::check!().for_each(|input: &[u8]| exercise(input));
}

/// Structure-aware: start from a valid sample frame (picked by the first
/// field), overwrite bytes at chosen positions and truncate, so inputs stay
/// close enough to valid to reach the tunnel, IP and L4 paths.
#[test]
fn fuzz_mutated_samples() {
    let frames = all_frames();
    bolero::check!()
        .with_type::<(u8, Vec<(u16, u8)>, u16)>()
        .for_each(|(pick, edits, cut)| {
            let (_, f) = &frames[usize::from(*pick) % frames.len()];
            let mut m = f.clone();
            for (pos, val) in edits {
                let i = usize::from(*pos) % m.len();
                m[i] = *val;
            }
            // Odd `cut`: truncate anywhere; even: keep the whole frame.
            let keep = if cut & 1 == 1 {
                usize::from(*cut >> 1) % (m.len() + 1)
            } else {
                m.len()
            };
            exercise(&m[..keep]);
        });
}

/// Every file in `tests/corpus/` parses to the outcome recorded in
/// `expected.txt` ("ok" or a drop reason) and survives `exercise`.
#[test]
fn corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let expected: BTreeMap<String, String> = std::fs::read_to_string(dir.join("expected.txt"))
        .expect("expected.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut it = l.split_whitespace();
            (
                it.next().unwrap().to_string(),
                it.next().unwrap().to_string(),
            )
        })
        .collect();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "bin") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(&path).unwrap();
        let outcome = match parse(&bytes) {
            Ok(_) => "ok".to_string(),
            Err(e) => e.reason().to_string(),
        };
        assert_eq!(
            Some(&outcome),
            expected.get(&name),
            "{name}: outcome not as recorded in expected.txt"
        );
        exercise(&bytes);
        seen += 1;
    }
    assert_eq!(seen, expected.len(), "every expected.txt entry has a file");
    assert!(seen >= 20);
}

/// Rebuild the corpus files and `expected.txt` from the sample builders.
/// Run explicitly after adding a case:
/// `cargo test -p strata-packet --test fuzz -- --ignored regenerate_corpus`.
#[test]
#[ignore]
fn regenerate_corpus() {
    use common::*;
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let tcp = tcp_v4();
    cases.push(("empty.bin", vec![]));
    cases.push(("ethernet-truncated.bin", tcp[..13].to_vec()));
    cases.push(("vlan-truncated.bin", tcp_v4_vlan()[..16].to_vec()));
    let mut three = udp_v6_qinq();
    three.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    cases.push(("three-vlan-tags.bin", three));
    let mut f = tcp.clone();
    f[14] = 0x43;
    cases.push(("ipv4-bad-ihl.bin", f));
    let mut f = tcp.clone();
    f[14] = 0x4f;
    cases.push(("ipv4-ihl-beyond-frame.bin", f[..50].to_vec()));
    let mut f = tcp.clone();
    f[16] = 0x7f;
    cases.push(("ipv4-total-length-beyond-frame.bin", f));
    let mut f = tcp.clone();
    f[14] = 0x55;
    cases.push(("ipv4-bad-version.bin", f));
    // 40 destination-options headers: far past the walk's bound.
    let mut f = udp_v6();
    let mut chain = Vec::new();
    for _ in 0..40 {
        chain.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
    }
    f[20] = 60;
    let plen = u16::from_be_bytes([f[18], f[19]]) as usize + chain.len();
    f[18..20].copy_from_slice(&(plen as u16).to_be_bytes());
    f.splice(54..54, chain);
    cases.push(("ipv6-huge-ext-chain.bin", f));
    let mut f = udp_v6();
    f[20] = 0; // hop-by-hop claiming 2 KiB
    f[55] = 0xff;
    cases.push(("ipv6-ext-header-truncated.bin", f));
    let mut f = tcp_v6();
    f[18] = 0xff;
    cases.push(("ipv6-payload-length-beyond-frame.bin", f));
    let mut f = tcp.clone();
    f[46] = 0x30;
    cases.push(("tcp-bad-data-offset.bin", f));
    let mut f = tcp.clone();
    f[16..18].copy_from_slice(&30u16.to_be_bytes());
    f[24] = 0;
    cases.push(("tcp-truncated.bin", f[..44].to_vec()));
    let mut f = udp_v4();
    f[38..40].copy_from_slice(&0xffffu16.to_be_bytes());
    cases.push(("udp-length-beyond-payload.bin", f));
    let mut f = icmp_v4_echo_request();
    f[16..18].copy_from_slice(&24u16.to_be_bytes());
    cases.push(("icmp-truncated.bin", f[..38].to_vec()));
    let mut f = vxlan_v4(9, &tcp);
    f[42] = 0x00;
    cases.push(("vxlan-without-i-flag.bin", f));
    cases.push(("vxlan-inner-truncated.bin", vxlan_v4(9, &tcp[..20])));
    let mut f = geneve_v4(9, GENEVE_OPTS, &tcp);
    f[42] = 0x3f; // 252 option bytes: more than the packet holds
    cases.push(("geneve-option-length-beyond-packet.bin", f));
    let mut f = geneve_v4(9, GENEVE_OPTS, &tcp);
    f[42 + 8 + 3] = 0x03; // first TLV overruns the option area
    cases.push(("geneve-bad-option-tlv.bin", f));
    let mut f = geneve_v4(9, &[], &tcp);
    f[42] = 0x80;
    cases.push(("geneve-version-2.bin", f));
    let mut f = geneve_v4(9, &[], &tcp);
    f[44..46].copy_from_slice(&[0x86, 0xdd]);
    cases.push(("geneve-non-ethernet-payload.bin", f));
    // A first fragment: its UDP length names the whole datagram.
    cases.push(("udp-v4-first-fragment.bin", udp_v4_first_fragment()));
    let mut f = udp_v4_first_fragment();
    f[38..40].copy_from_slice(&4u16.to_be_bytes());
    cases.push(("udp-v4-first-fragment-bad-length.bin", f));
    cases.push(("udp-v6-later-fragment.bin", udp_v6_fragment(3, false)));
    let mut f = nvgre_v4(5, 0, &[]);
    f.truncate(40);
    f[16..18].copy_from_slice(&26u16.to_be_bytes());
    cases.push(("nvgre-key-truncated.bin", f));
    cases.push(("arp-truncated.bin", arp_request()[..30].to_vec()));
    cases.push(("ipv4-non-first-fragment.bin", udp_v4_fragment()));
    cases.push(("vxlan-in-vxlan.bin", vxlan_v4(1, &vxlan_v6(2, &tcp))));
    cases.push(("ipv6-extension-headers.bin", udp_v6_ext()));
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_A, V4_B, 1)
        .udp(1, 2)
        .write(&mut f, &[])
        .unwrap();
    f.resize(60, 0);
    cases.push(("minimum-frame-with-padding.bin", f));

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    std::fs::create_dir_all(&dir).unwrap();
    let mut expected = String::from(
        "# corpus file -> parse outcome (\"ok\" or ParseError::reason()).\n\
         # Regenerate with: cargo test -p strata-packet --test fuzz -- --ignored regenerate_corpus\n",
    );
    for (name, bytes) in &cases {
        std::fs::write(dir.join(name), bytes).unwrap();
        let outcome = match parse(bytes) {
            Ok(_) => "ok".to_string(),
            Err(e) => e.reason().to_string(),
        };
        expected.push_str(&format!("{name} {outcome}\n"));
    }
    std::fs::write(dir.join("expected.txt"), expected).unwrap();
}
