//! Conditions (VFP-4): a condition is a field type plus a list of match values
//! (exact, range or prefix). Values of one condition are OR-ed; the
//! conditions of a rule or group are AND-ed.
//!
//! Every field is matched as an unsigned number of at most 128 bits, so the
//! classifiers need only one value domain. IP addresses use the IPv6 space:
//! IPv4 addresses are IPv4-mapped (`::ffff:a.b.c.d`), and an IPv4 prefix of
//! length L is a 128-bit prefix of length 96 + L.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use strata_packet::flow::{FlowKey, Ufid, ethertype, ip_to_u128, ipproto};

/// A matchable field of the parsed flow (inner groups, plus outer groups of a
/// tunnelled packet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    SrcMac,
    DstMac,
    Vlan,
    EtherType,
    SrcIp,
    DstIp,
    Proto,
    Dscp,
    SrcPort,
    DstPort,
    IcmpType,
    IcmpCode,
    /// VNI / GRE key of the encap group.
    TunnelId,
    OuterSrcMac,
    OuterDstMac,
    OuterSrcIp,
    OuterDstIp,
}

impl Field {
    pub const COUNT: usize = 17;
    pub const ALL: [Field; Field::COUNT] = [
        Field::SrcMac,
        Field::DstMac,
        Field::Vlan,
        Field::EtherType,
        Field::SrcIp,
        Field::DstIp,
        Field::Proto,
        Field::Dscp,
        Field::SrcPort,
        Field::DstPort,
        Field::IcmpType,
        Field::IcmpCode,
        Field::TunnelId,
        Field::OuterSrcMac,
        Field::OuterDstMac,
        Field::OuterSrcIp,
        Field::OuterDstIp,
    ];

    /// Dense index, `0..COUNT`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Width of the field's value in bits (prefix lengths are over this).
    pub fn width(self) -> u8 {
        match self {
            Field::SrcMac | Field::DstMac | Field::OuterSrcMac | Field::OuterDstMac => 48,
            Field::Vlan => 12,
            Field::EtherType | Field::SrcPort | Field::DstPort => 16,
            Field::SrcIp | Field::DstIp | Field::OuterSrcIp | Field::OuterDstIp => 128,
            Field::Proto | Field::IcmpType | Field::IcmpCode => 8,
            Field::Dscp => 6,
            Field::TunnelId => 24,
        }
    }

    /// Largest value the field can hold.
    pub fn max_value(self) -> u128 {
        let w = self.width();
        if w >= 128 {
            u128::MAX
        } else {
            (1u128 << w) - 1
        }
    }

    pub fn is_ip(self) -> bool {
        matches!(
            self,
            Field::SrcIp | Field::DstIp | Field::OuterSrcIp | Field::OuterDstIp
        )
    }

    pub fn is_mac(self) -> bool {
        matches!(
            self,
            Field::SrcMac | Field::DstMac | Field::OuterSrcMac | Field::OuterDstMac
        )
    }
}

/// One match value of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchValue {
    Exact(u128),
    /// Inclusive range `lo..=hi`.
    Range {
        lo: u128,
        hi: u128,
    },
    /// The top `len` bits (of the field's width) equal those of `value`.
    Prefix {
        value: u128,
        len: u8,
    },
}

impl MatchValue {
    /// An exact IP address (IPv4 mapped into the IPv6 space).
    pub fn ip(ip: IpAddr) -> MatchValue {
        MatchValue::Exact(ip_to_u128(ip))
    }

    /// An IP prefix with a family-relative length (`10.0.0.0/8` is
    /// `ip_prefix(10.0.0.0, 8)`).
    pub fn ip_prefix(ip: IpAddr, len: u8) -> MatchValue {
        let len = match ip {
            IpAddr::V4(_) => 96 + len.min(32),
            IpAddr::V6(_) => len.min(128),
        };
        MatchValue::Prefix {
            value: ip_to_u128(ip) & prefix_mask(len, 128),
            len,
        }
    }

