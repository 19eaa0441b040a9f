//! A global allocator that forwards to the system's and counts, per
//! thread, allocation calls and live heap bytes: tests that prove a path
//! allocates nothing, or that the port's accounting explains what it holds,
//! install it with `#[global_allocator]`. Per thread because the test
//! harness runs tests on threads of their own.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct Counting;

thread_local! {
    static CALLS: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

/// Allocations and reallocations made by this thread so far.
pub fn allocation_calls() -> usize {
    CALLS.with(Cell::get)
}

/// Heap bytes this thread allocated and has not freed.
pub fn live_bytes() -> i64 {
    LIVE.with(Cell::get)
}

/// The most heap bytes this thread held at once since
/// [`reset_peak_bytes`] (or since it started).
pub fn peak_bytes() -> i64 {
    PEAK.with(Cell::get)
}

/// Start measuring [`peak_bytes`] from the bytes held now.
pub fn reset_peak_bytes() {
    PEAK.with(|p| p.set(live_bytes()));
}

fn count(bytes: i64, call: bool) {
    // `try_with`: the thread's counters may already be gone while it exits.
    let _ = LIVE.try_with(|l| {
        let live = l.get() + bytes;
        l.set(live);
        let _ = PEAK.try_with(|p| p.set(p.get().max(live)));
    });
    if call {
        let _ = CALLS.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as i64, true);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as i64), false);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count(new as i64 - l.size() as i64, true);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}
