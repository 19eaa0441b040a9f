//! Emit plans give exactly what the general emitter gives: for random
//! transpositions (every outer op and encap kind, VLAN ops, MAC / IP / DSCP
//! rewrites of either family) with random port rewrites, on every sample
//! frame (plain, VLAN-tagged, fragments, ICMP, ARP, VXLAN / Geneve / NVGRE
//! tunnelled; IPv4 and IPv6) and random headroom, `apply_planned` (and its
//! inlined form, `apply_planned_inline`) returns the same result and leaves
//! the same bytes as `apply_with_ports` — and the
//! shortcut is really taken for the shapes it is meant for.

mod common;

use common::all_frames;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use strata_packet::emit::{
    EmitPlan, PacketBuf, apply_planned, apply_planned_inline, apply_with_ports,
};
use strata_packet::flow::{MacAddr, TunnelKind};
use strata_packet::parse::parse;
use strata_packet::transposition::{Encap, OuterOp, PortRewrite, Transposition, VlanOp};

fn ip(v6: bool, x: u8) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 7, u16::from(x)))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 7, 0, x))
    }
}

fn encap(kind: TunnelKind, v6: bool, opts: bool, x: u8) -> Arc<Encap> {
    let mut e = Encap::new(
        kind,
        0x00ab_cd00 | u32::from(x),
        MacAddr([2, 0, 0, 0, 1, x]),
        MacAddr([2, 0, 0, 0, 2, x]),
        ip(v6, x),
        ip(v6, x.wrapping_add(1)),
    );
    e.ttl = 60 + x % 4;
    if kind == TunnelKind::Geneve && opts {
        e.geneve_options = vec![0, 1, 2, 1, 9, 9, 9, x];
    }
    Arc::new(e)
}

fn outer_op() -> impl Strategy<Value = OuterOp> {
    let kind = prop::sample::select(vec![
        TunnelKind::Vxlan,
        TunnelKind::Geneve,
        TunnelKind::Nvgre,
    ]);
    prop_oneof![
        2 => Just(OuterOp::Ignore),
        1 => Just(OuterOp::Pop),
        4 => (kind.clone(), prop::bool::weighted(0.2), any::<bool>(), any::<u8>())
            .prop_map(|(k, v6, o, x)| OuterOp::Push(encap(k, v6, o, x))),
        1 => (kind, prop::bool::weighted(0.2), any::<bool>(), any::<u8>())
            .prop_map(|(k, v6, o, x)| OuterOp::Replace(encap(k, v6, o, x))),
    ]
}

fn vlan_op() -> impl Strategy<Value = VlanOp> {
    prop_oneof![
        6 => Just(VlanOp::Ignore),
        1 => Just(VlanOp::Pop),
        1 => (0u16..4096).prop_map(VlanOp::Set),
    ]
}

/// An optional address, mostly of the family `v6`, sometimes the other.
fn addr(v6: bool) -> impl Strategy<Value = Option<IpAddr>> {
    prop::option::weighted(
        0.5,
        (prop::bool::weighted(0.9), any::<u8>()).prop_map(move |(same, x)| ip(v6 == same, x)),
    )
}

fn transposition() -> impl Strategy<Value = Transposition> {
    prop::bool::weighted(0.3).prop_flat_map(|v6| {
        (
            outer_op(),
            vlan_op(),
            prop::option::weighted(0.3, any::<[u8; 6]>().prop_map(MacAddr)),
            prop::option::weighted(0.3, any::<[u8; 6]>().prop_map(MacAddr)),
            addr(v6),
            addr(v6),
            prop::option::weighted(0.2, 0u8..64),
        )
            .prop_map(|(outer, vlan, src_mac, dst_mac, src_ip, dst_ip, dscp)| {
                Transposition {
                    outer,
                    vlan,
                    src_mac,
                    dst_mac,
                    src_ip,
                    dst_ip,
                    dscp,
                    ..Transposition::default()
                }
            })
    })
}

fn ports() -> impl Strategy<Value = PortRewrite> {
    (
        prop::option::weighted(0.4, any::<u16>()),
        prop::option::weighted(0.4, any::<u16>()),
    )
        .prop_map(|(src, dst)| PortRewrite { src, dst })
}

