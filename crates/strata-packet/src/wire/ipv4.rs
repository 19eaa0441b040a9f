//! IPv4 header (RFC 791), options included (IHL > 5).
//!
//! `new_checked` validates the version, the IHL and the total length against
//! the buffer. Fragments are accepted: only the first fragment
//! (offset 0) carries the L4 header, which [`Packet::is_first_fragment`]
//! tells the parser.

use super::{Error, array, be16, ensure_len, set_be16};
use crate::checksum;
use std::net::Ipv4Addr;

/// Field offsets.
pub mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A checked view of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap `buffer` (which may extend past the datagram, e.g. Ethernet
    /// padding), checking: length ≥ 20, version 4, IHL ≥ 5 and within the
    /// buffer, IHL·4 ≤ total length ≤ buffer length.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let d = buffer.as_ref();
        if d.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if d[field::VER_IHL] >> 4 != 4 {
            return Err(Error::BadVersion);
        }
        let hl = usize::from(d[field::VER_IHL] & 0x0f) * 4;
        if hl < HEADER_LEN {
            return Err(Error::BadHeaderLen);
        }
        if hl > d.len() {
            return Err(Error::Truncated);
        }
        let total = usize::from(be16(d, field::LENGTH));
        if total < hl || total > d.len() {
            return Err(Error::BadLength);
        }
        Ok(Packet { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL · 4), options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The whole ToS byte (DSCP · 4 + ECN).
    #[inline]
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    #[inline]
    pub fn dscp(&self) -> u8 {
        self.tos() >> 2
    }

    #[inline]
    pub fn ecn(&self) -> u8 {
        self.tos() & 3
    }

    /// Total datagram length (header + payload).
    #[inline]
    pub fn total_len(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::LENGTH))
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT)
    }

    #[inline]
    pub fn dont_frag(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }

    #[inline]
    pub fn more_frags(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes.
    #[inline]
    pub fn frag_offset(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::FLG_OFF) & OFFSET_MASK) * 8
    }

    /// Whether this datagram is a fragment of a larger one.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// Whether the L4 header is here (not a non-first fragment).
    #[inline]
    pub fn is_first_fragment(&self) -> bool {
        self.frag_offset() == 0
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    #[inline]
    pub fn src_bytes(&self) -> [u8; 4] {
        array(self.buffer.as_ref(), field::SRC_ADDR.start)
    }

    #[inline]
    pub fn dst_bytes(&self) -> [u8; 4] {
        array(self.buffer.as_ref(), field::DST_ADDR.start)
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.src_bytes())
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.dst_bytes())
    }

    /// The option bytes (empty when IHL = 5).
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The payload, up to the total length (Ethernet padding excluded).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len()]
    }

    /// Whether the header checksum is valid.
    pub fn verify_checksum(&self) -> bool {
        checksum::data_sum(&self.buffer.as_ref()[..self.header_len()]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_tos(&mut self, tos: u8) {
        self.buffer.as_mut()[field::TOS] = tos;
    }

    #[inline]
    pub fn set_total_len(&mut self, len: u16) {
        set_be16(self.buffer.as_mut(), field::LENGTH, len);
    }

    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        set_be16(self.buffer.as_mut(), field::CHECKSUM, c);
    }

    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }

    /// Recompute the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = self.header_len();
        let c = checksum::checksum(&self.buffer.as_ref()[..hl]);
        self.set_checksum(c);
    }
}

/// An option-less IPv4 header to emit (outer tunnel headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub protocol: u8,
    /// Payload length (the total length is this + 20).
    pub payload_len: usize,
    pub ttl: u8,
    pub tos: u8,
    pub ident: u16,
    pub dont_frag: bool,
}

impl Repr {
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write the 20-byte header, checksum included. Fails if the buffer is
    /// short or the total length does not fit 16 bits.
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), Error> {
        ensure_len(buf, HEADER_LEN)?;
        let total = u16::try_from(self.payload_len + HEADER_LEN).map_err(|_| Error::BadLength)?;
        buf[field::VER_IHL] = 0x45;
        buf[field::TOS] = self.tos;
        set_be16(buf, field::LENGTH, total);
        set_be16(buf, field::IDENT, self.ident);
        set_be16(
            buf,
            field::FLG_OFF,
            if self.dont_frag { FLAG_DF } else { 0 },
        );
        buf[field::TTL] = self.ttl;
        buf[field::PROTOCOL] = self.protocol;
        buf[field::SRC_ADDR].copy_from_slice(&self.src_addr.octets());
        buf[field::DST_ADDR].copy_from_slice(&self.dst_addr.octets());
        set_be16(buf, field::CHECKSUM, 0);
        let c = checksum::checksum(&buf[..HEADER_LEN]);
        set_be16(buf, field::CHECKSUM, c);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr() -> Repr {
        Repr {
            src_addr: Ipv4Addr::new(10, 0, 0, 1),
            dst_addr: Ipv4Addr::new(10, 0, 0, 2),
            protocol: 17,
            payload_len: 8,
            ttl: 64,
            tos: 0xb8,
            ident: 7,
            dont_frag: true,
        }
    }

    #[test]
    fn emit_and_view() {
        let mut b = [0u8; 30];
        repr().emit(&mut b).unwrap();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.dscp(), 46);
        assert_eq!(p.ecn(), 0);
        assert_eq!(p.ident(), 7);
        assert!(p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), 17);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(p.payload().len(), 8);
        assert!(p.options().is_empty());
    }

    #[test]
    fn validation() {
        let mut b = [0u8; 28];
        repr().emit(&mut b).unwrap();
        assert_eq!(Packet::new_checked(&b[..19]).err(), Some(Error::Truncated));
        assert_eq!(Packet::new_checked(&b[..27]).err(), Some(Error::BadLength));
        let mut v = b;
        v[0] = 0x65;
        assert_eq!(Packet::new_checked(&v[..]).err(), Some(Error::BadVersion));
        v[0] = 0x44;
        assert_eq!(Packet::new_checked(&v[..]).err(), Some(Error::BadHeaderLen));
        v[0] = 0x4f;
        assert_eq!(Packet::new_checked(&v[..]).err(), Some(Error::Truncated));
        v[0] = 0x46;
        v[2..4].copy_from_slice(&22u16.to_be_bytes());
        assert_eq!(Packet::new_checked(&v[..]).err(), Some(Error::BadLength));
        let mut v = b;
        v[2..4].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(Packet::new_checked(&v[..]).err(), Some(Error::BadLength));
        let mut big = repr();
        big.payload_len = 65516;
        assert_eq!(big.emit(&mut [0u8; 20]), Err(Error::BadLength));
    }

    #[test]
    fn fragments_and_setters() {
        let mut b = [0u8; 28];
        repr().emit(&mut b).unwrap();
        b[6..8].copy_from_slice(&0x2003u16.to_be_bytes());
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        assert!(p.is_fragment() && p.more_frags() && !p.is_first_fragment());
        assert_eq!(p.frag_offset(), 24);
        p.set_src_addr(Ipv4Addr::new(1, 2, 3, 4));
        p.set_dst_addr(Ipv4Addr::new(5, 6, 7, 8));
        p.set_tos(1);
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.ecn(), 1);
    }
}
