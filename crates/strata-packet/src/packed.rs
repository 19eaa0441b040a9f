//! Compact storage form of a [`Ufid`] for flow tables.
//!
//! A [`Ufid`] is 112 bytes because every address may be IPv6. Flow tables
//! hold millions of keys and almost all of them are IPv4 (with at most one
//! IPv4 tunnel header group), so a table stores a [`PackedUfid`]: IPv4 keys
//! inline in 56 bytes, anything else boxed. Packing is lossless
//! (`PackedUfid::pack(u).unpack() == u` for every `u`), and
//! [`PackedUfid::matches`] compares against a full key without unpacking, so
//! a lookup never builds a key.
//!
//! The IPv4 form splits ([`split_v4`]) into a 16-byte [`TupleV4`] of the
//! fields that tell connections apart and a [`HeaderContext`] of the fields
//! many flows share (MACs, VLAN, the tunnel header group), for tables that
//! keep each context once.

use crate::flow::{
    FOLD_K, FlowKey, MacAddr, OuterKey, TunnelKind, Ufid, fold, hash_inner_words, hash_outer_words,
    inner_words, ipv4_words,
};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};

/// A UFID as a flow table stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PackedUfid {
    /// IPv4 (or non-IP) inner groups, optional IPv4 outer groups.
    V4(PackedV4),
    /// Everything else (IPv6 anywhere).
    Wide(Box<Ufid>),
}

/// Bit 15 of `vlan` marks a present tag (ids are 12 bits).
const VLAN_PRESENT: u16 = 0x8000;

/// The IPv4 form: every field of the [`Ufid`], narrowed, in two parts —
/// the fields that tell connections apart ([`TupleV4`]) and the ones many
/// flows share ([`HeaderContext`]). A table may store the context once for
/// all its flows (see the engine's unified flow table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedV4 {
    tuple: TupleV4,
    context: HeaderContext,
}

/// The per-connection fields of an IPv4 UFID: addresses, ports, protocol,
/// DSCP and ICMP type/code of the inner groups. 16 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TupleV4 {
    src_ip: u32,
    dst_ip: u32,
    src_port: u16,
    dst_port: u16,
    proto: u8,
    dscp: u8,
    icmp_type: u8,
    icmp_code: u8,
}

/// The fields of an IPv4 UFID that the flows between the same two
/// endpoints' NICs share: inner MACs, VLAN and ethertype, and the whole
/// outer header group (outer MACs and IPv4 addresses, tunnel kind, VNI).
/// 40 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HeaderContext {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    ether_type: u16,
    vlan: u16,
    /// Outer groups; `outer_kind` 0 = none, else `TunnelKind` + 1.
    outer_src_mac: [u8; 6],
    outer_dst_mac: [u8; 6],
    outer_src_ip: u32,
    outer_dst_ip: u32,
    /// VNI in the low 24 bits, `outer_kind` in the top 8.
    outer_vni_kind: u32,
}

/// Whether two MACs are equal, as one 4-byte and one 2-byte comparison
/// (what `==` on the arrays compiles to assembles each side into one
/// number first).
#[inline(always)]
fn mac_eq(a: &[u8; 6], b: &[u8; 6]) -> bool {
    let (a4, a2) = a.split_at(4);
    let (b4, b2) = b.split_at(4);
    a4 == b4 && a2 == b2
}

fn v4(ip: IpAddr) -> Option<u32> {
    match ip {
        IpAddr::V4(a) => Some(u32::from(a)),
        IpAddr::V6(_) => None,
    }
}

fn kind_code(k: TunnelKind) -> u32 {
    match k {
        TunnelKind::Vxlan => 1,
        TunnelKind::Nvgre => 2,
        TunnelKind::Geneve => 3,
    }
}

fn kind_of(code: u32) -> Option<TunnelKind> {
    match code {
        1 => Some(TunnelKind::Vxlan),
        2 => Some(TunnelKind::Nvgre),
        3 => Some(TunnelKind::Geneve),
        _ => None,
    }
}

