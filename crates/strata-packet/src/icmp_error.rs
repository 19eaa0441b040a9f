//! ICMP errors (RFC 792, RFC 4443) and the packet they quote.
//!
//! An ICMP error carries the head of the packet it answers: that packet's
//! IP header and at least the first 8 bytes of its L4 header (its ports).
//! A switch that translates addresses must translate that quote as well as
//! the error's own header, or the sender cannot match the error to its
//! connection: path-MTU discovery ("fragmentation needed", "packet too
//! big"), traceroute ("time exceeded") and "port unreachable" all break
//! behind a NAT that forgets the quote (RFC 5508 §7, RFC 5382 §5.2).
//!
//! [`read_quote`] finds and checks the quote of an error the parser has
//! laid out; [`rewrite_quote`] rewrites its addresses and ports in place,
//! keeping the quoted IPv4 header checksum, the quoted L4 checksum (when
//! the quote holds it) and the error's own checksum right by RFC 1624
//! updates, so a damaged checksum stays damaged rather than being
//! laundered.

use crate::checksum::Delta;
use crate::flow::{FlowKey, ipproto};
use crate::parse::{L4Kind, Layout};
use crate::wire::ipv6::walk_ext_headers;
use crate::wire::{array, be16, icmp, set_be16};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// ICMPv4 error types a quote is read from: destination unreachable (3,
/// "fragmentation needed" among its codes), time exceeded (11), parameter
/// problem (12). Redirects and the deprecated source quench are not
/// carried to a connection.
pub const V4_ERROR_TYPES: [u8; 3] = [3, 11, 12];

/// ICMPv6 error types: destination unreachable (1), packet too big (2),
/// time exceeded (3), parameter problem (4).
pub const V6_ERROR_TYPES: [u8; 4] = [1, 2, 3, 4];

/// Whether an ICMP message of type `t` is an error that quotes a packet.
#[inline]
pub fn is_error(v6: bool, t: u8) -> bool {
    if v6 {
        V6_ERROR_TYPES.contains(&t)
    } else {
        V4_ERROR_TYPES.contains(&t)
    }
}

/// Whether the parsed packet `key`, laid out as `lay`, is an ICMP error
/// (the error itself whole: not a fragment).
#[inline]
pub fn is_error_packet(key: &FlowKey, lay: &Layout) -> bool {
    let v6 = match lay.l4_kind {
        L4Kind::Icmpv4 => false,
        L4Kind::Icmpv6 => true,
        _ => return false,
    };
    !lay.fragment && is_error(v6, key.icmp_type)
}

/// Why an ICMP error's quote cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// The packet is not an ICMP error (or is a fragment of one).
    #[error("not an ICMP error")]
    NotAnError,
    /// The quote ends before the quoted L4 header's first 8 bytes.
    #[error("quote truncated")]
    Truncated,
    /// The quoted packet is not of the error's IP version, or its header
    /// length is out of range.
    #[error("quoted IP header invalid")]
    BadHeader,
    /// The quoted packet is a fragment other than the first (no ports).
    #[error("quoted packet is a later fragment")]
    Fragment,
    /// The quoted packet is not TCP, UDP or an ICMP echo (an error about
    /// an error is never answered).
    #[error("quoted protocol has no connection")]
    Protocol,
    /// New addresses of the wrong family were asked for.
    #[error("address family mismatch")]
    Family,
}

impl QuoteError {
    /// A short name for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            QuoteError::NotAnError => "not-an-error",
            QuoteError::Truncated => "quote-truncated",
            QuoteError::BadHeader => "quote-bad-header",
            QuoteError::Fragment => "quote-fragment",
            QuoteError::Protocol => "quote-protocol",
            QuoteError::Family => "quote-family",
        }
    }
}

