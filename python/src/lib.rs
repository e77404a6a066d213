//! `gradclip._gradclip`: the native half of the gradclip Python package.
//!
//! A thin layer over the `gradclip` crate and nothing else: it turns Python lists of CPU tensors
//! or NumPy arrays into validated buffer views ([`buffers`]), releases the GIL, runs one library
//! call on the thread pool ([`pool`]), and maps the library's results and errors back to Python
//! values and exceptions ([`errors`]). It holds no numerics of its own: norms, coefficients,
//! scaling, the fused AMP step, the rounding of the result into the gradients' dtype and the
//! merge of distributed partials are all the library's. The public API (argument handling as
//! in `torch.nn.utils`, result tensors, `torch.amp.GradScaler` and `torch.distributed`) is the
//! Python package `gradclip`, which calls the functions here.

mod buffers;
mod errors;
mod pool;

use buffers::{collect, mark_written, views, views_mut, Access, Buffer, Buffers, Kind, Role};
use gradclip::{
    clip_grad_norm_, clip_grad_value_, clip_grads_with_norm_, exact_partial, first_nonfinite,
    fork_threshold_bytes, get_total_norm_with, total_norm_partial, unscale_clip_grad_norm_,
    ClipOptions, DType, Error, ExactPartial, Grad, Isa, NonFinite, NonFinitePolicy, NormPartial,
    NormType, Summation,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Runs `f` with the GIL released; on the pool when the buffers are large enough for the
/// library to fork at all (below [`fork_threshold_bytes`] it runs on the calling thread either way,
/// and handing it to a pool would only add a thread switch).
fn run<R: Send>(py: Python<'_>, bytes: usize, f: impl FnOnce() -> R + Send) -> PyResult<R> {
    if bytes >= fork_threshold_bytes() {
        let pool = pool::current(py)?;
        Ok(py.detach(move || pool.install(f)))
    } else {
        Ok(py.detach(f))
    }
}

fn parse_norm_type(p: f64) -> PyResult<NormType> {
    if p == f64::INFINITY {
        Ok(NormType::Inf)
    } else if p == 2.0 {
        Ok(NormType::L2)
    } else if p == 1.0 {
        Ok(NormType::L1)
    } else if p.is_finite() && p > 0.0 {
        Ok(NormType::P(p))
    } else {
        Err(PyValueError::new_err(format!(
            "norm_type {p} is not supported: gradclip takes p > 0 or inf ('inf'); torch's 0 \
             and -inf norms count or take minima and are not gradient norms to clip by"
        )))
    }
}

/// The library's summation mode for the Python keyword `exact`.
fn summation(exact: bool) -> Summation {
    if exact {
        Summation::Exact
    } else {
        Summation::Compensated
    }
}

fn role(use_grad: bool) -> Role {
    if use_grad {
        Role::Grads
    } else {
        Role::Tensors
    }
}

/// A norm as the Python layer needs it: `(kind, exact f64, dtype name, value rounded once to
/// that dtype)`; kind is `"torch"`, `"numpy"` or `None` (no buffer).
type NormOut = (Option<&'static str>, f64, Option<&'static str>, f64);

fn norm_out(b: &Buffers<'_>, total: f64) -> NormOut {
    let kind = b.kind.map(|k| match k {
        Kind::Torch => "torch",
        Kind::NumPy => "numpy",
    });
    let dtype = b.result_dtype();
    let rounded = dtype.map_or(total, |d| d.round_f64(total));
    (kind, total, dtype.map(buffers::dtype_name), rounded)
}

fn nonfinite_err(py: Python<'_>, b: &Buffers<'_>, nf: NonFinite, rank: Option<usize>) -> PyErr {
    let buf: &Buffer = &b.bufs[nf.buffer];
    errors::nonfinite(
        py,
        &b.name(nf.buffer),
        buf.pos,
        buf.logical_index(nf.index),
        nf.value,
        rank,
    )
}

fn lib_err(py: Python<'_>, b: &Buffers<'_>, e: Error) -> PyErr {
    match e {
        Error::NonFinite(nf) => nonfinite_err(py, b, nf, None),
        other => errors::value(other),
    }
}

/// The exact partial of `v` (L1, L2, Inf), or `None` for a P(p) norm: there is no exact sum
/// and the caller falls back to the compensated one, as the library's `get_total_norm_with` does.
fn exact_or_fallback(v: &[Grad<'_>], nt: NormType) -> Result<Option<ExactPartial>, Error> {
    match exact_partial(v, nt) {
        Ok(p) => Ok(Some(p)),
        Err(Error::ExactUnsupported { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The norm of `v` without short-circuit: NaN if any NaN, else +inf when an inf is present
/// (torch's behaviour); exact for L1, L2 and Inf when `exact`.
fn propagating_norm(v: &[Grad<'_>], nt: NormType, exact: bool) -> Result<f64, Error> {
    if exact {
        if let Some(p) = exact_or_fallback(v, nt)? {
            return Ok(p.finish());
        }
    }
    total_norm_partial(v, nt).map(|p| p.finish())
}

/// The total norm of the buffers (`tensors` or the `.grad` of `parameters`); `exact`: the
/// exactly rounded L1/L2 norm (`Summation::Exact`).
#[pyfunction]
#[pyo3(signature = (items, use_grad, norm_type, error_if_nonfinite, exact=false))]
fn total_norm(
    py: Python<'_>,
    items: &Bound<'_, PyAny>,
    use_grad: bool,
    norm_type: f64,
    error_if_nonfinite: bool,
    exact: bool,
) -> PyResult<NormOut> {
    let nt = parse_norm_type(norm_type)?;
    let b = collect(items, role(use_grad), Access::Read)?;
    let bufs = &b.bufs;
    let r = run(py, b.total_bytes(), || {
        // SAFETY: `bufs` came from `collect` in this call; `b.owners` keeps the objects alive.
        let v = unsafe { views(bufs) };
        if error_if_nonfinite {
            get_total_norm_with(&v, nt, summation(exact))
        } else {
            propagating_norm(&v, nt, exact)
        }
    })?;
    match r {
        Ok(total) => Ok(norm_out(&b, total)),
        Err(e) => Err(lib_err(py, &b, e)),
    }
}

/// `clip_grad_norm_`: the norm, then the scale (torch's NaN/inf propagation unless
/// `error_if_nonfinite`). `max_norm == inf` measures only.
#[pyfunction]
#[pyo3(signature = (items, max_norm, norm_type, error_if_nonfinite, exact=false))]
fn clip_grad_norm(
    py: Python<'_>,
    items: &Bound<'_, PyAny>,
    max_norm: f64,
    norm_type: f64,
    error_if_nonfinite: bool,
    exact: bool,
) -> PyResult<NormOut> {
    if max_norm == f64::INFINITY {
        return total_norm(py, items, true, norm_type, error_if_nonfinite, exact);
    }
    let nt = parse_norm_type(norm_type)?;
    let b = collect(items, Role::Grads, Access::Write)?;
    let options = ClipOptions {
        norm_type: nt,
        on_nonfinite: if error_if_nonfinite {
            NonFinitePolicy::Error
        } else {
            NonFinitePolicy::Propagate
        },
        summation: summation(exact),
        ..ClipOptions::default()
    };
    let bufs = &b.bufs;
    let r = run(py, b.total_bytes(), || {
        // SAFETY: collected with Access::Write in this call (writable, pairwise disjoint);
        // `b.owners` keeps the objects alive; these are the only views.
        let mut v = unsafe { views_mut(bufs) };
        clip_grad_norm_(&mut v, max_norm, options)
    })?;
    match r {
        Ok(report) => {
            if report.clipped {
                mark_written(py, &b)?;
            }
            Ok(norm_out(&b, report.total_norm))
        }
        Err(e) => Err(lib_err(py, &b, e)),
    }
}

/// `clip_grads_with_norm_`: scale by `min(1, max_norm / (total_norm + 1e-6))`.
#[pyfunction]
fn clip_grads_with_norm(
    py: Python<'_>,
    items: &Bound<'_, PyAny>,
    max_norm: f64,
    total_norm: f64,
) -> PyResult<bool> {
    let b = collect(items, Role::Grads, Access::Write)?;
    if max_norm == f64::INFINITY {
        return Ok(false);
    }
    let bufs = &b.bufs;
    let r = run(py, b.total_bytes(), || {
        // SAFETY: as in `clip_grad_norm`.
        let mut v = unsafe { views_mut(bufs) };
        clip_grads_with_norm_(&mut v, max_norm, total_norm)
    })?;
    match r {
        Ok(report) => {
            if report.clipped {
                mark_written(py, &b)?;
            }
            Ok(report.clipped)
        }
        Err(e) => Err(lib_err(py, &b, e)),
    }
}

/// `clip_grad_value_`: clamp to `[-clip_value, clip_value]`.
#[pyfunction]
fn clip_grad_value(py: Python<'_>, items: &Bound<'_, PyAny>, clip_value: f64) -> PyResult<()> {
    let b = collect(items, Role::Grads, Access::Write)?;
    let bufs = &b.bufs;
    let r = run(py, b.total_bytes(), || {
        // SAFETY: as in `clip_grad_norm`.
        let mut v = unsafe { views_mut(bufs) };
        clip_grad_value_(&mut v, clip_value)
    })?;
    r.map_err(|e| lib_err(py, &b, e))?;
    mark_written(py, &b)
}

/// `(kind, result dtype, partial bytes, exact)` of [`partial`].
type PartialOut<'py> = (
    Option<&'static str>,
    Option<&'static str>,
    Bound<'py, PyBytes>,
    bool,
);

/// This rank's partial for a sharded norm, with the kind and result dtype of the local buffers
/// and whether it is exact: 40 bytes (`NormPartial`'s `repr(C)` layout) in compensated mode,
/// 96 bytes (`ExactPartial`'s) in exact mode for L1, L2 and Inf. Exact mode falls back to the
/// compensated partial for P(p) norms, as the library's `get_total_norm_with` does.
#[pyfunction]
#[pyo3(signature = (items, use_grad, norm_type, for_write, exact=false))]
fn partial<'py>(
    py: Python<'py>,
    items: &Bound<'py, PyAny>,
    use_grad: bool,
    norm_type: f64,
    for_write: bool,
    exact: bool,
) -> PyResult<PartialOut<'py>> {
    let nt = parse_norm_type(norm_type)?;
    let access = if for_write {
        Access::Write
    } else {
        Access::Read
    };
    let b = collect(items, role(use_grad), access)?;
    let bufs = &b.bufs;
    let r = run(py, b.total_bytes(), || {
        // SAFETY: as in `total_norm`.
        let v = unsafe { views(bufs) };
        if exact {
            if let Some(p) = exact_or_fallback(&v, nt)? {
                return Ok(Local::Exact(p));
            }
        }
        total_norm_partial(&v, nt).map(Local::Compensated)
    })?;
    let p = r.map_err(|e| lib_err(py, &b, e))?;
    let (kind, _, dtype, _) = norm_out(&b, 0.0);
    let (bytes, is_exact) = match &p {
        Local::Exact(p) => (bytemuck::bytes_of(p), true),
        Local::Compensated(p) => (bytemuck::bytes_of(p), false),
    };
    Ok((kind, dtype, PyBytes::new(py, bytes), is_exact))
}

/// A rank's partial in either mode.
enum Local {
    Compensated(NormPartial),
    Exact(ExactPartial),
}

/// The partial type `P` of a mode: its identity, merge, finish and finiteness.
struct Ops<P> {
    empty: P,
    merge: fn(P, P) -> P,
    finish: fn(&P) -> f64,
    is_finite: fn(&P) -> bool,
}

/// Merges the partials of type `P` concatenated in `gathered` in rank order.
fn merge_gathered<P: bytemuck::Pod>(
    gathered: &[u8],
    ops: Ops<P>,
) -> PyResult<(f64, Option<usize>)> {
    let size = std::mem::size_of::<P>();
    if !gathered.len().is_multiple_of(size) {
        return Err(PyValueError::new_err(format!(
            "gathered partials: {} bytes is not a multiple of {size}",
            gathered.len()
        )));
    }
    let mut total = ops.empty;
    let mut bad = None;
    for (rank, chunk) in gathered.chunks_exact(size).enumerate() {
        let p: P = bytemuck::pod_read_unaligned(chunk);
        if !(ops.is_finite)(&p) && bad.is_none() {
            bad = Some(rank);
        }
        total = (ops.merge)(total, p);
    }
    Ok(((ops.finish)(&total), bad))
}

/// Merges the ranks' partials (concatenated, in rank order; `exact`: `ExactPartial`s, else
/// `NormPartial`s) and finishes the norm: `(total, first rank whose partial saw a NaN or inf, or
/// None)`. Every rank gets the same bits; exact partials give the bits of the single-process
/// exact norm of all the shards, whatever the cut points and the number of ranks.
#[pyfunction]
#[pyo3(signature = (gathered, exact=false))]
fn merge_partials(gathered: &[u8], exact: bool) -> PyResult<(f64, Option<usize>)> {
    if exact {
        let ops = Ops {
            empty: ExactPartial::EMPTY,
            merge: ExactPartial::merge,
            finish: ExactPartial::finish,
            is_finite: ExactPartial::is_finite,
        };
        merge_gathered(gathered, ops)
    } else {
        let ops = Ops {
            empty: NormPartial::EMPTY,
            merge: NormPartial::merge,
            finish: NormPartial::finish,
            is_finite: NormPartial::is_finite,
        };
        merge_gathered(gathered, ops)
    }
}

/// Raises `NonFiniteError` for the first NaN or inf of the local buffers (naming `rank` when
/// given); returns when they are all finite.
#[pyfunction]
#[pyo3(signature = (items, use_grad, rank=None))]
fn check_finite(
    py: Python<'_>,
    items: &Bound<'_, PyAny>,
    use_grad: bool,
    rank: Option<usize>,
) -> PyResult<()> {
    let b = collect(items, role(use_grad), Access::Read)?;
    let bufs = &b.bufs;
    let found = run(py, b.total_bytes(), || {
        // SAFETY: as in `total_norm`.
        let v = unsafe { views(bufs) };
        first_nonfinite(&v)
    })?;
    match found {
        Some(nf) => Err(nonfinite_err(py, &b, nf, rank)),
        None => Ok(()),
    }
}

/// What the fused AMP step reports to the Python layer.
type AmpOut = (
    Option<&'static str>,
    f64,
    Option<&'static str>,
    f64,
    bool,
    bool,
    f64,
    f64,
);

/// The fused AMP step on the `.grad` of `items`: `(kind, unscaled norm, dtype, rounded norm,
/// found_inf, written, clip_coef, factor)`. Nothing is written when a gradient is not finite.
#[pyfunction]
#[pyo3(signature = (items, loss_scale, max_norm, norm_type, error_if_nonfinite, refuse_f16, exact=false))]
#[allow(clippy::too_many_arguments)]
fn amp_step(
    py: Python<'_>,
    items: &Bound<'_, PyAny>,
    loss_scale: f64,
    max_norm: f64,
    norm_type: f64,
    error_if_nonfinite: bool,
    refuse_f16: bool,
    exact: bool,
) -> PyResult<AmpOut> {
    let nt = parse_norm_type(norm_type)?;
    let b = collect(items, Role::Grads, Access::Write)?;
    if refuse_f16 && b.bufs.iter().any(|x| x.dtype == DType::F16) {
        // torch.amp.GradScaler.unscale_ refuses float16 gradients with this message.
        return Err(PyValueError::new_err(
            "Attempting to unscale FP16 gradients.",
        ));
    }
    let options = ClipOptions {
        norm_type: nt,
        on_nonfinite: if error_if_nonfinite {
            NonFinitePolicy::Error
        } else {
            NonFinitePolicy::Skip
        },
        summation: summation(exact),
        ..ClipOptions::default()
    };
    let bufs = &b.bufs;
    let r = run(py, b.total_bytes(), || {
        // SAFETY: as in `clip_grad_norm`.
        let mut v = unsafe { views_mut(bufs) };
        unscale_clip_grad_norm_(&mut v, loss_scale, max_norm, options)
    })?;
    let rep = r.map_err(|e| lib_err(py, &b, e))?;
    if rep.written {
        mark_written(py, &b)?;
    }
    let (kind, total, dtype, rounded) = norm_out(&b, rep.total_norm);
    Ok((
        kind,
        total,
        dtype,
        rounded,
        rep.found_inf.is_some(),
        rep.written,
        rep.clip_coef,
        rep.factor as f64,
    ))
}

/// `value` rounded once into the dtype named (`"float32"`, `"float16"`, `"bfloat16"`).
#[pyfunction]
fn round_to(dtype: &str, value: f64) -> PyResult<f64> {
    let d = match dtype {
        "float32" => DType::F32,
        "float16" => DType::F16,
        "bfloat16" => DType::BF16,
        other => return Err(PyValueError::new_err(format!("unknown dtype {other}"))),
    };
    Ok(d.round_f64(value))
}

/// Pins the pool to `n` threads (`0`: follow torch / rayon's default again).
#[pyfunction]
fn set_num_threads(n: usize) {
    pool::set_pinned(n);
}

/// Threads the next call will use.
#[pyfunction]
fn get_num_threads(py: Python<'_>) -> PyResult<usize> {
    pool::num_threads(py)
}

#[pymodule]
fn _gradclip(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(total_norm, m)?)?;
    m.add_function(wrap_pyfunction!(clip_grad_norm, m)?)?;
    m.add_function(wrap_pyfunction!(clip_grads_with_norm, m)?)?;
    m.add_function(wrap_pyfunction!(clip_grad_value, m)?)?;
    m.add_function(wrap_pyfunction!(partial, m)?)?;
    m.add_function(wrap_pyfunction!(merge_partials, m)?)?;
    m.add_function(wrap_pyfunction!(check_finite, m)?)?;
    m.add_function(wrap_pyfunction!(amp_step, m)?)?;
    m.add_function(wrap_pyfunction!(round_to, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add("ISA", Isa::selected().name())?;
    m.add("PARTIAL_BYTES", std::mem::size_of::<NormPartial>())?;
    m.add("EXACT_PARTIAL_BYTES", std::mem::size_of::<ExactPartial>())?;
    Ok(())
}
