//! IP fragments: which datagram a fragment belongs to and which part of
//! it it carries, read from the IPv4 header or the IPv6 fragment header of
//! a parsed frame.
//!
//! Only a datagram's first fragment holds its L4 header, so a later
//! fragment's flow key has no ports; the engine gives it its first
//! fragment's (see `strata-engine`'s fragment tracking), matching the two
//! by the addresses, protocol and this identification.

use crate::parse::{L3Kind, Layout};
use crate::wire::{ipv4, ipv6};

/// One fragment's place in its datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Identification: 16 bits for IPv4, 32 for IPv6.
    pub id: u32,
    /// Where this fragment's data starts in the datagram's payload, bytes.
    pub offset: u32,
    /// Bytes of the datagram's payload this fragment carries.
    pub len: u32,
    /// More fragments follow (clear on the last).
    pub more: bool,
}

impl Fragment {
    /// The first fragment: the one with the L4 header.
    pub fn is_first(&self) -> bool {
        self.offset == 0
    }

    /// Where this fragment's data ends; on the last fragment, the
    /// datagram's payload length.
    pub fn end(&self) -> u32 {
        self.offset.saturating_add(self.len)
    }
}

/// The fragment `frame` holds, by its parse `lay` (see
/// [`crate::parse::Layout`]); `None` for a whole packet, for one that is
/// not IP, or if the headers are not where `lay` says.
pub fn fragment_of(frame: &[u8], lay: &Layout) -> Option<Fragment> {
    if !lay.fragment {
        return None;
    }
    let ip = frame.get(lay.l3 as usize..lay.l3_end as usize)?;
    let len = lay.l3_end.checked_sub(lay.l4)?;
    match lay.l3_kind {
        L3Kind::Ipv4 => {
            let p = ipv4::Packet::new_checked(ip).ok()?;
            Some(Fragment {
                id: u32::from(p.ident()),
                offset: u32::try_from(p.frag_offset()).ok()?,
                len,
                more: p.more_frags(),
            })
        }
        L3Kind::Ipv6 => {
            let p = ipv6::Packet::new_checked(ip).ok()?;
            let c = ipv6::walk_ext_headers(p.next_header(), p.payload()).ok()?;
            Some(Fragment {
                id: c.fragment_id,
                offset: c.fragment_offset,
                len,
                more: c.more_fragments,
            })
        }
        L3Kind::None | L3Kind::Arp => None,
    }
}
