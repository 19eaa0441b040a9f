//! `strata-packet`: the packet layer of Strata.
//!
//! - [`wire`]: zero-copy checked header views (Ethernet, 802.1Q, ARP, IPv4,
//!   IPv6, TCP, UDP, ICMPv4/v6, VXLAN, NVGRE, Geneve). A view is built with
//!   `new_checked`, after which no accessor can panic.
//! - [`parse`](mod@parse): parse a frame once into header groups and the [`Ufid`]
//!   (VFP-8), plus the per-packet fields TCP tracking needs.
//! - [`packed`]: the compact form flow tables store UFIDs in.
//! - [`transposition`]: header transpositions (VFP-9) as plain data, with
//!   composition and inversion.
//! - [`emit`]: apply one transposition to a frame in place, using headroom for
//!   pushed headers, with incremental checksum updates.
//! - [`fragment`]: which datagram an IP fragment belongs to and which
//!   part of it it carries.
//! - [`icmp_error`]: the packet an ICMP error quotes, read and rewritten in
//!   place (so a NAT's errors reach the connection they are about).
//! - [`checksum`]: the Internet checksum (RFC 1071), pseudo-header sums and
//!   RFC 1624 incremental updates.
//!
//! Malformed input yields a typed error naming the reason; nothing here panics
//! on packet data.

pub mod checksum;
pub mod emit;
pub mod flow;
pub mod fragment;
pub mod icmp_error;
pub mod packed;
pub mod parse;
pub mod transposition;
pub mod wire;

pub use emit::{EmitError, PacketBuf, apply};
pub use flow::{FlowKey, MacAddr, OuterKey, TunnelKind, Ufid};
pub use packed::PackedUfid;
pub use parse::{PacketMeta, ParseError, ParseOptions, Parsed, parse, parse_with};
pub use transposition::{Encap, OuterOp, Transposition, VlanOp};
