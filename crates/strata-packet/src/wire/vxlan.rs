//! VXLAN header (RFC 7348): 8 bytes after the outer UDP header, carrying a
//! 24-bit VNI when the I flag is set, followed by the inner Ethernet frame.

use super::{Error, be32, ensure_len};

/// Field offsets.
pub mod field {
    pub const FLAGS: usize = 0;
    /// VNI (24 bits) followed by a reserved byte.
    pub const VNI: usize = 4;
}

pub const HEADER_LEN: usize = 8;

/// The "VNI valid" flag; every other flag bit is reserved.
pub const FLAG_I: u8 = 0x08;

/// A checked view of a VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wrap `buffer`, checking the 8-byte header fits and the I flag is set
    /// (without it there is no VNI, and so no virtual network to map to).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let d = buffer.as_ref();
        if d.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if d[field::FLAGS] & FLAG_I == 0 {
            return Err(Error::BadFlags);
        }
        Ok(Header { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    #[inline]
    pub fn vni(&self) -> u32 {
        be32(self.buffer.as_ref(), field::VNI) >> 8
    }

    /// The inner Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// A VXLAN header to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// 24 bits; higher bits are dropped.
    pub vni: u32,
}

impl Repr {
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    #[inline]
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), Error> {
        ensure_len(buf, HEADER_LEN)?;
        buf[..4].copy_from_slice(&[FLAG_I, 0, 0, 0]);
        buf[4..8].copy_from_slice(&((self.vni & 0x00ff_ffff) << 8).to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut b = [0u8; 9];
        Repr { vni: 0x0123_4567 }.emit(&mut b).unwrap();
        assert_eq!(&b[..8], &[0x08, 0, 0, 0, 0x23, 0x45, 0x67, 0]);
        let h = Header::new_checked(&b[..]).unwrap();
        assert_eq!(h.vni(), 0x23_4567);
        assert_eq!(h.flags(), FLAG_I);
        assert_eq!(h.payload().len(), 1);
        assert_eq!(Header::new_checked(&b[..7]).err(), Some(Error::Truncated));
        b[0] = 0;
        assert_eq!(Header::new_checked(&b[..]).err(), Some(Error::BadFlags));
    }
}
