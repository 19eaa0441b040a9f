//! Parse a frame once into header groups (VFP-8): outer Ethernet / outer IP /
//! encap / inner Ethernet / inner IP / L4, giving the [`Ufid`], the per-packet
//! fields TCP tracking needs ([`PacketMeta`]) and the byte layout the emitter
//! uses ([`Layout`]).

use crate::flow::Ufid;

/// Per-packet fields that are not part of the flow key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketMeta {
    /// Whole frame length in bytes.
    pub frame_len: u32,
    /// TCP flags byte (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 ... CWR=0x80); 0 if not TCP.
    pub tcp_flags: u8,
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    /// TCP/UDP payload length (bytes after the L4 header) of the inner packet.
    pub l4_payload_len: u32,
    /// ECN bits of the inner IP header (3 = CE).
    pub ecn: u8,
    /// Inner IP TTL / hop limit.
    pub ttl: u8,
}

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// A parsed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub ufid: Ufid,
    pub meta: PacketMeta,
    pub layout: Layout,
}

/// Byte offsets of the header groups, relative to the frame start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    // TODO(helper): offsets used by emit.
}

/// Why a frame could not be parsed. Every variant names a counted drop reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("frame truncated in the {0} header")]
    Truncated(&'static str),
}

impl ParseError {
    /// A stable kebab-case reason used as a drop counter name.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::Truncated(_) => "truncated",
        }
    }
}

/// Parse one frame.
pub fn parse(_frame: &[u8]) -> Result<Parsed, ParseError> {
    Err(ParseError::Truncated("ethernet"))
}
