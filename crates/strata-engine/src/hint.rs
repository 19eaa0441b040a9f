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
//! **Zeroed arrays.** A table that doubles needs a new array of empty
//! buckets. [`ZeroedArray`] maps big ones straight from the kernel, so
//! creating one touches no page: each is zeroed (as a huge page) when an
//! insert first writes it, not all of them inside one packet.
//!
//! **Background threads.** [`background_priority`] lowers the calling
//! thread to the least CPU share (nice 19), for work that must not slow
//! the threads a caller waits on: freeing a replaced group of tens of
//! thousands of rules competes, on a two-core host, with the next group's
//! build.
//!
//! The only `unsafe` in the engine: `_mm_prefetch` and `madvise` are
//! declared `unsafe` because they take raw pointers (neither reads or
//! writes memory the program can see; the pointers come from live
//! references and allocations), `setpriority` because every libc call is,
//! and [`ZeroedArray`] maps, views and unmaps its own memory.

/// Bring the cache lines holding `*r` towards L1 (a hint; no effect on
/// what any load returns). At most four lines: the callers' objects are
/// smaller than that.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    let p = (r as *const T).cast::<u8>();
    for i in 0..lines_of::<T>(p) {
        line(p.wrapping_add(i * 64));
    }
}

/// Cache lines a `T` at `p` spans, up to four.
#[inline(always)]
fn lines_of<T>(p: *const u8) -> usize {
    let first = p as usize & !63;
    let last = (p as usize + size_of::<T>().max(1) - 1) & !63;
    ((last - first) / 64 + 1).min(4)
}

