"""gradclip: accurate, deterministic gradient-norm clipping for PyTorch and NumPy trainers.

Drop-in replacements for ``torch.nn.utils.get_total_norm``, ``clip_grad_norm_``,
``clip_grads_with_norm_`` and ``clip_grad_value_`` that work in place, without copies, on CPU
tensors (and NumPy arrays) of dtype float32, float16 and bfloat16, with the GIL released while
the kernels run. The norm is computed in compensated f64 (within 1e-14 relative of the exact
value for L1 and L2), the same bits for any thread count and any CPU, and returned as torch
returns it: a 0-dim tensor of the gradients' dtype, rounded once from the f64 value.

``exact=True`` (a keyword of every function that computes a norm) gives the exactly rounded
norm instead: the sum of squares (L2) or of magnitudes (L1) is accumulated without rounding and
rounded once to f64 (L2 then takes the f64 square root), so the result has the same bits for any
split of the same numbers into tensors, any order of the tensors, any thread count and CPU, and,
with ``group=``, any number of ranks and any shard cut points. Inf norms are exact either way;
P(p) norms are not summed exactly and ``exact=True`` computes them as without it (the core
library's ``Summation::Exact`` does the same).

Besides the torch names:

* :func:`unscale_clip_grad_norm_` -- ``scaler.unscale_(optimizer)`` and ``clip_grad_norm_`` fused
  into one read pass and at most one write pass, for ``torch.amp.GradScaler``;
* ``group=`` on the norm functions -- a sharded norm over a ``torch.distributed`` process group
  (one all-gather of a 40-byte partial, 96 bytes with ``exact=True``), the same bits on every
  rank; with ``exact=True`` the bits of the single-process exact norm of the unsharded data;
* :func:`get_total_norm_f64` / :func:`clip_grad_norm_f64_` -- the f64 norm as a Python float;
* :func:`set_num_threads` / :func:`get_num_threads` -- the kernels' thread pool.

Where gradclip differs from torch (each difference is deliberate and documented on the function):
it refuses, with an exception naming the tensor and modifying nothing, what it cannot do in place
(non-CPU tensors, other dtypes, non-dense layouts, tensor subclasses) and buffers that share
memory in a call that writes; it takes ``norm_type`` > 0 or inf only; the clip coefficient comes
from the f64 norm, not from the norm rounded to the gradients' dtype; ``max_norm`` must be > 0
(``inf`` measures without writing).
"""

from __future__ import annotations

import sys
import types
import warnings
from typing import NamedTuple

from . import _gradclip as _native
from ._errors import NonFiniteError, OverlapError, UnsupportedTensorError

__version__ = "0.1.0"

__all__ = [
    "get_total_norm",
    "clip_grad_norm_",
    "clip_grads_with_norm_",
    "clip_grad_value_",
    "get_total_norm_f64",
    "clip_grad_norm_f64_",
    "unscale_clip_grad_norm_",
    "amp_step_",
    "AmpResult",
    "set_num_threads",
    "get_num_threads",
    "NonFiniteError",
    "UnsupportedTensorError",
    "OverlapError",
    "ISA",
]

#: The instruction set the kernels use on this CPU (``avx512``, ``avx2``, ``neon``, ``portable``).
ISA: str = _native.ISA


