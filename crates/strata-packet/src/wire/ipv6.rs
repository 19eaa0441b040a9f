//! IPv6 header (RFC 8200) and a bounded walk over its extension headers.
//!
//! The flow key needs the upper-layer protocol and ports, so the parser
//! skips hop-by-hop, routing, fragment, destination-options and AH headers
//! with [`walk_ext_headers`]. The walk is bounded by [`MAX_EXT_HEADERS`]: a
//! longer chain is an attack or a bug, not traffic worth a slow path.

use super::{Error, array, be16, ensure_len, set_be16};
use std::net::Ipv6Addr;

/// Field offsets.
pub mod field {
    use core::ops::Range;
    /// Version (4 bits), traffic class (8), flow label (20).
    pub const VER_TC_FLOW: usize = 0;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Range<usize> = 8..24;
    pub const DST_ADDR: Range<usize> = 24..40;
}

pub const HEADER_LEN: usize = 40;

/// Extension header numbers the walk skips.
pub mod ext {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AUTH: u8 = 51;
    pub const NO_NEXT: u8 = 59;
    pub const DEST_OPTS: u8 = 60;
}

/// The most extension headers [`walk_ext_headers`] skips.
pub const MAX_EXT_HEADERS: usize = 8;

/// A checked view of an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap `buffer` (which may extend past the datagram), checking: length
    /// ≥ 40, version 6, 40 + payload length ≤ buffer length.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let d = buffer.as_ref();
        if d.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if d[field::VER_TC_FLOW] >> 4 != 6 {
            return Err(Error::BadVersion);
        }
        if HEADER_LEN + usize::from(be16(d, field::PAYLOAD_LEN)) > d.len() {
            return Err(Error::BadLength);
        }
        Ok(Packet { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW] >> 4
    }

    #[inline]
    pub fn traffic_class(&self) -> u8 {
        let d = self.buffer.as_ref();
        (d[0] << 4) | (d[1] >> 4)
    }

    #[inline]
    pub fn dscp(&self) -> u8 {
        self.traffic_class() >> 2
    }

    #[inline]
    pub fn ecn(&self) -> u8 {
        self.traffic_class() & 3
    }

    #[inline]
    pub fn flow_label(&self) -> u32 {
        let d = self.buffer.as_ref();
        u32::from_be_bytes([0, d[1] & 0x0f, d[2], d[3]])
    }

    /// Length of everything after the fixed header, extension headers
    /// included.
    #[inline]
    pub fn payload_len(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::PAYLOAD_LEN))
    }

    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    #[inline]
    pub fn src_bytes(&self) -> [u8; 16] {
        array(self.buffer.as_ref(), field::SRC_ADDR.start)
    }

    #[inline]
    pub fn dst_bytes(&self) -> [u8; 16] {
        array(self.buffer.as_ref(), field::DST_ADDR.start)
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.src_bytes())
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.dst_bytes())
    }

    /// Everything after the fixed header up to the payload length
    /// (extension headers included, Ethernet padding excluded).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + self.payload_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Rewrite the traffic class (DSCP · 4 + ECN), keeping version and
    /// flow label.
    #[inline]
    pub fn set_traffic_class(&mut self, tc: u8) {
        let d = self.buffer.as_mut();
        d[0] = (d[0] & 0xf0) | (tc >> 4);
        d[1] = (d[1] & 0x0f) | (tc << 4);
    }

    #[inline]
    pub fn set_payload_len(&mut self, len: u16) {
        set_be16(self.buffer.as_mut(), field::PAYLOAD_LEN, len);
    }

    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }
}

/// What a walk over the extension headers found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtChain {
    /// The upper-layer protocol (the last next-header value).
    pub protocol: u8,
    /// Bytes of extension headers, i.e. the upper-layer header's offset in
    /// the IPv6 payload.
    pub len: usize,
    /// Number of extension headers skipped.
    pub count: usize,
    /// A fragment header marks this packet as a fragment (more fragments
    /// follow, or a non-zero offset).
    pub fragment: bool,
    /// A fragment header with a non-zero offset: the upper-layer header is
    /// not in this packet, so `len` is where the fragment data starts.
    pub non_first_fragment: bool,
    /// The fragment header's identification (0 without one): with the
    /// addresses it names the datagram a fragment belongs to.
    pub fragment_id: u32,
    /// The fragment header's offset in bytes (0 without one).
    pub fragment_offset: u32,
    /// The fragment header's M flag: more fragments follow.
    pub more_fragments: bool,
}

