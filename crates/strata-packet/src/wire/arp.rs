//! ARP packet (RFC 826). The switch only needs to recognise and validate
//! ARP; the flow key of an ARP frame uses its Ethernet fields alone.
//!
//! The address lengths are taken from the header (`hlen`, `plen`), so any
//! hardware/protocol pair validates, not just Ethernet/IPv4.

use super::{Error, be16};

/// Field offsets of the fixed part.
pub mod field {
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    /// Start of the variable-length address fields.
    pub const ADDRS: usize = 8;
}

pub const OPERATION_REQUEST: u16 = 1;
pub const OPERATION_REPLY: u16 = 2;

/// A checked view of an ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap `buffer`, checking the fixed part and the four addresses fit.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let d = buffer.as_ref();
        if d.len() < field::ADDRS {
            return Err(Error::Truncated);
        }
        let addrs = 2 * (usize::from(d[field::HLEN]) + usize::from(d[field::PLEN]));
        if d.len() < field::ADDRS + addrs {
            return Err(Error::Truncated);
        }
        Ok(Packet { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn hardware_type(&self) -> u16 {
        be16(self.buffer.as_ref(), field::HTYPE)
    }

    pub fn protocol_type(&self) -> u16 {
        be16(self.buffer.as_ref(), field::PTYPE)
    }

    pub fn hardware_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::HLEN])
    }

    pub fn protocol_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::PLEN])
    }

    pub fn operation(&self) -> u16 {
        be16(self.buffer.as_ref(), field::OPER)
    }

    /// Total length of the ARP packet (fixed part + addresses).
    pub fn packet_len(&self) -> usize {
        field::ADDRS + 2 * (self.hardware_len() + self.protocol_len())
    }

    fn addr(&self, index: usize) -> &[u8] {
        let (h, p) = (self.hardware_len(), self.protocol_len());
        let start = field::ADDRS
            + match index {
                0 => 0,
                1 => h,
                2 => h + p,
                _ => 2 * h + p,
            };
        let len = if index.is_multiple_of(2) { h } else { p };
        &self.buffer.as_ref()[start..start + len]
    }

    pub fn source_hardware_addr(&self) -> &[u8] {
        self.addr(0)
    }

    pub fn source_protocol_addr(&self) -> &[u8] {
        self.addr(1)
    }

    pub fn target_hardware_addr(&self) -> &[u8] {
        self.addr(2)
    }

    pub fn target_protocol_addr(&self) -> &[u8] {
        self.addr(3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethernet_ipv4_request() {
        let b = [
            0, 1, 8, 0, 6, 4, 0, 1, // fixed
            2, 0, 0, 0, 0, 1, 10, 0, 0, 1, // sender
            0, 0, 0, 0, 0, 0, 10, 0, 0, 2, // target
        ];
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.hardware_type(), 1);
        assert_eq!(p.protocol_type(), 0x0800);
        assert_eq!(p.operation(), OPERATION_REQUEST);
        assert_eq!(p.source_hardware_addr(), &[2, 0, 0, 0, 0, 1]);
        assert_eq!(p.source_protocol_addr(), &[10, 0, 0, 1]);
        assert_eq!(p.target_hardware_addr(), &[0; 6]);
        assert_eq!(p.target_protocol_addr(), &[10, 0, 0, 2]);
        assert_eq!(p.packet_len(), 28);
        for n in 0..b.len() {
            assert_eq!(Packet::new_checked(&b[..n]).err(), Some(Error::Truncated));
        }
    }
}