/// A checked quote: the quoted packet's identity, in [`FlowKey`] terms,
/// and where its fields lie in the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quote {
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub proto: u8,
    /// DSCP of the quoted packet.
    pub dscp: u8,
    /// Ports, or an echo identifier as [`FlowKey`] places it (a request's
    /// in `src_port`, a reply's in `dst_port`).
    pub src_port: u16,
    pub dst_port: u16,
    /// Echo type for a quoted ICMP echo (0 otherwise).
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Offset of the quoted IP header in the frame.
    ip: usize,
    /// Offset of the quoted L4 header.
    l4: usize,
    /// End of the quote (end of the error's IP datagram).
    end: usize,
    /// The error's own checksum field.
    icmp_checksum: usize,
}

impl Quote {
    /// Whether the quote is IPv6.
    pub fn is_v6(&self) -> bool {
        self.src_ip.is_ipv6()
    }

    /// Bytes of the quoted packet the error carries.
    pub fn len(&self) -> usize {
        self.end - self.ip
    }

    /// Whether the quote is empty (never, for a checked quote).
    pub fn is_empty(&self) -> bool {
        self.end == self.ip
    }
}

/// Read the quote of the ICMP error in `frame` (whose parse gave `key`
/// and `lay`). Every offset is checked against the frame: nothing here
/// can panic on packet data.
pub fn read_quote(frame: &[u8], key: &FlowKey, lay: &Layout) -> Result<Quote, QuoteError> {
    if !is_error_packet(key, lay) {
        return Err(QuoteError::NotAnError);
    }
    let v6 = lay.l4_kind == L4Kind::Icmpv6;
    let ip = lay.l4 as usize + icmp::HEADER_LEN;
    let end = (lay.l3_end as usize).min(frame.len());
    let q = frame.get(ip..end).ok_or(QuoteError::Truncated)?;
    let first = *q.first().ok_or(QuoteError::Truncated)?;
    let (src_ip, dst_ip, mut proto, dscp, mut at) = if v6 {
        if first >> 4 != 6 {
            return Err(QuoteError::BadHeader);
        }
        let h = q.get(..40).ok_or(QuoteError::Truncated)?;
        let tc = ((h[0] & 0x0f) << 4) | (h[1] >> 4);
        let src = Ipv6Addr::from(array::<16>(h, 8));
        let dst = Ipv6Addr::from(array::<16>(h, 24));
        (IpAddr::V6(src), IpAddr::V6(dst), h[6], tc >> 2, 40usize)
    } else {
        if first >> 4 != 4 {
            return Err(QuoteError::BadHeader);
        }
        let ihl = usize::from(first & 0x0f) * 4;
        if ihl < 20 {
            return Err(QuoteError::BadHeader);
        }
        let h = q.get(..ihl).ok_or(QuoteError::Truncated)?;
        if be16(h, 6) & 0x1fff != 0 {
            return Err(QuoteError::Fragment);
        }
        let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
        let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
        (IpAddr::V4(src), IpAddr::V4(dst), h[9], h[1] >> 2, ihl)
    };
    if v6 {
        // The extension headers, walked as the parser walks them: only a
        // first fragment has ports.
        let chain =
            walk_ext_headers(proto, q.get(at..).unwrap_or_default()).map_err(|e| match e {
                crate::wire::Error::TooManyHeaders => QuoteError::BadHeader,
                _ => QuoteError::Truncated,
            })?;
        if chain.non_first_fragment {
            return Err(QuoteError::Fragment);
        }
        proto = chain.protocol;
        at += chain.len;
    }
    let l4 = q.get(at..at + 8).ok_or(QuoteError::Truncated)?;
    let word = |i: usize| be16(l4, i);
    let (src_port, dst_port, icmp_type, icmp_code) = match proto {
        ipproto::TCP | ipproto::UDP => (word(0), word(2), 0, 0),
        ipproto::ICMP if !v6 => echo_ports(false, l4[0], l4[1], word(4))?,
        ipproto::ICMPV6 if v6 => echo_ports(true, l4[0], l4[1], word(4))?,
        _ => return Err(QuoteError::Protocol),
    };
    Ok(Quote {
        src_ip,
        dst_ip,
        proto,
        dscp,
        src_port,
        dst_port,
        icmp_type,
        icmp_code,
        ip,
        l4: ip + at,
        end,
        icmp_checksum: lay.l4 as usize + icmp::field::CHECKSUM,
    })
}

