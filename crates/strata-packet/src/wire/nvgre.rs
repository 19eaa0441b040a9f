//! GRE (RFC 2784 / RFC 2890) as used by NVGRE (RFC 7637): key bit set,
//! protocol 0x6558 (transparent Ethernet bridging), the key holding a 24-bit
//! virtual subnet id (VSID) and an 8-bit flow id.
//!
//! The view accepts any version-0 GRE header (with or without checksum,
//! key and sequence number, whose presence shifts the key's offset);
//! [`Header::is_nvgre`] says whether it is an NVGRE header. Other GRE traffic
//! is not a tunnel Strata terminates and is forwarded as a plain IP flow.

use super::{Error, be16, be32, ensure_len, set_be16};
use crate::flow::ethertype;

/// Field offsets.
pub mod field {
    pub const FLAGS_VERSION: usize = 0;
    pub const PROTOCOL: usize = 2;
    /// Start of the optional fields (checksum + reserved, key, sequence).
    pub const OPTIONAL: usize = 4;
}

/// Length of the mandatory part.
pub const BASE_LEN: usize = 4;
/// Length of an NVGRE header (base + key).
pub const NVGRE_LEN: usize = 8;

pub const FLAG_C: u16 = 0x8000;
pub const FLAG_R: u16 = 0x4000;
pub const FLAG_K: u16 = 0x2000;
pub const FLAG_S: u16 = 0x1000;
const VERSION_MASK: u16 = 0x0007;

/// A checked view of a GRE header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wrap `buffer`, checking the base header and the optional fields its
    /// flags announce fit.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let d = buffer.as_ref();
        if d.len() < BASE_LEN {
            return Err(Error::Truncated);
        }
        let h = Header { buffer };
        if h.header_len() > h.buffer.as_ref().len() {
            return Err(Error::Truncated);
        }
        Ok(h)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn flags_version(&self) -> u16 {
        be16(self.buffer.as_ref(), field::FLAGS_VERSION)
    }

    #[inline]
    pub fn version(&self) -> u8 {
        (self.flags_version() & VERSION_MASK) as u8
    }

    #[inline]
    pub fn has_checksum(&self) -> bool {
        self.flags_version() & FLAG_C != 0
    }

    #[inline]
    pub fn has_key(&self) -> bool {
        self.flags_version() & FLAG_K != 0
    }

    #[inline]
    pub fn has_seq(&self) -> bool {
        self.flags_version() & FLAG_S != 0
    }

    #[inline]
    pub fn protocol(&self) -> u16 {
        be16(self.buffer.as_ref(), field::PROTOCOL)
    }

    /// Header length: 4 + 4 for each of checksum, key, sequence present.
    #[inline]
    pub fn header_len(&self) -> usize {
        let f = self.flags_version();
        BASE_LEN
            + 4 * (usize::from(f & FLAG_C != 0)
                + usize::from(f & FLAG_K != 0)
                + usize::from(f & FLAG_S != 0))
    }

    fn key_offset(&self) -> usize {
        field::OPTIONAL + if self.has_checksum() { 4 } else { 0 }
    }

    /// The key, if present.
    #[inline]
    pub fn key(&self) -> Option<u32> {
        self.has_key()
            .then(|| be32(self.buffer.as_ref(), self.key_offset()))
    }

    /// NVGRE virtual subnet id (key bits 31..8); 0 without a key.
    #[inline]
    pub fn vsid(&self) -> u32 {
        self.key().unwrap_or(0) >> 8
    }

    /// NVGRE flow id (key bits 7..0); 0 without a key.
    #[inline]
    pub fn flow_id(&self) -> u8 {
        (self.key().unwrap_or(0) & 0xff) as u8
    }

    /// Whether this is an NVGRE header: version 0, no (deprecated) routing,
    /// key present, transparent Ethernet bridging.
    #[inline]
    pub fn is_nvgre(&self) -> bool {
        self.flags_version() & (FLAG_R | VERSION_MASK) == 0
            && self.has_key()
            && self.protocol() == ethertype::TEB
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    /// Set the GRE checksum field (only meaningful with the C flag).
    pub fn set_checksum(&mut self, c: u16) {
        if self.has_checksum() {
            set_be16(self.buffer.as_mut(), field::OPTIONAL, c);
        }
    }
}

/// An NVGRE header to emit: K flag, protocol 0x6558, key = VSID · 256 + flow id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// 24 bits; higher bits are dropped.
    pub vsid: u32,
    pub flow_id: u8,
}

impl Repr {
    pub const fn buffer_len(&self) -> usize {
        NVGRE_LEN
    }

    #[inline]
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), Error> {
        ensure_len(buf, NVGRE_LEN)?;
        set_be16(buf, field::FLAGS_VERSION, FLAG_K);
        set_be16(buf, field::PROTOCOL, ethertype::TEB);
        let key = ((self.vsid & 0x00ff_ffff) << 8) | u32::from(self.flow_id);
        buf[4..8].copy_from_slice(&key.to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut b = [0u8; 8];
        Repr {
            vsid: 0x12_3456,
            flow_id: 7,
        }
        .emit(&mut b)
        .unwrap();
        assert_eq!(b, [0x20, 0, 0x65, 0x58, 0x12, 0x34, 0x56, 7]);
        let h = Header::new_checked(&b[..]).unwrap();
        assert!(h.is_nvgre());
        assert_eq!((h.vsid(), h.flow_id(), h.header_len()), (0x12_3456, 7, 8));
        assert!(Header::new_checked(&b[..7]).is_err());
    }

    #[test]
    fn optional_fields() {
        // C + K + S: checksum, key, sequence.
        let b = [
            0xb0, 0, 0x65, 0x58, 0xaa, 0xbb, 0, 0, 0, 0, 1, 2, 0, 0, 0, 9,
        ];
        let h = Header::new_checked(&b[..]).unwrap();
        assert_eq!(h.header_len(), 16);
        assert_eq!(h.key(), Some(0x0102));
        assert!(h.is_nvgre());
        assert!(Header::new_checked(&b[..15]).is_err());
        // Plain GRE carrying IPv4: not NVGRE.
        let g = [0, 0, 0x08, 0];
        let h = Header::new_checked(&g[..]).unwrap();
        assert!(!h.is_nvgre());
        assert_eq!(h.key(), None);
        assert_eq!(h.vsid(), 0);
    }
}
