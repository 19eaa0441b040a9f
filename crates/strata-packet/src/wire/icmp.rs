//! ICMPv4 (RFC 792) and ICMPv6 (RFC 4443) share the first 8 bytes: type,
//! code, checksum and a 4-byte rest-of-header, which for echo messages is
//! identifier + sequence number. The identifier plays the role of a port in
//! the flow key (see `crate::flow::FlowKey`).

use super::{Error, be16, set_be16};

/// Field offsets.
pub mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const ECHO_IDENT: usize = 4;
    pub const ECHO_SEQ: usize = 6;
}

pub const HEADER_LEN: usize = 8;

/// Message types the switch treats specially.
pub mod types {
    pub const V4_ECHO_REPLY: u8 = 0;
    pub const V4_ECHO_REQUEST: u8 = 8;
    pub const V6_ECHO_REQUEST: u8 = 128;
    pub const V6_ECHO_REPLY: u8 = 129;
}

/// Whether `t` is an echo request of the given ICMP version.
#[inline]
pub fn is_echo_request(v6: bool, t: u8) -> bool {
    if v6 {
        t == types::V6_ECHO_REQUEST
    } else {
        t == types::V4_ECHO_REQUEST
    }
}

/// Whether `t` is an echo reply of the given ICMP version.
#[inline]
pub fn is_echo_reply(v6: bool, t: u8) -> bool {
    if v6 {
        t == types::V6_ECHO_REPLY
    } else {
        t == types::V4_ECHO_REPLY
    }
}

/// A checked view of an ICMPv4 or ICMPv6 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap `buffer`, checking it holds the 8-byte header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Packet { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    #[inline]
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Echo identifier (meaningful for echo request/reply only).
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    #[inline]
    pub fn echo_seq(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ECHO_SEQ)
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_echo_ident(&mut self, id: u16) {
        set_be16(self.buffer.as_mut(), field::ECHO_IDENT, id);
    }

    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        set_be16(self.buffer.as_mut(), field::CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo() {
        let mut b = [8, 0, 0xf7, 0xfe, 0x00, 0x01, 0x00, 0x02];
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        assert_eq!((p.msg_type(), p.code(), p.checksum()), (8, 0, 0xf7fe));
        assert_eq!((p.echo_ident(), p.echo_seq()), (1, 2));
        assert!(p.payload().is_empty());
        p.set_echo_ident(9);
        p.set_checksum(0);
        assert_eq!(p.echo_ident(), 9);
        assert!(is_echo_request(false, 8) && is_echo_reply(false, 0));
        assert!(is_echo_request(true, 128) && is_echo_reply(true, 129));
        assert!(!is_echo_request(true, 8));
        assert_eq!(Packet::new_checked(&b[..7]).err(), Some(Error::Truncated));
    }
}