/// Both emitters on a copy of `frame` in a buffer with `headroom`.
fn both(
    t: &Transposition,
    plan: &EmitPlan,
    p: &PortRewrite,
    frame: &[u8],
    headroom: usize,
) -> Result<(), TestCaseError> {
    let Ok(parsed) = parse(frame) else {
        return Ok(());
    };
    let mut general = PacketBuf::with_headroom(frame.len() + 64, headroom);
    general.reset(frame);
    let mut planned = general.clone();
    let mut inlined = general.clone();
    let mut kept_port = general.clone();
    let a = apply_with_ports(t, p, &mut general, &parsed);
    let b = apply_planned(plan, p, None, &mut planned, &parsed);
    let c = apply_planned_inline(plan, p, None, &mut inlined, &parsed);
    // The flow's tunnel port worked out ahead, as a flow table keeps it.
    let port = plan.tunnel_port(p, &parsed.ufid.inner);
    prop_assert_eq!(port.is_some(), plan.pushes_udp_tunnel());
    let d = apply_planned_inline(plan, p, port, &mut kept_port, &parsed);
    let mut kept_planned = PacketBuf::with_headroom(frame.len() + 64, headroom);
    kept_planned.reset(frame);
    let e = apply_planned(plan, p, port, &mut kept_planned, &parsed);
    prop_assert_eq!(
        &a,
        &e,
        "planned result with the kept port of {}",
        t.describe()
    );
    prop_assert_eq!(
        general.as_slice(),
        kept_planned.as_slice(),
        "planned bytes with the kept port of {}",
        t.describe()
    );
    prop_assert_eq!(&a, &b, "result of {}", t.describe());
    prop_assert_eq!(&a, &c, "inlined result of {}", t.describe());
    prop_assert_eq!(&a, &d, "result with the kept port of {}", t.describe());
    prop_assert_eq!(
        general.as_slice(),
        kept_port.as_slice(),
        "bytes with the kept port of {}",
        t.describe()
    );
    prop_assert_eq!(
        general.as_slice(),
        planned.as_slice(),
        "bytes of {}",
        t.describe()
    );
    prop_assert_eq!(
        general.as_slice(),
        inlined.as_slice(),
        "inlined bytes of {}",
        t.describe()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn planned_emit_is_the_general_emit(
        t in transposition(),
        p in ports(),
        headroom in prop_oneof![3 => Just(128usize), 1 => 0usize..80],
    ) {
        let plan = EmitPlan::new(t.clone());
        for (_, frame) in all_frames() {
            both(&t, &plan, &p, &frame, headroom)?;
        }
    }
}

/// The shortcut is taken where it is meant to be: IPv4 encap pushes (VXLAN,
/// Geneve with options, NVGRE) with NAT, over plain and tunnelled frames;
/// not for IPv6 outer headers or VLAN changes.
#[test]
fn shortcut_covers_the_usual_shapes() {
    let nat = Transposition {
        src_ip: Some(ip(false, 1)),
        dst_mac: Some(MacAddr([2, 1, 1, 1, 1, 1])),
        ..Transposition::default()
    };
    let frames = all_frames();
    let frame = |name: &str| {
        let f = &frames.iter().find(|(n, _)| *n == name).expect("sample").1;
        parse(f).expect("sample parses")
    };
    for kind in [TunnelKind::Vxlan, TunnelKind::Geneve, TunnelKind::Nvgre] {
        let push = EmitPlan::new(Transposition {
            outer: OuterOp::Push(encap(kind, false, true, 3)),
            ..nat.clone()
        });
        assert!(push.takes_shortcut(&frame("tcp_v4")), "{kind:?}");
        assert!(push.takes_shortcut(&frame("udp_v4_nocsum")), "{kind:?}");
        assert!(push.takes_shortcut(&frame("vxlan_v4")), "{kind:?}");
        assert!(push.takes_shortcut(&frame("tcp_v4_vlan")), "{kind:?}");
        assert!(!push.takes_shortcut(&frame("tcp_v6")), "family clash");
    }
    let pop = EmitPlan::new(Transposition {
        outer: OuterOp::Pop,
        ..nat.clone()
    });
    assert!(pop.takes_shortcut(&frame("vxlan_v4")));
    assert!(pop.takes_shortcut(&frame("nvgre_v4")));
    let keep = EmitPlan::new(nat.clone());
    assert!(keep.takes_shortcut(&frame("tcp_v4")));
    assert!(
        !keep.takes_shortcut(&frame("vxlan_v4")),
        "kept outer groups"
    );
    let v6_outer = EmitPlan::new(Transposition {
        outer: OuterOp::Push(encap(TunnelKind::Vxlan, true, false, 3)),
        ..nat.clone()
    });
    assert!(!v6_outer.has_shortcut());
    let vlan = EmitPlan::new(Transposition {
        vlan: VlanOp::Set(9),
        ..nat
    });
    assert!(!vlan.has_shortcut());
}

/// `apply_planned_inline` trusts its `parsed` to be the parse of the
/// frame's bytes (the header checks are the parser's). Given one of other
/// bytes — junk, or a frame cut short — it never panics: it pushes the
/// tunnel headers in front of the frame, or fails before the push (the
/// frame keeps its length; bytes it rewrote before failing stay
/// rewritten, as with `apply_planned`).
#[test]
fn the_inlined_emit_given_a_foreign_parse_stays_in_the_frame() {
    let frames = all_frames();
    let tcp = &frames
        .iter()
        .find(|(n, _)| *n == "tcp_v4")
        .expect("sample")
        .1;
    let parsed = parse(tcp).expect("sample parses");
    let plan = EmitPlan::new(Transposition {
        src_ip: Some(ip(false, 1)),
        outer: OuterOp::Push(encap(TunnelKind::Vxlan, false, false, 3)),
        ..Transposition::default()
    });
    let ports = PortRewrite {
        src: Some(40_000),
        dst: None,
    };
    let mut junks: Vec<Vec<u8>> = [0u8, 0xff, 0x45, 0x5f]
        .iter()
        .map(|&fill| vec![fill; tcp.len()])
        .collect();
    junks.extend((0..tcp.len()).step_by(7).map(|n| tcp[..n].to_vec()));
    let (mut pushed, mut failed) = (0, 0);
    for junk in junks {
        for tunnel_port in [None, Some(4789)] {
            let mut buf = PacketBuf::from_frame(&junk);
            let r = apply_planned_inline(&plan, &ports, tunnel_port, &mut buf, &parsed);
            let out = buf.as_slice();
            match r {
                // 50 bytes pushed in front; the frame's length unchanged.
                Ok(()) => {
                    assert_eq!(out.len(), junk.len() + 50);
                    pushed += 1;
                }
                Err(_) => {
                    assert_eq!(out.len(), junk.len());
                    failed += 1;
                }
            }
        }
    }
    // Both ends reached: junk of the right length is rewritten and pushed,
    // frames cut short fail.
    assert!(pushed > 0 && failed > 0, "{pushed} pushed, {failed} failed");
}
