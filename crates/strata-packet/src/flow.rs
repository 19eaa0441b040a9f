//! Flow identity: the header groups a packet parses into (VFP-8) and the
//! Unified Flow ID (UFID) built from them.
//!
//! A [`FlowKey`] is one set of Ethernet / IP / L4 fields (the *inner* groups of
//! a tunnelled packet, or the only ones of a plain packet). An [`OuterKey`]
//! holds the outer Ethernet / IP / encap groups of a tunnelled packet. The
//! [`Ufid`] is both together: the exact-match key of the unified flow table.
//!
//! Fields that change per packet inside one connection (TTL, ECN, lengths,
//! checksums, TCP flags, outer UDP source port) are deliberately *not* part of
//! the key.

use core::fmt;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const ZERO: MacAddr = MacAddr([0; 6]);
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// The address as a 48-bit number (first octet most significant).
    pub fn to_u64(self) -> u64 {
        let mut v = 0u64;
        for b in self.0 {
            v = (v << 8) | u64::from(b);
        }
        v
    }

    /// Inverse of [`MacAddr::to_u64`]; the top 16 bits are ignored.
    pub fn from_u64(v: u64) -> MacAddr {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Error parsing a textual MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex octets like 02:00:00:00:00:01")]
pub struct MacParseError(pub String);

impl core::str::FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split([':', '-']) {
            if n == 6 || part.len() != 2 {
                return Err(MacParseError(s.to_string()));
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| MacParseError(s.to_string()))?;
            n += 1;
        }
        if n != 6 {
            return Err(MacParseError(s.to_string()));
        }
        Ok(MacAddr(out))
    }
}

/// Ethertypes used by the parser and the emitter.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
    pub const IPV6: u16 = 0x86dd;
    /// Transparent Ethernet bridging: the inner frame of NVGRE and Geneve.
    pub const TEB: u16 = 0x6558;
}

/// IP protocol numbers used by the parser and the engine.
pub mod ipproto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const GRE: u8 = 47;
    pub const ICMPV6: u8 = 58;
}

/// Well-known UDP ports of the tunnel protocols.
pub mod tunnel_port {
    pub const VXLAN: u16 = 4789;
    pub const GENEVE: u16 = 6081;
}

/// The tunnel protocol of an encap header group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TunnelKind {
    Vxlan,
    Nvgre,
    Geneve,
}

/// The unspecified IPv4 address, used for the IP fields of non-IP frames.
pub const NO_IP: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// One set of Ethernet / IP / L4 header-group fields.
///
/// For non-IP frames (ARP, …) the IP fields are [`NO_IP`] and `proto` is 0.
/// ICMP/ICMPv6 echo: a request has `src_port` = identifier, `dst_port` = 0;
/// a reply has `src_port` = 0, `dst_port` = identifier. A reply's key is thus
/// the reversed request key, and NAT rewrites the identifier like a port.
/// Other ICMP messages have both ports 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FlowKey {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    /// 802.1Q VLAN id (12 bits) of the innermost tag, if tagged.
    pub vlan: Option<u16>,
    /// Ethertype after any VLAN tags.
    pub ether_type: u16,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    /// IP protocol (IPv4) or upper-layer next header (IPv6).
    pub proto: u8,
    /// DSCP (top six bits of ToS / traffic class).
    pub dscp: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

impl Default for FlowKey {
    fn default() -> Self {
        FlowKey::EMPTY
    }
}

impl FlowKey {
    /// The default key as a constant: zero MACs, untagged, ethertype 0,
    /// [`NO_IP`] addresses, every other field 0.
    pub const EMPTY: FlowKey = FlowKey {
        src_mac: MacAddr::ZERO,
        dst_mac: MacAddr::ZERO,
        vlan: None,
        ether_type: 0,
        src_ip: NO_IP,
        dst_ip: NO_IP,
        proto: 0,
        dscp: 0,
        src_port: 0,
        dst_port: 0,
        icmp_type: 0,
        icmp_code: 0,
    };

    /// The key of the opposite direction of the same connection: MACs, IPs
    /// and ports swapped. ICMP echo request/reply types are swapped too so a
    /// reply's key equals the reversed request key.
    pub fn reversed(&self) -> FlowKey {
        let mut r = *self;
        r.src_mac = self.dst_mac;
        r.dst_mac = self.src_mac;
        r.src_ip = self.dst_ip;
        r.dst_ip = self.src_ip;
        r.src_port = self.dst_port;
        r.dst_port = self.src_port;
        r.icmp_type = reverse_icmp_type(self.proto, self.icmp_type);
        r
    }

