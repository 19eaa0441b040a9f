//! Property test of the packed UFID form flow tables store: for random keys
//! (IPv4 and IPv6, tagged or not, with and without any tunnel header group),
//! packing is lossless, `matches` holds exactly for the same key, packed
//! equality is key equality, and the table hash agrees for equal keys (and
//! for a key's split form).

use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use strata_packet::packed::{join_v4, split_v4, table_hash_split, table_hash_split_without_macs};
use strata_packet::{FlowKey, MacAddr, OuterKey, PackedUfid, TunnelKind, Ufid};

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        // Few distinct values, so random pairs often collide field-wise.
        (0u32..4).prop_map(|v| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | v))),
        (0u128..3).prop_map(|v| IpAddr::V6(Ipv6Addr::from(0xfd00_u128 << 112 | v))),
        Just(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped())),
    ]
}

fn mac() -> impl Strategy<Value = MacAddr> {
    (0u8..3).prop_map(|b| MacAddr([2, 0, 0, 0, 0, b]))
}

fn inner() -> impl Strategy<Value = FlowKey> {
    (
        (
            mac(),
            mac(),
            prop::option::of(0u16..3),
            prop_oneof![Just(0x0800u16), Just(0x86dd), Just(0x0806)],
        ),
        (
            ip(),
            ip(),
            prop_oneof![Just(6u8), Just(17), Just(1)],
            0u8..2,
        ),
        (0u16..3, 0u16..3, 0u8..2, 0u8..2),
    )
        .prop_map(
            |((sm, dm, vlan, et), (s, d, proto, dscp), (sp, dp, it, ic))| FlowKey {
                src_mac: sm,
                dst_mac: dm,
                vlan: vlan.map(|v| v * 2047),
                ether_type: et,
                src_ip: s,
                dst_ip: d,
                proto,
                dscp,
                src_port: sp,
                dst_port: dp,
                icmp_type: it,
                icmp_code: ic,
            },
        )
}

fn outer() -> impl Strategy<Value = Option<OuterKey>> {
    prop::option::of(
        (
            mac(),
            mac(),
            ip(),
            ip(),
            prop_oneof![
                Just(TunnelKind::Vxlan),
                Just(TunnelKind::Nvgre),
                Just(TunnelKind::Geneve)
            ],
            prop_oneof![Just(0u32), Just(5001), Just(0xff_ffff), Just(0x100_0000)],
        )
            .prop_map(|(sm, dm, s, d, tunnel, vni)| OuterKey {
                src_mac: sm,
                dst_mac: dm,
                src_ip: s,
                dst_ip: d,
                tunnel,
                vni,
            }),
    )
}

fn ufid() -> impl Strategy<Value = Ufid> {
    (outer(), inner()).prop_map(|(outer, inner)| Ufid { outer, inner })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]
    #[test]
    fn packing_is_lossless_and_exact(a in ufid(), b in ufid()) {
        let pa = PackedUfid::pack(&a);
        let pb = PackedUfid::pack(&b);
        prop_assert_eq!(pa.unpack(), a);
        prop_assert_eq!(pb.unpack(), b);
        prop_assert!(pa.matches(&a));
        prop_assert_eq!(pa.matches(&b), a == b);
        prop_assert_eq!(pb.matches(&a), a == b);
        prop_assert_eq!(pa == pb, a == b);
        prop_assert_eq!(pa.proto(), a.inner.proto);
        if a == b {
            prop_assert_eq!(a.table_hash(7), b.table_hash(7));
        }
        // The split form (a tuple and a shared header context) is exact too.
        if let Some((ta, ca)) = split_v4(&a) {
            prop_assert_eq!(join_v4(&ta, &ca), a);
            // Hashing the split form gives the key's own table hashes.
            for seed in [0, 7, u64::MAX] {
                prop_assert_eq!(table_hash_split(&ta, &ca, seed), a.table_hash(seed));
                prop_assert_eq!(
                    table_hash_split_without_macs(&ta, &ca, seed),
                    a.table_hash_without_macs(seed)
                );
            }
            prop_assert_eq!(ta.matches(&b) && ca.matches(&b), a == b);
            if let Some((tb, cb)) = split_v4(&b) {
                prop_assert_eq!(ta == tb && ca == cb, a == b);
            }
        } else {
            prop_assert!(matches!(pa, PackedUfid::Wide(_)));
        }
        // Without MACs: keys equal but for MACs hash alike.
        let mut am = a;
        am.inner.src_mac = b.inner.src_mac;
        am.inner.dst_mac = b.inner.dst_mac;
        if let (Some(o), Some(bo)) = (am.outer.as_mut(), b.outer.as_ref()) {
            o.src_mac = bo.src_mac;
            o.dst_mac = bo.dst_mac;
        }
        prop_assert_eq!(a.table_hash_without_macs(3), am.table_hash_without_macs(3));
        // A key one way and its reverse the other way hash alike; the two
        // orientations of one key do not (when they can be told apart).
        for fwd in [true, false] {
            prop_assert_eq!(a.reversible_hash(5, fwd), a.reversed().reversible_hash(5, !fwd));
            prop_assert_eq!(a.reversible_hash(5, fwd), am.reversible_hash(5, fwd));
        }
        if let (Some(x), Some(y)) = (a.reversible_hash(5, true), a.reversible_hash(5, false)) {
            prop_assert_ne!(x, y);
        }
    }
}

/// `u` with field `f` (of 19) changed to the value it has in `other`.
fn with_field_of(u: &Ufid, other: &Ufid, f: usize) -> Ufid {
    let mut r = *u;
    let (i, o) = (&mut r.inner, &other.inner);
    match f {
        0 => i.src_mac = o.src_mac,
        1 => i.dst_mac = o.dst_mac,
        2 => i.vlan = o.vlan,
        3 => i.ether_type = o.ether_type,
        4 => i.src_ip = o.src_ip,
        5 => i.dst_ip = o.dst_ip,
        6 => i.proto = o.proto,
        7 => i.dscp = o.dscp,
        8 => i.src_port = o.src_port,
        9 => i.dst_port = o.dst_port,
        10 => i.icmp_type = o.icmp_type,
        11 => i.icmp_code = o.icmp_code,
        12 => r.outer = other.outer,
        _ => {
            if let (Some(ro), Some(oo)) = (r.outer.as_mut(), other.outer.as_ref()) {
                match f {
                    13 => ro.src_mac = oo.src_mac,
                    14 => ro.dst_mac = oo.dst_mac,
                    15 => ro.src_ip = oo.src_ip,
                    16 => ro.dst_ip = oo.dst_ip,
                    17 => ro.tunnel = oo.tunnel,
                    _ => ro.vni = oo.vni,
                }
            }
        }
    }
    r
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]
    /// Keys differing in a single field: every field takes part.
    #[test]
    fn one_field_apart(a in ufid(), other in ufid(), f in 0usize..19) {
        let b = with_field_of(&a, &other, f);
        let pa = PackedUfid::pack(&a);
        prop_assert_eq!(PackedUfid::pack(&b).unpack(), b);
        if let Some((t, c)) = split_v4(&a) {
            prop_assert_eq!(t.matches(&b) && c.matches(&b), a == b, "field {}", f);
        }
        prop_assert_eq!(pa.matches(&b), a == b, "field {}", f);
        prop_assert_eq!(pa == PackedUfid::pack(&b), a == b, "field {}", f);
    }
}
