//! Where a pass's blocking work runs, and giving its memory back afterwards: an idle agent
//! should hold what it needs between passes, not its largest pass (docs/performance.md).

use std::sync::atomic::{AtomicU64, Ordering};

/// Why blocking work could not give its answer.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("a git or render job panicked")]
    Panicked,
    #[error("a git or render job was dropped")]
    Dropped,
}

/// Runs blocking work (git, validation, rendering) on rayon's threads, which validation and
/// rendering use anyway, so that what a pass allocates lives in the heaps of threads that
/// stay, and [`release`] can give it back; tokio's blocking threads come and go and leave
/// their freed memory behind in the allocator.
pub async fn off_async<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, MemoryError> {
    let (done, result) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        let _ = done.send(outcome);
    });
    match result.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(MemoryError::Panicked),
        Err(_) => Err(MemoryError::Dropped),
    }
}

/// Returns the memory a pass freed to the system. The allocator keeps freed pages in the
/// heap of the thread that allocated them until that thread allocates again; rayon's
/// threads sleep between passes, so without this an idle agent keeps its largest pass's
/// memory (measured: 113 MiB idle after a 1,000-function apply, docs/performance.md).
pub fn release() {
    // SAFETY: mi_collect only frees unused pages of the calling thread's own heap (and, with
    // `force`, its abandoned segments); it is safe to call at any time on any thread.
    rayon::broadcast(|_| unsafe { libmimalloc_sys::mi_collect(true) });
    // SAFETY: as above, for this thread.
    unsafe { libmimalloc_sys::mi_collect(true) };
    RELEASED.fetch_add(1, Ordering::Relaxed);
}

/// Counts [`release`] calls, so that each async worker thread collects once after each pass
/// (see [`collect_after_pass`]).
static RELEASED: AtomicU64 = AtomicU64::new(0);

/// For tokio's `on_thread_park`: a worker thread going idle after a pass returns what it
/// holds too. The async threads decode the LIST responses of a pass (the live state, with
/// managedFields, 100+ MiB at 1,000 functions); without this an idle agent kept 118 MiB
/// after a few pushes (`cargo bench --bench agent`). Parking is frequent, so a thread
/// collects only when a pass has ended since its last collection.
pub fn collect_after_pass() {
    thread_local! {
        static SEEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let released = RELEASED.load(Ordering::Relaxed);
    if SEEN.get() != released {
        SEEN.set(released);
        // SAFETY: as in `release`, for this thread.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }
}
