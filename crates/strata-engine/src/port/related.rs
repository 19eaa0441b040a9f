//! ICMP errors related to a connection (what conntrack calls RELATED).
//!
//! A router's "fragmentation needed" or "time exceeded", a host's "port
//! unreachable", arrive about a packet of one of the port's connections,
//! often from an address that is not the connection's peer. They never
//! get a unified flow of their own: the error's quote names the
//! connection, and
//! an error found to be about one is relayed with that connection's
//! transposition for the answering direction — the error's own header
//! translated like an answer (decap, un-NAT of its destination; its source
//! only when the peer itself sent it), the quoted packet translated back
//! to what its sender sent (see [`strata_packet::icmp_error`]). So path-MTU
//! discovery, traceroute and unreachables work through SNAT, load
//! balancing and encap, and a stateful ACL that blocks unsolicited
//! inbound traffic still lets a connection's errors in.
//!
//! The connection is found as its answer would find it: the quote's
//! reverse is looked up as a unified flow of the error's direction; an
//! outbound connection not yet answered has no inbound flow, so the
//! answer's walk through the layers (changing nothing, as a trace does)
//! gives the transposition, and the connection must exist under the
//! VM-side key that walk arrives at. An error about no connection (or
//! with a quote that cannot be read) is decided by the policy as any
//! packet, walked each time and never cached, so it creates no state and
//! cannot shadow a later related error.

use super::Port;
use crate::counters::IcmpErrorCounters;
use crate::trace::RelatedError;
use crate::types::{Direction, DropReason, Time, Verdict};
use strata_packet::emit::{EmitPlan, PacketBuf, apply_planned};
use strata_packet::flow::{FlowKey, Ufid};
use strata_packet::icmp_error::{Quote, is_error_packet, read_quote, rewrite_quote};
use strata_packet::parse::Parsed;
use strata_packet::transposition::Transposition;

impl Port {
    /// ICMP error counters (relayed, about no connection, unreadable).
    pub fn icmp_error_counters(&self) -> IcmpErrorCounters {
        self.counters.icmp_errors
    }

    /// Decide an ICMP message that no unified flow holds if it is an
    /// error (none ever has a flow); `None` for any other message.
    #[cold]
    #[inline(never)]
    pub(super) fn icmp_error(
        &mut self,
        d: Direction,
        buf: &mut PacketBuf,
        parsed: &Parsed,
        now: Time,
    ) -> Option<Verdict> {
        if !is_error_packet(&parsed.ufid.inner, &parsed.layout) {
            return None;
        }
        self.counters.dir[d.index()].slow_path += 1;
        match read_quote(buf.as_slice(), &parsed.ufid.inner, &parsed.layout) {
            Ok(q) => {
                let answer = Self::answer_key(parsed, &q);
                if let Some(t) = self.related_transposition(d, parsed, &q, &answer, now) {
                    return Some(self.relay(d, buf, parsed, &q, &answer, &t));
                }
                self.counters.icmp_errors.unrelated += 1;
            }
            Err(_) => self.counters.icmp_errors.unreadable += 1,
        }
        Some(self.icmp_error_by_policy(d, buf, parsed, now))
    }

    /// For a trace: the connection an ICMP error in `frame` is about, and
    /// the translation it would be relayed with (`None` for any other
    /// frame).
    pub(super) fn related_error(
        &mut self,
        d: Direction,
        frame: &[u8],
        parsed: &Parsed,
        now: Time,
    ) -> Option<RelatedError> {
        let q = read_quote(frame, &parsed.ufid.inner, &parsed.layout).ok()?;
        let answer = Self::answer_key(parsed, &q);
        let t = self.related_transposition(d, parsed, &q, &answer, now)?;
        Some(RelatedError {
            answer,
            transposition: t.describe(),
        })
    }

    /// The answer to the quoted packet: its key in direction `d`, with the
    /// error's own outer header and MACs (what an answer on the error's
    /// path carries).
    fn answer_key(parsed: &Parsed, q: &Quote) -> Ufid {
        let e = &parsed.ufid.inner;
        let quoted = FlowKey {
            src_mac: e.dst_mac,
            dst_mac: e.src_mac,
            vlan: e.vlan,
            ether_type: e.ether_type,
            src_ip: q.src_ip,
            dst_ip: q.dst_ip,
            proto: q.proto,
            dscp: q.dscp,
            src_port: q.src_port,
            dst_port: q.dst_port,
            icmp_type: q.icmp_type,
            icmp_code: q.icmp_code,
        };
        Ufid {
            outer: parsed.ufid.outer,
            inner: quoted.reversed(),
        }
    }

