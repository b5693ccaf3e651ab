//! Keeping the resident memory of an all-day process small.
//!
//! glibc's allocator gives every thread that allocates its own arena (up to 8 per core), and
//! keeps freed memory at the top of each arena unless more than 128 KiB is free. The sync
//! allocates on the async workers, on the blocking pool (SQLite commits, lookups) and on the
//! main thread, each a few MB of short-lived pages and batches at a time — so a catch-up left
//! several arenas each holding its own high-water mark. Measured on a 100k-event catch-up
//! (`MALLOC_ARENA_MAX` / `MALLOC_TRIM_THRESHOLD_` set from outside): peak RSS 28.7 MB with
//! glibc's defaults, 23.2 MB with 2 arenas and a 128 KiB trim threshold, same CPU time.

/// Two arenas (the runtime has two workers; the blocking pool shares them) and give memory
/// back to the kernel once 128 KiB is free at an arena's top. Call first thing in `main`,
/// before any thread starts; a no-op where the allocator is not glibc's.
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
            // Setting the trim threshold also freezes glibc's mmap threshold at 128 KiB, so
            // each megabyte-sized page read from aw-server is a fresh mmap, its pages faulted
            // in each time. Measured on the 1M-event catch-up (benches/catchup.rs): raising it
            // to 512 KiB or 2 MiB cut the sync's system time from 1.8 s to 1.1 s or 0.9 s but
            // raised peak RSS from 24.5 MB to 28 MB (the freed buffers stay in the heap,
            // fragmented). The 25 MB goal wins; left as it is.
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