    pub fn is_ip(&self) -> bool {
        self.ether_type == ethertype::IPV4 || self.ether_type == ethertype::IPV6
    }

    pub fn is_tcp(&self) -> bool {
        self.is_ip() && self.proto == ipproto::TCP
    }

    /// A compact one-line rendering used by traces and verdict logs.
    pub fn summary(&self) -> String {
        match self.proto {
            ipproto::TCP | ipproto::UDP => format!(
                "{} {}:{} -> {}:{}",
                proto_name(self.proto),
                self.src_ip,
                self.src_port,
                self.dst_ip,
                self.dst_port
            ),
            _ if self.is_ip() => format!(
                "{} {} -> {}",
                proto_name(self.proto),
                self.src_ip,
                self.dst_ip
            ),
            _ => format!(
                "ether 0x{:04x} {} -> {}",
                self.ether_type, self.src_mac, self.dst_mac
            ),
        }
    }
}

/// Echo request ↔ echo reply, for ICMPv4 and ICMPv6; other types unchanged.
pub fn reverse_icmp_type(proto: u8, t: u8) -> u8 {
    match (proto, t) {
        (ipproto::ICMP, 8) => 0,
        (ipproto::ICMP, 0) => 8,
        (ipproto::ICMPV6, 128) => 129,
        (ipproto::ICMPV6, 129) => 128,
        _ => t,
    }
}

/// A short protocol name for logs.
pub fn proto_name(p: u8) -> &'static str {
    match p {
        ipproto::TCP => "tcp",
        ipproto::UDP => "udp",
        ipproto::ICMP => "icmp",
        ipproto::ICMPV6 => "icmp6",
        ipproto::GRE => "gre",
        _ => "ip",
    }
}

/// The outer header groups of a tunnelled packet: outer Ethernet, outer IP
/// and the encap header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OuterKey {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub tunnel: TunnelKind,
    /// VNI (VXLAN, Geneve) or virtual subnet id (NVGRE), 24 bits.
    pub vni: u32,
}

impl OuterKey {
    pub fn reversed(&self) -> OuterKey {
        OuterKey {
            src_mac: self.dst_mac,
            dst_mac: self.src_mac,
            src_ip: self.dst_ip,
            dst_ip: self.src_ip,
            ..*self
        }
    }
}

/// The Unified Flow ID: every header group's key fields (VFP-8). The unified
/// flow table is keyed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ufid {
    pub outer: Option<OuterKey>,
    pub inner: FlowKey,
}

impl Ufid {
    pub fn plain(inner: FlowKey) -> Ufid {
        Ufid { outer: None, inner }
    }

    /// Both groups reversed (the key of the other direction on the same path).
    pub fn reversed(&self) -> Ufid {
        Ufid {
            outer: self.outer.map(|o| o.reversed()),
            inner: self.inner.reversed(),
        }
    }

    /// A fast 64-bit hash of every key field, for the engine's flow tables
    /// (one per `seed`). The fields are packed into machine words and folded
    /// pairwise with 64×64→128-bit multiplies (the folded-multiply scheme of
    /// foldhash), which costs a fraction of hashing the fields one by one
    /// through `Hash`. Equal keys hash equally; it is not a stable format.
    #[inline]
    pub fn table_hash(&self, seed: u64) -> u64 {
        self.hash_fields::<true>(seed)
    }

    /// [`Ufid::table_hash`] of the key with every MAC address (inner and
    /// outer) zeroed, without copying it: keys that differ only in MACs
    /// hash alike, so a table can find a flow by its L3/L4 identity.
    #[inline]
    pub fn table_hash_without_macs(&self, seed: u64) -> u64 {
        self.hash_fields::<false>(seed)
    }

    #[inline(always)]
    fn hash_fields<const MACS: bool>(&self, seed: u64) -> u64 {
        let mac_word = |m: MacAddr| if MACS { mac_word(m) } else { 0 };
        let k = &self.inner;
        let [w0, w1, w2] = inner_words(
            (mac_word(k.src_mac), mac_word(k.dst_mac)),
            (k.src_port, k.dst_port),
            [k.proto, k.dscp, k.icmp_type, k.icmp_code],
            k.ether_type,
            k.vlan.map_or(0, |v| u64::from(v) | 0x1_0000),
        );
        let mut h = hash_inner_words(seed, ip_words(k.src_ip), ip_words(k.dst_ip), w0, w1);
        if let Some(o) = &self.outer {
            let ot = u64::from(o.vni) | (o.tunnel as u64 + 1) << 32;
            let macs = (mac_word(o.src_mac), mac_word(o.dst_mac));
            h = hash_outer_words(h, ip_words(o.src_ip), ip_words(o.dst_ip), macs, ot);
        }
        fold(h ^ w2, FOLD_K[7])
    }

