//! Robustness: every prefix of every sample frame, and single-byte
//! mutations of them, parse to `Ok` or `Err` without panicking, and frames
//! that parse survive `apply` with a set of transpositions.

mod common;

use common::{all_frames, exercise, transpositions};
use strata_packet::emit::{PacketBuf, apply};
use strata_packet::parse::parse;

#[test]
fn every_prefix_parses_or_errors() {
    for (name, f) in all_frames() {
        assert!(parse(&f).is_ok(), "{name} parses");
        for n in 0..f.len() {
            // Must not panic; most prefixes are errors.
            let _ = parse(&f[..n]);
            exercise(&f[..n]);
        }
    }
}

#[test]
fn single_byte_mutations_do_not_panic() {
    for (_, f) in all_frames() {
        exercise(&f);
        for i in 0..f.len() {
            for v in [0x00, 0xff, f[i] ^ 0x80, f[i].wrapping_add(1)] {
                let mut m = f.clone();
                m[i] = v;
                exercise(&m);
            }
        }
    }
}

#[test]
fn sample_frames_survive_every_transposition() {
    for (name, f) in all_frames() {
        let p = parse(&f).unwrap();
        let mut buf = PacketBuf::from_frame(&f);
        for t in transpositions() {
            buf.reset(&f);
            match apply(&t, &mut buf, &p) {
                Ok(()) => {
                    let out = buf.as_slice();
                    common::verify(out);
                    let q = parse(out).unwrap();
                    if !p.layout.non_first_fragment
                        && p.ufid.inner.proto != 1
                        && p.ufid.inner.proto != 58
                    {
                        assert_eq!(q.ufid, t.apply_to_ufid(&p.ufid), "{name}: {}", t.describe());
                    }
                }
                Err(e) => assert_eq!(e.reason(), "ip-family-mismatch", "{name}: {}", t.describe()),
            }
        }
    }
}
