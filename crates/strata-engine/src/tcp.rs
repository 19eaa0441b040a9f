//! TCP connection tracking for a unified-flow pair (VFP-14).
//!
//! A connection stays *half-open* until a three-way handshake with correct
//! sequence numbers completes (SYN with ISN x; SYN-ACK acking x+1 with ISN y;
//! ACK acking y+1 with sequence x+1), so a SYN flood creates only short-lived
//! half-open state that is evicted first. FIN in both directions, each
//! acknowledged, leads to TIME_WAIT; RST closes at once. The flow table keeps
//! TIME_WAIT connections (and their SNAT ports) until TIME_WAIT ends, so a
//! port is reused only when it is safe.
//!
//! Per-port statistics: handshake and data RTT samples, retransmissions
//! (segments that do not advance the sender's highest sequence), ECN CE marks.

use crate::counters::TcpStats;
use crate::types::{Direction, Time};
use serde::{Deserialize, Serialize};
use strata_packet::parse::{PacketMeta, tcp_flags};

/// Connection state, as seen by the switch in the middle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TcpState {
    /// Initiator's SYN seen.
    SynSent,
    /// Responder's valid SYN-ACK seen.
    SynReceived,
    /// Handshake completed with valid numbers.
    Established,
    /// First packet was not a SYN (e.g. traffic of a connection older than
    /// this switch): forwarded, but tracked as not verified (half-open TTL).
    Unverified,
    /// One side sent FIN.
    FinWait,
    /// Both sides sent FIN, not both acknowledged yet.
    Closing,
    /// Both FINs acknowledged; waiting out 2·MSL.
    TimeWait,
    /// Reset.
    Closed,
}

impl TcpState {
    /// Not yet established: eligible for the short half-open TTL and first
    /// in line for eviction.
    pub fn is_half_open(self) -> bool {
        matches!(
            self,
            TcpState::SynSent | TcpState::SynReceived | TcpState::Unverified
        )
    }

    pub fn is_finished(self) -> bool {
        matches!(self, TcpState::TimeWait | TcpState::Closed)
    }
}

/// Per-direction sequence tracking. Index 0 = initiator, 1 = responder.
/// 16 bytes: which optional fields are set is flagged in the connection's
/// `flags` (kept apart so the pair packs without padding; see [`SideMut`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Side {
    /// The ISN during the handshake; the FIN's sequence number once one is
    /// seen (`HAS_FIN`). A side never needs both: the ISN is read only in
    /// the handshake states, and a FIN is recorded only after them.
    isn_or_fin: u32,
    /// Highest sequence number sent + length (next expected).
    next: u32,
    /// Outstanding RTT sample: sequence end and send time in microseconds
    /// (wrapping; 32 bits keep the tracking state small).
    probe_seq: u32,
    probe_us: u32,
}

/// One side with its flags, for reading and updating both together.
struct SideMut<'a> {
    s: &'a mut Side,
    flags: &'a mut u8,
}

/// A time in wrapping 32-bit microseconds.
fn micros(t: Time) -> u32 {
    (t / 1000) as u32
}

const HAS_NEXT: u8 = 1;
const HAS_FIN: u8 = 2;
const FIN_ACKED: u8 = 4;
const HAS_PROBE: u8 = 8;

impl SideMut<'_> {
    fn next_seq(&self) -> Option<u32> {
        (*self.flags & HAS_NEXT != 0).then_some(self.s.next)
    }

    fn set_next(&mut self, v: u32) {
        self.s.next = v;
        *self.flags |= HAS_NEXT;
    }

    fn set_isn(&mut self, v: u32) {
        self.s.isn_or_fin = v;
    }

    fn fin_seq(&self) -> Option<u32> {
        (*self.flags & HAS_FIN != 0).then_some(self.s.isn_or_fin)
    }

    fn set_fin(&mut self, seq: u32) {
        self.s.isn_or_fin = seq;
        *self.flags |= HAS_FIN;
    }

    fn probe(&self) -> Option<(u32, u32)> {
        (*self.flags & HAS_PROBE != 0).then_some((self.s.probe_seq, self.s.probe_us))
    }

    fn set_probe(&mut self, p: Option<(u32, Time)>) {
        match p {
            Some((seq, t)) => {
                self.s.probe_seq = seq;
                self.s.probe_us = micros(t);
                *self.flags |= HAS_PROBE;
            }
            None => *self.flags &= !HAS_PROBE,
        }
    }
}

