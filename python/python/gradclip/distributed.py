"""Sharded norms over a ``torch.distributed`` process group (the ``group=`` argument).

Each rank holds a shard of the gradients (FSDP-style flat shards cut anywhere, ZeRO partitions,
tensor-parallel slices). With ``group=`` the norm functions:

1. compute this rank's partial: the compensated state of the norm over its own buffers, 40 bytes
   (the core crate's ``NormPartial``, ``repr(C)``), with the same kernels as the local norm;
   with ``exact=True`` the exact state, 96 bytes (``ExactPartial``, ``repr(C)``);
2. all-gather the partials over the group as a ``uint8`` tensor (one collective of
   ``40 * world_size`` or ``96 * world_size`` bytes, on the CPU for gloo and on the current
   CUDA device for NCCL);
3. merge them in rank order and finish the norm, so every rank gets the same bits;
4. ``clip_grad_norm_`` then scales its own shard by the common coefficient.

Compensated (the default): the result is within 1e-14 (L1, L2) of the norm of all shards taken
in one process, but not bit-identical to it in general: the compensated partials of a cut tree
round differently from one tree over the whole.

Exact (``exact=True``, L1, L2 and Inf): the partials hold the exact sums as integers and merge by
integer addition, so every rank gets **the same bits as the single-process exact norm of the
unsharded data** (``get_total_norm(all_tensors, exact=True)``), whatever the shard cut points,
the world size and the order of the tensors; the clipped shards are then bit-equal to the
corresponding slices of the single-process clip. P(p) norms have no exact partial: with
``exact=True`` they use the compensated one, as the local functions do.

With ``error_if_nonfinite=True`` every rank raises :class:`gradclip.NonFiniteError`: the rank
that holds the first NaN/inf (in rank order) names the tensor, index and value; the others name
that rank. Every rank must call with the same ``norm_type`` (a mismatch gives NaN) and the same
``exact`` (the partials differ in size; the collective fails or hangs otherwise).
"""

from __future__ import annotations

import math

from . import _gradclip as _native
from ._errors import NonFiniteError

PARTIAL_BYTES: int = _native.PARTIAL_BYTES
EXACT_PARTIAL_BYTES: int = _native.EXACT_PARTIAL_BYTES


def _gather_total(
    items, use_grad, norm_type, error_if_nonfinite, group, for_write=False, exact=False
):
    """``(kind, dtype, total)`` of the sharded norm; raises on every rank when asked."""
    import torch
    import torch.distributed as dist

    # Validated as the local call would be (for writing when clipping) before communicating.
    # `is_exact`: an ExactPartial (exact mode, L1/L2/Inf), else a NormPartial.
    kind, dtype, local, is_exact = _native.partial(items, use_grad, norm_type, for_write, exact)
    device = torch.device("cpu")
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    mine = torch.frombuffer(bytearray(local), dtype=torch.uint8).to(device)
    world = dist.get_world_size(group)
    size = EXACT_PARTIAL_BYTES if is_exact else PARTIAL_BYTES
    parts = [torch.empty(size, dtype=torch.uint8, device=device) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    gathered = b"".join(p.cpu().numpy().tobytes() for p in parts)
    total, bad_rank = _native.merge_partials(gathered, is_exact)
    if error_if_nonfinite and bad_rank is not None:
        me = dist.get_rank(group)
        if me == bad_rank:
            _native.check_finite(items, use_grad, me)  # raises, naming the element
        raise NonFiniteError(
            f"non-finite gradient on rank {bad_rank} of the group, so the total norm is not "
            "finite and the gradients cannot be clipped; nothing was modified. To scale by the "
            "non-finite norm anyway (as torch does), set error_if_nonfinite=False",
            rank=bad_rank,
        )
    if error_if_nonfinite and not math.isfinite(total):
        # Finite partials whose merged P norm (small p) leaves the f64 range.
        raise ValueError(f"the norm with p = {norm_type} of these gradients exceeds the f64 range")
    return kind, dtype, total


def _as_result(kind, dtype, total, as_float):
    import torch

    if as_float or kind == "numpy":
        return total
    # No local buffer: the result is still the group's norm, as a float32 tensor.
    name = dtype or "float32"
    rounded = _native.round_to(name, total)
    return torch.scalar_tensor(rounded, dtype=getattr(torch, name))


def _total_norm(
    items, use_grad, norm_type, error_if_nonfinite, group, as_float=False, exact=False
):
    kind, dtype, total = _gather_total(
        items, use_grad, norm_type, error_if_nonfinite, group, exact=exact
    )
    return _as_result(kind, dtype, total, as_float)


def _clip_grad_norm(
    params, max_norm, norm_type, error_if_nonfinite, group, as_float=False, exact=False
):
    kind, dtype, total = _gather_total(
        params, True, norm_type, error_if_nonfinite, group, for_write=True, exact=exact
    )
    _native.clip_grads_with_norm(params, max_norm, total)
    return _as_result(kind, dtype, total, as_float)
