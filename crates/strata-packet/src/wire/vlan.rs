//! IEEE 802.1Q VLAN tag (and the 802.1ad service tag, which has the same
//! layout under TPID 0x88a8).
//!
//! On the wire a tag is TPID (2 bytes, sitting where the ethertype would be)
//! followed by the TCI (PCP 3 bits, DEI 1 bit, VID 12 bits). The view here
//! starts at the TCI and also covers the *next* ethertype, so tags chain like
//! any other header: Ethernet header, then one 4-byte view per tag.

use super::{Error, be16, ensure_len, set_be16};
use crate::flow::ethertype;

/// Field offsets, relative to the TCI.
pub mod field {
    pub const TCI: usize = 0;
    pub const ETHERTYPE: usize = 2;
    pub const PAYLOAD: usize = 4;
}

/// Bytes a tag adds to a frame (TPID + TCI) and the length of this view
/// (TCI + next ethertype).
pub const TAG_LEN: usize = 4;

/// The most VLAN tags the parser accepts in one frame (QinQ).
pub const MAX_TAGS: usize = 2;

/// Whether `ethertype` announces a VLAN tag (802.1Q C-tag or 802.1ad S-tag).
#[inline]
pub fn is_tpid(et: u16) -> bool {
    et == ethertype::VLAN || et == ethertype::QINQ
}

/// A checked view of a VLAN tag (TCI + next ethertype).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Tag<T> {
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < TAG_LEN {
            return Err(Error::Truncated);
        }
        Ok(Tag { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn tci(&self) -> u16 {
        be16(self.buffer.as_ref(), field::TCI)
    }

    /// Priority code point (3 bits).
    #[inline]
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }

    /// Drop eligible indicator.
    #[inline]
    pub fn dei(&self) -> bool {
        self.tci() & 0x1000 != 0
    }

    /// VLAN identifier (12 bits).
    #[inline]
    pub fn vid(&self) -> u16 {
        self.tci() & 0x0fff
    }

    /// The ethertype following the tag.
    #[inline]
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Tag<T> {
    /// Rewrite the VID, keeping PCP and DEI.
    #[inline]
    pub fn set_vid(&mut self, vid: u16) {
        let tci = (self.tci() & 0xf000) | (vid & 0x0fff);
        set_be16(self.buffer.as_mut(), field::TCI, tci);
    }

    #[inline]
    pub fn set_ethertype(&mut self, et: u16) {
        set_be16(self.buffer.as_mut(), field::ETHERTYPE, et);
    }
}

/// A tag to emit, *including* its TPID: 4 bytes inserted after the MACs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub tpid: u16,
    pub pcp: u8,
    pub dei: bool,
    pub vid: u16,
}

impl Repr {
    /// A plain 802.1Q C-tag with priority 0.
    pub fn ctag(vid: u16) -> Repr {
        Repr {
            tpid: ethertype::VLAN,
            pcp: 0,
            dei: false,
            vid: vid & 0x0fff,
        }
    }

    pub const fn buffer_len(&self) -> usize {
        TAG_LEN
    }

    pub fn tci(&self) -> u16 {
        (u16::from(self.pcp & 7) << 13) | (u16::from(self.dei) << 12) | (self.vid & 0x0fff)
    }

    /// Write TPID + TCI into the first 4 bytes of `buf`.
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), Error> {
        ensure_len(buf, TAG_LEN)?;
        set_be16(buf, 0, self.tpid);
        set_be16(buf, 2, self.tci());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let mut b = [0xb0, 0x64, 0x08, 0x00, 0xaa];
        let t = Tag::new_checked(&b[..]).unwrap();
        assert_eq!(t.pcp(), 5);
        assert!(t.dei());
        assert_eq!(t.vid(), 100);
        assert_eq!(t.ethertype(), 0x0800);
        assert_eq!(t.payload(), &[0xaa]);
        let mut m = Tag::new_checked(&mut b[..]).unwrap();
        m.set_vid(0xfff);
        assert_eq!(m.pcp(), 5);
        assert_eq!(m.vid(), 0xfff);
        assert!(Tag::new_checked(&b[..3]).is_err());
        let mut o = [0u8; 4];
        Repr::ctag(42).emit(&mut o).unwrap();
        assert_eq!(o, [0x81, 0x00, 0x00, 42]);
        assert!(is_tpid(0x88a8) && is_tpid(0x8100) && !is_tpid(0x0800));
    }
}
