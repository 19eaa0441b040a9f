//! Hints to the CPU and the kernel about the flow tables' memory: cache
//! line prefetches for the batched fast path, and huge pages for the big
//! arrays.
//!
//! **Prefetch.** A batch looks up 32 flows whose index buckets and flow
//! entries are scattered over hundreds of megabytes at 1M connections. A
//! plain load issued early ("touch") brings a line in too, but the core
//! cannot retire past it until the data arrives, so the work behind it
//! waits. A prefetch instruction retires at once: the lines of later
//! packets arrive while earlier packets are being processed.
//!
//! **Huge pages.** At 1M connections the connection slab and the flow
//! index span hundreds of megabytes in 4 KiB pages, so nearly every lookup
//! also misses the TLB, and a page walk under a hypervisor's nested paging
//! costs several more memory reads. [`huge_pages`] asks the kernel to back
//! a freshly allocated, not yet touched array with 2 MiB pages
//! (`madvise(MADV_HUGEPAGE)`): it takes effect when transparent huge pages
//! are `madvise` or `always` (the common distribution default is
//! `madvise`), and is ignored otherwise.
//!
//! The only `unsafe` in the engine: `_mm_prefetch` and `madvise` are
//! declared `unsafe` because they take raw pointers. Neither reads or
//! writes memory the program can see; the pointers come from live
//! references and allocations.

/// Bring the cache lines holding `*r` towards L1 (a hint; no effect on
/// what any load returns). At most four lines: the callers' objects are
/// smaller than that.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    let p = (r as *const T).cast::<u8>();
    let first = p as usize & !63;
    let last = (p as usize + size_of::<T>().max(1) - 1) & !63;
    let lines = ((last - first) / 64 + 1).min(4);
    for i in 0..lines {
        line(p.wrapping_add(i * 64));
    }
}

#[inline(always)]
fn line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing into the program's
    // state, cannot fault even on an invalid address, and `p` is derived
    // from a live reference (at most three lines past its start).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Arrays smaller than this are left to the allocator's pages.
const HUGE_PAGE: usize = 2 << 20;

/// Ask for 2 MiB pages for `v`'s whole capacity. Call it before the
/// capacity is first written: pages already touched stay small until the
/// kernel's background collapse gets to them. A hint; failure is ignored
/// (the memory works the same in small pages).
pub fn huge_pages<T>(v: &Vec<T>) {
    let bytes = v.capacity() * size_of::<T>();
    if bytes < HUGE_PAGE {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = (v.as_ptr() as usize).next_multiple_of(PAGE);
        let end = (v.as_ptr() as usize + bytes) & !(PAGE - 1);
        if end > start {
            // SAFETY: `[start, end)` lies inside `v`'s allocation, which
            // outlives the call; MADV_HUGEPAGE changes only how the kernel
            // backs those pages, never their contents or mapping.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kilobytes of huge pages backing the mapping that contains `addr`,
    /// from `/proc/self/smaps`.
    fn huge_kb_at(addr: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let head = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = head.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = (a..b).contains(&addr);
            } else if inside && let Some(kb) = line.strip_prefix("AnonHugePages:") {
                return kb.trim().trim_end_matches("kB").trim().parse().ok();
            }
        }
        None
    }

    #[test]
    fn big_arrays_get_huge_pages_when_the_kernel_offers_them() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if !mode.contains("[madvise]") && !mode.contains("[always]") {
            eprintln!("transparent huge pages off here ({mode:?}); nothing to check");
            return;
        }
        let mut v: Vec<u64> = Vec::with_capacity(4 << 20); // 32 MiB
        huge_pages(&v);
        v.resize(v.capacity(), 7);
        let kb = huge_kb_at(v.as_ptr() as usize + v.len() * 4).expect("mapping in smaps");
        assert!(
            kb >= 2048,
            "no huge page in a 32 MiB advised array ({kb} kB)"
        );
        assert!(v.iter().all(|&x| x == 7));

        // Small arrays are left alone, and a prefetch changes nothing.
        let small = vec![1u8; 100];
        huge_pages(&small);
        prefetch(&small);
        prefetch(&v[v.len() - 1]);
        assert_eq!(small.iter().map(|&x| u32::from(x)).sum::<u32>(), 100);
    }
}
