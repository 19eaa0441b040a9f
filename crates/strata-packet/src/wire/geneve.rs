//! Geneve header (RFC 8926): version, option length, O/C flags, protocol
//! type, 24-bit VNI, then variable-length option TLVs.
//!
//! `new_checked` walks the option TLVs and requires them to tile the option
//! area exactly, so a malformed header is rejected before anyone looks at
//! the inner frame. Options are otherwise opaque to Strata.

use super::{Error, be16, be32, ensure_len, set_be16};
use crate::flow::ethertype;

/// Field offsets.
pub mod field {
    /// Version (2 bits) and option length in 4-byte words (6 bits).
    pub const VER_OPT_LEN: usize = 0;
    /// O (control) and C (critical options) flags.
    pub const FLAGS: usize = 1;
    pub const PROTOCOL: usize = 2;
    /// VNI (24 bits) followed by a reserved byte.
    pub const VNI: usize = 4;
    pub const OPTIONS: usize = 8;
}

/// Length of the fixed part.
pub const BASE_LEN: usize = 8;
/// The most option bytes the 6-bit length can express.
pub const MAX_OPTIONS_LEN: usize = 63 * 4;
/// Length of an option TLV header (class, type, flags + length).
pub const OPTION_HEADER_LEN: usize = 4;

pub const FLAG_OAM: u8 = 0x80;
pub const FLAG_CRITICAL: u8 = 0x40;

/// Check that `opts` is a well-formed sequence of option TLVs: each a
/// 4-byte header whose low five bits of the fourth byte give the data length
/// in 4-byte words. The loop runs at most 63 times (one per word).
pub fn check_options(opts: &[u8]) -> Result<(), Error> {
    if !opts.len().is_multiple_of(4) || opts.len() > MAX_OPTIONS_LEN {
        return Err(Error::BadHeaderLen);
    }
    let mut off = 0;
    while off < opts.len() {
        let hdr = opts
            .get(off..off + OPTION_HEADER_LEN)
            .ok_or(Error::BadHeaderLen)?;
        let len = OPTION_HEADER_LEN + usize::from(hdr[3] & 0x1f) * 4;
        if off + len > opts.len() {
            return Err(Error::BadHeaderLen);
        }
        off += len;
    }
    Ok(())
}

/// A checked view of a Geneve header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wrap `buffer`, checking: the fixed part fits, version 0, the options
    /// fit and are well-formed TLVs.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let d = buffer.as_ref();
        if d.len() < BASE_LEN {
            return Err(Error::Truncated);
        }
        if d[field::VER_OPT_LEN] >> 6 != 0 {
            return Err(Error::BadVersion);
        }
        let opt_len = usize::from(d[field::VER_OPT_LEN] & 0x3f) * 4;
        let opts = d
            .get(BASE_LEN..BASE_LEN + opt_len)
            .ok_or(Error::BadHeaderLen)?;
        check_options(opts)?;
        Ok(Header { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_OPT_LEN] >> 6
    }

    /// Length of the options in bytes.
    #[inline]
    pub fn options_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_OPT_LEN] & 0x3f) * 4
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        BASE_LEN + self.options_len()
    }

    #[inline]
    pub fn oam(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_OAM != 0
    }

    #[inline]
    pub fn critical(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_CRITICAL != 0
    }

    /// The payload's protocol type (0x6558 for an Ethernet frame).
    #[inline]
    pub fn protocol(&self) -> u16 {
        be16(self.buffer.as_ref(), field::PROTOCOL)
    }

    #[inline]
    pub fn vni(&self) -> u32 {
        be32(self.buffer.as_ref(), field::VNI) >> 8
    }

    /// The raw option TLVs.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[BASE_LEN..self.header_len()]
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

/// A Geneve header to emit: version 0, no flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr<'a> {
    /// 24 bits; higher bits are dropped.
    pub vni: u32,
    pub protocol: u16,
    /// Raw option TLVs; must pass [`check_options`].
    pub options: &'a [u8],
}

impl<'a> Repr<'a> {
    /// A header carrying an Ethernet frame.
    pub fn ethernet(vni: u32, options: &'a [u8]) -> Repr<'a> {
        Repr {
            vni,
            protocol: ethertype::TEB,
            options,
        }
    }

    pub fn buffer_len(&self) -> usize {
        BASE_LEN + self.options.len()
    }

    #[inline]
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), Error> {
        check_options(self.options)?;
        ensure_len(buf, self.buffer_len())?;
        buf[field::VER_OPT_LEN] = (self.options.len() / 4) as u8;
        buf[field::FLAGS] = 0;
        set_be16(buf, field::PROTOCOL, self.protocol);
        buf[4..8].copy_from_slice(&((self.vni & 0x00ff_ffff) << 8).to_be_bytes());
        buf[BASE_LEN..self.buffer_len()].copy_from_slice(self.options);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_with_options() {
        // Two options: class 0x0102 type 3 with 4 data bytes, and one empty.
        let opts = [1, 2, 3, 1, 9, 9, 9, 9, 0xff, 0xff, 0x80, 0];
        let r = Repr::ethernet(0xabcdef, &opts);
        let mut b = [0u8; 21];
        r.emit(&mut b).unwrap();
        let h = Header::new_checked(&b[..]).unwrap();
        assert_eq!(h.version(), 0);
        assert_eq!(h.options_len(), 12);
        assert_eq!(h.header_len(), 20);
        assert_eq!(h.protocol(), 0x6558);
        assert_eq!(h.vni(), 0xabcdef);
        assert_eq!(h.options(), &opts);
        assert!(!h.oam() && !h.critical());
        assert_eq!(h.payload().len(), 1);
    }

    #[test]
    fn validation() {
        let mut b = [0u8; 16];
        Repr::ethernet(1, &[]).emit(&mut b).unwrap();
        assert!(Header::new_checked(&b[..]).is_ok());
        assert_eq!(Header::new_checked(&b[..7]).err(), Some(Error::Truncated));
        b[0] = 0x40;
        assert_eq!(Header::new_checked(&b[..]).err(), Some(Error::BadVersion));
        // Option length past the buffer.
        b[0] = 3;
        assert_eq!(Header::new_checked(&b[..]).err(), Some(Error::BadHeaderLen));
        // One option word whose TLV claims 4 more data bytes.
        b[0] = 1;
        b[8..12].copy_from_slice(&[0, 1, 2, 1]);
        assert_eq!(Header::new_checked(&b[..]).err(), Some(Error::BadHeaderLen));
        b[0] = 2;
        assert!(Header::new_checked(&b[..]).is_ok());
        assert_eq!(check_options(&[0, 0, 0]), Err(Error::BadHeaderLen));
        assert_eq!(check_options(&[0; 256]), Err(Error::BadHeaderLen));
        assert!(
            Repr::ethernet(1, &[0, 0, 0, 5])
                .emit(&mut [0u8; 64])
                .is_err()
        );
    }
}
