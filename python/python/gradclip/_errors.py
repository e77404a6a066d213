"""The exceptions gradclip raises (besides ``TypeError`` and ``ValueError`` for bad arguments)."""

from __future__ import annotations

__all__ = ["NonFiniteError", "UnsupportedTensorError", "OverlapError"]


class NonFiniteError(RuntimeError):
    """A gradient holds NaN or ±inf and ``error_if_nonfinite=True`` was passed.

    A ``RuntimeError``, like the error ``torch.nn.utils.clip_grad_norm_`` raises in the same case,
    but it names the element: ``tensor`` is the position of the tensor in the list passed (for
    ``clip_grad_norm_``, the position of the parameter whose ``.grad`` it is), ``index`` the flat
    (row-major) index of the element, ``value`` its value (``nan``, ``inf`` or ``-inf``). With
    ``group=``, ``rank`` is the rank that holds it (``tensor`` and ``index`` are then ``None`` on
    the other ranks). Nothing was modified.
    """

    def __init__(self, message, tensor=None, index=None, value=None, rank=None):
        super().__init__(message)
        self.tensor = tensor
        self.index = index
        self.value = value
        self.rank = rank


class UnsupportedTensorError(TypeError, ValueError):
    """A tensor or array gradclip cannot work on in place: not on the CPU, a dtype other than
    float32 / float16 / bfloat16, not contiguous (nor dense in another dimension order),
    misaligned, read-only (for calls that write), or a tensor subclass. ``tensor`` is its position
    in the list passed. Both a ``TypeError`` and a ``ValueError``. Nothing was modified."""

    def __init__(self, message, tensor=None):
        super().__init__(message)
        self.tensor = tensor


class OverlapError(ValueError):
    """Two buffers of a call that writes share memory (the same tensor twice, overlapping views,
    a view and its base). ``first`` and ``second`` are their positions. Nothing was modified."""

    def __init__(self, message, first=None, second=None):
        super().__init__(message)
        self.first = first
        self.second = second
