//! A rough timing smoke test, not a benchmark (the engine crate has the
//! criterion benches). Run in release mode:
//! `cargo test --release -p strata-packet --test perf -- --ignored --nocapture`.

mod common;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;
use strata_packet::emit::{PacketBuf, apply};
use strata_packet::flow::{MacAddr, TunnelKind};
use strata_packet::parse::parse;
use strata_packet::transposition::{Encap, OuterOp, Transposition};

/// Best of 50 batches: the minimum is robust against other load on the
/// machine, which only ever adds time.
fn time(name: &str, iters: u32, mut f: impl FnMut()) {
    let batch = iters / 50;
    let mut best = f64::MAX;
    for _ in 0..50 {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        best = best.min(t.elapsed().as_nanos() as f64 / f64::from(batch));
    }
    println!("{name}: {best:.1} ns/op (best batch)");
}

#[test]
#[ignore]
fn perf_smoke() {
    let n = 2_000_000;
    let vx = common::vxlan_v4(5000, &common::tcp_v4());
    let plain = common::tcp_v4();
    time("parse vxlan", n, || {
        black_box(parse(black_box(&vx)).unwrap());
    });
    time("etherparse slice tcp_v4 (reference)", n, || {
        black_box(etherparse::SlicedPacket::from_ethernet(black_box(&plain)).unwrap());
    });
    time("parse tcp_v4", n, || {
        black_box(parse(black_box(&plain)).unwrap());
    });
    let p = parse(&plain).unwrap();
    let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    let snat = Transposition {
        src_ip: Some(v4(100, 64, 0, 1)),
        src_port: Some(1024),
        ..Transposition::default()
    };
    let mut buf = PacketBuf::from_frame(&plain);
    time("reset + apply snat", n, || {
        buf.reset(&plain);
        apply(black_box(&snat), &mut buf, &p).unwrap();
    });
    let e = Encap::new(
        TunnelKind::Vxlan,
        1,
        MacAddr([2; 6]),
        MacAddr([4; 6]),
        v4(1, 1, 1, 1),
        v4(2, 2, 2, 2),
    );
    let encap = Transposition {
        outer: OuterOp::Push(Arc::new(e)),
        ..snat.clone()
    };
    time("reset + apply snat + vxlan push", n, || {
        buf.reset(&plain);
        apply(black_box(&encap), &mut buf, &p).unwrap();
    });
    let pv = parse(&vx).unwrap();
    let pop = Transposition {
        outer: OuterOp::Pop,
        ..Transposition::default()
    };
    time("reset + apply pop", n, || {
        buf.reset(&vx);
        apply(black_box(&pop), &mut buf, &pv).unwrap();
    });
}