    /// The transposition of the connection the error is about (whose
    /// answer to the quoted packet is `answer`), for the error's
    /// direction; `None` if it is about no connection (or about one whose
    /// answers this direction drops).
    fn related_transposition(
        &mut self,
        d: Direction,
        parsed: &Parsed,
        q: &Quote,
        answer: &Ufid,
        now: Time,
    ) -> Option<Transposition> {
        // An error goes to the quoted packet's sender.
        if parsed.ufid.inner.dst_ip != q.src_ip {
            return None;
        }
        let hash = self.uft.hash(d, answer);
        let found = self.uft.lookup(d, answer, hash);
        if let Some(uf) = found
            .and_then(|c| self.uft.get(c))
            .and_then(|c| c.sides[d.index()].as_ref())
            && uf.generation == self.stamp()
        {
            return (uf.verdict() == Verdict::Forward).then(|| uf.transposition());
        }
        // Not answered yet (an outbound connection's inbound flow is made
        // by its first answer) or stale: the answer's walk decides, and
        // changes nothing.
        let sim = self.dry_run(d, answer, now, false);
        if sim.verdict.is_some() {
            return None;
        }
        let t = sim.transposition;
        if found.is_none() {
            // The connection, by the VM-side key of its outbound flow.
            let vm_key = match d {
                Direction::In => t.apply_to_ufid(answer).reversed(),
                Direction::Out => *answer,
            };
            self.uft.lookup_pair(&vm_key)?;
        }
        Some(t)
    }

    /// Rewrite the error with its connection's transposition `t` (for the
    /// error's direction) and count it forwarded, or an emit failure.
    fn relay(
        &mut self,
        d: Direction,
        buf: &mut PacketBuf,
        parsed: &Parsed,
        q: &Quote,
        answer: &Ufid,
        t: &Transposition,
    ) -> Verdict {
        // The quoted packet as its sender sent it: the answer as
        // delivered, reversed.
        let sent = t.apply_to_ufid(answer).inner.reversed();
        // The error's header is translated as the answer's, but for its
        // ports (it has none) and its source, which is the peer's only if
        // the peer sent it (a router en route keeps its address).
        let mut own = t.clone();
        (own.src_port, own.dst_port) = (None, None);
        if parsed.ufid.inner.src_ip != answer.inner.src_ip {
            own.src_ip = None;
        }
        let emitted = rewrite_quote(
            buf.as_mut_slice(),
            q,
            sent.src_ip,
            sent.dst_ip,
            sent.src_port,
            sent.dst_port,
        )
        .is_ok()
            && emit(own, buf, parsed);
        if emitted {
            self.counters.icmp_errors.relayed += 1;
        }
        self.count_emitted(d, emitted)
    }

    /// An error about no connection: the policy decides, by a walk that
    /// creates nothing (no flow is cached for it); its layers' and rules'
    /// counters count it.
    fn icmp_error_by_policy(
        &mut self,
        d: Direction,
        buf: &mut PacketBuf,
        parsed: &Parsed,
        now: Time,
    ) -> Verdict {
        let sim = self.dry_run(d, &parsed.ufid, now, false);
        let bytes = u64::from(parsed.meta.frame_len);
        match sim.verdict() {
            Verdict::Forward => {
                for &c in &sim.counters {
                    self.counters.arena.add(c, 1, bytes);
                }
                let emitted = emit(sim.transposition, buf, parsed);
                self.count_emitted(d, emitted)
            }
            v @ Verdict::Drop { reason, .. } => {
                for &c in &sim.drop_counters {
                    self.counters.arena.add_drops(c, 1);
                }
                self.count_drop(d, reason);
                v
            }
            // (A walk never holds a packet.)
            Verdict::Held => Verdict::Held,
        }
    }

    /// Count a frame forwarded, or dropped as an emit failure.
    fn count_emitted(&mut self, d: Direction, emitted: bool) -> Verdict {
        if emitted {
            self.counters.dir[d.index()].forwarded += 1;
            return Verdict::Forward;
        }
        self.count_drop(d, DropReason::EmitFailed);
        Verdict::Drop {
            reason: DropReason::EmitFailed,
            layer: None,
        }
    }

    /// Count a drop of a frame the direction's packets already count.
    fn count_drop(&mut self, d: Direction, reason: DropReason) {
        self.counters.dir[d.index()].dropped += 1;
        self.counters.drops[reason.index()] += 1;
    }
}

/// Apply `t` to the frame, as a flow's plan is applied (the datapath's
/// one emit path: a second caller of the general emit would change what
/// the compiler inlines into the flows' path).
fn emit(t: Transposition, buf: &mut PacketBuf, parsed: &Parsed) -> bool {
    let ports = t.ports();
    apply_planned(&EmitPlan::new(t), &ports, None, buf, parsed).is_ok()
}
