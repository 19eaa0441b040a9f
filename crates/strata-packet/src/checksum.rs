//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! The parser never verifies checksums (a virtual switch forwards what it is
//! given; endpoints verify), but the emitter must keep them valid after it
//! rewrites addresses, ports or the DSCP. Rewrites use the incremental
//! formula `HC' = ~(~HC + ~m + m')` (RFC 1624 eq. 3) so the cost does not
//! depend on the payload length; full sums are needed only for headers the
//! emitter builds itself (outer IPv4, outer UDP over IPv6).
//!
//! Conventions: a *sum* is the folded 16-bit ones' complement sum of some
//! data (not inverted); a *checksum* is the inverted sum as it appears in a
//! header. Both are plain host-order `u16`s.

/// Fold a wide accumulator of 16-bit (or 32-bit) big-endian words into a
/// 16-bit ones' complement sum.
#[inline]
pub fn fold(acc: u64) -> u16 {
    // The halves added with their end-around carry: 32 bits, the same sum.
    let (lo, carry) = (acc as u32).overflowing_add((acc >> 32) as u32);
    // No overflow: after a carry `lo` is at most 2^32 − 2.
    let x = lo + u32::from(carry);
    // The two 16-bit halves with their end-around carry, in one addition:
    // the top half of `x + (x rotated by 16)` is `hi + lo + carry(lo + hi)`
    // (as Linux's `csum_fold`).
    (x.wrapping_add(x.rotate_right(16)) >> 16) as u16
}

/// The unfolded sum of `data` as big-endian words, zero-padding an odd tail
/// byte (RFC 1071 §4.1). Words are read 32 bits at a time: because
/// 2^16 ≡ 1 (mod 2^16 − 1) a sum of 32-bit words folds to the same value as
/// the sum of their 16-bit halves, with half as many additions.
#[inline]
pub fn sum_words(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let mut rest = chunks.remainder();
    if rest.len() >= 4 {
        acc += u64::from(u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]));
        rest = &rest[4..];
    }
    if rest.len() >= 2 {
        acc += u64::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let Some(&b) = rest.first() {
        acc += u64::from(b) << 8;
    }
    acc
}

/// The folded ones' complement sum of `data`.
#[inline]
pub fn data_sum(data: &[u8]) -> u16 {
    fold(sum_words(data))
}

/// Ones' complement addition of folded sums.
#[inline]
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// The Internet checksum of `data`: the inverted folded sum, ready to store
/// in a header whose checksum field was zero while summing.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !data_sum(data)
}

/// The sum of the IPv4 pseudo-header (RFC 768 / RFC 793): source, destination,
/// zero + protocol, upper-layer length.
#[inline]
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: u32) -> u16 {
    let acc = u64::from(u32::from_be_bytes(src))
        + u64::from(u32::from_be_bytes(dst))
        + u64::from(proto)
        + u64::from(len);
    fold(acc)
}

/// The sum of the IPv6 pseudo-header (RFC 8200 §8.1): source, destination,
/// 32-bit upper-layer length, 24 zero bits + next header.
#[inline]
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], proto: u8, len: u32) -> u16 {
    let acc = sum_words(src) + sum_words(dst) + u64::from(proto) + u64::from(len);
    fold(acc)
}

/// The checksum of an upper-layer segment (TCP, UDP, ICMPv6) given the
/// pseudo-header sum and the segment bytes with the checksum field zeroed
/// (or the field's current value subtracted by the caller).
#[inline]
pub fn with_pseudo(pseudo: u16, segment: &[u8]) -> u16 {
    !fold(u64::from(pseudo) + sum_words(segment))
}

/// An accumulator of RFC 1624 changes: record every 16-bit word that changes
/// (`~m + m'`), then apply the total to any number of checksums. This lets
/// one address rewrite update both the IPv4 header checksum and the L4
/// checksum (whose pseudo-header covers the same address) with one sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u64);

impl Delta {
    pub const ZERO: Delta = Delta(0);

