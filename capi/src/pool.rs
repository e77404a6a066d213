//! The process-wide thread pool every kernel call of the C ABI runs on.
//!
//! `gradclip_set_num_threads(n)` replaces the pool; calls already running keep the pool they
//! started on (each holds an `Arc` to it) and finish there, later calls use the new one. The old
//! pool's threads exit once its last call returns. The thread count never changes a result bit:
//! the library's reduction tree depends on the buffer lengths only. Calls too small for the
//! library to fork run on the caller's thread (see [`run`]).
//!
//! After `fork()` the child has the parent's pool but none of its threads: a job handed to it
//! would wait forever. The pool therefore remembers the process that built it, and a child
//! builds its own (same thread count) on first use. The parent's pool is kept, never dropped:
//! dropping it would signal threads that do not exist, under locks a parent thread may have held
//! at the fork.

use std::sync::{Arc, Mutex, PoisonError};

use rayon::{ThreadPool, ThreadPoolBuilder};

struct State {
    /// The pool of this process, `None` until the first call that needs it.
    pool: Option<Arc<ThreadPool>>,
    /// The process that built `pool`.
    pid: u32,
    /// The requested thread count (0: rayon's default).
    threads: usize,
    /// Pools inherited through `fork()`, kept reachable and never dropped (see the module docs).
    inherited: Vec<Arc<ThreadPool>>,
}

static STATE: Mutex<State> = Mutex::new(State {
    pool: None,
    pid: 0,
    threads: 0,
    inherited: Vec::new(),
});

/// A pool of `n` threads (`0`: rayon's default, `RAYON_NUM_THREADS` or one per CPU).
fn build(n: usize) -> Option<Arc<ThreadPool>> {
    ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("gradclip-{i}"))
        .build()
        .ok()
        .map(Arc::new)
}

impl State {
    /// Sets a pool inherited from a parent process aside.
    fn forget_inherited(&mut self) {
        let pid = std::process::id();
        if self.pid != pid {
            if let Some(p) = self.pool.take() {
                self.inherited.push(p);
            }
            self.pid = pid;
        }
    }
}

fn state() -> std::sync::MutexGuard<'static, State> {
    // A panic while the lock was held cannot leave `State` half-written: take it as it is.
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The current pool, built on first use in this process (`None` if the system refused the
/// threads).
fn current() -> Option<Arc<ThreadPool>> {
    let mut s = state();
    s.forget_inherited();
    if s.pool.is_none() {
        s.pool = build(s.threads);
    }
    s.pool.clone()
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
    let mut s = state();
    s.forget_inherited();
    match build(n) {
        Some(pool) => {
            s.pool = Some(pool);
            s.threads = n;
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
        // A pool built by another process (as after fork) is set aside and rebuilt with the
        // same thread count.
        state().pid = std::process::id().wrapping_add(1);
        assert_eq!(install(rayon::current_num_threads), Some(1));
        assert_eq!(state().inherited.len(), 1);
        assert!(set_num_threads(0));
        assert_eq!(
            install(rayon::current_num_threads),
            Some(rayon::current_num_threads())
        );
    }
}
