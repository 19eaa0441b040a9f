//! Bounded expiry: [`Port::expire_some`] does the work of [`Port::expire`]
//! a slice at a time, so a datapath thread can keep a million-connection
//! port tidy between batches without ever stopping for a whole-table walk.
//!
//! A cursor walks the connection slab, wrapping; each call examines at most
//! its budget of slots. A connection whose time has come is removed (layer
//! flows and SNAT ports released, counted as closed or expired); any other
//! has its pending packet counts added to its counters. At the end of each
//! full cycle the interned actions no flow uses are dropped and, when rule
//! or layer counter slots were retired, those no flow can count into are
//! freed — decided from marks collected as the cycle went, which are only
//! trusted if nothing was retired during the cycle (a flow created
//! mid-cycle behind the cursor could otherwise name a slot retired after
//! it was made).

use crate::port::Port;
use crate::types::Time;
use std::sync::Arc;

/// Where the bounded expiry stands (not part of snapshots: a restored
/// port starts a new cycle).
#[derive(Debug, Default)]
pub(crate) struct ExpirySweep {
    /// Next connection slot to examine.
    cursor: u32,
    /// Counter slots seen in use during this cycle, when retired slots
    /// were waiting at its start.
    marks: Option<Marks>,
}

#[derive(Debug)]
struct Marks {
    /// [`crate::counters::CounterArena::retirements`] at the cycle's start.
    retirements: u64,
    referenced: Vec<bool>,
}

/// What one [`Port::expire_some`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpiryProgress {
    /// Connection slots examined (at most the budget).
    pub examined: usize,
    /// Connections removed.
    pub removed: usize,
    /// Whether a full cycle over the table ended in this call.
    pub cycle_ended: bool,
}

impl Port {
    /// Examine at most `budget` connection slots from where the previous
    /// call stopped, removing those whose time has come (see the module
    /// docs). Calls adding up to the table's size do what one
    /// [`Port::expire`] does; each costs O(budget) (plus, once per cycle,
    /// O(interned actions + counter slots)).
    pub fn expire_some(&mut self, now: Time, budget: usize) -> ExpiryProgress {
        // (Bounded by the port's fragment limits.)
        self.expire_fragments(now);
        let mut p = ExpiryProgress::default();
        while p.examined < budget {
            let n = self.uft.slot_count() as u32;
            if self.sweep.cursor >= n {
                if p.cycle_ended {
                    break; // at most one cycle end per call
                }
                self.end_expiry_cycle();
                p.cycle_ended = true;
                if n == 0 {
                    break;
                }
            }
            let c = self.sweep.cursor;
            if c == 0 {
                self.sweep.marks = (self.counters.arena.retired() > 0).then(|| Marks {
                    retirements: self.counters.arena.retirements(),
                    referenced: vec![false; self.counters.arena.capacity()],
                });
            }
            self.sweep.cursor += 1;
            p.examined += 1;
            let Some(conn) = self.uft.get(c) else {
                continue;
            };
            if self.deadline(conn) <= now {
                self.retire_connection(c);
                p.removed += 1;
            } else {
                self.flush_connection(c);
                self.mark_counters(c);
            }
        }
        p
    }

    /// Free the retired counter slots no flow can count into any more, from
    /// a walk of the whole table (`expire`, after pending counts were
    /// flushed). A retired slot is never a current rule's or layer's (a
    /// rule or layer that comes back takes its slot out of retirement), so
    /// only flows need looking at.
    pub(crate) fn reclaim_counters(&mut self) {
        let mut referenced = vec![false; self.counters.arena.capacity()];
        let stamp = self.stamp();
        for (c, _) in self.uft.iter() {
            self.mark_connection(c, stamp, &mut referenced);
        }
        self.counters
            .arena
            .reclaim(|s| referenced.get(s as usize).copied().unwrap_or(true));
    }

    /// Mark, for this cycle, the counter slots connection `c`'s flows can
    /// still count into.
    fn mark_counters(&mut self, c: u32) {
        let stamp = self.stamp();
        let Some(mut marks) = self.sweep.marks.take() else {
            return;
        };
        self.mark_connection(c, stamp, &mut marks.referenced);
        self.sweep.marks = Some(marks);
    }

    /// Set `referenced[s]` for every slot connection `c` can count into:
    /// those of its unified flows that are current or have packets pending
    /// (a stale flow's next packet re-simulates it first), and those of
    /// the layer flows it holds (every layer flow is held by a connection).
    fn mark_connection(&self, c: u32, stamp: u32, referenced: &mut [bool]) {
        let Some(conn) = self.uft.get(c) else {
            return;
        };
        let mut mark = |s: u32| {
            if let Some(r) = referenced.get_mut(s as usize) {
                *r = true;
            }
        };
        for uf in conn.sides.iter().flatten() {
            if uf.generation == stamp || uf.packets > 0 {
                self.uft
                    .counter_lists()
                    .get(uf.counters)
                    .iter()
                    .for_each(|&s| mark(s));
            }
        }
        for r in self.uft.layer_refs(conn) {
            let Some(f) = self.layer_flow(r.layer_uid, r.slot) else {
                continue;
            };
            mark(f.rule.counter);
            if let Some(e) = f.extra() {
                e.counters.iter().for_each(|&s| mark(s));
            }
        }
    }

    fn end_expiry_cycle(&mut self) {
        self.sweep.cursor = 0;
        self.refresh_flow_layers();
        self.flow_actions.retain(|a| Arc::strong_count(a) > 1);
        if let Some(m) = self.sweep.marks.take()
            && m.retirements == self.counters.arena.retirements()
        {
            // Retired slots past the marks were made after the cycle began:
            // treated as referenced.
            self.counters
                .arena
                .reclaim(|s| m.referenced.get(s as usize).copied().unwrap_or(true));
        }
    }
}