    /// A 16-bit word changed from `old` to `new`.
    #[inline]
    pub fn u16(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// A 32-bit field (two words) changed.
    #[inline]
    pub fn u32(&mut self, old: u32, new: u32) {
        self.0 += u64::from(!old >> 16) + u64::from(!old & 0xffff);
        self.0 += u64::from(new >> 16) + u64::from(new & 0xffff);
    }

    /// A 128-bit field (eight words, e.g. an IPv6 address) changed.
    #[inline]
    pub fn u128(&mut self, old: u128, new: u128) {
        // Summing the complemented 32-bit quarters is the same as summing the
        // complemented 16-bit words (see `sum_words`).
        let o = !old;
        for shift in [0u32, 32, 64, 96] {
            self.0 += ((o >> shift) as u64) & 0xffff_ffff;
            self.0 += ((new >> shift) as u64) & 0xffff_ffff;
        }
    }

    /// An even-aligned byte range changed from `old` to `new` (same length).
    /// An odd length is treated as zero-padded, which is only right at the
    /// end of the summed data.
    #[inline]
    pub fn bytes(&mut self, old: &[u8], new: &[u8]) {
        self.0 += u64::from(!data_sum(old)) + u64::from(data_sum(new));
    }

    /// Merge another accumulator into this one.
    #[inline]
    pub fn add(&mut self, other: Delta) {
        self.0 += other.0;
    }

    /// Whether nothing was recorded.
    #[inline]
    pub fn is_zero(&self) -> bool {
        self.0 == 0
    }

    /// The updated checksum: `~(~HC + Σ(~m + m'))`.
    #[inline]
    pub fn apply(&self, checksum: u16) -> u16 {
        !fold(u64::from(!checksum) + self.0)
    }
}

/// RFC 1624 eq. 3 for one 16-bit word.
#[inline]
pub fn update_u16(checksum: u16, old: u16, new: u16) -> u16 {
    let mut d = Delta::ZERO;
    d.u16(old, new);
    d.apply(checksum)
}

/// RFC 1624 for a changed 32-bit field (an IPv4 address, a TCP sequence).
#[inline]
pub fn update_u32(checksum: u16, old: u32, new: u32) -> u16 {
    let mut d = Delta::ZERO;
    d.u32(old, new);
    d.apply(checksum)
}

/// RFC 1624 for a changed 128-bit field (an IPv6 address).
#[inline]
pub fn update_u128(checksum: u16, old: u128, new: u128) -> u16 {
    let mut d = Delta::ZERO;
    d.u128(old, new);
    d.apply(checksum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A naive RFC 1071 reference: 16 bits at a time, u32 accumulator.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        let mut i = 0;
        while i + 1 < data.len() {
            acc += u32::from(u16::from_be_bytes([data[i], data[i + 1]]));
            i += 2;
        }
        if i < data.len() {
            acc += u32::from(data[i]) << 8;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    /// `fold` is the plain fold: halves added with their carries until 16
    /// bits are left, for edge values and a pseudo-random sweep.
    #[test]
    fn fold_is_the_end_around_carry_sum() {
        let plain = |mut acc: u64| {
            while acc > 0xffff {
                acc = (acc & 0xffff) + (acc >> 16);
            }
            acc as u16
        };
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let edges = [
            0,
            1,
            0xffff,
            0x1_0000,
            0x1_fffe,
            0xffff_ffff,
            0x1_0000_0000,
            0xffff_fffe_0001_0000,
            0xffff_ffff_0000_0001,
            u64::MAX,
            u64::MAX - 1,
        ];
        let sweep = (0..200_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Small sums too, as incremental updates make.
            if x & 1 == 0 { x } else { x >> 40 }
        });
        for acc in edges.into_iter().chain(sweep) {
            assert_eq!(fold(acc), plain(acc), "{acc:#x}");
        }
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(data_sum(&d), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn matches_reference_for_all_lengths() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 13) as u8 ^ 0xa5).collect();
        for len in 0..data.len() {
            assert_eq!(checksum(&data[..len]), reference(&data[..len]), "len {len}");
        }
        let ff = [0xffu8; 64];
        for len in 0..ff.len() {
            assert_eq!(checksum(&ff[..len]), reference(&ff[..len]), "ff len {len}");
        }
    }

    #[test]
    fn ipv4_header_example() {
        // A well-known header whose checksum is 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10] = 0xb8;
        h[11] = 0x61;
        assert_eq!(checksum(&h), 0);
    }

    #[test]
    fn incremental_matches_full() {
        let mut data: Vec<u8> = (0..64u32).map(|i| (i * 31 + 5) as u8).collect();
        let c0 = checksum(&data);
        // 16-bit change.
        let old = u16::from_be_bytes([data[10], data[11]]);
        data[10..12].copy_from_slice(&0xbeefu16.to_be_bytes());
        let c1 = update_u16(c0, old, 0xbeef);
        assert_eq!(c1, checksum(&data));
        // 32-bit change.
        let old = u32::from_be_bytes([data[20], data[21], data[22], data[23]]);
        data[20..24].copy_from_slice(&0x0a00_0001u32.to_be_bytes());
        let c2 = update_u32(c1, old, 0x0a00_0001);
        assert_eq!(c2, checksum(&data));
        // 128-bit change.
        let mut ob = [0u8; 16];
        ob.copy_from_slice(&data[32..48]);
        let old = u128::from_be_bytes(ob);
        let new = 0x2001_0db8_0000_0000_0000_0000_dead_beefu128;
        data[32..48].copy_from_slice(&new.to_be_bytes());
        let c3 = update_u128(c2, old, new);
        assert_eq!(c3, checksum(&data));
        // Byte-range change.
        let oldb: Vec<u8> = data[48..54].to_vec();
        data[48..54].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        let mut d = Delta::ZERO;
        d.bytes(&oldb, &data[48..54]);
        assert_eq!(d.apply(c3), checksum(&data));
    }

    #[test]
    fn pseudo_headers() {
        let src = [192, 168, 0, 1];
        let dst = [10, 0, 0, 2];
        let mut v = Vec::new();
        v.extend_from_slice(&src);
        v.extend_from_slice(&dst);
        v.extend_from_slice(&[0, 6, 0, 40]);
        assert_eq!(pseudo_header_v4(src, dst, 6, 40), data_sum(&v));
        let s6 = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let d6 = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut v = Vec::new();
        v.extend_from_slice(&s6);
        v.extend_from_slice(&d6);
        v.extend_from_slice(&[0, 0, 0x01, 0x2c, 0, 0, 0, 17]);
        assert_eq!(pseudo_header_v6(&s6, &d6, 17, 300), data_sum(&v));
    }
}
