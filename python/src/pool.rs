//! The thread pool the kernels run on.
//!
//! By default it has as many threads as torch's intra-op pool (`torch.get_num_threads()`, read
//! at every call, so `torch.set_num_threads` is followed) once torch has been imported, and
//! rayon's default (`RAYON_NUM_THREADS`, else the number of CPUs) otherwise.
//! `gradclip.set_num_threads(n)` pins it to `n`; `set_num_threads(0)` returns to the default.
//! The pool is rebuilt only when the wanted size changes. The thread count never changes a
//! result bit: the reduction tree depends on the buffer lengths only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use rayon::ThreadPool;

use crate::buffers::torch_num_threads;

/// 0: follow torch (or rayon's default); otherwise the pinned size.
static PINNED: AtomicUsize = AtomicUsize::new(0);

/// The pool and the size it was built for (`None`: rayon's default).
static POOL: Mutex<Option<(Option<usize>, Arc<ThreadPool>)>> = Mutex::new(None);

pub(crate) fn set_pinned(n: usize) {
    PINNED.store(n, Ordering::Relaxed);
}

fn wanted(py: Python<'_>) -> PyResult<Option<usize>> {
    match PINNED.load(Ordering::Relaxed) {
        0 => Ok(torch_num_threads(py)?.map(|n| n.max(1))),
        n => Ok(Some(n)),
    }
}

/// The pool for the next kernel call.
pub(crate) fn current(py: Python<'_>) -> PyResult<Arc<ThreadPool>> {
    let want = wanted(py)?;
    let mut slot = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((size, pool)) = slot.as_ref() {
        if *size == want {
            return Ok(Arc::clone(pool));
        }
    }
    let mut builder = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("gradclip-{i}"));
    if let Some(n) = want {
        builder = builder.num_threads(n);
    }
    let pool = Arc::new(
        builder
            .build()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start threads: {e}")))?,
    );
    *slot = Some((want, Arc::clone(&pool)));
    Ok(pool)
}

/// Threads the next call would use.
pub(crate) fn num_threads(py: Python<'_>) -> PyResult<usize> {
    Ok(current(py)?.current_num_threads())
}