    /// Does `v` (a value of a field `width` bits wide) match?
    #[inline]
    pub fn matches(&self, v: u128, width: u8) -> bool {
        match *self {
            MatchValue::Exact(x) => v == x,
            MatchValue::Range { lo, hi } => lo <= v && v <= hi,
            MatchValue::Prefix { value, len } => {
                let m = prefix_mask(len, width);
                v & m == value & m
            }
        }
    }

    /// The inclusive range of values this match value covers.
    pub fn bounds(&self, width: u8) -> (u128, u128) {
        match *self {
            MatchValue::Exact(x) => (x, x),
            MatchValue::Range { lo, hi } => (lo, hi),
            MatchValue::Prefix { value, len } => {
                let m = prefix_mask(len, width);
                let lo = value & m;
                let full = if width >= 128 {
                    u128::MAX
                } else {
                    (1u128 << width) - 1
                };
                (lo, lo | (full & !m))
            }
        }
    }

    /// Prefix length for longest-prefix-match ordering: exact values count
    /// as full-width prefixes, ranges as length 0.
    pub fn prefix_len(&self, width: u8) -> u8 {
        match *self {
            MatchValue::Exact(_) => width,
            MatchValue::Range { .. } => 0,
            MatchValue::Prefix { len, .. } => len.min(width),
        }
    }
}

/// The mask selecting the top `len` bits of a `width`-bit value.
#[inline]
pub fn prefix_mask(len: u8, width: u8) -> u128 {
    let len = len.min(width);
    if len == 0 {
        return 0;
    }
    let full: u128 = if width >= 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    let shift = u32::from(width - len);
    if shift >= 128 {
        0
    } else {
        full & !((1u128 << shift) - 1)
    }
}

/// The values of a condition. Most conditions have one: it is kept inline,
/// so a rule's conditions cost no allocation each (a 50k-rule group is
/// built, kept and freed with 200k fewer allocations).
pub type MatchValues = smallvec::SmallVec<[MatchValue; 1]>;

/// A condition: the field matches any of `values`. An empty value list never
/// matches (and is rejected by validation).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Condition {
    pub field: Field,
    pub values: MatchValues,
}

impl Condition {
    pub fn new(field: Field, values: Vec<MatchValue>) -> Condition {
        Condition {
            field,
            values: MatchValues::from_vec(values),
        }
    }

    pub fn exact(field: Field, v: u128) -> Condition {
        Condition::new(field, vec![MatchValue::Exact(v)])
    }

    pub fn range(field: Field, lo: u128, hi: u128) -> Condition {
        Condition::new(field, vec![MatchValue::Range { lo, hi }])
    }

    pub fn ip_prefix(field: Field, ip: IpAddr, len: u8) -> Condition {
        Condition::new(field, vec![MatchValue::ip_prefix(ip, len)])
    }

    /// Does the condition hold for these field values? An absent field (no
    /// outer header, ports of a portless protocol, …) never matches.
    #[inline]
    pub fn matches(&self, fv: &FieldValues) -> bool {
        match fv.get(self.field) {
            Some(v) => {
                let w = self.field.width();
                self.values.iter().any(|m| m.matches(v, w))
            }
            None => false,
        }
    }