    /// A hash equal for this key travelling one way (`forward`) and its
    /// [`Ufid::reversed`] travelling the other (`!forward`), so a table can
    /// find both keys of a connection through one entry. MAC addresses are
    /// not hashed (keys equal but for MACs hash alike). `None` when the two
    /// orientations cannot be told apart (both endpoints hash alike, e.g. a
    /// flow from an address and port to themselves): the caller hashes each
    /// orientation on its own then.
    #[inline]
    pub fn reversible_hash(&self, seed: u64, forward: bool) -> Option<u64> {
        let k = &self.inner;
        let (os, od) = match &self.outer {
            Some(o) => (Some(o.src_ip), Some(o.dst_ip)),
            None => (None, None),
        };
        let ea = endpoint_word(k.src_ip, k.src_port, os);
        let eb = endpoint_word(k.dst_ip, k.dst_port, od);
        if ea == eb {
            return None;
        }
        let (lo, hi) = if ea < eb { (ea, eb) } else { (eb, ea) };
        let orientation = u64::from(forward ^ (ea > eb));
        let icmp = k.icmp_type.min(reverse_icmp_type(k.proto, k.icmp_type));
        let w = u64::from(k.proto)
            | u64::from(k.dscp) << 8
            | u64::from(icmp) << 16
            | u64::from(k.icmp_code) << 24
            | u64::from(k.ether_type) << 32
            | orientation << 48;
        // VLAN id and presence (17 bits), VNI (24) and tunnel kind (2).
        let vlan = k.vlan.map_or(0, |v| u64::from(v) | 0x1_0000);
        let tunnel = self
            .outer
            .map_or(0, |o| u64::from(o.vni) | (o.tunnel as u64 + 1) << 32);
        let h = fold(lo ^ seed, hi ^ FOLD_K[0]);
        Some(fold(h ^ w, (vlan ^ tunnel << 17) ^ FOLD_K[1]))
    }

    /// A 64-bit hash of the inner 5-tuple, stable across runs and hosts,
    /// used for load-balancing choices (see [`flow_hash`]).
    pub fn flow_hash(&self) -> u64 {
        flow_hash(&self.inner)
    }
}

/// The steps of [`Ufid::table_hash`] (`hash_fields`): the inner group's
/// words, then the outer group's if there is one, then
/// `fold(h ^ w2, FOLD_K[7])`. Shared with the split IPv4 form of
/// [`crate::packed`], which hashes to the same value without rebuilding
/// the key.
#[inline(always)]
pub(crate) fn hash_inner_words(
    seed: u64,
    src: (u64, u64),
    dst: (u64, u64),
    w0: u64,
    w1: u64,
) -> u64 {
    let h = fold(src.0 ^ seed, dst.0 ^ FOLD_K[0]);
    let h = fold(h ^ src.1, dst.1 ^ FOLD_K[1]);
    fold(h ^ w0, w1 ^ FOLD_K[2])
}

/// The inner group's words besides the addresses: MACs with ports, then
/// protocol, DSCP, ICMP type and code, ethertype and VLAN (id with bit 16
/// set when tagged, else 0).
#[inline(always)]
pub(crate) fn inner_words(
    macs: (u64, u64),
    ports: (u16, u16),
    [proto, dscp, icmp_type, icmp_code]: [u8; 4],
    ether_type: u16,
    vlan: u64,
) -> [u64; 3] {
    [
        macs.0 | u64::from(ports.0) << 48,
        macs.1 | u64::from(ports.1) << 48,
        u64::from(proto)
            | u64::from(dscp) << 8
            | u64::from(icmp_type) << 16
            | u64::from(icmp_code) << 24
            | u64::from(ether_type) << 32
            | vlan << 40,
    ]
}

/// See [`hash_inner_words`].
#[inline(always)]
pub(crate) fn hash_outer_words(
    h: u64,
    src: (u64, u64),
    dst: (u64, u64),
    macs: (u64, u64),
    tunnel: u64,
) -> u64 {
    let h = fold(h ^ src.0, dst.0 ^ FOLD_K[3]);
    let h = fold(h ^ src.1, dst.1 ^ FOLD_K[4]);
    let h = fold(h ^ macs.0, macs.1 ^ FOLD_K[5]);
    fold(h ^ tunnel, FOLD_K[6])
}

