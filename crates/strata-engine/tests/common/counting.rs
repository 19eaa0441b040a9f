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
}

/// Allocations and reallocations made by this thread so far.
pub fn allocation_calls() -> usize {
    CALLS.with(Cell::get)
}

/// Heap bytes this thread allocated and has not freed.
pub fn live_bytes() -> i64 {
    LIVE.with(Cell::get)
}

fn count(bytes: i64, call: bool) {
    // `try_with`: the thread's counters may already be gone while it exits.
    let _ = LIVE.try_with(|l| l.set(l.get() + bytes));
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
