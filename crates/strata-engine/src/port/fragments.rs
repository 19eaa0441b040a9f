//! IP fragments follow their datagram's first fragment.
//!
//! Only a datagram's first fragment holds its L4 header, so a later
//! fragment's UFID has no ports: walked on its own it would be another
//! flow, which SNAT would give another port, a load balancer perhaps
//! another backend, and a stateful ACL would block as unsolicited. So a
//! large UDP answer (DNS with EDNS, a tunnel over UDP, NFS) behind any of
//! them would lose all but its first fragment.
//!
//! The port tracks datagrams instead, as a shallow virtual reassembly does
//! (nothing is reassembled: fragments pass one by one, as they came). A
//! first fragment records its L4 identity (ports, ICMP type and code)
//! under its datagram's key — direction, UFID without those fields, IP
//! identification — and every later fragment of that datagram takes it
//! before its flow is looked up, so it rides the first fragment's unified
//! flow: the same transposition (its addresses rewritten, its missing L4
//! header left alone by the emit), the same decision, the same counters.
//!
//! A later fragment that comes before its first (reordered on the way) is
//! held — copied into a buffer the port keeps, [`Verdict::Held`] — until
//! the first fragment has passed; then it is processed and handed to the
//! caller ([`Port::drain_released`]). One whose first fragment does not
//! come within [`FRAGMENT_TIMEOUT`] is dropped as `fragment-timeout`; one
//! that finds the port's hold ([`MAX_HELD`]) or its datagram's share
//! ([`MAX_HELD_PER_DATAGRAM`]) full is dropped as `fragment-overflow`.
//! A datagram is tracked until every byte of it has been seen, or for
//! [`FRAGMENT_TIMEOUT`] from its first fragment, at most
//! [`MAX_DATAGRAMS`] at once (the oldest is forgotten for a new one).
//! Every frame is counted once in the direction's counters: a held one
//! when it is released or dropped.

use super::Port;
use super::parse_options;
use crate::counters::FragmentCounters;
use crate::trace::{FragmentHandling, FragmentTrace};
use crate::types::{Direction, DropReason, Time, Verdict, secs};
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use strata_packet::emit::PacketBuf;
use strata_packet::flow::{FlowKey, Ufid};
use strata_packet::fragment::{Fragment, fragment_of};
use strata_packet::parse::{ParseError, Parsed, parse_with};

/// How long a datagram is tracked after its first fragment, and a later
/// fragment held for its first (Linux waits 30 s to reassemble, RFC 791
/// suggests 15 s; a fragment held that long is of no use to anyone).
pub const FRAGMENT_TIMEOUT: Time = secs(5);
/// Datagrams a port tracks at once.
pub const MAX_DATAGRAMS: usize = 4096;
/// Fragments a port holds at once for their first fragments.
pub const MAX_HELD: usize = 64;
/// Fragments a port holds for any one datagram.
pub const MAX_HELD_PER_DATAGRAM: usize = 16;

/// What names a datagram: its direction, its UFID without the L4
/// identity (which only the first fragment has), its IP identification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct DatagramKey {
    d: Direction,
    ufid: Ufid,
    id: u32,
}

impl DatagramKey {
    fn new(d: Direction, ufid: &Ufid, id: u32) -> DatagramKey {
        let mut ufid = *ufid;
        L4Identity::default().apply(&mut ufid.inner);
        DatagramKey { d, ufid, id }
    }
}

/// The L4 fields of a flow key a later fragment lacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct L4Identity {
    src_port: u16,
    dst_port: u16,
    icmp_type: u8,
    icmp_code: u8,
}

impl L4Identity {
    fn of(k: &FlowKey) -> L4Identity {
        L4Identity {
            src_port: k.src_port,
            dst_port: k.dst_port,
            icmp_type: k.icmp_type,
            icmp_code: k.icmp_code,
        }
    }

    fn apply(&self, k: &mut FlowKey) {
        k.src_port = self.src_port;
        k.dst_port = self.dst_port;
        k.icmp_type = self.icmp_type;
        k.icmp_code = self.icmp_code;
    }
}

