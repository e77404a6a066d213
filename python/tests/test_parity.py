"""Parity with torch.nn.utils: same arguments, same semantics, same result types; the norm within
1e-14 of an exact reference and rounded once into the dtype; clipped elements bit-equal to
round_to_dtype(f32(x) * f32(coef))."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import gradclip
from conftest import (
    DTYPE_IDS,
    DTYPES,
    bits,
    clip_coef,
    exact_norm,
    make_grads,
    nearest_in_dtype,
    params_with,
    rel,
    same_bits,
    same_values,
    scaled_reference,
)

SHAPES = [
    [(1,)],
    [(7,)],
    [(3, 5), (17,), (2, 3, 4)],
    [(1000,), (64, 33), (5,)],
    [(65536,), (65537,), (65535,)],  # around the library's chunk size
    [(300_001,), (2, 150_000)],  # above the parallel threshold
    [(n,) for n in range(1, 60)],  # many small tensors
]
NORMS = [2.0, 1.0, math.inf, 3.0]


def tol(p):
    return 1e-14 if p in (1.0, 2.0, math.inf) else 1e-12


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shapes", SHAPES, ids=range(len(SHAPES)))
@pytest.mark.parametrize("p", NORMS)
def test_get_total_norm_is_exact_and_rounded_once(dtype, shapes, p):
    grads = make_grads(shapes, dtype, seed=len(shapes))
    exact = exact_norm(grads, p)
    f64 = gradclip.get_total_norm_f64(grads, p)
    assert rel(f64, exact) <= tol(p), (f64, exact)
    got = gradclip.get_total_norm(grads, p)
    assert isinstance(got, torch.Tensor) and got.dim() == 0 and got.dtype == dtype
    assert not got.requires_grad and got.device.type == "cpu"
    # rounded once from the f64 value, and (being that close) a nearest dtype value to the exact
    assert nearest_in_dtype(f64, got)
    assert nearest_in_dtype(exact, got) or rel(f64, exact) > 0
    want = torch.nn.utils.get_total_norm(grads, p)
    assert want.dtype == got.dtype
    # torch's own result is within its own (much larger) error of ours
    assert rel(float(got), float(want)) <= {torch.float32: 2e-3}.get(dtype, 5e-2)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shapes", SHAPES[:5], ids=range(5))
@pytest.mark.parametrize("p", [2.0, math.inf, 1.0])
@pytest.mark.parametrize("max_norm", [1e-3, 1.0, 1e9])
def test_clip_grad_norm_matches_torch_and_the_rounding_formula(dtype, shapes, p, max_norm):
    grads = make_grads(shapes, dtype, seed=7)
    ours = params_with(grads)
    theirs = params_with(grads)
    versions = [q.grad._version for q in ours]
    total = gradclip.clip_grad_norm_(ours, max_norm, norm_type=p)
    want = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=p)
    assert total.dtype == want.dtype == dtype and total.dim() == 0
    f64 = gradclip.get_total_norm_f64(grads, p)
    assert same_bits(total, torch.scalar_tensor(f64, dtype=torch.float64).to(dtype)) or (
        nearest_in_dtype(f64, total)
    )
    coef = clip_coef(max_norm, f64)
    for g, q, r, v in zip(grads, ours, theirs, versions):
        if coef < 1:
            assert same_bits(q.grad, scaled_reference(g, coef))
            assert q.grad._version > v  # autograd sees the in-place write
        else:
            assert same_bits(q.grad, g)  # nothing to clip: nothing written
            assert q.grad._version == v
        assert_close_to_torch(q.grad, r.grad, coef, want, max_norm)


def assert_close_to_torch(ours, theirs, coef, torch_total, max_norm):
    """torch computes its coefficient from its own norm, in the gradients' dtype (for float16 a
    small coefficient is even subnormal): the two results differ by that coefficient's error, one
    rounding of the dtype, and the subnormal spacing."""
    if torch_total.isinf():
        # torch's norm overflowed the dtype (float16 above 65504) and it zeroed the gradients:
        # the documented difference (gradclip clips by the f64 norm).
        assert not theirs.any()
        return
    coef_t = float(torch.clamp(max_norm / (torch_total + 1e-6), max=1.0))
    fi = torch.finfo(ours.dtype)
    rtol = abs(coef_t - coef) / coef + 2 * fi.eps
    atol = 2 * fi.tiny * fi.eps
    assert torch.allclose(ours.double(), theirs.double(), rtol=rtol, atol=atol)


def test_parameters_without_grad_single_tensor_and_generators():
    grads = make_grads([(10,), (20,)], torch.float32, seed=3)
    ps = params_with(grads)
    ps.insert(1, torch.nn.Parameter(torch.ones(5)))  # no .grad: skipped
    n = gradclip.clip_grad_norm_(ps, 1e9)
    assert float(n) == float(torch.nn.utils.get_total_norm(grads))
    # a single tensor (parameter) and a generator
    single = gradclip.clip_grad_norm_(ps[0], 1e9)
    assert float(single) == float(gradclip.get_total_norm(ps[0].grad))
    gen = gradclip.clip_grad_norm_((p for p in ps), 1e9)
    assert float(gen) == float(n)
    assert float(gradclip.get_total_norm(g for g in grads)) == float(n)
    # the norm type as the string 'inf'
    assert float(gradclip.get_total_norm(grads, "inf")) == max(float(g.abs().max()) for g in grads)


def test_empty_inputs_return_what_torch_returns():
    for got, want in [
        (gradclip.get_total_norm([]), torch.nn.utils.get_total_norm([])),
        (gradclip.clip_grad_norm_([], 1.0), torch.nn.utils.clip_grad_norm_([], 1.0)),
        (
            gradclip.clip_grad_norm_([torch.nn.Parameter(torch.ones(3))], 1.0),
            torch.nn.utils.clip_grad_norm_([torch.nn.Parameter(torch.ones(3))], 1.0),
        ),
    ]:
        assert got.dtype == want.dtype and float(got) == float(want) == 0.0
    with pytest.warns(UserWarning, match="empty generator"):
        gradclip.clip_grad_norm_((p for p in []), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradclip.clip_grad_norm_([], 1.0)  # a list is not a generator: no warning
    assert gradclip.clip_grads_with_norm_([], 1.0, torch.tensor(3.0)) is None
    assert gradclip.clip_grad_value_([], 1.0) is None


def test_mixed_dtypes_promote_to_float32_like_torch():
    grads = [make_grads([(100,)], d, seed=i)[0] for i, d in enumerate(DTYPES)]
    got = gradclip.get_total_norm(grads)
    want = torch.nn.utils.get_total_norm(grads)
    assert got.dtype == want.dtype == torch.float32
    assert rel(gradclip.get_total_norm_f64(grads), exact_norm(grads, 2)) <= 1e-14
    assert float(got) == float(torch.tensor(gradclip.get_total_norm_f64(grads), dtype=torch.float64).float())
    for pair in ([DTYPES[1], DTYPES[2]], [DTYPES[0], DTYPES[1]]):
        gs = [make_grads([(9,)], d)[0] for d in pair]
        assert gradclip.get_total_norm(gs).dtype == torch.nn.utils.get_total_norm(gs).dtype


@pytest.mark.parametrize("foreach", [None, True, False])
def test_foreach_is_accepted_both_ways(foreach):
    grads = make_grads([(50,), (3, 4)], torch.float32)
    a = gradclip.get_total_norm(grads, foreach=foreach)
    ps = params_with(grads)
    b = gradclip.clip_grad_norm_(ps, 0.5, foreach=foreach)
    assert float(a) == float(b)
    gradclip.clip_grads_with_norm_(params_with(grads), 0.5, a, foreach=foreach)
    gradclip.clip_grad_value_(params_with(grads), 0.5, foreach=foreach)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_clip_grads_with_norm_uses_the_given_norm(dtype):
    grads = make_grads([(100,), (7, 7)], dtype, seed=5)
    total = gradclip.get_total_norm(grads)
    ours, theirs = params_with(grads), params_with(grads)
    assert gradclip.clip_grads_with_norm_(ours, 0.25, total) is None
    torch.nn.utils.clip_grads_with_norm_(theirs, 0.25, total)
    coef = clip_coef(0.25, float(total))
    for g, q, r in zip(grads, ours, theirs):
        assert same_bits(q.grad, scaled_reference(g, coef))
        assert_close_to_torch(q.grad, r.grad, coef, total, 0.25)
    # a Python float works too, and a norm below max_norm writes nothing
    ps = params_with(grads)
    gradclip.clip_grads_with_norm_(ps, 10 * float(total), float(total))
    assert all(same_bits(p.grad, g) for p, g in zip(ps, grads))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("clip_value", [0.0, 0.3, 1.0, 1e30, math.inf])
def test_clip_grad_value_is_bit_identical_to_torch(dtype, clip_value):
    grads = make_grads([(1000,), (10, 10)], dtype, seed=9)
    grads[0][3] = math.nan
    grads[0][4] = math.inf
    grads[0][5] = -math.inf
    ours, theirs = params_with(grads), params_with(grads)
    assert gradclip.clip_grad_value_(ours, clip_value) is None
    try:
        torch.nn.utils.clip_grad_value_(theirs, clip_value)
    except RuntimeError:
        # torch refuses a clip_value beyond float16's range; gradclip rounds it to inf, which
        # clamps nothing.
        assert dtype == torch.float16 and clip_value == 1e30
        theirs = params_with(grads)
    for q, r in zip(ours, theirs):
        assert same_values(q.grad, r.grad)  # torch may change a NaN's payload


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_without_error_behaves_like_torch(dtype, bad):
    grads = make_grads([(100,), (50,)], dtype, seed=2)
    grads[1][7] = bad
    ours, theirs = params_with(grads), params_with(grads)
    got = gradclip.clip_grad_norm_(ours, 1.0)
    want = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert bool(got.isnan()) == bool(want.isnan()) and got.dtype == want.dtype
    assert bool(got.isnan()) or float(got) == float(want) == math.inf
    for q, r in zip(ours, theirs):
        assert torch.equal(q.grad.isnan(), r.grad.isnan())
        finite = ~r.grad.isnan()
        assert torch.equal(q.grad[finite], r.grad[finite])
    n = gradclip.get_total_norm(grads)
    assert (math.isnan(bad) and bool(n.isnan())) or float(n) == math.inf


def test_channels_last_and_transposed_tensors_are_read_in_place():
    x = make_grads([(2, 3, 4, 5)], torch.float32)[0].to(memory_format=torch.channels_last)
    t = make_grads([(30, 20)], torch.float32)[0].t()
    assert not x.is_contiguous() and not t.is_contiguous()
    for g in (x, t):
        assert rel(gradclip.get_total_norm_f64([g]), exact_norm([g], 2)) <= 1e-14
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        strides = p.grad.stride()
        gradclip.clip_grad_norm_([p], 0.1)
        assert p.grad.stride() == strides  # in place, layout kept
        coef = clip_coef(0.1, gradclip.get_total_norm_f64([g]))
        assert same_bits(p.grad, scaled_reference(g, coef))


def test_norm_larger_than_float16_range_is_clipped_correctly():
    # The exact norm is 1e5, above float16's 65504: torch's float16 norm is inf and it zeroes the
    # gradients; gradclip returns inf as the float16 result but clips by the f64 norm.
    g = torch.full((10_000,), 1000.0, dtype=torch.float16)
    p = params_with([g])
    n = gradclip.clip_grad_norm_(p, 1.0)
    assert float(n) == math.inf and n.dtype == torch.float16
    assert gradclip.get_total_norm_f64([g]) == 1e5
    assert same_bits(p[0].grad, scaled_reference(g, clip_coef(1.0, 1e5)))
    assert float(p[0].grad[0]) != 0.0


def test_max_norm_inf_measures_without_writing():
    grads = make_grads([(100,)], torch.float32)
    ps = params_with(grads)
    v = ps[0].grad._version
    n = gradclip.clip_grad_norm_(ps, math.inf)
    assert float(n) == float(gradclip.get_total_norm(grads))
    assert same_bits(ps[0].grad, grads[0]) and ps[0].grad._version == v


def test_norm_types_other_than_integers():
    grads = make_grads([(1000,), (33,)], torch.float32, seed=4)
    for p in (0.5, 1.5, 2.5, 7.0):
        want = float(torch.linalg.vector_norm(torch.cat([g.double().reshape(-1) for g in grads]), p))
        assert rel(gradclip.get_total_norm_f64(grads, p), want) <= 1e-12
