"""The fused AMP step against torch's own ``scaler.unscale_`` + ``clip_grad_norm_`` path."""

from __future__ import annotations

import copy
import math

import ml_dtypes
import numpy as np
import pytest
import torch
from torch.amp.grad_scaler import OptState

import gradclip
from conftest import exact_norm, make_grads, params_with, rel, same_bits, scaled_reference


def mlp(dtype, seed):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 64), torch.nn.GELU(),
        torch.nn.Linear(64, 4),
    )
    return m.to(dtype)


def grads_of(model):
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_a_sequence_of_steps_matches_torch(dtype):
    """Same skip decisions, same scale sequence, grads equal up to the documented rounding.

    Two copies of a model train side by side, one through torch's ``unscale_`` +
    ``clip_grad_norm_``, one through gradclip's fused step; infs and NaNs are injected into the
    scaled gradients at some steps. After each step gradclip's copy is re-synchronised to torch's
    weights (plain SGD keeps no other state), so both paths see the same scaled gradients at
    every step and the comparison is exact up to the rounding of each path."""
    max_norm = 0.01
    ref = mlp(dtype, 0)
    ours = copy.deepcopy(ref)
    runs = {}
    for name, model in (("torch", ref), ("gradclip", ours)):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3)
        runs[name] = (model, opt, scaler)
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(32, 16, generator=gen), torch.randn(32, 4, generator=gen)) for _ in range(16)]
    inject = {3: math.inf, 4: math.nan, 9: -math.inf, 10: math.inf}
    scales = []
    for step, (x, y) in enumerate(data):
        seen = {}
        for name, (model, opt, scaler) in runs.items():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x.to(dtype)).float(), y)
            scaler.scale(loss).backward()
            if step in inject:
                with torch.no_grad():
                    list(model.parameters())[2].grad[5, 7] = inject[step]
            scaled = grads_of(model)
            S = scaler.get_scale()
            if name == "torch":
                scaler.unscale_(opt)
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            else:
                norm = gradclip.unscale_clip_grad_norm_(scaler, opt, max_norm)
            state = scaler._per_optimizer_states[id(opt)]
            assert state["stage"] is OptState.UNSCALED
            found = sum(v.item() for v in state["found_inf_per_device"].values())
            after = grads_of(model)
            before_params = [p.detach().clone() for p in model.parameters()]
            scaler.step(opt)
            stepped = any(
                not torch.equal(a, p.detach()) for a, p in zip(before_params, model.parameters())
            )
            scaler.update()
            seen[name] = (S, found, stepped, norm, scaled, after)
        S, found, stepped, norm_t, scaled_t, after_t = seen["torch"]
        S2, found2, stepped2, norm_g, scaled_g, after_g = seen["gradclip"]
        scales.append(S)
        assert all(same_bits(a, b) for a, b in zip(scaled_t, scaled_g)), step  # in sync
        assert (S, found, stepped) == (S2, found2, stepped2), step
        assert found == (1.0 if step in inject else 0.0) and stepped == (step not in inject)
        assert norm_g.dtype == norm_t.dtype == dtype
        if found:
            assert bool(norm_t.isnan()) == bool(norm_g.isnan())
            assert bool(norm_g.isnan()) or float(norm_g) == math.inf
            # gradclip wrote nothing (torch wrote NaN- or zero-scaled values)
            assert all(same_bits(a, b) for a, b in zip(after_g, scaled_g))
            continue
        # the norm of the unscaled gradients: S is a power of two, so it is the exact norm of
        # the gradients unscale_ produces, rounded once into the dtype
        exact = exact_norm([g.double() / S for g in scaled_g], 2)
        f64 = gradclip.get_total_norm_f64(scaled_g) / S
        assert rel(f64, exact) <= 1e-14
        assert float(norm_g) == float(torch.tensor(f64, dtype=torch.float64).to(dtype)) or rel(
            float(norm_g), f64
        ) <= torch.finfo(dtype).eps
        assert rel(float(norm_g), float(norm_t)) <= (1e-5 if dtype == torch.float32 else 3e-2)
        # every element rounded once with the factor f32(coef / S)
        coef = min(1.0, max_norm / (f64 + 1e-6))
        assert coef < 1  # the test clips at every finite step
        for a, g in zip(after_g, scaled_g):
            assert same_bits(a, scaled_reference(g, coef / S))
        # torch: rounds after unscaling and after clipping, with its coefficient computed in the
        # dtype from its own norm; the results differ by that coefficient's error and a rounding
        coef_t = float(torch.clamp(max_norm / (norm_t + 1e-6), max=1.0))
        fi = torch.finfo(dtype)
        rtol = abs(coef_t - coef) / coef + 2 * fi.eps
        for a_g, a_t in zip(after_g, after_t):
            assert torch.allclose(a_g.double(), a_t.double(), rtol=rtol, atol=fi.tiny)
        # the weights moved by nearly the same step; then re-synchronise
        with torch.no_grad():
            for p, q in zip(ref.parameters(), ours.parameters()):
                assert torch.allclose(p.double(), q.double(), rtol=4 * fi.eps, atol=fi.eps * 1e-2)
                q.copy_(p)
    assert len(set(scales)) > 2  # the scale both grew and backed off


