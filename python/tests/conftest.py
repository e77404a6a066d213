"""Shared helpers: exact reference norms, dtype rounding through torch, gradient sets."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["f32", "bf16", "f16"]


def values_f64(tensors) -> np.ndarray:
    """Every element of every tensor, widened exactly to float64, in order."""
    if not tensors:
        return np.zeros(0)
    return np.concatenate([t.detach().reshape(-1).double().numpy() for t in tensors])


def magnitudes(values):
    """``(|x| as float64, None)`` for every element of ``values`` (a list of tensors or arrays,
    or one float64 array), or ``(None, result)`` when one is NaN (NaN) or infinite (inf), as
    torch's norms report them."""
    v = values if isinstance(values, np.ndarray) else values_f64(values)
    if np.isnan(v).any():
        return None, math.nan
    if np.isinf(v).any():
        return None, math.inf
    return np.abs(v), None


def exact_norm(tensors, p) -> float:
    """The norm of the exact real values, rounded to f64 (independent of gradclip).

    L2, L1 and ``inf``: :func:`exact_reference`. Integer p: an exact integer sum of |x|^p scaled
    by 2^(p*149) and an integer p-th root with 64 spare bits. NaN if any NaN, inf if any inf
    (torch's convention).
    """
    if p in (1, 2, math.inf):
        return exact_reference(tensors, p)
    a, special = magnitudes(tensors)
    if special is not None:
        return special
    if float(p).is_integer():
        p = int(p)
        scale = 149  # every f32/f16/bf16 value is an integer multiple of 2^-149
        total = sum(int(Fraction(x) * (1 << scale)) ** p for x in a.tolist())
        if total == 0:
            return 0.0
        extra = 64
        root = integer_root(total << (p * extra), p)  # floor((total * 2^(64p))^(1/p))
        return float(Fraction(root, 1 << (scale + extra)))
    raise ValueError(f"no exact reference for p = {p}")


def exact_reference(values, p) -> float:
    """The exactly rounded norm by integer arithmetic, independent of gradclip: every value
    (widened exactly to f64) is ``m * 2^e`` with an integer ``m``; the sum of ``m^2 * 2^(2e)``
    (L2) or ``m * 2^e`` (L1) is formed as one Python integer times a power of two, rounded once
    to f64 by CPython's correctly rounded integer division (ties to even), and L2 takes
    ``math.sqrt`` of that f64. ``inf``: the largest magnitude. NaN if any NaN, inf if any inf.
    ``values``: a list of tensors or arrays, or one float64 array."""
    a, special = magnitudes(values)
    if special is not None:
        return special
    if p == math.inf:
        return float(a.max()) if a.size else 0.0
    if p not in (1, 2):
        raise ValueError(f"exact_reference: p = {p} is not summed exactly")
    p = int(p)
    frac, exp = np.frexp(a)
    m = (frac * 2.0**53).astype(np.int64).tolist()  # exact: 53-bit significands
    e = (exp.astype(np.int64) - 53).tolist()
    if not m:
        return 0.0
    low = min(e) * p
    total = 0
    for mi, ei in zip(m, e):
        if mi:
            total += (mi**p) << (ei * p - low)
    if total == 0:
        return 0.0
    s = float(total << low) if low >= 0 else total / (1 << -low)
    return math.sqrt(s) if p == 2 else s


def integer_root(n: int, p: int) -> int:
    """floor(n^(1/p)) for n >= 0 by Newton's method on integers."""
    if n < 2:
        return n
    x = 1 << ((n.bit_length() + p - 1) // p)
    while True:
        y = ((p - 1) * x + n // x ** (p - 1)) // p
        if y >= x:
            return x
        x = y


def rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / abs(b)


def scaled_reference(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``round_to_dtype(f32(x) * f32(factor))`` computed by torch (its f32 -> f16/bf16
    conversions round to nearest even): the value gradclip must write, bit for bit."""
    f = torch.tensor(factor, dtype=torch.float64).to(torch.float32)
    return (x.float() * f).to(x.dtype)


def clip_coef(max_norm: float, total: float) -> float:
    """min(1, max_norm / (total + 1e-6)) in f64, NaN propagating (as gradclip and torch)."""
    c = max_norm / (total + 1e-6)
    return c if c != c else min(c, 1.0)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of a tensor, for exact comparison (NaN payloads included)."""
    view = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
    return t.detach().contiguous().view(view[t.dtype]).clone()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal except that any NaN equals any NaN (payloads are not semantics)."""
    if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a.isnan(), b.isnan()):
        return False
    keep = ~a.isnan()
    return torch.equal(bits(a)[keep], bits(b)[keep])


def nearest_in_dtype(exact: float, got: torch.Tensor) -> bool:
    """True when ``got`` (0-dim, f16/bf16/f32) is a nearest value of its dtype to ``exact``."""
    if math.isnan(exact):
        return bool(torch.isnan(got))
    g = float(got)
    if math.isinf(g) or math.isinf(exact):
        return g == exact or (math.isinf(g) and exact > float(torch.finfo(got.dtype).max))
    step = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
    raw = got.reshape(1).view(step[got.dtype])
    up = float((raw + 1).view(got.dtype))
    down = float((raw - 1).view(got.dtype)) if g > 0 else -up
    d = abs(Fraction(g) - Fraction(exact))
    return d <= abs(Fraction(up) - Fraction(exact)) and d <= abs(Fraction(down) - Fraction(exact))


def make_grads(shapes, dtype, seed=0, spread=6):
    """Tensors of the given shapes with values spread over 2*spread binades."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in shapes:
        x = torch.randn(s, generator=g, dtype=torch.float64)
        e = torch.randint(-spread, spread + 1, s, generator=g).double()
        out.append((x * torch.pow(2.0, e)).to(dtype))
    return out


def params_with(grads):
    """Parameters whose .grad are (clones of) ``grads``."""
    ps = []
    for gr in grads:
        p = torch.nn.Parameter(torch.zeros_like(gr))
        p.grad = gr.clone()
        ps.append(p)
    return ps


@pytest.fixture(autouse=True)
def _default_threads():
    import gradclip

    gradclip.set_num_threads(0)
    yield
    gradclip.set_num_threads(0)