/// `u` as an IPv4 tuple and its header context, if it has the IPv4 form
/// (IPv4 or non-IP inner groups, no outer group or an IPv4 one).
pub fn split_v4(u: &Ufid) -> Option<(TupleV4, HeaderContext)> {
    let k = &u.inner;
    let vlan = match k.vlan {
        None => 0,
        Some(v) if v < VLAN_PRESENT => v | VLAN_PRESENT,
        Some(_) => return None,
    };
    let tuple = TupleV4 {
        src_ip: v4(k.src_ip)?,
        dst_ip: v4(k.dst_ip)?,
        src_port: k.src_port,
        dst_port: k.dst_port,
        proto: k.proto,
        dscp: k.dscp,
        icmp_type: k.icmp_type,
        icmp_code: k.icmp_code,
    };
    let mut c = HeaderContext {
        src_mac: k.src_mac.0,
        dst_mac: k.dst_mac.0,
        ether_type: k.ether_type,
        vlan,
        ..HeaderContext::default()
    };
    if let Some(o) = &u.outer {
        if o.vni >= 1 << 24 {
            return None;
        }
        c.outer_src_mac = o.src_mac.0;
        c.outer_dst_mac = o.dst_mac.0;
        c.outer_src_ip = v4(o.src_ip)?;
        c.outer_dst_ip = v4(o.dst_ip)?;
        c.outer_vni_kind = o.vni | kind_code(o.tunnel) << 24;
    }
    Some((tuple, c))
}

/// The UFID whose [`split_v4`] is `(t, c)`.
pub fn join_v4(t: &TupleV4, c: &HeaderContext) -> Ufid {
    Ufid {
        outer: c.outer(),
        inner: FlowKey {
            src_mac: MacAddr(c.src_mac),
            dst_mac: MacAddr(c.dst_mac),
            vlan: (c.vlan & VLAN_PRESENT != 0).then_some(c.vlan & !VLAN_PRESENT),
            ether_type: c.ether_type,
            src_ip: IpAddr::V4(Ipv4Addr::from(t.src_ip)),
            dst_ip: IpAddr::V4(Ipv4Addr::from(t.dst_ip)),
            proto: t.proto,
            dscp: t.dscp,
            src_port: t.src_port,
            dst_port: t.dst_port,
            icmp_type: t.icmp_type,
            icmp_code: t.icmp_code,
        },
    }
}

/// `join_v4(t, c).table_hash(seed)`, computed from the split form: a table
/// that keeps keys split hashes a stored key without rebuilding it.
#[inline]
pub fn table_hash_split(t: &TupleV4, c: &HeaderContext, seed: u64) -> u64 {
    split_hash_fields::<true>(t, c, seed)
}

/// `join_v4(t, c).table_hash_without_macs(seed)`, from the split form.
#[inline]
pub fn table_hash_split_without_macs(t: &TupleV4, c: &HeaderContext, seed: u64) -> u64 {
    split_hash_fields::<false>(t, c, seed)
}

#[inline(always)]
fn split_hash_fields<const MACS: bool>(t: &TupleV4, c: &HeaderContext, seed: u64) -> u64 {
    let mac = |m: [u8; 6]| if MACS { mac_bits(m) } else { 0 };
    // `join_v4`'s VLAN: present only with its marker bit.
    let vlan = if c.vlan & VLAN_PRESENT != 0 {
        u64::from(c.vlan & !VLAN_PRESENT) | 0x1_0000
    } else {
        0
    };
    let [w0, w1, w2] = inner_words(
        (mac(c.src_mac), mac(c.dst_mac)),
        (t.src_port, t.dst_port),
        [t.proto, t.dscp, t.icmp_type, t.icmp_code],
        c.ether_type,
        vlan,
    );
    let mut h = hash_inner_words(seed, ipv4_words(t.src_ip), ipv4_words(t.dst_ip), w0, w1);
    let code = c.outer_vni_kind >> 24;
    if kind_of(code).is_some() {
        // The key's tunnel word is `vni | (kind as u64 + 1) << 32`, and the
        // stored code is `kind + 1` (see `kind_code`).
        let ot = u64::from(c.outer_vni_kind & 0xff_ffff) | u64::from(code) << 32;
        let macs = (mac(c.outer_src_mac), mac(c.outer_dst_mac));
        let (src, dst) = (ipv4_words(c.outer_src_ip), ipv4_words(c.outer_dst_ip));
        h = hash_outer_words(h, src, dst, macs, ot);
    }
    fold(h ^ w2, FOLD_K[7])
}