/// A datagram whose first fragment has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Datagram {
    l4: L4Identity,
    /// When its tracking ends if not complete before.
    expires: Time,
    /// Payload bytes seen so far (a duplicate counts again: such a
    /// datagram is tracked until it times out).
    seen: u32,
    /// Its payload length, once its last fragment has been seen.
    total: Option<u32>,
    /// Its entry in the age order (see [`FragmentTracker::order`]).
    serial: u64,
}

impl Datagram {
    /// Count fragment `f`; whether every byte has now been seen.
    fn add(&mut self, f: &Fragment) -> bool {
        self.seen = self.seen.saturating_add(f.len);
        if !f.more {
            self.total = Some(f.end());
        }
        self.total == Some(self.seen)
    }
}

/// A later fragment waiting for its first.
#[derive(Clone, Debug)]
struct Held {
    key: DatagramKey,
    since: Time,
    /// Its number among the fragments the port held (see
    /// [`ReleasedFragment::hold`]).
    hold: u64,
    /// Its first fragment's L4 identity, once that has passed (a duplicate
    /// may end its datagram's tracking before it is processed).
    first: Option<L4Identity>,
    frame: PacketBuf,
}

/// A held fragment processed after its first fragment passed, waiting
/// for the caller.
#[derive(Debug)]
struct Released {
    held: Held,
    verdict: Verdict,
}

/// A held fragment, processed once its first fragment passed, as
/// [`Port::drain_released`] hands it over.
#[derive(Debug)]
pub struct ReleasedFragment<'a> {
    pub direction: Direction,
    /// The frame, transformed when `verdict` is [`Verdict::Forward`].
    pub frame: &'a mut PacketBuf,
    pub verdict: Verdict,
    /// Which held fragment it is: its number among those the port has
    /// held, i.e. [`FragmentCounters::held`] right after the call that
    /// returned [`Verdict::Held`] for it.
    pub hold: u64,
    /// When it was held.
    pub held_since: Time,
}

/// A port's fragment tracking (see the module's doc).
#[derive(Debug, Default)]
pub(crate) struct FragmentTracker {
    datagrams: HashMap<DatagramKey, Datagram>,
    /// Tracked datagrams oldest first, by serial (entries whose datagram
    /// ended or started again are skipped, and dropped when the queue
    /// grows past twice the table).
    order: VecDeque<(DatagramKey, u64)>,
    next_serial: u64,
    held: Vec<Held>,
    /// Held fragments whose first fragment came in the call under way:
    /// processed at its end.
    ready: Vec<Held>,
    released: VecDeque<Released>,
    /// Buffers of fragments released and drained, for the next held one.
    spare: Vec<PacketBuf>,
    /// The first fragment's L4 identity of the held fragment being
    /// released.
    releasing: Option<L4Identity>,
}

/// A tracked datagram and the held fragments, as snapshots keep them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct FragmentState {
    pub(crate) counters: FragmentCounters,
    /// Oldest first.
    datagrams: Vec<(DatagramKey, Datagram)>,
    /// `(datagram, held since, hold number, frame)`, in arrival order.
    held: Vec<(DatagramKey, Time, u64, Vec<u8>)>,
}

