//! A floor for the fast-path benchmark: the least work that produces the
//! same output bytes for the same frames, written for that one shape, with
//! none of the engine's generality. It answers "how fast could a fast path
//! be on this machine?", so the engine's figure can be read against it.
//!
//! What it keeps: the frame copy out of the ring (the harness's, as the
//! engine's bench), the parse checks of an untagged Ethernet / IPv4
//! without options / TCP frame, a hash and an exact-match lookup in a table
//! of as many connections as the engine holds (open addressing, one
//! 64-byte slot per flow, prefetched a batch ahead), a generation check,
//! per-flow packet and byte counts, sender sequence tracking (next
//! sequence, retransmissions), the SNAT rewrite with checksum deltas
//! worked out when the flow was made, and the VXLAN push from a template.
//!
//! What it leaves out, and the engine does: the full UFID (MACs, VLAN,
//! DSCP, ICMP, tunnel keys, IPv6, tunnelled input), the header context
//! shared between flows, every other transposition shape (the emit plan),
//! TCP state changes (SYN, FIN, RST: here they would go to a slow path),
//! RTT probes and ECN counts, per-port direction counters, the lazy
//! per-rule counters, eviction and expiry bookkeeping, and malformed-frame
//! reasons. Its output is checked byte for byte against the engine's for
//! every measured frame before it is timed.

use strata_engine::hint::prefetch;
use strata_packet::checksum::{data_sum, fold};

/// Headroom in front of a frame (the engine's `PacketBuf` default).
const HEADROOM: usize = 128;
/// Ethernet + IPv4 + UDP + VXLAN.
const PUSH: usize = 50;
const ETH: usize = 14;
const L4: usize = ETH + 20;

/// One frame buffer (a ring slot's copy).
pub struct Buf {
    data: Box<[u8; 2048]>,
    start: usize,
    end: usize,
}

impl Buf {
    pub fn new() -> Buf {
        Buf {
            data: Box::new([0; 2048]),
            start: HEADROOM,
            end: HEADROOM,
        }
    }

    /// Copy `frame` in behind full headroom (as `PacketBuf::reset`).
    #[inline]
    pub fn reset(&mut self, frame: &[u8]) {
        self.start = HEADROOM;
        self.end = HEADROOM + frame.len();
        self.data[self.start..self.end].copy_from_slice(frame);
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }
}

/// One flow: key, rewrite, tracking and counts, on one cache line.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Slot {
    /// Source and destination address; ports, protocol and a set bit
    /// (zero marks a free slot).
    key: [u64; 2],
    nat_ip: u32,
    nat_port: u16,
    tunnel_port: u16,
    /// One's-complement sums of the rewrite for the IPv4 header and the
    /// TCP checksum (pseudo-header address and port).
    ip_delta: u32,
    l4_delta: u32,
    generation: u32,
    next_seq: u32,
    packets: u64,
    bytes: u64,
}

/// The flows' shared part: the outer headers and the inner MACs written.
struct Action {
    template: [u8; PUSH],
    /// Folded sum of the template's IPv4 header without length and
    /// checksum.
    ip_sum: u16,
    macs: [u8; 12],
}

pub struct Floor {
    slots: Vec<Slot>,
    mask: usize,
    seed: u64,
    generation: u32,
    action: Action,
    pub retransmits: u64,
    pub slow: u64,
}

