//! UDP header (RFC 768): ports, length, checksum. Outer VXLAN/Geneve
//! headers are built with [`Repr`].

use super::{Error, be16, ensure_len, set_be16};

/// Field offsets.
pub mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

pub const HEADER_LEN: usize = 8;

/// A checked view of a UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap `buffer` (the IP payload), checking length ≥ 8 and
    /// 8 ≤ length field ≤ buffer length.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let d = buffer.as_ref();
        if d.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = usize::from(be16(d, field::LENGTH));
        if len < HEADER_LEN || len > d.len() {
            return Err(Error::BadLength);
        }
        Ok(Packet { buffer })
    }

    /// Wrap the first fragment of a fragmented datagram (`buffer`: that
    /// fragment's IP payload), checking length ≥ 8 and length field ≥ 8:
    /// the datagram's length is the whole one's, past this fragment.
    #[inline]
    pub fn new_checked_first_fragment(buffer: T) -> Result<Self, Error> {
        let d = buffer.as_ref();
        if d.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if usize::from(be16(d, field::LENGTH)) < HEADER_LEN {
            return Err(Error::BadLength);
        }
        Ok(Packet { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: header + payload.
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::LENGTH))
    }

    /// Always false: a checked datagram has at least its header.
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The payload, up to the length field.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_src_port(&mut self, p: u16) {
        set_be16(self.buffer.as_mut(), field::SRC_PORT, p);
    }

    #[inline]
    pub fn set_dst_port(&mut self, p: u16) {
        set_be16(self.buffer.as_mut(), field::DST_PORT, p);
    }

    #[inline]
    pub fn set_len(&mut self, len: u16) {
        set_be16(self.buffer.as_mut(), field::LENGTH, len);
    }

    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        set_be16(self.buffer.as_mut(), field::CHECKSUM, c);
    }
}

/// A UDP header to emit. The checksum is written as 0 ("none", allowed over
/// IPv4 and for tunnels); over IPv6 the emitter fills it afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: usize,
}

impl Repr {
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    #[inline]
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), Error> {
        ensure_len(buf, HEADER_LEN)?;
        let len = u16::try_from(self.payload_len + HEADER_LEN).map_err(|_| Error::BadLength)?;
        set_be16(buf, field::SRC_PORT, self.src_port);
        set_be16(buf, field::DST_PORT, self.dst_port);
        set_be16(buf, field::LENGTH, len);
        set_be16(buf, field::CHECKSUM, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_validation() {
        let mut b = [0u8; 14];
        let r = Repr {
            src_port: 50000,
            dst_port: 4789,
            payload_len: 4,
        };
        r.emit(&mut b).unwrap();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(
            (p.src_port(), p.dst_port(), p.len(), p.checksum()),
            (50000, 4789, 12, 0)
        );
        assert_eq!(p.payload().len(), 4);
        assert_eq!(Packet::new_checked(&b[..7]).err(), Some(Error::Truncated));
        assert_eq!(Packet::new_checked(&b[..11]).err(), Some(Error::BadLength));
        b[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(Error::BadLength));
        let big = Repr {
            payload_len: 65528,
            ..r
        };
        assert_eq!(big.emit(&mut b), Err(Error::BadLength));
    }
}