/// Skip the extension headers at the start of `payload` (an IPv6 payload),
/// starting from the fixed header's `next_header`.
///
/// Errors: [`Error::Truncated`] if a header does not fit, and
/// [`Error::TooManyHeaders`] past [`MAX_EXT_HEADERS`].
pub fn walk_ext_headers(next_header: u8, payload: &[u8]) -> Result<ExtChain, Error> {
    let mut nh = next_header;
    let mut off = 0usize;
    let mut chain = ExtChain::default();
    loop {
        let len = match nh {
            ext::HOP_BY_HOP | ext::ROUTING | ext::DEST_OPTS => {
                let b = payload.get(off + 1).ok_or(Error::Truncated)?;
                (usize::from(*b) + 1) * 8
            }
            ext::FRAGMENT => 8,
            ext::AUTH => {
                let b = payload.get(off + 1).ok_or(Error::Truncated)?;
                (usize::from(*b) + 2) * 4
            }
            _ => break,
        };
        if chain.count == MAX_EXT_HEADERS {
            return Err(Error::TooManyHeaders);
        }
        let hdr = payload.get(off..off + len).ok_or(Error::Truncated)?;
        chain.count += 1;
        let next = hdr[0];
        off += len;
        if nh == ext::FRAGMENT {
            let frag = u16::from_be_bytes([hdr[2], hdr[3]]);
            chain.fragment_id = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
            chain.fragment_offset = u32::from(frag >> 3) * 8;
            chain.more_fragments = frag & 1 != 0;
            // An "atomic fragment" (offset 0, no M flag, RFC 6946) is a
            // whole packet.
            chain.fragment |= frag & 0xfff9 != 0;
            if frag >> 3 != 0 {
                // Later fragments carry data, not headers: the protocol is
                // known, the rest is opaque.
                chain.non_first_fragment = true;
                nh = next;
                break;
            }
        }
        nh = next;
    }
    chain.protocol = nh;
    chain.len = off;
    Ok(chain)
}

/// An IPv6 header without extension headers to emit (outer tunnel headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub next_header: u8,
    pub payload_len: usize,
    pub hop_limit: u8,
    pub traffic_class: u8,
    /// 20 bits.
    pub flow_label: u32,
}

impl Repr {
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write the 40-byte header. Fails if the buffer is short or the
    /// payload length does not fit 16 bits (no jumbograms).
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), Error> {
        ensure_len(buf, HEADER_LEN)?;
        let plen = u16::try_from(self.payload_len).map_err(|_| Error::BadLength)?;
        let first =
            (6u32 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & 0xf_ffff);
        buf[0..4].copy_from_slice(&first.to_be_bytes());
        set_be16(buf, field::PAYLOAD_LEN, plen);
        buf[field::NEXT_HEADER] = self.next_header;
        buf[field::HOP_LIMIT] = self.hop_limit;
        buf[field::SRC_ADDR].copy_from_slice(&self.src_addr.octets());
        buf[field::DST_ADDR].copy_from_slice(&self.dst_addr.octets());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_and_view() {
        let r = Repr {
            src_addr: "2001:db8::1".parse().unwrap(),
            dst_addr: "2001:db8::2".parse().unwrap(),
            next_header: 17,
            payload_len: 4,
            hop_limit: 9,
            traffic_class: 0xb9,
            flow_label: 0x12345,
        };
        let mut b = [0u8; 44];
        r.emit(&mut b).unwrap();
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xb9);
        assert_eq!(p.dscp(), 0xb9 >> 2);
        assert_eq!(p.ecn(), 1);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 4);
        assert_eq!(p.next_header(), 17);
        assert_eq!(p.hop_limit(), 9);
        assert_eq!(p.src_addr(), r.src_addr);
        assert_eq!(p.dst_addr(), r.dst_addr);
        p.set_traffic_class(0x2a);
        assert_eq!(p.traffic_class(), 0x2a);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(Packet::new_checked(&b[..43]).err(), Some(Error::BadLength));
        assert_eq!(Packet::new_checked(&b[..39]).err(), Some(Error::Truncated));
        b[0] = 0x45;
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(Error::BadVersion));
    }

    #[test]
    fn ext_walk() {
        // HBH (8) -> DST (16) -> FRAG (8, first) -> AH (12) -> TCP
        let mut p = vec![ext::DEST_OPTS, 0, 0, 0, 0, 0, 0, 0];
        p.extend_from_slice(&[ext::FRAGMENT, 1]);
        p.extend_from_slice(&[0; 14]);
        p.extend_from_slice(&[ext::AUTH, 0, 0, 0x01, 0, 0, 0, 1]);
        p.extend_from_slice(&[6, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let c = walk_ext_headers(ext::HOP_BY_HOP, &p).unwrap();
        assert_eq!(c.protocol, 6);
        assert_eq!(c.len, 44);
        assert_eq!(c.count, 4);
        assert!(c.fragment && !c.non_first_fragment);
        assert_eq!(
            (c.fragment_id, c.fragment_offset, c.more_fragments),
            (1, 0, true)
        );
        for n in 0..p.len() {
            assert_eq!(walk_ext_headers(0, &p[..n]), Err(Error::Truncated));
        }
        // Non-first fragment stops the walk.
        let f = [17, 0, 0x00, 0x08, 0, 0, 0, 1, 0xff];
        let c = walk_ext_headers(ext::FRAGMENT, &f).unwrap();
        assert_eq!((c.protocol, c.len, c.non_first_fragment), (17, 8, true));
        assert_eq!(
            (c.fragment_id, c.fragment_offset, c.more_fragments),
            (1, 8, false)
        );
        // No extension headers.
        assert_eq!(walk_ext_headers(6, &[]).unwrap().protocol, 6);
        // A chain too long.
        let long: Vec<u8> = (0..(MAX_EXT_HEADERS + 1) * 8)
            .map(|i| if i % 8 == 0 { ext::DEST_OPTS } else { 0 })
            .collect();
        assert_eq!(
            walk_ext_headers(ext::DEST_OPTS, &long),
            Err(Error::TooManyHeaders)
        );
    }
}