#[inline(always)]
fn mac_bits(m: [u8; 6]) -> u64 {
    u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
}

impl TupleV4 {
    /// Whether `u`'s per-connection fields are these, most discriminating
    /// first. With [`HeaderContext::matches`], exactly `u == join_v4(..)`.
    #[inline]
    pub fn matches(&self, u: &Ufid) -> bool {
        let k = &u.inner;
        k.src_port == self.src_port
            && k.dst_port == self.dst_port
            && v4(k.src_ip) == Some(self.src_ip)
            && v4(k.dst_ip) == Some(self.dst_ip)
            && k.proto == self.proto
            && k.dscp == self.dscp
            && k.icmp_type == self.icmp_type
            && k.icmp_code == self.icmp_code
    }

    /// The IP protocol.
    pub fn proto(&self) -> u8 {
        self.proto
    }
}

impl HeaderContext {
    /// A fast 64-bit hash of the context (one per `seed`), folded like
    /// [`Ufid::table_hash`]: a table interns a context per new flow.
    #[inline]
    pub fn table_hash(&self, seed: u64) -> u64 {
        let mac = |m: [u8; 6]| u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]]);
        let w0 = mac(self.src_mac) | u64::from(self.ether_type) << 48;
        let w1 = mac(self.dst_mac) | u64::from(self.vlan) << 48;
        let w2 = mac(self.outer_src_mac) | u64::from(self.outer_vni_kind >> 16) << 48;
        let w3 = mac(self.outer_dst_mac) | u64::from(self.outer_vni_kind & 0xffff) << 48;
        let w4 = u64::from(self.outer_src_ip) << 32 | u64::from(self.outer_dst_ip);
        let mut h = fold(w0 ^ seed, w1 ^ FOLD_K[0]);
        h = fold(h ^ w2, w3 ^ FOLD_K[1]);
        fold(h ^ w4, FOLD_K[2])
    }

    fn outer(&self) -> Option<OuterKey> {
        kind_of(self.outer_vni_kind >> 24).map(|tunnel| OuterKey {
            src_mac: MacAddr(self.outer_src_mac),
            dst_mac: MacAddr(self.outer_dst_mac),
            src_ip: IpAddr::V4(Ipv4Addr::from(self.outer_src_ip)),
            dst_ip: IpAddr::V4(Ipv4Addr::from(self.outer_dst_ip)),
            tunnel,
            vni: self.outer_vni_kind & 0xff_ffff,
        })
    }

    /// Whether `u`'s shared fields are these. (Inlined: as a call, the
    /// fast path's key check spent 8 instructions on it.)
    #[inline(always)]
    pub fn matches(&self, u: &Ufid) -> bool {
        let k = &u.inner;
        let inner = mac_eq(&k.src_mac.0, &self.src_mac)
            && mac_eq(&k.dst_mac.0, &self.dst_mac)
            && k.ether_type == self.ether_type
            && match k.vlan {
                None => self.vlan == 0,
                Some(v) => self.vlan == v | VLAN_PRESENT && v < VLAN_PRESENT,
            };
        inner
            && match &u.outer {
                None => self.outer_vni_kind >> 24 == 0,
                Some(o) => {
                    self.outer_vni_kind == o.vni | kind_code(o.tunnel) << 24
                        && o.vni < 1 << 24
                        && v4(o.src_ip) == Some(self.outer_src_ip)
                        && v4(o.dst_ip) == Some(self.outer_dst_ip)
                        && mac_eq(&o.src_mac.0, &self.outer_src_mac)
                        && mac_eq(&o.dst_mac.0, &self.outer_dst_mac)
                }
            }
    }
}

impl PackedV4 {
    fn pack(u: &Ufid) -> Option<PackedV4> {
        split_v4(u).map(|(tuple, context)| PackedV4 { tuple, context })
    }

    fn unpack(&self) -> Ufid {
        join_v4(&self.tuple, &self.context)
    }

    #[inline]
    fn matches(&self, u: &Ufid) -> bool {
        self.tuple.matches(u) && self.context.matches(u)
    }
}