def _single(x) -> bool:
    """True for one tensor or one array (as opposed to an iterable of them)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return True
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.ndarray)


def _as_list(items, warn_empty_generator: bool = False):
    if type(items) is list or type(items) is tuple:
        return items
    if _single(items):
        return [items]
    is_generator = isinstance(items, types.GeneratorType)
    items = list(items)
    if warn_empty_generator and is_generator and not items:
        warnings.warn(
            "`parameters` is an empty generator, no gradient clipping will occur.",
            stacklevel=3,
        )
    return items


def _exact_flag(exact) -> bool:
    if exact is True or exact is False:
        return exact
    raise TypeError(f"exact must be True or False, got {exact!r}")


def _norm(out):
    """The native ``(kind, f64, dtype, rounded)`` as torch returns it."""
    kind, total, dtype, rounded = out
    if kind == "torch":
        torch = sys.modules["torch"]
        return torch.scalar_tensor(rounded, dtype=getattr(torch, dtype))
    if kind == "numpy":
        return total
    # No buffer at all: torch returns torch.tensor(0.0) (the default dtype).
    torch = sys.modules.get("torch")
    return torch.tensor(0.0) if torch is not None else 0.0


def get_total_norm(
    tensors, norm_type=2.0, error_if_nonfinite=False, foreach=None, *, group=None, exact=False
):
    """The norm of ``tensors`` (a tensor, or an iterable of tensors or of NumPy arrays), as if
    they were concatenated into one vector: ``torch.nn.utils.get_total_norm``.

    Returns a 0-dim CPU tensor of the tensors' dtype (float32 when dtypes are mixed, as torch
    promotes them), holding the f64 norm rounded once; for NumPy arrays, the f64 norm as a Python
    float; for an empty list, ``torch.tensor(0.0)`` (``0.0`` when torch is not imported).

    ``norm_type``: a float > 0, or ``inf`` / ``'inf'``. With ``error_if_nonfinite=True`` a NaN or
    ±inf raises :class:`NonFiniteError` naming the tensor, flat index and value; otherwise the
    result is NaN (some NaN) or inf, as torch's. ``foreach`` is accepted and ignored (there is one
    implementation). ``group``: a ``torch.distributed`` process group over which the tensors are
    shards of one set (see :mod:`gradclip.distributed`); ``None`` communicates nothing.

    ``exact``: ``True`` for the exactly rounded L1/L2 norm (see the module docs): the same bits
    for any split of the data into tensors or, with ``group``, into shards over any number of
    ranks. Inf is exact either way; P(p) norms are computed as with ``exact=False``.

    A norm too large for the dtype (above 65504 in float16) is returned as inf, as torch would;
    :func:`get_total_norm_f64` gives the f64 value.
    """
    tensors = _as_list(tensors)
    norm_type = float(norm_type)
    exact = _exact_flag(exact)
    if group is not None:
        from . import distributed

        return distributed._total_norm(
            tensors, False, norm_type, error_if_nonfinite, group, exact=exact
        )
    return _norm(_native.total_norm(tensors, False, norm_type, bool(error_if_nonfinite), exact))


def get_total_norm_f64(
    tensors, norm_type=2.0, error_if_nonfinite=False, *, group=None, exact=False
) -> float:
    """:func:`get_total_norm` as the f64 value itself (a Python float), before any rounding."""
    tensors = _as_list(tensors)
    norm_type = float(norm_type)
    exact = _exact_flag(exact)
    if group is not None:
        from . import distributed

        return distributed._total_norm(
            tensors, False, norm_type, error_if_nonfinite, group, as_float=True, exact=exact
        )
    return _native.total_norm(tensors, False, norm_type, bool(error_if_nonfinite), exact)[1]


def clip_grad_norm_(
    parameters,
    max_norm,
    norm_type=2.0,
    error_if_nonfinite=False,
    foreach=None,
    *,
    group=None,
    exact=False,
):
    """Clips the global norm of the gradients of ``parameters`` in place, as
    ``torch.nn.utils.clip_grad_norm_``, and returns the norm before clipping (a 0-dim tensor of
    the gradients' dtype; a float for NumPy arrays, which are their own gradients).

    Parameters without ``.grad`` are skipped; a single tensor and generators are accepted (an
    empty generator warns, as torch). With ``coef = min(1, max_norm / (norm + 1e-6))`` computed
    in f64 from the f64 norm, every element becomes ``round_to_dtype(f32(x) * f32(coef))``; when
    ``coef == 1`` nothing is written at all (torch multiplies by 1).

    Non-finite gradients: ``error_if_nonfinite=True`` raises :class:`NonFiniteError` (a
    ``RuntimeError``) naming the parameter, flat index and value, and modifies nothing; otherwise,
    as torch, the norm is NaN or inf and every gradient is multiplied by the resulting NaN or 0.

    Differences from torch: ``max_norm`` must be > 0 (``ValueError`` otherwise) and
    ``max_norm=inf`` measures without writing anything; the coefficient uses the f64 norm, so
    float16 gradients whose norm exceeds 65504 are clipped correctly (torch computes an inf norm
    in float16 and zeroes them); gradients that share memory raise :class:`OverlapError`.
    ``foreach`` is accepted and ignored. ``group`` and ``exact``: see :func:`get_total_norm`
    (with ``exact=True`` the coefficient comes from the exact norm, so the clipped gradients have
    the same bits however the data is split into tensors, shards and ranks).
    """
    parameters = _as_list(parameters, warn_empty_generator=True)
    max_norm = float(max_norm)
    norm_type = float(norm_type)
    exact = _exact_flag(exact)
    if group is not None:
        from . import distributed

        return distributed._clip_grad_norm(
            parameters, max_norm, norm_type, error_if_nonfinite, group, exact=exact
        )
    return _norm(
        _native.clip_grad_norm(parameters, max_norm, norm_type, bool(error_if_nonfinite), exact)
    )


def clip_grad_norm_f64_(
    parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, *, group=None, exact=False
) -> float:
    """:func:`clip_grad_norm_` returning the f64 norm before clipping as a Python float."""
    parameters = _as_list(parameters, warn_empty_generator=True)
    max_norm = float(max_norm)
    norm_type = float(norm_type)
    exact = _exact_flag(exact)
    if group is not None:
        from . import distributed

        return distributed._clip_grad_norm(
            parameters, max_norm, norm_type, error_if_nonfinite, group, as_float=True, exact=exact
        )
    return _native.clip_grad_norm(
        parameters, max_norm, norm_type, bool(error_if_nonfinite), exact
    )[1]


def clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None) -> None:
    """Scales the gradients by ``min(1, max_norm / (total_norm + 1e-6))`` in place, as
    ``torch.nn.utils.clip_grads_with_norm_`` (``total_norm``: a tensor or a float, e.g. from
    :func:`get_total_norm`). Nothing is written when the coefficient is 1. A NaN or inf
    ``total_norm`` propagates as in torch. ``max_norm`` must be > 0; ``inf`` writes nothing."""
    parameters = _as_list(parameters)
    _native.clip_grads_with_norm(parameters, float(max_norm), float(total_norm))


def clip_grad_value_(parameters, clip_value, foreach=None) -> None:
    """Clamps every gradient element to ``[-clip_value, clip_value]`` in place, as
    ``torch.nn.utils.clip_grad_value_``; NaN stays NaN, ±inf become ±clip_value (rounded to the
    dtype). ``clip_value`` must be >= 0 (torch also takes negative values)."""
    parameters = _as_list(parameters)
    _native.clip_grad_value(parameters, float(clip_value))


class AmpResult(NamedTuple):
    """What :func:`amp_step_` found and did."""

    #: Norm of the unscaled gradients: a 0-dim tensor of their dtype (a float for NumPy);
    #: NaN or inf when ``found_inf``.
    total_norm: object
    #: True when a gradient held NaN or inf: nothing was written, skip the optimizer step.
    found_inf: bool
    #: ``min(1, max_norm / (total_norm + 1e-6))`` in f64 (1 when ``found_inf``).
    clip_coef: float
    #: The factor every element was multiplied by, ``f32(clip_coef / loss_scale)``.
    factor: float
    #: True when the gradients were rewritten (``factor != 1``).
    written: bool


def amp_step_(
    parameters, loss_scale, max_norm, norm_type=2.0, error_if_nonfinite=False, *, exact=False
):
    """Unscales gradients that carry a loss scale and clips them, fused: one read pass (the
    NaN/inf check and the norm) and at most one write pass with the factor
    ``f32(min(1, max_norm / (norm / loss_scale + 1e-6)) / loss_scale)``; nothing is written when a
    gradient is not finite (``found_inf``), nor when the factor is exactly 1. Works on tensors
    (their ``.grad``) and NumPy arrays. For ``torch.amp.GradScaler`` use
    :func:`unscale_clip_grad_norm_`, which also records what ``scaler.step`` and
    ``scaler.update`` need. ``exact=True``: the norm is the exactly rounded norm of the scaled
    gradients divided by ``loss_scale`` (see :func:`get_total_norm`); with a power-of-two scale,
    the exact norm of the unscaled gradients."""
    parameters = _as_list(parameters)
    kind, total, dtype, rounded, found_inf, written, coef, factor = _native.amp_step(
        parameters,
        float(loss_scale),
        float(max_norm),
        float(norm_type),
        bool(error_if_nonfinite),
        False,
        _exact_flag(exact),
    )
    return AmpResult(_norm((kind, total, dtype, rounded)), found_inf, coef, factor, written)


def unscale_clip_grad_norm_(
    scaler, optimizer, max_norm, norm_type=2.0, error_if_nonfinite=False, *, exact=False
):
    """``scaler.unscale_(optimizer)`` followed by ``clip_grad_norm_`` over the optimizer's
    parameters, fused into one read pass and at most one write pass (see
    :func:`gradclip.amp.unscale_clip_grad_norm_`). Returns the norm of the unscaled gradients as
    ``clip_grad_norm_`` would. Afterwards ``scaler.step(optimizer)`` and ``scaler.update()``
    behave exactly as after ``scaler.unscale_(optimizer)``. ``exact``: see :func:`amp_step_`."""
    from . import amp

    return amp.unscale_clip_grad_norm_(
        scaler, optimizer, max_norm, norm_type, error_if_nonfinite, exact=exact
    )


def set_num_threads(n: int) -> None:
    """Pins the kernels' thread pool to ``n`` threads. ``n = 0`` returns to the default: as many
    threads as ``torch.get_num_threads()`` (followed at every call) once torch is imported, else
    rayon's default (``RAYON_NUM_THREADS``, else the number of CPUs). The thread count never
    changes a result bit."""
    n = int(n)
    if n < 0:
        raise ValueError(f"set_num_threads: n must be >= 0, got {n}")
    _native.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads the next call will use."""
    return _native.get_num_threads()
