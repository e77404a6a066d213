"""The fused mixed-precision step for ``torch.amp.GradScaler``.

The usual loop clips unscaled gradients like this::

    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)                                    # read + write every element
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # read, then maybe write again
    scaler.step(optimizer)
    scaler.update()

With gradclip the two middle lines become one call that reads every gradient once (NaN/inf
check and norm) and writes it at most once, with the factor ``f32(coef / S)``::

    gradclip.unscale_clip_grad_norm_(scaler, optimizer, max_norm)

and ``scaler.step(optimizer)`` / ``scaler.update()`` behave exactly as after
``scaler.unscale_(optimizer)``: the call records the optimizer's state as ``unscale_`` does
(stage ``UNSCALED`` and a ``found_inf_per_device`` entry for the CPU holding 0.0 or 1.0), so
``step`` skips ``optimizer.step()`` when an inf or NaN was found and ``update`` backs the scale
off or grows it by the same rule.

Differences from ``unscale_`` + ``clip_grad_norm_``, all documented in the core crate's ``amp``
module:

* The norm of the unscaled gradients is the f64 norm of the scaled ones divided by S: exact when
  S is a power of two (GradScaler's scales are, from 2**16 with growth 2 and backoff 0.5), so it
  is the norm of the gradients ``unscale_`` would have produced.
* Each element is rounded once (``round_to_dtype(f32(x) * f32(coef / S))``) instead of twice, and
  ``coef`` comes from the f64 norm rather than from torch's norm in the gradients' dtype. With a
  power-of-two S, float32 gradients and nothing to clip, the results are bit-identical to torch's.
* When an inf or NaN is found, torch still writes the unscaled gradients (and ``clip_grad_norm_``
  multiplies them by a NaN or zero coefficient); gradclip leaves them untouched. Either way the
  optimizer step is skipped and the gradients are normally zeroed before the next backward.
* float16 gradients are refused with torch's own ``ValueError("Attempting to unscale FP16
  gradients.")``; non-CPU gradients and a scaler whose scale lives on another device are refused.
"""

from __future__ import annotations

from . import _gradclip as _native
from . import _exact_flag, _norm, clip_grad_norm_


def _params(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


def unscale_clip_grad_norm_(
    scaler, optimizer, max_norm, norm_type=2.0, error_if_nonfinite=False, *, exact=False
):
    """``scaler.unscale_(optimizer)`` + ``clip_grad_norm_(params, max_norm, norm_type)`` fused.

    Returns the norm of the unscaled gradients (before clipping) as a 0-dim tensor of their dtype;
    NaN or inf when a gradient was not finite (then nothing is written and ``scaler.step`` will
    skip the optimizer step). With ``error_if_nonfinite=True`` a NaN or inf raises
    :class:`gradclip.NonFiniteError` instead and the scaler's state is left as it was.

    Raises ``RuntimeError`` as ``unscale_`` does when called twice for an optimizer before
    ``update()``, or after ``step()``. A disabled scaler only clips.

    ``exact=True``: the norm is the exactly rounded norm of the scaled gradients divided by the
    scale (L1, L2; Inf is exact either way, P(p) norms are computed as without it); with
    GradScaler's power-of-two scales, the exact norm of the gradients ``unscale_`` would produce,
    the same bits however they are split into parameters.
    """
    import torch
    from torch.amp.grad_scaler import OptState

    exact = _exact_flag(exact)
    if not scaler.is_enabled():
        return clip_grad_norm_(
            _params(optimizer), max_norm, norm_type, error_if_nonfinite, exact=exact
        )
    scale, _ = scaler._check_scale_growth_tracker("unscale_")
    state = scaler._per_optimizer_states[id(optimizer)]
    if state["stage"] is OptState.UNSCALED:
        raise RuntimeError(
            "unscale_() has already been called on this optimizer since the last update()."
        )
    if state["stage"] is OptState.STEPPED:
        raise RuntimeError("unscale_() is being called after step().")
    if scale.device.type != "cpu":
        raise ValueError(
            f"gradclip.unscale_clip_grad_norm_: the scaler's scale is on {scale.device}; "
            "gradclip works on CPU gradients with a CPU GradScaler (GradScaler('cpu'))"
        )
    params = _params(optimizer)
    kind, total, dtype, rounded, found_inf, _written, _coef, _factor = _native.amp_step(
        params,
        float(scale.item()),
        float(max_norm),
        float(norm_type),
        bool(error_if_nonfinite),
        True,
        exact,
    )
    # What unscale_ records: one found_inf tensor per device that held gradients (none when no
    # parameter had a gradient, so that step() raises as it does after unscale_).
    per_device = {}
    if kind is not None:
        per_device[torch.device("cpu")] = torch.full(
            (), 1.0 if found_inf else 0.0, dtype=torch.float32
        )
    state["found_inf_per_device"] = per_device
    state["stage"] = OptState.UNSCALED
    return _norm((kind, total, dtype, rounded))
