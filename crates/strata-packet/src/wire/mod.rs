//! Zero-copy, checked header views, in the style of smoltcp's `wire` module.
//!
//! Each protocol module has:
//! - `field`: the byte ranges / offsets of the header fields, as consts;
//! - a view type wrapping any `T: AsRef<[u8]>` (a `&[u8]`, a `&mut [u8]`, a
//!   `Vec<u8>`). Its only constructor is `new_checked`, which validates
//!   every length the accessors rely on, so no accessor can panic afterwards.
//!   Setters exist when `T: AsMut<[u8]>` too, for the fields the emitter
//!   rewrites;
//! - for the headers the emitter builds (Ethernet, 802.1Q, IPv4, IPv6, UDP,
//!   GRE/NVGRE, VXLAN, Geneve), a plain-data `Repr` with `buffer_len()` and an
//!   `emit(&mut [u8])` that checks the buffer length before writing.
//!
//! Views never allocate and never verify checksums (see `crate::checksum`).

pub mod arp;
pub mod ethernet;
pub mod geneve;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod nvgre;
pub mod tcp;
pub mod udp;
pub mod vlan;
pub mod vxlan;

/// Why a header view could not be built over a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the fixed header (or than the header
    /// length the header itself announces).
    #[error("buffer too short for the header")]
    Truncated,
    /// A version field has an unsupported value.
    #[error("unsupported version")]
    BadVersion,
    /// A header-length field (IPv4 IHL, TCP data offset, Geneve option
    /// length, an option TLV length) is out of range.
    #[error("invalid header length field")]
    BadHeaderLen,
    /// A total/payload length field disagrees with the buffer.
    #[error("invalid length field")]
    BadLength,
    /// Mandatory flag bits are missing (VXLAN I flag).
    #[error("invalid flags")]
    BadFlags,
    /// An IPv6 extension header chain is longer than the parser's bound.
    #[error("too many extension headers")]
    TooManyHeaders,
}

/// Read a big-endian `u16` at `at`. Callers index only inside lengths their
/// view's `new_checked` validated.
#[inline(always)]
pub(crate) fn be16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

#[inline(always)]
pub(crate) fn be32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

#[inline(always)]
pub(crate) fn set_be16(d: &mut [u8], at: usize, v: u16) {
    d[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Copy a fixed-size array out of a validated range.
#[inline(always)]
pub(crate) fn array<const N: usize>(d: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&d[at..at + N]);
    a
}

/// Check that `buf` is at least `len` bytes long before a `Repr` writes.
#[inline(always)]
pub(crate) fn ensure_len(buf: &[u8], len: usize) -> Result<(), Error> {
    if buf.len() < len {
        Err(Error::Truncated)
    } else {
        Ok(())
    }
}
