//! Keeping the resident memory of an all-day process small.
//!
//! glibc's allocator gives every thread that allocates its own arena (up to 8 per core), and
//! keeps freed memory at the top of each arena unless more than 128 KiB is free. The sync
//! allocates on the async workers, on the blocking pool (SQLite commits, lookups) and on the
//! main thread, each a few MB of short-lived pages and batches at a time — so a catch-up left
//! several arenas each holding its own high-water mark. Measured on a 100k-event catch-up
//! (`MALLOC_ARENA_MAX` / `MALLOC_TRIM_THRESHOLD_` set from outside): peak RSS 28.7 MB with
//! glibc's defaults, 23.2 MB with 2 arenas and a 128 KiB trim threshold, same CPU time.

/// The largest block glibc serves from the heap rather than from a mapping of its own.
///
/// Why 512 KiB: with the threshold frozen at 128 KiB (what setting the trim threshold does),
/// every block of a catch-up between 128 and 512 KiB — hyper's read buffer as it grows, a page's
/// parsed events, a batch's request body — was a fresh mapping, its pages faulted in and zeroed
/// by the kernel (perf: page faults 5.5 % of a 1M-event catch-up's samples, half of them in the
/// socket reads' copy into a new buffer), then unmapped. Measured on that catch-up
/// (benches/catchup.rs, alternating runs, 4 + 4 in each order): the sync's system time
/// 0.45–0.64 s against 0.61–0.75 s (mean 0.51 against 0.67, −24 %), peak RSS 0.8 MiB higher on
/// average (19.6–20.6 MiB against 18.9–20.3); 2 MiB saved nothing more. Before the code's
/// layout and the kept buffers ([`BufferPool`]) the same change cost 3.5 MB of peak RSS and was
/// not kept. The megabyte pages themselves stay above it and are kept in a [`BufferPool`].
pub const MMAP_THRESHOLD: usize = 512 * 1024;

/// Two arenas (the runtime has two workers; the blocking pool shares them), memory given back
/// to the kernel once 128 KiB is free at an arena's top, and blocks up to [`MMAP_THRESHOLD`]
/// served from the heap. Call first thing in `main`, before any thread starts; a no-op where
/// the allocator is not glibc's.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // An explicit MALLOC_ARENA_MAX / MALLOC_TRIM_THRESHOLD_ from the user wins.
        let set = |var: &str| std::env::var_os(var).is_some();
        // SAFETY: mallopt only changes allocator parameters; called before other threads run.
        unsafe {
            if !set("MALLOC_ARENA_MAX") {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
            if !set("MALLOC_TRIM_THRESHOLD_") {
                libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
            }
            // Setting the trim threshold also freezes glibc's mmap threshold at 128 KiB.
            if !set("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
            }
        }
    }
}

/// Returns the heap memory a cycle freed to the OS (glibc keeps it in its arenas otherwise):
/// after a catch-up of thousands of events, the idle daemon's resident memory goes back down to
/// its baseline (issue 5: under 15 MB idle) instead of staying at the cycle's peak. It walks
/// the free chunks of a heap of a few MB: small next to the cycle itself (not measurable in
/// the idle-cycle CPU time). Other allocators and platforms return memory on their own terms.
pub fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only walks glibc's own heap structures, under
    // their locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Byte buffers kept from one use to the next: at most `keep` of them, none larger than
/// [`MAX_KEPT_BUFFER`]. Clones share the buffers.
///
/// Why: the catch-up's large buffers (a page read from aw-server, about a megabyte; a batch's
/// request body, a few hundred kilobytes) are past the mmap threshold [`tune_allocator`] leaves
/// at 128 KiB, so a new one each time was a fresh mapping whose pages the kernel faulted in and
/// zeroed, then unmapped — for buffers of the same size, over and over.
#[derive(Debug, Clone)]
pub struct BufferPool {
    kept: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    keep: usize,
}

/// A buffer larger than this is not kept: one huge page or batch must not pin its memory.
pub const MAX_KEPT_BUFFER: usize = 8 * 1024 * 1024;

impl BufferPool {
    pub fn new(keep: usize) -> BufferPool {
        BufferPool {
            kept: std::sync::Arc::default(),
            keep,
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A kept buffer (empty), or a new one.
    pub fn take(&self) -> Vec<u8> {
        self.kept().pop().unwrap_or_default()
    }

    /// Keeps `buffer` for a later [`BufferPool::take`], emptied, unless the pool is full or the
    /// buffer too large.
    pub fn give_back(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() > MAX_KEPT_BUFFER {
            return;
        }
        let mut kept = self.kept();
        if kept.len() < self.keep {
            buffer.clear();
            kept.push(buffer);
        }
    }

    /// Frees the kept buffers (going idle).
    pub fn clear(&self) {
        self.kept().clear();
    }

    /// The kept buffers' lengths and capacities.
    #[cfg(test)]
    pub(crate) fn kept_sizes(&self) -> Vec<(usize, usize)> {
        self.kept()
            .iter()
            .map(|b| (b.len(), b.capacity()))
            .collect()
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// Set in the child process the test below starts.
    const PROBE: &str = "SAMAY_TEST_MALLOC_PROBE";

    /// Whether glibc served the block at `p` from a mapping of its own: the `IS_MMAPPED` bit
    /// (0x2) of the chunk's size word, just before the block.
    ///
    /// SAFETY: `p` must come from glibc's `malloc` and not be freed yet.
    unsafe fn is_mmapped(p: *mut libc::c_void) -> bool {
        let size = unsafe { *(p as *const usize).sub(1) };
        size & 0x2 != 0
    }

    /// In a fresh process (this test binary started again for this test alone), as in `main`:
    /// glibc serves a block from a mapping only when no free memory of the heap fits it, so in
    /// a test process whose other tests have freed megabytes either answer can come from the
    /// heap, whatever the threshold. Its first run in CI asserted in-process and failed once.
    #[test]
    fn blocks_up_to_the_threshold_come_from_the_heap_and_larger_ones_are_mapped() {
        if std::env::var_os(PROBE).is_none() {
            let exe = std::env::current_exe().expect("the test binary");
            let out = std::process::Command::new(exe)
                .args([
                    "--exact",
                    "memory::tests::blocks_up_to_the_threshold_come_from_the_heap_and_larger_ones_are_mapped",
                    "--test-threads=1",
                    "--nocapture",
                ])
                .env(PROBE, "1")
                // A threshold set from outside would win over tune_allocator's, as it should.
                .env_remove("MALLOC_MMAP_THRESHOLD_")
                .output()
                .expect("the test binary runs");
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && text.contains("1 passed"),
                "the probe in a fresh process: {text}"
            );
            return;
        }
        super::tune_allocator();
        // A read buffer or a batch body of 312 KiB: from the heap (a fresh mapping with
        // glibc's threshold frozen at 128 KiB by the trim threshold alone).
        let below = super::MMAP_THRESHOLD - 200 * 1024;
        // Past the threshold: its own mapping, as before.
        let above = 2 * super::MMAP_THRESHOLD;
        // SAFETY: plain malloc/free of blocks checked before use, freed once.
        unsafe {
            let small = libc::malloc(below);
            let large = libc::malloc(above);
            assert!(!small.is_null() && !large.is_null());
            let (small_mapped, large_mapped) = (is_mmapped(small), is_mmapped(large));
            libc::free(small);
            libc::free(large);
            assert!(!small_mapped, "a {below}-byte block was mapped on its own");
            assert!(large_mapped, "a {above}-byte block came from the heap");
        }
    }
}
