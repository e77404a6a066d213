"""Exact mode (``exact=True``): the norm is the exactly rounded value, bit for bit equal to an
integer-arithmetic reference, the same bits for any split of the data into tensors and any order
of the tensors; clipping and the AMP step use it; P norms fall back to the compensated sum."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

import gradclip
from conftest import (
    DTYPE_IDS,
    DTYPES,
    clip_coef,
    exact_reference,
    make_grads,
    nearest_in_dtype,
    params_with,
    same_bits,
    scaled_reference,
    values_f64,
)

CHUNK = 65536
SHAPES = [
    [(1,)],
    [(7,)],
    [(3, 5), (17,), (2, 3, 4)],
    [(1000,), (64, 33), (5,)],
    [(CHUNK - 1,), (CHUNK,), (CHUNK + 1,)],  # around the library's chunk size
    [(300_001,), (2, 150_000)],  # above the parallel threshold
    [(n,) for n in range(1, 60)],  # many small tensors
]
EXACT_NORMS = [2.0, 1.0, math.inf]


def tie_values(l1: bool, n: int = 3000) -> np.ndarray:
    """Zeros with three values whose exact sum lies just above a rounding tie: the squares
    2.25 + 2^-52 + 2^-106 (L2) or the magnitudes 1 + 2^-53 + 2^-106 (L1). The compensated sum
    rounds the small terms onto the tie and then to even; the exact sum rounds up, so the norms
    differ in the last bit: 1.5 vs 1.5 + 2^-52, 1 vs 1 + 2^-52. Representable in f32 and bf16."""
    v = np.zeros(n)
    trio = (1.0, 2.0**-53, 2.0**-106) if l1 else (1.5, 2.0**-26, 2.0**-53)
    for i, x in zip((n - 1, 5, n // 2), trio):
        v[i] = x
    return v


def f32_tie_values(n: int = 3000) -> np.ndarray:
    """Magnitudes summing exactly to 1 + 2^-24 + 2^-53 + 2^-106: the exact f64 L1 norm is
    1 + 2^-24 + 2^-52, just above the float32 tie 1 + 2^-24, so rounded to float32 it is
    1 + 2^-23; the compensated f64 norm is the tie itself, which rounds to even: 1.0. The
    difference shows in the float32 result tensor."""
    v = np.zeros(n)
    for i, x in zip((5, 100, n // 2, n - 1), (1.0, 2.0**-24, 2.0**-53, 2.0**-106)):
        v[i] = x
    return v


def hard_values(seed: int, n: int) -> np.ndarray:
    """float32-representable values over the whole range: huge, tiny, subnormal, ordinary."""
    g = np.random.default_rng(seed)
    bits = g.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    f = bits.view(np.float32).copy()
    f[~np.isfinite(f)] = 3.0e38
    x = np.clip(f.astype(np.float64), -3.0e38, 3.0e38)  # finite in bf16 too
    x[::7] = g.standard_normal(len(x[::7]))
    x[3::11] = 1e-40  # subnormal in f32
    return x


def to_torch(v: np.ndarray, dtype) -> torch.Tensor:
    return torch.from_numpy(v).to(dtype)


def cut(flat: torch.Tensor, points) -> list:
    pts = [0] + sorted(points) + [flat.numel()]
    return [flat[a:b].clone() for a, b in zip(pts, pts[1:])]


def f64_bits(x: float) -> str:
    return float(x).hex()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shapes", SHAPES, ids=range(len(SHAPES)))
@pytest.mark.parametrize("p", EXACT_NORMS)
def test_exact_norm_equals_the_integer_reference_bit_for_bit(dtype, shapes, p):
    spread = 6 if dtype == torch.float16 else 20
    grads = make_grads(shapes, dtype, seed=len(shapes) + 40, spread=spread)
    want = exact_reference(grads, p)
    f64 = gradclip.get_total_norm_f64(grads, p, exact=True)
    assert f64_bits(f64) == f64_bits(want)
    got = gradclip.get_total_norm(grads, p, exact=True)
    assert isinstance(got, torch.Tensor) and got.dim() == 0 and got.dtype == dtype
    assert nearest_in_dtype(want, got)  # rounded once into the dtype
    # error_if_nonfinite takes the short-circuiting path: the same bits
    assert f64_bits(gradclip.get_total_norm_f64(grads, p, True, exact=True)) == f64_bits(want)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", EXACT_NORMS)
def test_exact_norm_of_full_range_values(dtype, p):
    v = hard_values(1, 200_003)
    if dtype == torch.float16:
        v = np.clip(v, -60000.0, 60000.0)
    t = to_torch(v, dtype)
    assert torch.isfinite(t).all()
    want = exact_reference([t], p)
    assert f64_bits(gradclip.get_total_norm_f64([t], p, exact=True)) == f64_bits(want)
    pieces = cut(t, [1, 99_999, 100_000, 150_001])
    assert f64_bits(gradclip.get_total_norm_f64(pieces[::-1], p, exact=True)) == f64_bits(want)


NP_DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16]


@pytest.mark.parametrize("np_dtype", NP_DTYPES, ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("p", EXACT_NORMS)
def test_numpy_arrays_in_exact_mode(np_dtype, p):
    g = np.random.default_rng(3)
    arrays = [
        (g.standard_normal(n) * 2.0 ** g.integers(-8, 8, n)).astype(np_dtype)
        for n in (1, 17, CHUNK + 3, 1000)
    ]
    want = exact_reference(np.concatenate([a.astype(np.float64) for a in arrays]), p)
    got = gradclip.get_total_norm(arrays, p, exact=True)
    assert isinstance(got, float) and f64_bits(got) == f64_bits(want)
    assert f64_bits(gradclip.get_total_norm_f64(arrays[::-1], p, exact=True)) == f64_bits(want)
    flat = np.concatenate(arrays)
    assert f64_bits(gradclip.get_total_norm(flat, p, exact=True)) == f64_bits(want)
    # clipping an array (its own gradient) in exact mode: round_to_dtype(f32(x) * f32(coef))
    a = flat.copy()
    assert f64_bits(gradclip.clip_grad_norm_(a, 0.5, p, exact=True)) == f64_bits(want)
    coef = clip_coef(0.5, want)
    assert coef < 1
    expect = (flat.astype(np.float32) * np.float32(coef)).astype(np_dtype)
    ubits = np.uint32 if np_dtype == np.float32 else np.uint16
    assert np.array_equal(a.view(ubits), expect.view(ubits))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("l1", [False, True], ids=["L2", "L1"])
def test_a_rounding_tie_separates_exact_from_compensated(dtype, l1):
    p = 1.0 if l1 else 2.0
    v = tie_values(l1)
    t = to_torch(v, dtype)
    assert np.array_equal(values_f64([t]), v)  # the dtype holds the values
    want = exact_reference([t], p)
    assert want == (1.0 if l1 else 1.5) + 2.0**-52
    assert gradclip.get_total_norm_f64([t], p) == want - 2.0**-52  # compensated: rounds to even
    assert f64_bits(gradclip.get_total_norm_f64([t], p, exact=True)) == f64_bits(want)
    for points in ([1], [6, 2999], list(range(1, 3000, 37))):
        pieces = cut(t, points)
        for order in (pieces, pieces[::-1], pieces[1::2] + pieces[::2]):
            assert f64_bits(gradclip.get_total_norm_f64(order, p, exact=True)) == f64_bits(want)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", EXACT_NORMS)
def test_partition_and_order_invariance(dtype, p):
    flat = torch.cat([g.reshape(-1) for g in make_grads([(250_000,)], dtype, seed=8, spread=12)])
    want = gradclip.get_total_norm_f64([flat], p, exact=True)
    assert f64_bits(want) == f64_bits(exact_reference([flat], p))
    gen = torch.Generator().manual_seed(5)
    results = set()
    for k in (2, 3, 7, 148):
        points = torch.randint(0, flat.numel() + 1, (k - 1,), generator=gen).tolist()
        pieces = cut(flat, points)
        perm = torch.randperm(len(pieces), generator=gen).tolist()
        for order in (pieces, [pieces[i] for i in perm]):
            results.add(f64_bits(gradclip.get_total_norm_f64(order, p, exact=True)))
            got = gradclip.get_total_norm(order, p, exact=True)
            assert same_bits(got, gradclip.get_total_norm([flat], p, exact=True))
        # views of the flat buffer (no copies) and 2-D reshapes give the same bits too
        views = [flat[a:b] for a, b in zip([0] + sorted(points), sorted(points) + [flat.numel()])]
        results.add(f64_bits(gradclip.get_total_norm_f64(views, p, exact=True)))
    for threads in (1, 2):
        gradclip.set_num_threads(threads)
        results.add(f64_bits(gradclip.get_total_norm_f64([flat.reshape(500, 500)], p, exact=True)))
    assert results == {f64_bits(want)}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", EXACT_NORMS)
@pytest.mark.parametrize("max_norm", [1e-3, 1.0, 1e9])
def test_clip_in_exact_mode_is_the_rounding_formula_with_the_exact_coef(dtype, p, max_norm):
    grads = make_grads([(1000,), (64, 33), (CHUNK + 5,)], dtype, seed=13)
    want = exact_reference(grads, p)
    ps = params_with(grads)
    versions = [q.grad._version for q in ps]
    total = gradclip.clip_grad_norm_(ps, max_norm, p, exact=True)
    assert total.dtype == dtype and nearest_in_dtype(want, total)
    coef = clip_coef(max_norm, want)
    for g, q, v in zip(grads, ps, versions):
        if coef < 1:
            assert same_bits(q.grad, scaled_reference(g, coef))
            assert q.grad._version > v
        else:
            assert same_bits(q.grad, g) and q.grad._version == v
    ps = params_with(grads)
    assert f64_bits(gradclip.clip_grad_norm_f64_(ps, max_norm, p, exact=True)) == f64_bits(want)
    # max_norm = inf measures (exactly) without writing
    assert f64_bits(gradclip.clip_grad_norm_f64_(params_with(grads), math.inf, p, exact=True)) == (
        f64_bits(want)
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_clipped_gradients_have_the_same_bits_for_any_split(dtype):
    flat = make_grads([(200_000,)], dtype, seed=21, spread=10)[0]
    ps = params_with([flat])
    gradclip.clip_grad_norm_(ps, 0.01, exact=True)
    whole = ps[0].grad
    for points in ([77], [1, 65536, 65537, 199_999], list(range(1000, 200_000, 1351))):
        pieces = cut(flat, points)
        qs = params_with(pieces)
        gradclip.clip_grad_norm_(qs[::-1], 0.01, exact=True)
        assert same_bits(torch.cat([q.grad for q in qs]), whole)
    # the tie: exact and compensated clip with coefficients one ulp of the norm apart
    t = to_torch(tie_values(False), torch.float32)
    ps = params_with([t])
    n = gradclip.clip_grad_norm_f64_(ps, 1e-3, exact=True)
    assert n == 1.5 + 2.0**-52
    assert same_bits(ps[0].grad, scaled_reference(t, clip_coef(1e-3, n)))


@pytest.mark.parametrize("p", [3.0, 0.5, 1.5])
def test_p_norms_fall_back_to_the_compensated_sum(p):
    grads = make_grads([(1000,), (CHUNK + 1,)], torch.float32, seed=2)
    assert f64_bits(gradclip.get_total_norm_f64(grads, p, exact=True)) == f64_bits(
        gradclip.get_total_norm_f64(grads, p)
    )
    a, b = params_with(grads), params_with(grads)
    na = gradclip.clip_grad_norm_f64_(a, 0.1, p, exact=True)
    nb = gradclip.clip_grad_norm_f64_(b, 0.1, p)
    assert na == nb and all(same_bits(x.grad, y.grad) for x, y in zip(a, b))
    r1 = gradclip.amp_step_(params_with(grads), 1024.0, 0.1, p, exact=True)
    r2 = gradclip.amp_step_(params_with(grads), 1024.0, 0.1, p)
    assert same_bits(r1.total_norm, r2.total_norm) and r1.factor == r2.factor


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_in_exact_mode(bad):
    grads = make_grads([(100,), (CHUNK + 50,)], torch.float32, seed=6)
    grads[1][CHUNK + 7] = bad
    with pytest.raises(gradclip.NonFiniteError) as e:
        gradclip.get_total_norm(grads, error_if_nonfinite=True, exact=True)
    assert (e.value.tensor, e.value.index) == (1, CHUNK + 7)
    ps = params_with(grads)
    with pytest.raises(gradclip.NonFiniteError):
        gradclip.clip_grad_norm_(ps, 1.0, error_if_nonfinite=True, exact=True)
    assert all(same_bits(q.grad, g) for q, g in zip(ps, grads))
    for p in EXACT_NORMS:
        n = gradclip.get_total_norm_f64(grads, p, exact=True)
        assert (math.isnan(n) and math.isnan(bad)) or n == math.inf
    # torch's propagation: the gradients are multiplied by the NaN or zero coefficient
    ours, plain = params_with(grads), params_with(grads)
    a = gradclip.clip_grad_norm_(ours, 1.0, exact=True)
    b = gradclip.clip_grad_norm_(plain, 1.0)
    assert bool(a.isnan()) == bool(b.isnan()) == math.isnan(bad)
    assert all(same_bits(x.grad, y.grad) for x, y in zip(ours, plain))


def test_exact_must_be_a_bool():
    g = make_grads([(10,)], torch.float32)
    for f in (
        lambda: gradclip.get_total_norm(g, exact=1),
        lambda: gradclip.get_total_norm_f64(g, exact="exact"),
        lambda: gradclip.clip_grad_norm_(params_with(g), 1.0, exact=None),
        lambda: gradclip.clip_grad_norm_f64_(params_with(g), 1.0, exact=0),
        lambda: gradclip.amp_step_(params_with(g), 2.0, 1.0, exact="yes"),
    ):
        with pytest.raises(TypeError, match="exact must be True or False"):
            f()
    with pytest.raises(TypeError):
        gradclip.get_total_norm(g, 2.0, False, None, None, True)  # keyword-only


def test_empty_inputs_in_exact_mode():
    assert float(gradclip.get_total_norm([], exact=True)) == 0.0
    assert gradclip.get_total_norm_f64([torch.zeros(0)], exact=True) == 0.0
    assert float(gradclip.clip_grad_norm_([], 1.0, exact=True)) == 0.0


# -------------------------------------------------------------------------------------------
# The fused AMP step
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", EXACT_NORMS)
@pytest.mark.parametrize("scale", [2.0**10, 2.0**16])
def test_amp_step_in_exact_mode(dtype, p, scale):
    # unscaled gradients well inside every dtype's normal range after scaling by up to 2^16
    base = make_grads([(500,), (CHUNK + 9,), (33, 3)], torch.float32, seed=17, spread=3)
    unscaled = [(g * 1e-3).to(dtype) for g in base]
    scaled = [(g.double() * scale).to(dtype) for g in unscaled]
    assert all(torch.equal(s.double() / scale, u.double()) for s, u in zip(scaled, unscaled))
    want = exact_reference(unscaled, p)  # a power-of-two scale: the exact unscaled norm
    ps = params_with(scaled)
    r = gradclip.amp_step_(ps, scale, 1e-3, p, exact=True)
    assert not r.found_inf and r.written
    assert nearest_in_dtype(want, r.total_norm)
    coef = clip_coef(1e-3, want)
    assert r.clip_coef == coef and r.factor == float(np.float32(coef / scale))
    for s, q in zip(scaled, ps):
        assert same_bits(q.grad, scaled_reference(s, coef / scale))
    # the same step over the gradients cut differently and in another order: the same bits
    flat = torch.cat([s.reshape(-1) for s in scaled])
    qs = params_with(cut(flat, [3, 70_000, 70_001]))
    r2 = gradclip.amp_step_(qs[::-1], scale, 1e-3, p, exact=True)
    assert same_bits(r2.total_norm, r.total_norm) and r2.clip_coef == r.clip_coef
    assert same_bits(torch.cat([q.grad for q in qs]), torch.cat([q.grad.reshape(-1) for q in ps]))


def test_amp_step_in_exact_mode_on_a_tie():
    # the tie scaled by 2^12: exact mode gives 1.5 + 2^-52 for the unscaled norm, compensated 1.5
    t = to_torch(tie_values(False) * 2.0**12, torch.float32)
    r = gradclip.amp_step_(params_with([t]), 2.0**12, 1e9, exact=True)
    assert r.written and r.factor == 2.0**-12 and r.clip_coef == 1.0
    assert float(r.total_norm) == 1.5  # rounded to float32
    f = gradclip.amp_step_(params_with([t]), 2.0**12, 1e-3, exact=True)
    c = gradclip.amp_step_(params_with([t]), 2.0**12, 1e-3)
    assert f.clip_coef == clip_coef(1e-3, 1.5 + 2.0**-52)
    assert c.clip_coef == clip_coef(1e-3, 1.5) != f.clip_coef


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_unscale_clip_grad_norm_with_a_grad_scaler_in_exact_mode(dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 4)
    ).to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    x, y = torch.randn(32, 16), torch.randn(32, 4)
    loss = torch.nn.functional.mse_loss(model(x.to(dtype)).float(), y)
    scaler.scale(loss).backward()
    scaled = [p.grad.detach().clone() for p in model.parameters()]
    S = scaler.get_scale()
    norm = gradclip.unscale_clip_grad_norm_(scaler, opt, 1e-3, exact=True)
    want = exact_reference([g.double() / S for g in scaled], 2)
    assert norm.dtype == dtype and nearest_in_dtype(want, norm)
    coef = clip_coef(1e-3, want)
    for s, p in zip(scaled, model.parameters()):
        assert same_bits(p.grad, scaled_reference(s, coef / S))
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))
    # a disabled scaler only clips, in exact mode too
    off = torch.amp.GradScaler("cpu", enabled=False)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x.to(dtype)).float(), y).backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    n = gradclip.unscale_clip_grad_norm_(off, opt, 1e-3, exact=True)
    assert nearest_in_dtype(exact_reference(grads, 2), n)


def test_unscale_clip_grad_norm_in_exact_mode_on_a_float32_tie():
    S = 2.0**12
    t = to_torch(f32_tie_values() * S, torch.float32)
    results = {}
    for exact in (False, True):
        for enabled in (True, False):
            p = torch.nn.Parameter(torch.zeros(t.shape))
            p.grad = t.clone() if enabled else t / S
            opt = torch.optim.SGD([p], lr=0.1)
            scaler = torch.amp.GradScaler("cpu", init_scale=S, enabled=enabled)
            scaler.scale(torch.tensor(1.0))  # initialises the scale, as scaling a loss does
            n = gradclip.unscale_clip_grad_norm_(scaler, opt, 1e9, norm_type=1, exact=exact)
            results[(exact, enabled)] = float(n)
    assert results[(True, True)] == results[(True, False)] == 1.0 + 2.0**-23
    assert results[(False, True)] == results[(False, False)] == 1.0