/// A quoted echo's identifier placed as a key places it.
fn echo_ports(v6: bool, t: u8, code: u8, ident: u16) -> Result<(u16, u16, u8, u8), QuoteError> {
    if icmp::is_echo_request(v6, t) {
        Ok((ident, 0, t, code))
    } else if icmp::is_echo_reply(v6, t) {
        Ok((0, ident, t, code))
    } else {
        Err(QuoteError::Protocol)
    }
}

/// Rewrite the quote `q` of the error in `frame` to name `src`:`src_port`
/// → `dst`:`dst_port` (ports as a [`FlowKey`] places them), updating the
/// quoted IPv4 header checksum, the quoted TCP / UDP / ICMP checksum when
/// the quote holds it, and the error's own checksum. `frame` must be the
/// one `q` was read from; nothing is written unless every field fits.
pub fn rewrite_quote(
    frame: &mut [u8],
    q: &Quote,
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
) -> Result<(), QuoteError> {
    if src.is_ipv4() != q.src_ip.is_ipv4() || dst.is_ipv4() != q.src_ip.is_ipv4() {
        return Err(QuoteError::Family);
    }
    if frame.len() < q.end || q.l4 + 8 > q.end || q.icmp_checksum + 2 > q.ip {
        return Err(QuoteError::Truncated);
    }
    // The address words go into `pseudo` (the quoted L4 checksum covers
    // them by its pseudo-header); every word the quote changes, those
    // included, into `outer` (the error's own checksum covers the quote).
    let mut pseudo = Delta::ZERO;
    let (src_at, dst_at) = if q.is_v6() {
        (q.ip + 8, q.ip + 24)
    } else {
        (q.ip + 12, q.ip + 16)
    };
    for (at, new) in [(src_at, src), (dst_at, dst)] {
        let len = if q.is_v6() { 16 } else { 4 };
        let mut bytes = [0u8; 16];
        match new {
            IpAddr::V4(a) => bytes[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => bytes.copy_from_slice(&a.octets()),
        }
        let field = &mut frame[at..at + len];
        pseudo.bytes(field, &bytes[..len]);
        field.copy_from_slice(&bytes[..len]);
    }
    let mut outer = pseudo;
    if !q.is_v6() {
        set_word(
            frame,
            q.ip + 10,
            pseudo.apply(be16(frame, q.ip + 10)),
            &mut outer,
        );
    }
    // The ports (or echo identifier), and the L4 checksum they and the
    // addresses feed.
    let mut l4 = Delta::ZERO;
    let ports: &[(usize, u16)] = match q.proto {
        ipproto::TCP | ipproto::UDP => &[(0, src_port), (2, dst_port)],
        _ if icmp::is_echo_request(q.is_v6(), q.icmp_type) => &[(4, src_port)],
        _ => &[(4, dst_port)],
    };
    for &(off, new) in ports {
        l4.u16(be16(frame, q.l4 + off), new);
        set_word(frame, q.l4 + off, new, &mut outer);
    }
    let (checksum_at, covers_pseudo) = match q.proto {
        ipproto::TCP => (16, true),
        ipproto::UDP => (6, true),
        ipproto::ICMPV6 => (2, true),
        _ => (2, false),
    };
    let at = q.l4 + checksum_at;
    if at + 2 <= q.end {
        let old = be16(frame, at);
        // A UDP checksum of 0 is "none" (IPv4) and stays so.
        if !(q.proto == ipproto::UDP && old == 0) {
            if covers_pseudo {
                l4.add(pseudo);
            }
            let mut new = l4.apply(old);
            if q.proto == ipproto::UDP && new == 0 {
                new = 0xffff;
            }
            set_word(frame, at, new, &mut outer);
        }
    }
    let c = q.icmp_checksum;
    let sum = outer.apply(be16(frame, c));
    set_be16(frame, c, sum);
    Ok(())
}

/// Write a 16-bit word, recording its change in `d`.
fn set_word(frame: &mut [u8], at: usize, new: u16, d: &mut Delta) {
    d.u16(be16(frame, at), new);
    set_be16(frame, at, new);
}