    /// Check the values are well formed for the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.values.is_empty() {
            return Err(format!("condition on {:?} has no values", self.field));
        }
        let max = self.field.max_value();
        for v in &self.values {
            match *v {
                MatchValue::Exact(x) if x > max => {
                    return Err(format!("value {x} too large for {:?}", self.field));
                }
                MatchValue::Range { lo, hi } if lo > hi || hi > max => {
                    return Err(format!("bad range {lo}..={hi} for {:?}", self.field));
                }
                MatchValue::Prefix { len, .. } if len > self.field.width() => {
                    return Err(format!(
                        "prefix length {len} longer than {:?}'s {} bits",
                        self.field,
                        self.field.width()
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Do all conditions hold?
#[inline]
pub fn all_match(conds: &[Condition], fv: &FieldValues) -> bool {
    conds.iter().all(|c| c.matches(fv))
}

/// Every field of a UFID as a number, with a presence mask. Computed once per
/// layer visit on the slow path; classifiers read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldValues {
    values: [u128; Field::COUNT],
    present: u32,
    /// Bit [`Field::index`] set per field whose value exceeds the field's
    /// width (only a caller's own values can: a parsed packet's never do),
    /// kept as values are set so that each classification tests one mask.
    oversize: u32,
}

impl FieldValues {
    /// No field present.
    pub const EMPTY: FieldValues = FieldValues {
        values: [0; Field::COUNT],
        present: 0,
        oversize: 0,
    };

    pub fn from_ufid(u: &Ufid) -> FieldValues {
        let mut fv = FieldValues::EMPTY;
        fv.fill_from_ufid(u);
        fv
    }

    /// Become [`FieldValues::from_ufid`]`(u)` in place (the slow path keeps
    /// one per simulation instead of moving 288 bytes per layer).
    pub fn fill_from_ufid(&mut self, u: &Ufid) {
        *self = FieldValues::EMPTY;
        self.fill_inner(&u.inner);
        if let Some(o) = &u.outer {
            self.set(Field::TunnelId, u128::from(o.vni));
            self.set(Field::OuterSrcMac, u128::from(o.src_mac.to_u64()));
            self.set(Field::OuterDstMac, u128::from(o.dst_mac.to_u64()));
            self.set(Field::OuterSrcIp, ip_to_u128(o.src_ip));
            self.set(Field::OuterDstIp, ip_to_u128(o.dst_ip));
        }
    }

    fn fill_inner(&mut self, k: &FlowKey) {
        self.set(Field::SrcMac, u128::from(k.src_mac.to_u64()));
        self.set(Field::DstMac, u128::from(k.dst_mac.to_u64()));
        if let Some(v) = k.vlan {
            self.set(Field::Vlan, u128::from(v));
        }
        self.set(Field::EtherType, u128::from(k.ether_type));
        if k.ether_type == ethertype::IPV4 || k.ether_type == ethertype::IPV6 {
            self.set(Field::SrcIp, ip_to_u128(k.src_ip));
            self.set(Field::DstIp, ip_to_u128(k.dst_ip));
            self.set(Field::Proto, u128::from(k.proto));
            self.set(Field::Dscp, u128::from(k.dscp));
            match k.proto {
                ipproto::TCP | ipproto::UDP => {
                    self.set(Field::SrcPort, u128::from(k.src_port));
                    self.set(Field::DstPort, u128::from(k.dst_port));
                }
                ipproto::ICMP | ipproto::ICMPV6 => {
                    self.set(Field::IcmpType, u128::from(k.icmp_type));
                    self.set(Field::IcmpCode, u128::from(k.icmp_code));
                }
                _ => {}
            }
        }
    }

    /// One field of a UFID, without building the others (same presence
    /// rules as [`FieldValues::from_ufid`]).
    pub fn field_of(u: &Ufid, f: Field) -> Option<u128> {
        let k = &u.inner;
        let ip = k.ether_type == ethertype::IPV4 || k.ether_type == ethertype::IPV6;
        let ports = ip && matches!(k.proto, ipproto::TCP | ipproto::UDP);
        let icmp = ip && matches!(k.proto, ipproto::ICMP | ipproto::ICMPV6);
        let o = u.outer.as_ref();
        match f {
            Field::SrcMac => Some(u128::from(k.src_mac.to_u64())),
            Field::DstMac => Some(u128::from(k.dst_mac.to_u64())),
            Field::Vlan => k.vlan.map(u128::from),
            Field::EtherType => Some(u128::from(k.ether_type)),
            Field::SrcIp => ip.then(|| ip_to_u128(k.src_ip)),
            Field::DstIp => ip.then(|| ip_to_u128(k.dst_ip)),
            Field::Proto => ip.then_some(u128::from(k.proto)),
            Field::Dscp => ip.then_some(u128::from(k.dscp)),
            Field::SrcPort => ports.then_some(u128::from(k.src_port)),
            Field::DstPort => ports.then_some(u128::from(k.dst_port)),
            Field::IcmpType => icmp.then_some(u128::from(k.icmp_type)),
            Field::IcmpCode => icmp.then_some(u128::from(k.icmp_code)),
            Field::TunnelId => o.map(|o| u128::from(o.vni)),
            Field::OuterSrcMac => o.map(|o| u128::from(o.src_mac.to_u64())),
            Field::OuterDstMac => o.map(|o| u128::from(o.dst_mac.to_u64())),
            Field::OuterSrcIp => o.map(|o| ip_to_u128(o.src_ip)),
            Field::OuterDstIp => o.map(|o| ip_to_u128(o.dst_ip)),
        }
    }

    /// Build directly from values (tests, benches, generators).
    pub fn from_pairs(pairs: &[(Field, u128)]) -> FieldValues {
        let mut fv = FieldValues::EMPTY;
        for &(f, v) in pairs {
            fv.set(f, v);
        }
        fv
    }

    #[inline]
    pub fn set(&mut self, f: Field, v: u128) {
        self.values[f.index()] = v;
        self.present |= 1 << f.index();
        // (Free where the value's type already fits the field.)
        let over = u32::from(v > f.max_value()) << f.index();
        self.oversize = (self.oversize & !(1 << f.index())) | over;
    }

    /// Bit [`Field::index`] set per present field whose value is wider
    /// than the field.
    #[inline(always)]
    pub fn oversize(&self) -> u32 {
        self.oversize
    }

    /// Every field's value by [`Field::index`], for classifiers reading
    /// several fields without copying them. An absent field's value is
    /// always 0 (values are only ever set together with their presence
    /// bit); classifiers rely on it.
    #[inline(always)]
    pub(crate) fn values(&self) -> &[u128; Field::COUNT] {
        &self.values
    }

    /// Bit [`Field::index`] set per present field.
    #[inline(always)]
    pub(crate) fn present(&self) -> u32 {
        self.present
    }

    #[inline]
    pub fn get(&self, f: Field) -> Option<u128> {
        if self.present & (1 << f.index()) != 0 {
            Some(self.values[f.index()])
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_packet::flow::{FlowKey, MacAddr, OuterKey, TunnelKind};

    /// A value wider than its field is flagged, and the flag goes when the
    /// field is set again within its width.
    #[test]
    fn oversize_values_are_flagged() {
        let mut fv = FieldValues::from_pairs(&[(Field::DstPort, 443), (Field::SrcIp, u128::MAX)]);
        assert_eq!(fv.oversize(), 0);
        fv.set(Field::Vlan, 4096);
        fv.set(Field::Dscp, 63);
        fv.set(Field::TunnelId, 1 << 24);
        let bits = |fs: &[Field]| fs.iter().fold(0, |m, f| m | 1 << f.index());
        assert_eq!(fv.oversize(), bits(&[Field::Vlan, Field::TunnelId]));
        fv.set(Field::Vlan, 4095);
        assert_eq!(fv.oversize(), bits(&[Field::TunnelId]));
        assert_eq!(fv.get(Field::Vlan), Some(4095));
    }

    #[test]
    fn field_of_agrees_with_from_ufid() {
        let inner = FlowKey {
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            vlan: Some(7),
            ether_type: ethertype::IPV4,
            src_ip: "10.0.0.1".parse().unwrap(),
            dst_ip: "10.0.0.2".parse().unwrap(),
            proto: ipproto::TCP,
            dscp: 10,
            src_port: 1000,
            dst_port: 80,
            icmp_type: 0,
            icmp_code: 0,
        };
        let outer = OuterKey {
            src_mac: MacAddr([2, 0xaa, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0xaa, 0, 0, 0, 2]),
            src_ip: "192.168.0.1".parse().unwrap(),
            dst_ip: "192.168.0.2".parse().unwrap(),
            tunnel: TunnelKind::Vxlan,
            vni: 42,
        };
        for u in [
            Ufid::plain(inner),
            Ufid {
                outer: Some(outer),
                inner,
            },
            Ufid::plain(FlowKey {
                proto: ipproto::ICMP,
                icmp_type: 8,
                ..inner
            }),
            Ufid::plain(FlowKey {
                ether_type: 0x0806,
                vlan: None,
                ..inner
            }),
        ] {
            let fv = FieldValues::from_ufid(&u);
            for f in Field::ALL {
                assert_eq!(FieldValues::field_of(&u, f), fv.get(f), "{f:?} of {u:?}");
            }
        }
    }
}
