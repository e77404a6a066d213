"""Every refusal: a clear exception naming the tensor by position, and nothing modified."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gradclip
from conftest import make_grads, params_with, same_bits

WRITERS = [
    lambda ps: gradclip.clip_grad_norm_(ps, 0.01),
    lambda ps: gradclip.clip_grads_with_norm_(ps, 0.01, 100.0),
    lambda ps: gradclip.clip_grad_value_(ps, 0.01),
    lambda ps: gradclip.amp_step_(ps, 1024.0, 0.01),
]
WRITER_IDS = ["clip_grad_norm_", "clip_grads_with_norm_", "clip_grad_value_", "amp_step_"]


def snapshot(ps):
    return [None if p.grad is None else p.grad.clone() for p in ps]


def unchanged(ps, before):
    """Every gradient of a supported dtype has its old bits (the refused one is not touched
    either: gradclip never builds a view of it)."""
    for p, b in zip(ps, before):
        if b is None or b.device.type != "cpu":
            continue
        if b.dtype in (torch.float32, torch.float16, torch.bfloat16):
            if not same_bits(p.grad, b):
                return False
        elif not torch.equal(p.grad, b):
            return False
    return True


def good_params(n=3):
    return params_with(make_grads([(100,)] * n, torch.float32, seed=n))


def param_with_grad(g):
    """A parameter whose .grad is exactly the tensor ``g``."""
    p = torch.nn.Parameter(
        torch.zeros(g.shape, dtype=g.dtype, device=g.device),
        requires_grad=g.dtype.is_floating_point or g.dtype.is_complex,
    )
    p.grad = g
    return p


BAD_GRADS = {
    "float64": lambda: torch.zeros(10, dtype=torch.float64),
    "int32": lambda: torch.zeros(10, dtype=torch.int32),
    "complex64": lambda: torch.zeros(10, dtype=torch.complex64),
    "meta": lambda: torch.zeros(10, device="meta"),
    "strided-view": lambda: torch.zeros(20)[::2],
    "expanded": lambda: torch.zeros(1).expand(10),
    "column-slice": lambda: torch.zeros(4, 6)[:, 1:3],
}


@pytest.mark.parametrize("name", list(BAD_GRADS))
@pytest.mark.parametrize("write", WRITERS, ids=WRITER_IDS)
def test_unsupported_grads_are_named_and_nothing_is_modified(name, write):
    ps = good_params(4)
    bad = BAD_GRADS[name]()
    p = param_with_grad(bad)
    assert p.grad is bad
    ps.insert(2, p)
    before = snapshot(ps)
    with pytest.raises(gradclip.UnsupportedTensorError) as e:
        write(ps)
    assert "parameters[2].grad" in str(e.value) and e.value.tensor == 2
    assert isinstance(e.value, TypeError) and isinstance(e.value, ValueError)
    assert unchanged(ps, before)


@pytest.mark.parametrize("name", list(BAD_GRADS))
def test_unsupported_tensors_in_get_total_norm(name):
    ts = make_grads([(5,), (6,)], torch.float32) + [BAD_GRADS[name]()]
    with pytest.raises(gradclip.UnsupportedTensorError, match=r"tensors\[2\]"):
        gradclip.get_total_norm(ts)


def test_cuda_tensors_are_refused():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ps = good_params(2)
    q = torch.nn.Parameter(torch.zeros(4, device="cuda"))
    q.grad = torch.ones(4, device="cuda")
    with pytest.raises(gradclip.UnsupportedTensorError, match=r"parameters\[2\]\.grad.*cuda"):
        gradclip.clip_grad_norm_(ps + [q], 1.0)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_and_other_layouts_are_refused():
    layouts = [torch.zeros(10).to_sparse(), torch.eye(3).to_sparse_csr()]
    if torch.backends.mkldnn.is_available():
        layouts.append(torch.zeros(10).to_mkldnn())
    for t in layouts:
        with pytest.raises(gradclip.UnsupportedTensorError, match=r"tensors\[1\].*layout"):
            gradclip.get_total_norm([torch.zeros(3), t])


def test_tensor_subclasses_and_non_tensors_are_refused():
    class Sub(torch.Tensor):
        pass

    s = torch.zeros(3).as_subclass(Sub)
    with pytest.raises(gradclip.UnsupportedTensorError, match=r"tensors\[0\].*subclass"):
        gradclip.get_total_norm([s])
    with pytest.raises(TypeError, match=r"tensors\[1\].*got list"):
        gradclip.get_total_norm([torch.zeros(2), [1.0, 2.0]])
    with pytest.raises(TypeError, match="cannot mix"):
        gradclip.get_total_norm([torch.zeros(2), np.zeros(2, np.float32)])


@pytest.mark.parametrize("write", WRITERS, ids=WRITER_IDS)
def test_shared_memory_between_written_buffers_is_refused(write):
    base = torch.arange(40, dtype=torch.float32) + 1
    cases = {
        "same tensor twice": (base, base),
        "overlapping views": (base[0:20], base[10:30]),
        "view and its base": (base, base[5:7]),
    }
    for label, (a, b) in cases.items():
        ps = good_params(2)
        for g in (a, b):
            p = torch.nn.Parameter(torch.zeros(g.shape))
            p.grad = g
            ps.append(p)
        keep = base.clone()
        before = snapshot(ps)
        with pytest.raises(gradclip.OverlapError) as e:
            write(ps)
        assert (e.value.first, e.value.second) == (2, 3), label
        assert "parameters[2].grad and parameters[3].grad share memory" in str(e.value)
        assert unchanged(ps, before) and torch.equal(base, keep), label
    # adjacent views do not overlap
    ps = []
    for g in (base[0:20], base[20:40]):
        p = torch.nn.Parameter(torch.zeros(20))
        p.grad = g
        ps.append(p)
    write(ps)


def test_reading_aliased_tensors_counts_them_twice_like_torch():
    x = make_grads([(100,)], torch.float32)[0]
    got = gradclip.get_total_norm_f64([x, x])
    assert got == pytest.approx(math.sqrt(2) * gradclip.get_total_norm_f64([x]), rel=1e-15)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_error_names_the_first_element(bad):
    grads = make_grads([(10,), (3, 4, 5), (50,)], torch.bfloat16)
    grads[1][1, 2, 3] = bad  # flat index 1*20 + 2*5 + 3 = 33
    grads[2][0] = math.nan  # a later one is not the first
    ps = params_with(grads)
    ps.insert(0, torch.nn.Parameter(torch.ones(2)))  # no grad: positions follow the input list
    before = snapshot(ps)
    for call in [
        lambda: gradclip.clip_grad_norm_(ps, 1.0, error_if_nonfinite=True),
        lambda: gradclip.clip_grad_norm_f64_(ps, 1.0, error_if_nonfinite=True),
        lambda: gradclip.amp_step_(ps, 8.0, 1.0, error_if_nonfinite=True),
    ]:
        with pytest.raises(gradclip.NonFiniteError) as e:
            call()
        err = e.value
        assert isinstance(err, RuntimeError)
        assert (err.tensor, err.index) == (2, 33)
        assert (math.isnan(err.value) and math.isnan(bad)) or err.value == bad
        assert "parameters[2].grad" in str(err) and "flat index 33" in str(err)
        assert unchanged(ps, before)
    with pytest.raises(gradclip.NonFiniteError, match=r"tensors\[1\] holds"):
        gradclip.get_total_norm(grads, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):  # what torch code catches keeps working
        gradclip.get_total_norm(grads, 2.0, True)


def test_nonfinite_index_is_the_logical_index_for_channels_last():
    x = torch.zeros(1, 3, 2, 2).to(memory_format=torch.channels_last)
    x[0, 2, 1, 0] = math.inf  # logical flat index 2*4 + 1*2 + 0 = 10
    with pytest.raises(gradclip.NonFiniteError) as e:
        gradclip.get_total_norm([x], error_if_nonfinite=True)
    assert e.value.index == 10


@pytest.mark.parametrize("p", [0.0, -1.0, -math.inf, math.nan, "fro"])
def test_unsupported_norm_types(p):
    with pytest.raises(ValueError):
        gradclip.get_total_norm([torch.ones(3)], p)
    ps = good_params()
    before = snapshot(ps)
    with pytest.raises(ValueError):
        gradclip.clip_grad_norm_(ps, 1.0, p)
    assert unchanged(ps, before)


@pytest.mark.parametrize("max_norm", [0.0, -1.0, math.nan])
def test_invalid_max_norm(max_norm):
    ps = good_params()
    before = snapshot(ps)
    with pytest.raises(ValueError, match="max_norm"):
        gradclip.clip_grad_norm_(ps, max_norm)
    with pytest.raises(ValueError, match="max_norm"):
        gradclip.clip_grads_with_norm_(ps, max_norm, 3.0)
    assert unchanged(ps, before)


def test_invalid_clip_value_and_loss_scale():
    ps = good_params()
    before = snapshot(ps)
    for v in (-1.0, math.nan):
        with pytest.raises(ValueError, match="clip_value"):
            gradclip.clip_grad_value_(ps, v)
    for s in (0.0, -2.0, math.inf, math.nan, 1e-300):
        with pytest.raises(ValueError, match="loss scale"):
            gradclip.amp_step_(ps, s, 1.0)
    with pytest.raises(ValueError, match="total_norm"):
        gradclip.clip_grads_with_norm_(ps, 1.0, -1.0)
    assert unchanged(ps, before)


# ---- NumPy -------------------------------------------------------------------------------


def test_numpy_arrays_are_checked_too():
    import ml_dtypes

    good = np.ones(8, np.float32)
    ro = np.ones(8, np.float32)
    ro.flags.writeable = False
    # read-only arrays can be read, not written
    assert gradclip.get_total_norm([good, ro]) == 4.0
    with pytest.raises(gradclip.UnsupportedTensorError, match=r"arrays\[1\].*read-only"):
        gradclip.clip_grad_norm_([good, ro], 0.1)
    assert (good == 1).all()
    bad = {
        "float64": np.ones(8),
        "big-endian": np.ones(8, ">f4"),
        "strided": np.ones(16, np.float32)[::2],
        "reversed": np.ones(8, np.float32)[::-1],
        "misaligned": np.frombuffer(bytearray(40), np.float32, count=8, offset=2),
        "int": np.ones(8, np.int32),
    }
    for label, arr in bad.items():
        with pytest.raises(gradclip.UnsupportedTensorError, match=r"arrays\[1\]"):
            gradclip.get_total_norm([good, arr])
    # Fortran order is dense: accepted, and the bfloat16 of ml_dtypes works
    f = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    assert gradclip.get_total_norm([f]) == pytest.approx(np.linalg.norm(f.astype(np.float64)), rel=1e-15)
    b = np.ones(9, ml_dtypes.bfloat16)
    assert gradclip.get_total_norm([b]) == 3.0
    f[1, 2] = np.inf  # logical index 6 (memory index 7 in column-major order)
    with pytest.raises(gradclip.NonFiniteError) as e:
        gradclip.get_total_norm([good, f], error_if_nonfinite=True)
    assert (e.value.tensor, e.value.index) == (1, 6)
    a = np.arange(10, dtype=np.float32)
    with pytest.raises(gradclip.OverlapError):
        gradclip.clip_grad_norm_([a[:6], a[4:]], 0.1)
