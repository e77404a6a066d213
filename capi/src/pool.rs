//! The process-wide thread pool every kernel call of the C ABI runs on.
//!
//! `gradclip_set_num_threads(n)` replaces the pool; calls already running keep the pool they
//! started on (each holds an `Arc` to it) and finish there, later calls use the new one. The old
//! pool's threads exit once its last call returns. The thread count never changes a result bit:
//! the library's reduction tree depends on the buffer lengths only. Calls too small for the
//! library to fork run on the caller's thread (see [`run`]).

use std::sync::{Arc, Mutex, PoisonError};

use rayon::{ThreadPool, ThreadPoolBuilder};

/// `None` until the first kernel call or `gradclip_set_num_threads`.
static POOL: Mutex<Option<Arc<ThreadPool>>> = Mutex::new(None);

/// A pool of `n` threads (`0`: rayon's default, `RAYON_NUM_THREADS` or one per CPU).
fn build(n: usize) -> Option<Arc<ThreadPool>> {
    ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("gradclip-{i}"))
        .build()
        .ok()
        .map(Arc::new)
}

/// The current pool, built with the default thread count on first use (`None` if the system
/// refused the threads).
fn current() -> Option<Arc<ThreadPool>> {
    // A panic while the lock was held cannot leave the `Option` half-written: take it as it is.
    let mut slot = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if slot.is_none() {
        *slot = build(0);
    }
    slot.clone()
}

/// Runs `f` on the current pool (`None` if no pool could be built).
pub(crate) fn install<R: Send>(f: impl FnOnce() -> R + Send) -> Option<R> {
    current().map(|pool| pool.install(f))
}

/// Runs `f`, a library call over `bytes` bytes of gradients, where its threads belong: on the
/// calling thread when the library would not fork for that size (it then never calls into rayon,
/// and the hand-off to a pool thread would cost more than the work: about 10 us against tens of
/// ns for a small buffer), else on the pool.
pub(crate) fn run<R: Send>(bytes: usize, f: impl FnOnce() -> R + Send) -> Option<R> {
    if bytes < gradclip_core::fork_threshold_bytes() {
        Some(f())
    } else {
        install(f)
    }
}

/// Replaces the pool by one of `n` threads (`0`: rayon's default). `false`, and the old pool
/// kept, when `n` is beyond what rayon supports or the system refused the threads.
pub(crate) fn set_num_threads(n: usize) -> bool {
    if n > rayon::max_num_threads() {
        return false;
    }
    let mut slot = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    match build(n) {
        Some(pool) => {
            *slot = Some(pool);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_runs_on_a_pool_of_the_requested_size() {
        assert!(set_num_threads(3));
        assert_eq!(install(rayon::current_num_threads), Some(3));
        assert!(set_num_threads(1));
        assert_eq!(install(rayon::current_num_threads), Some(1));
        assert!(!set_num_threads(usize::MAX));
        assert_eq!(install(rayon::current_num_threads), Some(1));
        assert!(set_num_threads(0));
        assert_eq!(
            install(rayon::current_num_threads),
            Some(rayon::current_num_threads())
        );
    }
}