/// [`ip_words`] of an IPv4 address given as a number.
#[inline(always)]
pub(crate) fn ipv4_words(a: u32) -> (u64, u64) {
    (u64::from(a), 0xffff_ffff_ffff_ffff)
}

/// The 5-tuple a flow hash covers: source and destination address, IP
/// protocol, source and destination port (or ICMP echo identifier).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

impl FiveTuple {
    pub fn of(k: &FlowKey) -> FiveTuple {
        FiveTuple {
            src_ip: k.src_ip,
            dst_ip: k.dst_ip,
            proto: k.proto,
            src_port: k.src_port,
            dst_port: k.dst_port,
        }
    }
}

/// A hash of the inner 5-tuple for tunnel entropy: the VXLAN/Geneve outer
/// UDP source port (RFC 7348 §5) and the outer IPv6 flow label (RFC 6438),
/// so underlay ECMP spreads flows. A fixed function of the tuple (the same
/// on every call, run and host), computed on every encapsulated packet, so
/// it is two (IPv4) or three folded multiplies over the tuple packed into words
/// rather than a general-purpose hasher: every output bit depends on every
/// input bit, the low 14 bits (source port) and bits 32–51 (flow label)
/// included.
#[inline]
pub fn tunnel_hash(t: &FiveTuple) -> u64 {
    let ports = ports_word(t.proto, t.src_port, t.dst_port);
    match (t.src_ip, t.dst_ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => tunnel_hash_v4(s.to_bits(), d.to_bits(), ports),
        (s, d) => {
            let (s0, s1) = ip_words(s);
            let (d0, d1) = ip_words(d);
            let h = fold(s0 ^ TUNNEL_K[0], d0 ^ TUNNEL_K[1]);
            let h = fold(h ^ s1, d1 ^ TUNNEL_K[2]);
            fold(h ^ TUNNEL_K[2], ports ^ TUNNEL_K[3])
        }
    }
}

/// The proto and ports of a 5-tuple in one word, for [`tunnel_hash`].
#[inline(always)]
pub fn ports_word(proto: u8, src_port: u16, dst_port: u16) -> u64 {
    u64::from(proto) << 32 | u64::from(src_port) << 16 | u64::from(dst_port)
}

/// [`tunnel_hash`] of an IPv4 tuple (`ports` from [`ports_word`]).
#[inline(always)]
pub fn tunnel_hash_v4(src: u32, dst: u32, ports: u64) -> u64 {
    // The proto/ports word uses 40 bits; a top byte tags IPv4 so a tuple
    // never feeds the same words as an IPv6 one. The constants' top bytes
    // differ from that tag, so no multiplier below is ever zero; the
    // ports are folded in twice so an address pair that zeroes the first
    // product still spreads its flows.
    let p = ports | 4 << 56;
    let h = fold(
        (u64::from(src) << 32 | u64::from(dst)) ^ TUNNEL_K[0],
        p ^ TUNNEL_K[1],
    );
    fold(h ^ TUNNEL_K[2], p ^ TUNNEL_K[3])
}

/// Odd constants (digits of e) for [`tunnel_hash`], distinct from the table
/// hash's so the two are unrelated.
const TUNNEL_K: [u64; 4] = [
    0xb7e1_5162_8aed_2a6b,
    0xbf71_5880_9cf4_f3c7,
    0x62e7_160f_38b4_da57,
    0xa784_d904_5190_cfef,
];

/// Odd constants (digits of pi) decorrelating the folds of [`Ufid::table_hash`].
pub(crate) const FOLD_K: [u64; 8] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7345,
    0xa409_3822_299f_31d1,
    0x082e_fa98_ec4e_6c89,
    0x4528_21e6_38d0_1377,
    0xbe54_66cf_34e9_0c6d,
    0xc0ac_29b7_c97c_50dd,
    0x3f84_d5b5_b547_0917,
];

/// One end of a flow (address, port, and the outer address on its side)
/// as one word, for [`Ufid::reversible_hash`].
#[inline(always)]
fn endpoint_word(ip: IpAddr, port: u16, outer: Option<IpAddr>) -> u64 {
    // The common case exactly, no multiply: an IPv4 address and port,
    // tagged apart from the folded forms (whose top bit may be anything,
    // so a collision between the two only costs a probe, never a match).
    if let (IpAddr::V4(a), None) = (ip, outer) {
        return u64::from(u32::from(a)) << 16 | u64::from(port) | 0x5a << 56;
    }
    let (a0, a1) = ip_words(ip);
    let e = fold(a0 ^ FOLD_K[3], a1 ^ u64::from(port) ^ FOLD_K[4]);
    match outer {
        None => e,
        Some(o) => {
            let (o0, o1) = ip_words(o);
            e ^ fold(o0 ^ FOLD_K[5], o1 ^ FOLD_K[6])
        }
    }
}