/// TCP tracking state of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpConn {
    pub state: TcpState,
    /// Direction of the initiator's packets.
    pub initiator: Direction,
    /// Flags of `sides` (`HAS_NEXT`, …), by the same index.
    flags: [u8; 2],
    sides: [Side; 2],
    /// One timestamp reused by phase: the SYN's time while `SynSent`, the
    /// SYN-ACK's while `SynReceived`, when TIME_WAIT or CLOSED began after.
    /// Kept as two 32-bit halves so the struct is 4-aligned and packs with
    /// the connection's small fields (44 bytes with the tag of `Option`).
    mark: [u32; 2],
}

/// A [`Time`] as high and low halves.
fn split_time(t: Time) -> [u32; 2] {
    [(t >> 32) as u32, t as u32]
}

/// `a` is after `b` in sequence space.
fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

fn seq_ge(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

impl TcpConn {
    /// Start tracking from the connection's first packet.
    pub fn new(dir: Direction, m: &PacketMeta, now: Time, stats: &mut TcpStats) -> TcpConn {
        let syn_only = m.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
        let mut c = TcpConn {
            state: if syn_only {
                TcpState::SynSent
            } else {
                TcpState::Unverified
            },
            initiator: dir,
            flags: [0; 2],
            sides: [Side::default(); 2],
            mark: split_time(now),
        };
        if syn_only {
            c.side(0).set_isn(m.tcp_seq);
            c.side(0).set_next(m.tcp_seq.wrapping_add(1));
        } else {
            c.track_data(0, m, now, stats);
        }
        c
    }

    /// Side `i` (0 = initiator) with its flags.
    fn side(&mut self, i: usize) -> SideMut<'_> {
        SideMut {
            s: &mut self.sides[i],
            flags: &mut self.flags[i],
        }
    }

    /// The ISN of side `i` (meaningful in the handshake states).
    fn isn(&self, i: usize) -> u32 {
        self.sides[i].isn_or_fin
    }

    fn has(&self, i: usize, flag: u8) -> bool {
        self.flags[i] & flag != 0
    }

    /// When TIME_WAIT or CLOSED began (meaningful in those states).
    pub fn finished_at(&self) -> Time {
        self.mark()
    }

    fn mark(&self) -> Time {
        u64::from(self.mark[0]) << 32 | u64::from(self.mark[1])
    }

    fn set_mark(&mut self, t: Time) {
        self.mark = split_time(t);
    }

    /// Update with one packet travelling in `dir`.
    pub fn update(&mut self, dir: Direction, m: &PacketMeta, now: Time, stats: &mut TcpStats) {
        if !self.usual(dir, m, now, stats) {
            self.unusual(dir, m, now, stats);
        }
    }

    /// [`TcpConn::update`] with the usual packet's update inlined into the
    /// caller (a datapath loop's) and any other left to a call.
    #[inline(always)]
    pub fn update_inline(
        &mut self,
        dir: Direction,
        m: &PacketMeta,
        now: Time,
        stats: &mut TcpStats,
    ) {
        if !self.usual(dir, m, now, stats) {
            self.unusual(dir, m, now, stats);
        }
    }

    /// [`TcpConn::update`] for a packet [`TcpConn::usual`] did not take.
    fn unusual(&mut self, dir: Direction, m: &PacketMeta, now: Time, stats: &mut TcpStats) {
        if m.ecn == 3 {
            stats.ecn_ce_marks += 1;
        }
        self.update_general(dir, m, now, stats);
    }

    /// The usual packet: an established connection's, with no SYN, FIN or
    /// RST, and no FIN seen before it. Only the sequence tracking applies
    /// (`update_general` would change no state either; the unit tests hold
    /// the two to the same results). Whether `m` was one (and is tracked).
    #[inline(always)]
    fn usual(&mut self, dir: Direction, m: &PacketMeta, now: Time, stats: &mut TcpStats) -> bool {
        let f = m.tcp_flags;
        if self.state != TcpState::Established
            || f & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) != 0
            || (self.flags[0] | self.flags[1]) & HAS_FIN != 0
        {
            return false;
        }
        if m.ecn == 3 {
            stats.ecn_ce_marks += 1;
        }
        let me = usize::from(dir != self.initiator);
        self.track_data(me, m, now, stats);
        if f & tcp_flags::ACK != 0 {
            self.track_ack(1 - me, m, now, stats);
        }
        true
    }

    /// [`TcpConn::update`] for any packet, without the shortcut (and
    /// without counting its ECN mark, which the caller did).
    #[inline(always)]
    fn update_general(&mut self, dir: Direction, m: &PacketMeta, now: Time, stats: &mut TcpStats) {
        let me = usize::from(dir != self.initiator);
        let other = 1 - me;
        let f = m.tcp_flags;
        if f & tcp_flags::RST != 0 {
            if self.state != TcpState::Closed {
                stats.resets += 1;
                self.state = TcpState::Closed;
                self.set_mark(now);
            }
            return;
        }
        // A fresh SYN on a finished connection's tuple starts a new one
        // (TIME_WAIT reuse by the same endpoints, RFC 6191 style).
        if self.state.is_finished() && f & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN {
            let mut throwaway = TcpStats::default();
            *self = TcpConn::new(dir, m, now, &mut throwaway);
            return;
        }
        match self.state {
            TcpState::SynSent => {
                if me == 1
                    && f & (tcp_flags::SYN | tcp_flags::ACK) == (tcp_flags::SYN | tcp_flags::ACK)
                {
                    if m.tcp_ack == self.isn(0).wrapping_add(1) {
                        self.side(1).set_isn(m.tcp_seq);
                        self.side(1).set_next(m.tcp_seq.wrapping_add(1));
                        self.state = TcpState::SynReceived;
                        stats.rtt_samples += 1;
                        stats.rtt_sum_ns += now.saturating_sub(self.mark());
                        self.set_mark(now);
                    } else {
                        stats.invalid_handshakes += 1;
                    }
                } else if me == 0 && f & tcp_flags::SYN != 0 {
                    // SYN retransmission.
                    if m.tcp_seq == self.isn(0) {
                        stats.retransmits += 1;
                    } else {
                        self.side(0).set_isn(m.tcp_seq);
                        self.side(0).set_next(m.tcp_seq.wrapping_add(1));
                    }
                } else {
                    stats.invalid_handshakes += 1;
                }
            }
            TcpState::SynReceived => {
                if me == 0
                    && f & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::ACK
                    && m.tcp_ack == self.isn(1).wrapping_add(1)
                    && m.tcp_seq == self.isn(0).wrapping_add(1)
                {
                    self.state = TcpState::Established;
                    stats.handshakes_completed += 1;
                    stats.rtt_samples += 1;
                    stats.rtt_sum_ns += now.saturating_sub(self.mark());
                    self.track_data(me, m, now, stats);
                } else if me == 1 && f & tcp_flags::SYN != 0 {
                    stats.retransmits += 1;
                } else {
                    stats.invalid_handshakes += 1;
                }
            }
            TcpState::Unverified
            | TcpState::Established
            | TcpState::FinWait
            | TcpState::Closing
            | TcpState::TimeWait
            | TcpState::Closed => {
                self.track_data(me, m, now, stats);
                if f & tcp_flags::ACK != 0 {
                    self.track_ack(other, m, now, stats);
                }
                if f & tcp_flags::FIN != 0 && !self.has(me, HAS_FIN) {
                    // FIN occupies one sequence number after the payload.
                    self.side(me)
                        .set_fin(m.tcp_seq.wrapping_add(m.l4_payload_len));
                }
                self.advance_close(now);
            }
        }
    }

    /// Sender-side bookkeeping: retransmits and RTT probes.
    fn track_data(&mut self, me: usize, m: &PacketMeta, now: Time, stats: &mut TcpStats) {
        let len = m.l4_payload_len;
        let fin = u32::from(m.tcp_flags & tcp_flags::FIN != 0);
        if len == 0 && fin == 0 {
            return;
        }
        let end = m.tcp_seq.wrapping_add(len).wrapping_add(fin);
        let mut s = self.side(me);
        match s.next_seq() {
            Some(next) if !seq_gt(end, next) => {
                if len > 0 {
                    stats.retransmits += 1;
                    // Karn: a retransmitted segment gives no RTT sample.
                    s.set_probe(None);
                }
            }
            _ => {
                s.set_next(end);
                if s.probe().is_none() {
                    s.set_probe(Some((end, now)));
                }
            }
        }
    }

    /// Acknowledgement from the other side of `acked`'s data.
    fn track_ack(&mut self, acked: usize, m: &PacketMeta, now: Time, stats: &mut TcpStats) {
        let mut s = self.side(acked);
        if let Some((end, t)) = s.probe()
            && seq_ge(m.tcp_ack, end)
        {
            stats.rtt_samples += 1;
            stats.rtt_sum_ns += u64::from(micros(now).wrapping_sub(t)) * 1000;
            s.set_probe(None);
        }
        if let Some(fs) = s.fin_seq()
            && seq_ge(m.tcp_ack, fs.wrapping_add(1))
        {
            *s.flags |= FIN_ACKED;
        }
    }

    fn advance_close(&mut self, now: Time) {
        let fins = self.flags.iter().filter(|f| **f & HAS_FIN != 0).count();
        let acked = self.flags.iter().filter(|f| **f & FIN_ACKED != 0).count();
        let next = match (fins, acked) {
            (2, 2) => TcpState::TimeWait,
            (2, _) => TcpState::Closing,
            (1, _) => TcpState::FinWait,
            _ => self.state,
        };
        if next != self.state && !self.state.is_finished() {
            if next == TcpState::TimeWait {
                self.set_mark(now);
            }
            // Data seen before a handshake stays unverified until closing.
            if !(self.state == TcpState::Unverified && fins == 0) {
                self.state = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(flags: u8, seq: u32, ack: u32, len: u32) -> PacketMeta {
        PacketMeta {
            frame_len: 54 + len,
            tcp_flags: flags,
            tcp_seq: seq,
            tcp_ack: ack,
            l4_payload_len: len,
            ecn: 0,
            ttl: 64,
        }
    }

    /// A connection after a valid handshake (ISNs 100 and 900).
    fn established() -> (TcpConn, TcpStats) {
        let mut st = TcpStats::default();
        let mut c = TcpConn::new(Direction::Out, &meta(tcp_flags::SYN, 100, 0, 0), 1, &mut st);
        let synack = tcp_flags::SYN | tcp_flags::ACK;
        c.update(Direction::In, &meta(synack, 900, 101, 0), 2, &mut st);
        c.update(
            Direction::Out,
            &meta(tcp_flags::ACK, 101, 901, 0),
            3,
            &mut st,
        );
        assert_eq!(c.state, TcpState::Established);
        (c, st)
    }

    proptest! {
        /// The shortcut for an established connection's usual packets
        /// leaves the state and the statistics exactly as the general
        /// update does, whatever the packets (flags, numbers near the
        /// connection's, retransmissions, FINs, resets).
        #[test]
        fn shortcut_is_the_general_update(
            pkts in proptest::collection::vec(
                (any::<bool>(), 0u8..0x40, 0u32..3000, 0u32..3000, 0u32..1500, 0u8..4),
                1..40,
            )
        ) {
            let (mut a, mut sa) = established();
            let (mut b, mut sb) = (a, sa);
            let (mut c, mut sc) = (a, sa);
            for (i, (out, flags, seq, ack, len, ecn)) in pkts.into_iter().enumerate() {
                let d = if out { Direction::Out } else { Direction::In };
                let mut m = meta(flags, seq, ack, len);
                m.ecn = ecn;
                let now = 10 + i as u64 * 1000;
                a.update(d, &m, now, &mut sa);
                if m.ecn == 3 {
                    sb.ecn_ce_marks += 1;
                }
                b.update_general(d, &m, now, &mut sb);
                c.update_inline(d, &m, now, &mut sc);
                prop_assert_eq!(a, b);
                prop_assert_eq!(&sa, &sb);
                prop_assert_eq!(a, c);
                prop_assert_eq!(&sa, &sc);
            }
        }
    }
}
