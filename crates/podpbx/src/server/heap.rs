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

/// What the allocator and the kernel say about the process's memory, sampled seconds apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HeapSample {
    /// Bytes the allocator holds free in its arenas (resident or already handed back).
    pub free: u64,
    /// Resident anonymous memory that no live allocation uses: free heap pages not yet handed
    /// back, and the little that is not the allocator's (thread stacks).
    pub unused_resident: u64,
}

/// Samples the allocator (glibc's `mallinfo2`, which walks the free lists: seconds apart, not
/// per event) and the kernel's resident count; `None` where that cannot be asked.
fn sample_heap() -> Option<HeapSample> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct of counters; it
        // locks each arena while it sums it.
        let info = unsafe { libc::mallinfo2() };
        let in_use = (info.uordblks + info.hblkhd) as u64;
        Some(HeapSample {
            free: info.fordblks as u64,
            unused_resident: resident_anonymous()?.saturating_sub(in_use),
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Resident pages that are not file-backed (`/proc/self/statm`: resident minus shared).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn resident_anonymous() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = statm.split_ascii_whitespace().skip(1);
    let resident: u64 = fields.next()?.parse().ok()?;
    let shared: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(resident.saturating_sub(shared) * u64::try_from(page).ok()?)
}

/// When to trim, from the resident memory no live allocation uses, sampled now and then
/// (sans-IO: the caller measures and trims).
///
/// The allocator's free count alone does not say what is resident: `malloc_trim` leaves it
/// unchanged (the chunks stay free, only their pages go back), and memory handed back, reused
/// and freed again between two samples (a load winding down) is resident again without the
/// count having moved (measured: 20 MB of the main heap resident and free after an overload,
/// which a policy on the free count never trimmed). Resident minus in use says it directly.
/// The policy keeps the lowest such value (the floor: thread stacks, partly used pages) and
/// trims when it has risen `threshold` above it.
///
/// A trim after which the next sample is still `threshold` above the floor did not help (pages
/// no trim can free, or a steady load that touches them again at once): the next trim waits
/// one sample more, then two, four, up to [`MAX_BACKOFF`] samples; a sample back near the
/// floor resets the wait. So a steady load costs at most one trim a minute, and the memory a finished load
/// left goes back within a minute in the worst case.
#[derive(Debug, Clone)]
pub(super) struct TrimPolicy {
    threshold: u64,
    low: Option<u64>,
    /// Samples to wait after a trim that did not help.
    backoff: u32,
    /// Samples still to wait before the next trim.
    wait: u32,
    /// The last sample trimmed: this one says whether that helped.
    judging: bool,
}

/// The longest wait between trims that do not help, in samples (5 s each).
const MAX_BACKOFF: u32 = 12;

impl TrimPolicy {
    pub(super) fn new(threshold: u64) -> TrimPolicy {
        TrimPolicy {
            threshold,
            low: None,
            backoff: 0,
            wait: 0,
            judging: false,
        }
    }

    /// Takes one sample of the unused resident bytes; true: trim now.
    pub(super) fn sample(&mut self, unused: u64) -> bool {
        let low = self.low.map_or(unused, |l| l.min(unused));
        self.low = Some(low);
        let above = unused - low >= self.threshold;
        if std::mem::take(&mut self.judging) && above {
            self.backoff = (self.backoff * 2).clamp(1, MAX_BACKOFF);
            self.wait = self.backoff;
        }
        if !above {
            // Back at the floor (a trim helped, or the process reused the pages): whatever
            // did not help before is history.
            self.backoff = 0;
            self.wait = 0;
            return false;
        }
        if self.wait > 0 {
            self.wait -= 1;
            return false;
        }
        self.judging = true;
        true
    }
}

/// The shell's side: samples every `SAMPLE_EVERY` status ticks, trims when the policy says so,
/// and reports both to the metrics.
pub(super) struct Trimmer {
    policy: TrimPolicy,
    ticks: u32,
}

/// Unused resident memory that must have piled up before a trim: a few MB is noise next to
/// the ~9 MB an idle podpbx uses; a flood leaves tens to hundreds of MB.
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

    /// Called on every status tick (inside the runtime: the trim runs on its blocking pool);
    /// returns the sample when it took one, and whether it trimmed.
    pub(super) fn tick(&mut self) -> Option<(HeapSample, bool)> {
        self.ticks += 1;
        if self.ticks < SAMPLE_EVERY {
            return None;
        }
        self.ticks = 0;
        let sample = sample_heap()?;
        let trim = self.policy.sample(sample.unused_resident);
        if trim {
            // Off the loop: the trim walks every free chunk and makes a system call per run
            // of free pages (measured: 6.4 ms for 23 MB after a flood of 60 000 OPTIONS, so
            // ~0.1 s after a 350 MB overload). It takes each arena's lock only while it walks
            // that arena, and the loop's small allocations mostly come from its thread cache.
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                release_free_heap();
                debug!(
                    unused_mb = sample.unused_resident >> 20,
                    took_us = started.elapsed().as_micros() as u64,
                    "free heap memory handed back to the kernel"
                );
            });
        }
        Some((sample, trim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn trims_when_unused_resident_memory_grows_by_the_threshold() {
        let mut p = TrimPolicy::new(8 * MB);
        assert!(!p.sample(2 * MB), "the first sample only sets the floor");
        assert!(!p.sample(6 * MB), "4 MB more: below the threshold");
        assert!(p.sample(40 * MB), "38 MB above the floor");
        assert!(!p.sample(3 * MB), "the trim gave it back");
        assert!(!p.sample(9 * MB), "7 MB above the floor");
        assert!(
            p.sample(11 * MB),
            "9 MB above it: no wait after a trim that helped"
        );
    }

    #[test]
    fn trims_that_do_not_help_back_off_to_one_a_minute() {
        let mut p = TrimPolicy::new(8 * MB);
        p.sample(2 * MB);
        // Fragmented, or touched again at once: every trim leaves 30 MB.
        let trims: Vec<usize> = (0..200).filter(|_| p.sample(30 * MB)).collect();
        let gaps: Vec<usize> = trims.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(&gaps[..4], &[2, 3, 5, 9], "waits of 1, 2, 4, 8 samples");
        assert!(gaps[4..].iter().all(|g| *g == 13), "then 12: {gaps:?}");
        // Once a trim helps, the next one may come at once.
        assert!(!p.sample(2 * MB));
        assert!(p.sample(30 * MB), "no wait left after a trim that helped");
    }

    #[test]
    fn memory_reused_and_freed_between_samples_is_trimmed_again() {
        let mut p = TrimPolicy::new(8 * MB);
        p.sample(MB);
        assert!(p.sample(30 * MB));
        assert!(!p.sample(MB));
        // Between two samples a winding-down load took 20 MB of the handed-back pages and
        // freed them again: the allocator's free count is where it was after the trim, but
        // the pages are resident, and that is what the policy sees.
        assert!(p.sample(21 * MB));
    }

    #[test]
    fn a_steady_load_never_trims() {
        let mut p = TrimPolicy::new(8 * MB);
        for i in 0..1000u64 {
            // Unused memory wobbling by up to 7 MB around a level, as a steady load does.
            assert!(!p.sample(20 * MB + (i * 7919 % 7) * MB), "sample {i}");
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_shows_as_unused_resident_until_trimmed() {
        let before = sample_heap().expect("glibc and /proc answer");
        // 32 MB in small blocks (below the mmap threshold), then all freed but every 64th:
        // the survivors (the last block among them) keep the holes between them from
        // merging into the top of the heap, which glibc would give back by itself.
        let mut blocks: Vec<Vec<u8>> = (0..8192).map(|i| vec![i as u8 | 1; 4000]).collect();
        let mut i = 0;
        blocks.retain(|_| {
            i += 1;
            i % 64 == 0
        });
        let freed = sample_heap().unwrap();
        assert_eq!(blocks.len(), 128);
        assert!(
            freed.free >= before.free + 16 * MB,
            "32 MB freed between pinned blocks, free bytes {before:?} -> {freed:?}"
        );
        assert!(
            freed.unused_resident >= before.unused_resident + 16 * MB,
            "and still resident: {before:?} -> {freed:?}"
        );
        release_free_heap();
        let trimmed = sample_heap().unwrap();
        assert!(
            trimmed.unused_resident + 16 * MB <= freed.unused_resident,
            "the trim handed it back: {freed:?} -> {trimmed:?}"
        );
    }
}