/// Folded multiply: the full 128-bit product's halves xored together.
#[inline(always)]
pub(crate) fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// An address as two words; IPv4 is tagged so it never equals an IPv6
/// address's words.
#[inline(always)]
fn ip_words(ip: IpAddr) -> (u64, u64) {
    match ip {
        IpAddr::V4(a) => ipv4_words(u32::from(a)),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            ((v >> 64) as u64, v as u64)
        }
    }
}

#[inline(always)]
fn mac_word(m: MacAddr) -> u64 {
    let b = m.0;
    u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
}

/// A stable (seeded with a constant) hash of a flow key's 5-tuple, for
/// load-balancing choices (backend selection). Not the tunnel source
/// port's hash: that one is [`tunnel_hash`], cheaper per packet.
pub fn flow_hash(k: &FlowKey) -> u64 {
    use core::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0x5354_5241_5441).build_hasher();
    k.src_ip.hash(&mut h);
    k.dst_ip.hash(&mut h);
    k.proto.hash(&mut h);
    k.src_port.hash(&mut h);
    k.dst_port.hash(&mut h);
    h.finish()
}

/// Address family helpers shared by the parser, emitter and engine.
pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// A change to one field of a UFID (see [`FIELD_EDITS`]).
#[doc(hidden)]
pub type FieldEdit = fn(&mut Ufid);

/// One change per field of a UFID, by field name (outer fields change only
/// a key that has an outer group; the last edit removes it). For tests
/// that a comparison, hash or storage form notices every field: apply each
/// to a tunnelled IPv4 TCP key with a VLAN tag.
#[doc(hidden)]
pub const FIELD_EDITS: [(&str, FieldEdit); 19] = [
    ("inner.src_mac", |u| u.inner.src_mac.0[5] ^= 1),
    ("inner.dst_mac", |u| u.inner.dst_mac.0[0] ^= 1),
    ("outer.src_mac", |u| {
        if let Some(o) = u.outer.as_mut() {
            o.src_mac.0[1] ^= 1;
        }
    }),
    ("outer.dst_mac", |u| {
        if let Some(o) = u.outer.as_mut() {
            o.dst_mac.0[1] ^= 1;
        }
    }),
    ("inner.vlan", |u| {
        u.inner.vlan = u.inner.vlan.map_or(Some(1), |v| Some(v ^ 1))
    }),
    ("inner.ether_type", |u| u.inner.ether_type ^= 1),
    ("inner.src_ip", |u| {
        u.inner.src_ip = IpAddr::V6(Ipv6Addr::LOCALHOST)
    }),
    ("inner.dst_ip", |u| {
        u.inner.dst_ip = IpAddr::V4(Ipv4Addr::BROADCAST)
    }),
    ("inner.proto", |u| u.inner.proto ^= 1),
    ("inner.dscp", |u| u.inner.dscp ^= 1),
    ("inner.src_port", |u| u.inner.src_port ^= 1),
    ("inner.dst_port", |u| u.inner.dst_port ^= 1),
    ("inner.icmp_type", |u| u.inner.icmp_type ^= 1),
    ("inner.icmp_code", |u| u.inner.icmp_code ^= 1),
    ("outer.src_ip", |u| {
        if let Some(o) = u.outer.as_mut() {
            o.src_ip = IpAddr::V4(Ipv4Addr::BROADCAST);
        }
    }),
    ("outer.dst_ip", |u| {
        if let Some(o) = u.outer.as_mut() {
            o.dst_ip = IpAddr::V4(Ipv4Addr::BROADCAST);
        }
    }),
    ("outer.vni", |u| {
        if let Some(o) = u.outer.as_mut() {
            o.vni ^= 1;
        }
    }),
    ("outer.tunnel", |u| {
        if let Some(o) = u.outer.as_mut() {
            o.tunnel = match o.tunnel {
                TunnelKind::Geneve => TunnelKind::Vxlan,
                _ => TunnelKind::Geneve,
            };
        }
    }),
    ("outer", |u| u.outer = None),
];

/// Inverse of [`ip_to_u128`]: v4-mapped addresses come back as IPv4.
pub fn u128_to_ip(v: u128) -> IpAddr {
    let v6 = Ipv6Addr::from(v);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}