#[inline(always)]
fn mix(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// What the lookup and the rewrite need of a frame.
#[derive(Clone, Copy, Default)]
struct Meta {
    key: [u64; 2],
    hash: u64,
    seq: u32,
    flags: u8,
    payload: u32,
}

/// The checks of the engine's fast parser for this shape; `None` for a
/// frame of another shape (or malformed).
#[inline(always)]
fn parse(f: &[u8]) -> Option<Meta> {
    let h: &[u8; L4 + 20] = f.first_chunk()?;
    if be16(h, 12) != 0x0800 || h[14] != 0x45 || h[23] != 6 {
        return None;
    }
    let total = usize::from(be16(h, 16));
    if total < 20 || total > f.len() - ETH || be16(h, 20) & 0x3fff != 0 {
        return None;
    }
    let seg = total - 20;
    let hl = usize::from(h[L4 + 12] >> 4) * 4;
    if hl < 20 || hl > seg {
        return None;
    }
    Some(Meta {
        key: [
            u64::from(be32(h, 26)) << 32 | u64::from(be32(h, 30)),
            u64::from(be32(h, L4)) << 32 | 6 << 8 | 1,
        ],
        hash: 0,
        seq: be32(h, L4 + 4),
        flags: h[L4 + 13],
        payload: (seg - hl) as u32,
    })
}

fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl Floor {
    /// A table of `capacity` flows (a power of two at least twice the
    /// flows put in), its shared action taken from an engine output.
    pub fn new(capacity: usize, engine_out: &[u8]) -> Floor {
        let mut template = [0u8; PUSH];
        template.copy_from_slice(&engine_out[..PUSH]);
        // Fields that depend on the packet: IPv4 total length and
        // checksum, UDP source port and length.
        for at in [ETH + 2, ETH + 10, L4, L4 + 4] {
            template[at..at + 2].fill(0);
        }
        let ip_sum = data_sum(&template[ETH..L4]);
        let mut macs = [0u8; 12];
        macs.copy_from_slice(&engine_out[PUSH..PUSH + 12]);
        // 2 MiB pages, as the engine's big tables: random slots in a
        // table of 4 KiB pages would each cost a page walk.
        let mut slots = Vec::with_capacity(capacity);
        strata_engine::hint::huge_pages(&slots);
        slots.resize(capacity, Slot::default());
        Floor {
            slots,
            mask: capacity - 1,
            seed: 0x5eed_f100_7000_0001,
            generation: 1,
            action: Action {
                template,
                ip_sum,
                macs,
            },
            retransmits: 0,
            slow: 0,
        }
    }

    #[inline(always)]
    fn hash(&self, key: &[u64; 2]) -> u64 {
        mix(key[0] ^ self.seed, key[1] ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// Add the flow of `input`, made by the engine as `engine_out` (its
    /// translated address and port, its tunnel source port).
    pub fn add_flow(&mut self, input: &[u8], engine_out: &[u8]) {
        let m = parse(input).expect("a plain TCP frame");
        let inner = &engine_out[PUSH..];
        assert_eq!(inner[..12], self.action.macs, "one shared action");
        let (old_ip, old_port) = (be32(input, 26), be16(input, L4));
        let (nat_ip, nat_port) = (be32(inner, 26), be16(inner, L4));
        // RFC 1624: the sum of each changed word's complement and its new
        // value.
        let words = |x: u32| (x >> 16) + (x & 0xffff);
        let ip = words(!old_ip) + words(nat_ip);
        let l4 = ip + u32::from(!old_port) + u32::from(nat_port);
        let slot = Slot {
            key: m.key,
            nat_ip,
            nat_port,
            tunnel_port: be16(engine_out, L4),
            ip_delta: ip,
            l4_delta: l4,
            generation: self.generation,
            next_seq: m.seq,
            packets: 0,
            bytes: 0,
        };
        self.insert(slot);
    }

    /// Add a flow no measured frame hits (the table's other connections).
    pub fn add_other(&mut self, i: u32) {
        let key = [
            0x0a00_0000u64 << 32 | u64::from(i),
            u64::from(i % 50_000 + 1024) << 48 | 80 << 32 | 6 << 8 | 1,
        ];
        self.insert(Slot {
            key,
            generation: self.generation,
            ..Slot::default()
        });
    }

    fn insert(&mut self, s: Slot) {
        let mut i = self.hash(&s.key) as usize & self.mask;
        while self.slots[i].key[1] != 0 {
            assert_ne!(self.slots[i].key, s.key, "one slot per flow");
            i = (i + 1) & self.mask;
        }
        self.slots[i] = s;
    }

    /// One batch: copy each frame in, parse and hash it and prefetch its
    /// slot; then look each up, track, count and rewrite it. `true` per
    /// frame forwarded. (A symbol of its own, for profilers: one call per
    /// batch.)
    #[inline(never)]
    pub fn batch(
        &mut self,
        bufs: &mut [Buf],
        frames: impl Iterator<Item = (usize, usize)>,
        ring: &[u8],
        out: &mut [bool],
    ) {
        const N: usize = 32;
        assert!(bufs.len() <= N, "a batch is at most {N} frames");
        let mut metas = [None::<Meta>; N];
        for ((b, (at, len)), m) in bufs.iter_mut().zip(frames).zip(metas.iter_mut()) {
            b.reset(&ring[at..at + len]);
            if let Some(mut x) = parse(b.as_slice()) {
                x.hash = self.hash(&x.key);
                prefetch(&self.slots[x.hash as usize & self.mask]);
                *m = Some(x);
            }
        }
        for ((b, m), o) in bufs.iter_mut().zip(metas.iter()).zip(out.iter_mut()) {
            *o = match m {
                Some(m) => self.forward(b, m),
                None => false,
            };
        }
    }

    #[inline(always)]
    fn forward(&mut self, b: &mut Buf, m: &Meta) -> bool {
        let mut i = m.hash as usize & self.mask;
        let slot = loop {
            let s = &mut self.slots[i];
            if s.key == m.key {
                break s;
            }
            if s.key[1] == 0 {
                self.slow += 1;
                return false;
            }
            i = (i + 1) & self.mask;
        };
        // A stale flow, or a packet that changes the connection's state,
        // is the slow path's.
        if slot.generation != self.generation || m.flags & 0x07 != 0 {
            self.slow += 1;
            return false;
        }
        let len = (b.end - b.start) as u64;
        slot.packets += 1;
        slot.bytes += len;
        let end = m.seq.wrapping_add(m.payload);
        if seq_gt(end, slot.next_seq) {
            slot.next_seq = end;
        } else if m.payload > 0 {
            self.retransmits += 1;
        }
        // SNAT and the inner MACs.
        let f = &mut b.data[b.start..b.end];
        f[..12].copy_from_slice(&self.action.macs);
        f[26..30].copy_from_slice(&slot.nat_ip.to_be_bytes());
        f[L4..L4 + 2].copy_from_slice(&slot.nat_port.to_be_bytes());
        let ip_csum = apply(be16(f, ETH + 10), slot.ip_delta);
        f[ETH + 10..ETH + 12].copy_from_slice(&ip_csum.to_be_bytes());
        let tcp_csum = apply(be16(f, L4 + 16), slot.l4_delta);
        f[L4 + 16..L4 + 18].copy_from_slice(&tcp_csum.to_be_bytes());
        // VXLAN push.
        let inner_len = b.end - b.start;
        b.start -= PUSH;
        let h: &mut [u8; PUSH] = match b.data[b.start..].first_chunk_mut() {
            Some(h) => h,
            None => return false,
        };
        *h = self.action.template;
        let total = (PUSH - ETH + inner_len) as u16;
        h[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
        let (sum, carry) = self.action.ip_sum.overflowing_add(total);
        h[ETH + 10..ETH + 12].copy_from_slice(&(!(sum + u16::from(carry))).to_be_bytes());
        h[L4..L4 + 2].copy_from_slice(&slot.tunnel_port.to_be_bytes());
        let udp_len = (PUSH - L4 + inner_len) as u16;
        h[L4 + 4..L4 + 6].copy_from_slice(&udp_len.to_be_bytes());
        true
    }
}

/// RFC 1624 eq. 3 with the changed words' sum prepared.
#[inline(always)]
fn apply(checksum: u16, delta: u32) -> u16 {
    !fold(u64::from(!checksum) + u64::from(delta))
}