impl FragmentTracker {
    /// Start tracking the datagram of first fragment `f` (again, if its key
    /// was tracked: the identification came round), the oldest forgotten
    /// if the table is full; how many incomplete ones were forgotten.
    fn track(&mut self, key: DatagramKey, l4: L4Identity, f: &Fragment, now: Time) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        let mut dg = Datagram {
            l4,
            expires: now.saturating_add(FRAGMENT_TIMEOUT),
            seen: 0,
            total: None,
            serial,
        };
        // (Not complete: a first fragment has more to come.)
        dg.add(f);
        let replaced = u64::from(self.datagrams.insert(key, dg).is_some());
        self.order.push_back((key, serial));
        replaced + self.trim(now)
    }

    /// Forget the oldest datagrams while the table is over its limit, and
    /// those whose time has come; how many were forgotten incomplete.
    fn trim(&mut self, now: Time) -> u64 {
        let mut forgotten = 0;
        while let Some((key, serial)) = self.order.front() {
            // Skipped if it ended, or was tracked again under a later entry.
            if let Some(g) = self.datagrams.get(key)
                && g.serial == *serial
            {
                if g.expires > now && self.datagrams.len() <= MAX_DATAGRAMS {
                    break;
                }
                self.datagrams.remove(key);
                forgotten += 1;
            }
            self.order.pop_front();
        }
        if self.order.len() > 2 * MAX_DATAGRAMS {
            let datagrams = &self.datagrams;
            self.order
                .retain(|(k, s)| datagrams.get(k).is_some_and(|g| g.serial == *s));
        }
        forgotten
    }

    /// Take the held fragments of `key` out for processing, with their
    /// first fragment's L4 identity `l4`.
    fn make_ready(&mut self, key: &DatagramKey, l4: L4Identity) {
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].key == *key {
                // In arrival order.
                let mut h = self.held.remove(i);
                h.first = Some(l4);
                self.ready.push(h);
            } else {
                i += 1;
            }
        }
    }

    /// Keep a held fragment's buffer for the next one (up to as many as
    /// can be held).
    fn recycle(&mut self, frame: PacketBuf) {
        if self.spare.len() < MAX_HELD {
            self.spare.push(frame);
        }
    }

    /// A buffer holding a copy of `frame`.
    fn copy(&mut self, frame: &[u8]) -> PacketBuf {
        match self.spare.pop() {
            Some(mut b) => {
                b.reset(frame);
                b
            }
            None => PacketBuf::from_frame(frame),
        }
    }
}

impl Port {
    /// IP fragment counters (see the `fragments` module's doc).
    pub fn fragment_counters(&self) -> FragmentCounters {
        self.counters.fragments
    }

    /// Fragments held for their first fragment now.
    pub fn held_fragments(&self) -> usize {
        self.fragments.held.len()
    }

