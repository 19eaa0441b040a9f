//! Emit benchmarks: one data packet of an SNAT'd connection leaving through
//! a VXLAN tunnel (source NAT + VXLAN push), and one arriving (VXLAN pop +
//! destination NAT back), by the general emitter (`apply_with_ports`) and by
//! a prepared [`EmitPlan`] (`apply_planned`) in the same run. The frame is
//! restored before each apply; the restore is timed alone as `reset`.
//!
//! `cargo bench -p strata-packet --bench emit`

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use strata_packet::emit::{EmitPlan, PacketBuf, apply_planned, apply_with_ports};
use strata_packet::flow::{MacAddr, TunnelKind};
use strata_packet::parse::parse;
use strata_packet::transposition::{Encap, OuterOp, PortRewrite, Transposition};

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn bench(c: &mut Criterion) {
    let encap = Arc::new(Encap::new(
        TunnelKind::Vxlan,
        5001,
        MacAddr([2, 0xaa, 0, 0, 0, 0x10]),
        MacAddr([2, 0xaa, 0, 0, 0, 1]),
        v4(192, 168, 0, 10),
        v4(192, 168, 0, 1),
    ));
    let out = Transposition {
        outer: OuterOp::Push(encap),
        src_ip: Some(v4(203, 0, 113, 10)),
        ..Transposition::default()
    };
    let out_ports = PortRewrite {
        src: Some(1234),
        dst: None,
    };
    let inb = Transposition {
        outer: OuterOp::Pop,
        dst_ip: Some(v4(10, 0, 0, 2)),
        ..Transposition::default()
    };
    let in_ports = PortRewrite {
        src: None,
        dst: Some(80),
    };
    let plain = common::tcp_v4();
    let tunnelled = common::vxlan_v4(5001, &plain);
    let mut g = c.benchmark_group("emit");
    for (name, t, ports, frame) in [
        ("snat_vxlan_push", out, out_ports, plain),
        ("vxlan_pop_dnat", inb, in_ports, tunnelled),
    ] {
        let parsed = parse(&frame).expect("sample parses");
        let plan = EmitPlan::new(t.clone());
        assert!(plan.takes_shortcut(&parsed));
        let mut buf = PacketBuf::from_frame(&frame);
        g.bench_function(format!("{name}/reset"), |b| {
            b.iter(|| buf.reset(black_box(&frame)))
        });
        g.bench_function(format!("{name}/general"), |b| {
            b.iter(|| {
                buf.reset(&frame);
                apply_with_ports(black_box(&t), &ports, &mut buf, &parsed)
            })
        });
        g.bench_function(format!("{name}/planned"), |b| {
            b.iter(|| {
                buf.reset(&frame);
                apply_planned(black_box(&plan), &ports, None, &mut buf, &parsed)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