def test_power_of_two_scale_f32_and_nothing_to_clip_is_bit_identical_to_torch():
    grads = make_grads([(1000,), (64, 64), (7,)], torch.float32, seed=4)
    for S in (2.0**16, 2.0**3, 0.5):
        ps_t, ps_g = params_with([g * S for g in grads]), params_with([g * S for g in grads])
        opt_t = torch.optim.SGD(ps_t, lr=0.1)
        opt_g = torch.optim.SGD(ps_g, lr=0.1)
        sc_t = torch.amp.GradScaler("cpu", init_scale=S)
        sc_g = torch.amp.GradScaler("cpu", init_scale=S)
        for sc, p in ((sc_t, ps_t), (sc_g, ps_g)):
            sc.scale(p[0].sum())  # initialises the scale
        sc_t.unscale_(opt_t)
        n_t = torch.nn.utils.clip_grad_norm_(ps_t, 1e9)
        n_g = gradclip.unscale_clip_grad_norm_(sc_g, opt_g, 1e9)
        for a, b in zip(ps_t, ps_g):
            assert same_bits(a.grad, b.grad)
        assert rel(float(n_g), float(n_t)) <= 1e-6


def test_scaler_state_rules_are_torchs():
    model = mlp(torch.float32, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(AssertionError, match="_scale is None"):
        gradclip.unscale_clip_grad_norm_(scaler, opt, 1.0)  # scale() never called, as torch
    scaler.scale(model(torch.randn(2, 16)).sum()).backward()
    gradclip.unscale_clip_grad_norm_(scaler, opt, 1.0)
    with pytest.raises(RuntimeError, match="already been called"):
        gradclip.unscale_clip_grad_norm_(scaler, opt, 1.0)
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.unscale_(opt)  # torch's own unscale_ sees the state gradclip recorded
    scaler.step(opt)
    with pytest.raises(RuntimeError, match="after step"):
        gradclip.unscale_clip_grad_norm_(scaler, opt, 1.0)
    scaler.update()
    # next iteration: fine again
    opt.zero_grad()
    scaler.scale(model(torch.randn(2, 16)).sum()).backward()
    gradclip.unscale_clip_grad_norm_(scaler, opt, 1.0)
    scaler.step(opt)
    scaler.update()


def test_fp16_grads_are_refused_like_torch():
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    p.grad = torch.ones(4, dtype=torch.float16)
    for unscale in (
        lambda sc, opt: sc.unscale_(opt),
        lambda sc, opt: gradclip.unscale_clip_grad_norm_(sc, opt, 1.0),
    ):
        opt = torch.optim.SGD([p], lr=0.1)
        sc = torch.amp.GradScaler("cpu")
        sc.scale(torch.ones(1))
        with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients."):
            unscale(sc, opt)
    assert (p.grad == 1).all()


def test_no_gradients_and_disabled_scaler():
    p = torch.nn.Parameter(torch.ones(3))
    for unscale in (
        lambda sc, opt: sc.unscale_(opt),
        lambda sc, opt: gradclip.unscale_clip_grad_norm_(sc, opt, 1.0),
    ):
        opt = torch.optim.SGD([p], lr=0.1)
        sc = torch.amp.GradScaler("cpu")
        sc.scale(torch.ones(1))
        unscale(sc, opt)
        with pytest.raises(AssertionError, match="No inf checks"):
            sc.step(opt)
    # disabled: clipping only
    grads = make_grads([(100,)], torch.float32)
    ps = params_with(grads)
    sc = torch.amp.GradScaler("cpu", enabled=False)
    n = gradclip.unscale_clip_grad_norm_(sc, torch.optim.SGD(ps, lr=0.1), 0.1)
    assert float(n) == float(gradclip.get_total_norm(grads))
    assert same_bits(ps[0].grad, scaled_reference(grads[0], 0.1 / (gradclip.get_total_norm_f64(grads) + 1e-6)))


def test_error_if_nonfinite_leaves_the_scaler_ready():
    model = mlp(torch.float32, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(model(torch.randn(2, 16)).sum()).backward()
    list(model.parameters())[0].grad[0, 0] = math.nan
    with pytest.raises(gradclip.NonFiniteError) as e:
        gradclip.unscale_clip_grad_norm_(scaler, opt, 1.0, error_if_nonfinite=True)
    assert (e.value.tensor, e.value.index) == (0, 0)
    assert scaler._per_optimizer_states[id(opt)]["stage"] is OptState.READY


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16])
def test_amp_step_on_numpy_arrays(dtype):
    rng = np.random.default_rng(0)
    S = 1024.0
    arrays = [(rng.standard_normal(n) * S).astype(dtype) for n in (10, 1000, 70000)]
    before = [a.copy() for a in arrays]
    r = gradclip.amp_step_(arrays, S, 1.0)
    assert isinstance(r.total_norm, float) and not r.found_inf and r.written
    exact = math.sqrt(math.fsum(float(x) ** 2 for a in before for x in a.astype(np.float64))) / S
    assert rel(r.total_norm, exact) <= 1e-14
    assert r.clip_coef == min(1.0, 1.0 / (r.total_norm + 1e-6))
    assert r.factor == float(np.float32(r.clip_coef / S))
    for a, b in zip(arrays, before):
        want = (b.astype(np.float32) * np.float32(r.factor)).astype(dtype)
        assert a.view(np.uint8).tobytes() == want.view(np.uint8).tobytes()
    # an inf: found, nothing written
    arrays[1][5] = np.inf
    snap = [a.copy() for a in arrays]
    r = gradclip.amp_step_(arrays, S, 1.0)
    assert r.found_inf and not r.written and r.total_norm == math.inf
    assert all(a.tobytes() == b.tobytes() for a, b in zip(arrays, snap))