    /// Hand each held fragment processed since the last call to `f`, in
    /// the order they were processed; how many. Call it after
    /// [`Port::process`] / [`Port::process_batch`]: a fragment held for its
    /// first is processed at the end of the call that passes the first.
    pub fn drain_released(&mut self, mut f: impl FnMut(ReleasedFragment<'_>)) -> usize {
        let mut n = 0;
        while let Some(mut r) = self.fragments.released.pop_front() {
            f(ReleasedFragment {
                direction: r.held.key.d,
                frame: &mut r.held.frame,
                verdict: r.verdict,
                hold: r.held.hold,
                held_since: r.held.since,
            });
            n += 1;
            self.fragments.recycle(r.held.frame);
        }
        n
    }

    /// Processed held fragments the caller has not drained yet.
    pub fn released_fragments(&self) -> usize {
        self.fragments.released.len()
    }

    /// A fragment's part before its flow is looked up: a first fragment
    /// starts tracking its datagram, a later one takes its datagram's L4
    /// identity into `p`'s key. `Some` for a later fragment held (or
    /// dropped) because its first has not passed.
    #[cold]
    #[inline(never)]
    pub(super) fn fragment(
        &mut self,
        d: Direction,
        buf: &PacketBuf,
        p: &mut Parsed,
        now: Time,
    ) -> Option<Verdict> {
        self.expire_fragments(now);
        let Some(f) = fragment_of(buf.as_slice(), &p.layout) else {
            self.counters.fragments.unreadable += 1;
            return None;
        };
        let key = DatagramKey::new(d, &p.ufid, f.id);
        let c = &mut self.counters.fragments;
        if !p.layout.non_first_fragment {
            c.first += 1;
            let l4 = L4Identity::of(&p.ufid.inner);
            c.forgotten += self.fragments.track(key, l4, &f, now);
            // Fragments that came before it are processed after it.
            self.fragments.make_ready(&key, l4);
            return None;
        }
        if let Some(g) = self.fragments.datagrams.get_mut(&key) {
            g.l4.apply(&mut p.ufid.inner);
            c.followed += 1;
            if g.add(&f) {
                self.fragments.datagrams.remove(&key);
                c.completed += 1;
            }
            return None;
        }
        if let Some(l4) = self.fragments.releasing {
            // Released after a duplicate ended the tracking: it follows
            // the first fragment all the same, never held twice.
            l4.apply(&mut p.ufid.inner);
            c.followed += 1;
            return None;
        }
        Some(self.hold_fragment(key, buf, now))
    }

    /// For a trace: the fragment `frame` is, and what the port does with
    /// it, changing nothing; a later fragment whose first has passed
    /// takes its L4 identity into `p`'s key.
    pub(super) fn fragment_trace(
        &self,
        d: Direction,
        frame: &[u8],
        p: &mut Parsed,
    ) -> Option<FragmentTrace> {
        let f = fragment_of(frame, &p.layout)?;
        let handling = if !p.layout.non_first_fragment {
            FragmentHandling::First
        } else if let Some(g) = self
            .fragments
            .datagrams
            .get(&DatagramKey::new(d, &p.ufid, f.id))
        {
            g.l4.apply(&mut p.ufid.inner);
            FragmentHandling::Follows
        } else {
            FragmentHandling::Held
        };
        Some(FragmentTrace {
            id: f.id,
            offset: f.offset,
            more: f.more,
            handling,
        })
    }

    /// The key the port looks `frame` up by in direction `d`: the
    /// parser's, a later IP fragment's with its first fragment's L4
    /// identity once that has passed. Changes nothing.
    pub fn lookup_key(&self, d: Direction, frame: &[u8]) -> Result<Ufid, ParseError> {
        let mut p = parse_with(frame, parse_options(d))?;
        self.fragment_trace(d, frame, &mut p);
        Ok(p.ufid)
    }

    /// Hold a later fragment for its first, or drop it if there is no room.
    fn hold_fragment(&mut self, key: DatagramKey, buf: &PacketBuf, now: Time) -> Verdict {
        let t = &mut self.fragments;
        let mine = t.held.iter().filter(|h| h.key == key).count();
        if t.held.len() >= MAX_HELD || mine >= MAX_HELD_PER_DATAGRAM {
            self.counters.fragments.overflow += 1;
            return self.drop_unlooked(key.d, buf.len(), DropReason::FragmentOverflow);
        }
        let frame = t.copy(buf.as_slice());
        self.counters.fragments.held += 1;
        t.held.push(Held {
            key,
            since: now,
            hold: self.counters.fragments.held,
            first: None,
            frame,
        });
        Verdict::Held
    }

    /// Whether held fragments wait to be processed (their first fragment
    /// passed in the call under way).
    #[inline(always)]
    pub(super) fn fragments_ready(&self) -> bool {
        !self.fragments.ready.is_empty()
    }

    /// Process the held fragments whose first fragment has passed, for
    /// [`Port::drain_released`].
    #[cold]
    #[inline(never)]
    pub(super) fn release_ready(&mut self, now: Time) {
        // (Taken out while they are processed, and put back emptied with
        // its room: no allocation once the port has held as many.)
        let mut ready = std::mem::take(&mut self.fragments.ready);
        for mut held in ready.drain(..) {
            self.fragments.releasing = held.first;
            let verdict = self.process_one(held.key.d, &mut held.frame, now);
            self.fragments.releasing = None;
            self.counters.fragments.released += 1;
            self.fragments
                .released
                .push_back(Released { held, verdict });
        }
        self.fragments.ready = ready;
    }

    /// End the tracking of datagrams and the holding of fragments whose
    /// time has come (the latter dropped, counted).
    pub(crate) fn expire_fragments(&mut self, now: Time) {
        let forgotten = self.fragments.trim(now);
        self.counters.fragments.forgotten += forgotten;
        if self
            .fragments
            .held
            .iter()
            .all(|h| h.since.saturating_add(FRAGMENT_TIMEOUT) > now)
        {
            return;
        }
        // The ones still waiting first, in arrival order; the list put
        // back with its room.
        let mut held = std::mem::take(&mut self.fragments.held);
        let mut waiting = 0;
        for i in 0..held.len() {
            if held[i].since.saturating_add(FRAGMENT_TIMEOUT) > now {
                held.swap(waiting, i);
                waiting += 1;
            }
        }
        for h in held.drain(waiting..) {
            self.counters.fragments.timed_out += 1;
            self.drop_unlooked(h.key.d, h.frame.len(), DropReason::FragmentTimeout);
            self.fragments.recycle(h.frame);
        }
        self.fragments.held = held;
    }

    /// The tracking as a snapshot keeps it.
    pub(crate) fn fragment_state(&self) -> FragmentState {
        let t = &self.fragments;
        FragmentState {
            counters: self.counters.fragments,
            datagrams: t
                .order
                .iter()
                .filter_map(|(k, s)| {
                    t.datagrams
                        .get(k)
                        .filter(|g| g.serial == *s)
                        .map(|g| (*k, *g))
                })
                .collect(),
            held: t
                .held
                .iter()
                .map(|h| (h.key, h.since, h.hold, h.frame.as_slice().to_vec()))
                .collect(),
        }
    }

    /// Restore the tracking a snapshot kept (renumbered in age order);
    /// refused if it names a datagram twice or holds more than a port
    /// would.
    pub(crate) fn restore_fragments(&mut self, st: FragmentState) -> Result<(), String> {
        if st.datagrams.len() > MAX_DATAGRAMS || st.held.len() > MAX_HELD {
            return Err("more fragment state than a port keeps".into());
        }
        let mut t = FragmentTracker::default();
        for (serial, (key, mut g)) in (0u64..).zip(st.datagrams) {
            g.serial = serial;
            if t.datagrams.insert(key, g).is_some() {
                return Err("a datagram tracked twice".into());
            }
            t.order.push_back((key, serial));
            t.next_serial = serial + 1;
        }
        for (key, since, hold, frame) in st.held {
            t.held.push(Held {
                key,
                since,
                hold,
                first: None,
                frame: PacketBuf::from_frame(&frame),
            });
        }
        self.counters.fragments = st.counters;
        self.counters.drops[DropReason::FragmentTimeout.index()] = st.counters.timed_out;
        self.counters.drops[DropReason::FragmentOverflow.index()] = st.counters.overflow;
        *self.fragments = t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PortConfig;
    use strata_packet::flow::FlowKey;

    /// A tracked datagram and its key (`id` apart).
    fn datagram(id: u32) -> (DatagramKey, Datagram) {
        let key = DatagramKey::new(Direction::Out, &Ufid::plain(FlowKey::EMPTY), id);
        let g = Datagram {
            l4: L4Identity::default(),
            expires: secs(5),
            seen: 8,
            total: None,
            serial: 0,
        };
        (key, g)
    }

    /// Forged or damaged fragment state is refused on restore, and the
    /// port keeps what it had.
    #[test]
    fn restore_refuses_duplicates_and_more_than_a_port_keeps() {
        let mut p = Port::new("p", PortConfig::default());
        let twice = FragmentState {
            datagrams: vec![datagram(1), datagram(1)],
            ..FragmentState::default()
        };
        assert_eq!(
            p.restore_fragments(twice),
            Err("a datagram tracked twice".to_string())
        );
        let (key, _) = datagram(2);
        let held = FragmentState {
            held: vec![(key, 0, 1, vec![0; 60]); MAX_HELD + 1],
            ..FragmentState::default()
        };
        assert_eq!(
            p.restore_fragments(held),
            Err("more fragment state than a port keeps".to_string())
        );
        let many = FragmentState {
            datagrams: (0..=MAX_DATAGRAMS as u32).map(datagram).collect(),
            ..FragmentState::default()
        };
        assert!(p.restore_fragments(many).is_err());
        assert_eq!(p.fragments.datagrams.len(), 0);
        assert_eq!(p.held_fragments(), 0);
        // Within bounds, it is taken whole, renumbered in age order.
        let ok = FragmentState {
            datagrams: vec![datagram(3), datagram(4)],
            held: vec![(key, 0, 1, vec![0; 60])],
            ..FragmentState::default()
        };
        assert_eq!(p.restore_fragments(ok), Ok(()));
        assert_eq!(p.fragments.datagrams.len(), 2);
        assert_eq!(p.held_fragments(), 1);
        assert_eq!(p.fragment_state().datagrams.len(), 2);
    }
}