impl PackedUfid {
    /// The storage form of `u` (inline when it fits, boxed otherwise).
    pub fn pack(u: &Ufid) -> PackedUfid {
        match PackedV4::pack(u) {
            Some(p) => PackedUfid::V4(p),
            None => PackedUfid::Wide(Box::new(*u)),
        }
    }

    /// The full key again.
    #[inline]
    pub fn unpack(&self) -> Ufid {
        match self {
            PackedUfid::V4(p) => p.unpack(),
            PackedUfid::Wide(u) => **u,
        }
    }

    /// Whether this is the stored form of `u` (without unpacking).
    #[inline]
    pub fn matches(&self, u: &Ufid) -> bool {
        match self {
            PackedUfid::V4(p) => p.matches(u),
            PackedUfid::Wide(w) => **w == *u,
        }
    }

    /// The IP protocol of the inner groups.
    pub fn proto(&self) -> u8 {
        match self {
            PackedUfid::V4(p) => p.tuple.proto,
            PackedUfid::Wide(u) => u.inner.proto,
        }
    }

    /// Heap bytes held beyond the value itself.
    pub fn heap_bytes(&self) -> usize {
        match self {
            PackedUfid::V4(_) => 0,
            PackedUfid::Wide(_) => size_of::<Ufid>(),
        }
    }
}

impl From<&Ufid> for PackedUfid {
    fn from(u: &Ufid) -> Self {
        PackedUfid::pack(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::NO_IP;
    use std::net::Ipv6Addr;

    fn key(src: IpAddr, dst: IpAddr) -> Ufid {
        Ufid::plain(FlowKey {
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            vlan: Some(100),
            ether_type: 0x0800,
            src_ip: src,
            dst_ip: dst,
            proto: 6,
            dscp: 10,
            src_port: 1234,
            dst_port: 80,
            icmp_type: 0,
            icmp_code: 0,
        })
    }

    fn outer(u: &mut Ufid, src: IpAddr, vni: u32, tunnel: TunnelKind) {
        u.outer = Some(OuterKey {
            src_mac: MacAddr([2, 0, 0, 0, 0, 3]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 4]),
            src_ip: src,
            dst_ip: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1)),
            tunnel,
            vni,
        });
    }

    #[test]
    fn round_trips_and_matches_only_itself() {
        let a4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let a6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
        let mut keys = vec![key(a4, b4), key(a6, b4), key(NO_IP, NO_IP)];
        let mut t = key(a4, b4);
        outer(&mut t, b4, 5001, TunnelKind::Vxlan);
        keys.push(t);
        let mut t = key(a4, b4);
        outer(&mut t, b4, 0xff_ffff, TunnelKind::Geneve);
        keys.push(t);
        let mut t = key(a4, b4);
        outer(&mut t, a6, 7, TunnelKind::Nvgre);
        keys.push(t);
        let mut t = key(a4, b4);
        t.inner.vlan = None;
        keys.push(t);
        // The IPv4-mapped IPv6 form of a4 is a different key from a4.
        keys.push(key(
            IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()),
            b4,
        ));
        for (i, k) in keys.iter().enumerate() {
            let p = PackedUfid::pack(k);
            assert_eq!(p.unpack(), *k, "key {i}");
            for (j, other) in keys.iter().enumerate() {
                assert_eq!(p.matches(other), i == j, "key {i} vs {j}");
                assert_eq!(p == PackedUfid::pack(other), i == j, "key {i} vs {j}");
            }
        }
        assert!(matches!(PackedUfid::pack(&keys[0]), PackedUfid::V4(_)));
        assert!(matches!(PackedUfid::pack(&keys[1]), PackedUfid::Wide(_)));
        assert!(size_of::<PackedUfid>() <= 64);
    }

    #[test]
    fn every_field_is_compared() {
        let base = {
            let mut u = key(
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            );
            outer(
                &mut u,
                IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
                42,
                TunnelKind::Vxlan,
            );
            u
        };
        let p = PackedUfid::pack(&base);
        for (field, edit) in crate::flow::FIELD_EDITS {
            let mut u = base;
            edit(&mut u);
            assert_ne!(u, base, "{field} not edited");
            assert!(!p.matches(&u), "{field} not noticed");
            assert_ne!(PackedUfid::pack(&u), p, "{field}");
        }
        assert!(p.matches(&base));
    }
}