/// [`prefetch`] for room not yet written (a slot past a vector's length,
/// within its capacity): `p` points into a live allocation.
#[inline(always)]
pub fn prefetch_ptr<T>(p: *const T) {
    let p = p.cast::<u8>();
    for i in 0..lines_of::<T>(p) {
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

/// Give the calling thread the least CPU share (nice 19): it still runs
/// when a core is free and is never starved outright, but yields to every
/// normal thread. A hint; failure is ignored.
pub fn background_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain integer arguments, no memory passed. On Linux, `who`
    // 0 with PRIO_PROCESS names the calling thread (nice is per thread).
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
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

/// A fixed-length array of plain values whose all-zero bytes are a valid
/// value (`bytemuck::Zeroable`), created empty at no cost: a big one (2 MiB
/// or more) is a mapping of its own, aligned to 2 MiB and advised for huge
/// pages, whose pages the kernel zeroes when they are first written. A
/// growing table's new array is therefore not filled inside the packet
/// whose insert made it (the allocator cannot do that for 64-byte aligned
/// values: it zeroes them itself, which also faults the pages in before
/// they can be advised, so they stay small). Smaller arrays are plain
/// vectors.
pub struct ZeroedArray<T: bytemuck::Zeroable + Copy> {
    /// The values, read with no branch on where they live (the fast path
    /// reads its index buckets through this).
    ptr: std::ptr::NonNull<T>,
    len: usize,
    owner: Owner<T>,
}

/// Bytes of [`ZeroedArray`] mappings alive in the process: they bypass the
/// global allocator, so a program that counts heap bytes through it (the
/// engine bench's memory figures) adds these.
static MAPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Bytes of [`ZeroedArray`] mappings alive in the process (see
/// [`ZeroedArray`]; the global allocator does not see them).
pub fn mapped_bytes() -> usize {
    MAPPED.load(std::sync::atomic::Ordering::Relaxed)
}

/// What holds a [`ZeroedArray`]'s values.
enum Owner<T> {
    /// A vector never resized (its buffer stays where `ptr` points).
    Vec(Vec<T>),
    /// The mapping `[base, base + bytes)`, `ptr` inside it.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Map { base: usize, bytes: usize },
}

// SAFETY: a `ZeroedArray` owns its values exactly as a `Vec` does (the
// mapping is private to it and unmapped once, on drop).
unsafe impl<T: bytemuck::Zeroable + Copy + Send> Send for ZeroedArray<T> {}
// SAFETY: shared access only reads through `&[T]`, as a `Vec`'s does.
unsafe impl<T: bytemuck::Zeroable + Copy + Sync> Sync for ZeroedArray<T> {}

impl<T: bytemuck::Zeroable + Copy> ZeroedArray<T> {
    /// `len` zero values.
    pub fn new(len: usize) -> ZeroedArray<T> {
        let bytes = len.saturating_mul(size_of::<T>());
        if bytes >= HUGE_PAGE
            && align_of::<T>() <= HUGE_PAGE
            && let Some(array) = Self::map(len, bytes)
        {
            return array;
        }
        Self::from_vec(bytemuck::zeroed_vec(len))
    }

    fn from_vec(mut v: Vec<T>) -> ZeroedArray<T> {
        ZeroedArray {
            // A vector's pointer is never null (dangling when empty).
            ptr: std::ptr::NonNull::new(v.as_mut_ptr()).unwrap_or(std::ptr::NonNull::dangling()),
            len: v.len(),
            owner: Owner::Vec(v),
        }
    }

    #[cfg(target_os = "linux")]
    fn map(len: usize, bytes: usize) -> Option<ZeroedArray<T>> {
        // One huge page more than needed, to start on a 2 MiB boundary.
        let map_bytes = bytes.checked_add(HUGE_PAGE)?;
        // SAFETY: a new private anonymous mapping; it aliases nothing.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let start = (base as usize).next_multiple_of(HUGE_PAGE);
        // Not null (a mapping never starts at 0); were it, nothing leaks.
        let Some(ptr) = std::ptr::NonNull::new(start as *mut T) else {
            // SAFETY: the mapping just made, referenced by nothing.
            unsafe {
                libc::munmap(base, map_bytes);
            }
            return None;
        };
        // SAFETY: `[start, start + bytes)` lies inside the mapping just
        // made; the advice changes only how the kernel backs it.
        unsafe {
            libc::madvise(start as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE);
        }
        // The array's bytes, as a vector of it would count (the slack for
        // alignment is never touched).
        MAPPED.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        Some(ZeroedArray {
            ptr,
            len,
            owner: Owner::Map {
                base: base as usize,
                bytes: map_bytes,
            },
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn map(_len: usize, _bytes: usize) -> Option<ZeroedArray<T>> {
        None
    }

    /// Write every page of the array now (with the zeros it holds), so
    /// that no later write pays for the page's first touch: on this VM a
    /// huge page's costs about 5 ms, too long for a packet to wait.
    pub fn prefault(&mut self) {
        // One element per 4 KiB page at least. `black_box` keeps the store
        // of the value just read from being dropped as a no-op.
        let step = (4096 / size_of::<T>().max(1)).max(1);
        for i in (0..self.len).step_by(step) {
            let v = self[i];
            self[i] = std::hint::black_box(v);
        }
    }

    /// Heap bytes held.
    pub fn memory_bytes(&self) -> usize {
        match &self.owner {
            Owner::Vec(v) => v.capacity() * size_of::<T>(),
            Owner::Map { .. } => self.len * size_of::<T>(),
        }
    }
}

impl<T: bytemuck::Zeroable + Copy> std::ops::Deref for ZeroedArray<T> {
    type Target = [T];
    #[inline(always)]
    fn deref(&self) -> &[T] {
        // SAFETY: `len` initialized values at `ptr`, aligned, owned by
        // `self.owner` for as long as `self` lives: the vector's buffer
        // (never resized), or the mapping, whose unwritten pages read as
        // zeros, a valid `T`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: bytemuck::Zeroable + Copy> std::ops::DerefMut for ZeroedArray<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; `&mut self` makes the access unique (the
        // vector in `owner` is never read through while it lives here).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: bytemuck::Zeroable + Copy> Drop for ZeroedArray<T> {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Owner::Map { base, bytes } = self.owner {
            // SAFETY: the mapping made in `map`, unmapped once; no
            // reference into it outlives `self`.
            unsafe {
                libc::munmap(base as *mut libc::c_void, bytes);
            }
            MAPPED.fetch_sub(
                self.len * size_of::<T>(),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}

impl<T: bytemuck::Zeroable + Copy> Default for ZeroedArray<T> {
    fn default() -> Self {
        Self::from_vec(Vec::new())
    }
}

impl<T: bytemuck::Zeroable + Copy> Clone for ZeroedArray<T> {
    fn clone(&self) -> Self {
        let mut copy = ZeroedArray::new(self.len());
        copy.copy_from_slice(self);
        copy
    }
}

impl<T: bytemuck::Zeroable + Copy> std::fmt::Debug for ZeroedArray<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZeroedArray")
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's nice value, from `/proc/thread-self/stat`
    /// (field 19; the fields after the parenthesised name, from 3 on).
    #[cfg(target_os = "linux")]
    fn own_nice() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        let after_name = &stat[stat.rfind(')').expect("name") + 2..];
        after_name
            .split(' ')
            .nth(19 - 3)
            .and_then(|n| n.parse().ok())
            .expect("nice field")
    }

    /// A background thread drops to nice 19; the thread that spawned it
    /// keeps its own priority (nice is per thread on Linux).
    #[cfg(target_os = "linux")]
    #[test]
    fn background_priority_lowers_only_the_calling_thread() {
        let before = own_nice();
        let bg = std::thread::spawn(|| {
            background_priority();
            own_nice()
        })
        .join()
        .expect("thread");
        assert_eq!(bg, 19);
        assert_eq!(own_nice(), before);
    }

    /// Kilobytes of huge pages backing the mapping that contains `addr`,
    /// from `/proc/self/smaps`.
    fn huge_kb_at(addr: usize) -> Option<u64> {
        smaps_kb_at(addr, "AnonHugePages:")
    }

    /// A kilobyte field (`Rss:`, `AnonHugePages:`, …) of the mapping that
    /// contains `addr`, from `/proc/self/smaps`.
    fn smaps_kb_at(addr: usize, field: &str) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let head = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = head.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = (a..b).contains(&addr);
            } else if inside && let Some(kb) = line.strip_prefix(field) {
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

    #[test]
    fn a_big_zeroed_array_costs_no_page_until_written() {
        let mut a: ZeroedArray<u64> = ZeroedArray::new(4 << 20); // 32 MiB
        assert_eq!(a.len(), 4 << 20);
        let addr = a.as_ptr() as usize;
        assert_eq!(addr % HUGE_PAGE, 0, "a big array starts on a huge page");
        // Its own mapping, not one page of it resident yet.
        assert_eq!(smaps_kb_at(addr, "Rss:"), Some(0));
        assert!(a.iter().step_by(4096).all(|&x| x == 0));
        a[0] = 7;
        let last = a.len() - 1;
        a[last] = 9;
        let rss = smaps_kb_at(addr, "Rss:").expect("mapping in smaps");
        assert!((4..32 * 1024).contains(&rss), "{rss} kB resident");
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if mode.contains("[madvise]") || mode.contains("[always]") {
            assert!(
                huge_kb_at(addr).is_some_and(|kb| kb >= 2048),
                "no huge page"
            );
        }
        let copy = a.clone();
        assert_eq!((copy[0], copy[last], copy[1]), (7, 9, 0));
        assert_eq!(a.memory_bytes(), 32 << 20);
        // Counted while mapped (other tests may map arrays meanwhile).
        assert!(mapped_bytes() >= 2 * (32 << 20));
        // Small arrays are vectors, zeroed as well.
        let small: ZeroedArray<u32> = ZeroedArray::new(1000);
        assert!(small.iter().all(|&x| x == 0) && small.len() == 1000);
        assert!(ZeroedArray::<u8>::default().is_empty());
    }

    /// `prefault` makes the whole array resident and leaves it all zeros.
    #[test]
    fn a_prefaulted_array_is_resident_and_still_zero() {
        let mut a: ZeroedArray<[u64; 8]> = ZeroedArray::new(1 << 16); // 4 MiB
        let addr = a.as_ptr() as usize;
        assert_eq!(smaps_kb_at(addr, "Rss:"), Some(0));
        a.prefault();
        assert_eq!(smaps_kb_at(addr, "Rss:"), Some(4096));
        assert!(a.iter().all(|x| *x == [0; 8]));
        // A small one (a vector) is unchanged by it.
        let mut small: ZeroedArray<u16> = ZeroedArray::new(3000);
        small.prefault();
        assert!(small.iter().all(|&x| x == 0));
    }
}
