//! The allocator: its policy for large blocks, and handing freed memory back to the kernel.
//!
//! glibc returns freed memory to the kernel only from the top of its heap. After a load (a
//! REGISTER or INVITE flood, a scan) the transactions and responses it held are freed, but the
//! pages stay resident between the few objects that outlived the load: measured, 60 000 OPTIONS
//! at 15 000/s grew the process from 8 to 45 MB and it stayed at 45 MB once every transaction
//! had expired; `malloc_trim` brought it to 22 MB. A home PBX should not keep an attack's
//! high-water mark for the rest of its life, so the status tick watches how much free memory
//! the allocator holds ([`TrimPolicy`]) and trims when it has grown by a threshold.

use std::time::Instant;
use tracing::debug;

/// Allocations of 16 KiB and more (a large SIP message copied out of the receive buffers, a
/// bindings file being written) get pages of their own from the kernel and give them back when
/// freed. Otherwise glibc serves them from the heap, and once freed they are carved up for the
/// small objects that outlive them (a transaction's key, a kept response): each large message
/// left a few touched pages behind, and a flood of 56 KB requests grew the heap by ~6 KB per
/// request that could not be returned. (glibc's own threshold starts at 128 KiB and rises.)
pub(super) fn separate_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation policy; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 * 1024);
    }
}

/// Returns the heap's free pages to the kernel (glibc; elsewhere nothing). For the peaks of
/// start-up and of a reload (parsing 10 000 `[[users]]` and building from them frees ~15 MB that
/// glibc otherwise keeps resident between the live objects), and after a load ([`Trimmer`]).
/// Not for the hot path: it walks every free chunk of every arena.
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only hands free memory of glibc's arenas back to
    // the kernel, under the arenas' locks, and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes the allocator holds free in its arenas (resident or already handed back), or `None`
/// where that cannot be asked (not glibc). Walks the free lists: seconds apart, not per event.
fn free_heap_bytes() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct of counters; it
        // locks each arena while it sums it.
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// When to trim, from the free bytes the allocator holds, sampled now and then (sans-IO: the
/// caller measures and trims).
///
/// `malloc_trim` does not change the free byte count (the chunks stay free, only their pages go
/// back), so the count alone does not say what is resident. What does: memory that was free
/// and handed back, then reused (the free count falls) and freed again (it rises) is resident
/// once more. So the policy keeps the lowest free count since the last trim and trims when the
/// count has risen `threshold` above it: at most one trim per `threshold` bytes freed, so a
/// load that ends releases its memory in a few trims, and a steady load (as much freed as
/// allocated between two samples) triggers none.
#[derive(Debug, Clone)]
pub(super) struct TrimPolicy {
    threshold: u64,
    low: Option<u64>,
}

impl TrimPolicy {
    pub(super) fn new(threshold: u64) -> TrimPolicy {
        TrimPolicy {
            threshold,
            low: None,
        }
    }

    /// Takes one sample of the free byte count; true: trim now.
    pub(super) fn sample(&mut self, free: u64) -> bool {
        let low = self.low.map_or(free, |l| l.min(free));
        if free - low >= self.threshold {
            // After the trim the pages of everything free now are back with the kernel.
            self.low = Some(free);
            true
        } else {
            self.low = Some(low);
            false
        }
    }
}

/// The shell's side: samples every `every` status ticks, trims when the policy says so, and
/// reports both to the metrics.
pub(super) struct Trimmer {
    policy: TrimPolicy,
    ticks: u32,
}

/// Free memory that must have piled up before a trim: a few MB is noise next to the ~9 MB an
/// idle podpbx uses; a flood leaves tens to hundreds of MB.
const TRIM_THRESHOLD: u64 = 8 << 20;
/// Status ticks (1 s) between samples.
const SAMPLE_EVERY: u32 = 5;

impl Trimmer {
    pub(super) fn new() -> Trimmer {
        Trimmer {
            policy: TrimPolicy::new(TRIM_THRESHOLD),
            ticks: 0,
        }
    }

    /// Called on every status tick (inside the runtime: the trim runs on its blocking pool); returns the free byte count when it sampled, and whether
    /// it trimmed.
    pub(super) fn tick(&mut self) -> Option<(u64, bool)> {
        self.ticks += 1;
        if self.ticks < SAMPLE_EVERY {
            return None;
        }
        self.ticks = 0;
        let free = free_heap_bytes()?;
        let trim = self.policy.sample(free);
        if trim {
            // Off the loop: the trim walks every free chunk and makes a system call per run
            // of free pages (measured: 6.4 ms for 23 MB after a flood of 60 000 OPTIONS, so
            // ~0.1 s after a 350 MB overload). It takes each arena's lock only while it walks
            // that arena, and the loop's small allocations mostly come from its thread cache.
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                release_free_heap();
                debug!(
                    free_mb = free >> 20,
                    took_us = started.elapsed().as_micros() as u64,
                    "free heap memory handed back to the kernel"
                );
            });
        }
        Some((free, trim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn trims_once_when_a_load_has_freed_the_threshold() {
        let mut p = TrimPolicy::new(8 * MB);
        assert!(!p.sample(2 * MB), "the first sample only sets the baseline");
        assert!(!p.sample(6 * MB), "4 MB freed: below the threshold");
        assert!(p.sample(40 * MB), "38 MB freed since the lowest sample");
        assert!(
            !p.sample(40 * MB),
            "the count does not fall after a trim: no trim again for the same memory"
        );
        assert!(!p.sample(45 * MB), "5 MB more: below the threshold");
        assert!(p.sample(49 * MB), "9 MB freed since the last trim");
    }

    #[test]
    fn reused_then_freed_memory_is_resident_again() {
        let mut p = TrimPolicy::new(8 * MB);
        p.sample(MB);
        assert!(p.sample(30 * MB));
        // A second load takes 25 MB of the handed-back memory (the pages come back) and frees
        // it again: resident again although the count is where it was at the trim.
        assert!(!p.sample(5 * MB));
        assert!(p.sample(30 * MB));
    }

    #[test]
    fn a_steady_load_never_trims() {
        let mut p = TrimPolicy::new(8 * MB);
        for i in 0..1000u64 {
            // Free memory wobbling by up to 7 MB around a level, as a steady load does.
            assert!(!p.sample(20 * MB + (i * 7919 % 7) * MB), "sample {i}");
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_allocator_reports_freed_memory() {
        let before = free_heap_bytes().expect("glibc answers mallinfo2");
        // 16 MB in small blocks (below the mmap threshold), then all freed but every 64th:
        // the survivors (the last block among them) keep the holes between them from
        // merging into the top of the heap, which glibc would give back by itself.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 4000]).collect();
        let mut i = 0;
        blocks.retain(|_| {
            i += 1;
            i % 64 == 0
        });
        let after = free_heap_bytes().unwrap();
        assert_eq!(blocks.len(), 64);
        assert!(
            after >= before + 8 * MB,
            "16 MB freed between pinned blocks, free bytes {before} -> {after}"
        );
    }
}
