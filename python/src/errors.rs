//! The package's exceptions, defined in Python (`gradclip/_errors.py`, so they carry attributes
//! and several bases) and raised from here.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let m = ERRORS.get_or_try_init(py, || py.import("gradclip._errors").map(Bound::unbind))?;
    m.bind(py).getattr(name)
}

fn make(
    py: Python<'_>,
    name: &str,
    args: impl for<'a> FnOnce(&Bound<'a, PyAny>) -> PyResult<Bound<'a, PyAny>>,
) -> PyErr {
    match class(py, name).and_then(|c| args(&c)) {
        Ok(v) => PyErr::from_value(v),
        Err(e) => e,
    }
}

/// `UnsupportedTensorError`: a tensor or array gradclip cannot take (device, dtype, layout,
/// alignment, read-only). `who` names it, `pos` is its position.
pub(crate) fn unsupported(py: Python<'_>, who: &str, pos: usize, what: &str) -> PyErr {
    let msg = format!("{who} {what}; nothing was modified");
    make(py, "UnsupportedTensorError", |c| c.call1((msg, pos)))
}

/// `OverlapError`: two buffers of a call that writes share memory.
pub(crate) fn overlap(py: Python<'_>, a: &str, b: &str, pos_a: usize, pos_b: usize) -> PyErr {
    let msg = format!(
        "{a} and {b} share memory (the same tensor twice, overlapping views, or a view and its \
         base); writing through both would be undefined behaviour. Nothing was modified"
    );
    make(py, "OverlapError", |c| c.call1((msg, pos_a, pos_b)))
}

/// `NonFiniteError`: the first NaN or ±inf, by position, flat index and value.
pub(crate) fn nonfinite(
    py: Python<'_>,
    who: &str,
    pos: usize,
    index: usize,
    value: f64,
    rank: Option<usize>,
) -> PyErr {
    let on_rank = rank.map_or(String::new(), |r| format!(" on rank {r}"));
    let v = if value.is_nan() {
        "nan".to_string()
    } else if value > 0.0 {
        "inf".to_string()
    } else {
        "-inf".to_string()
    };
    let msg = format!(
        "non-finite gradient: {who}{on_rank} holds {v} at flat index {index}, so the total norm \
         is not finite and the gradients cannot be clipped; nothing was modified. To scale by \
         the non-finite norm anyway (as torch does), set error_if_nonfinite=False"
    );
    make(py, "NonFiniteError", |c| {
        c.call1((msg, pos, index, value, rank))
    })
}

/// A `ValueError` for a bad scalar argument (the core's message).
pub(crate) fn value(err: gradclip::Error) -> PyErr {
    PyValueError::new_err(err.to_string())
}
