"""The thread pool: sized like torch's by default, settable, never changing a bit; the GIL is
released while the kernels run."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import gradclip
from conftest import make_grads, params_with, same_bits


def test_default_follows_torch_and_set_num_threads_pins():
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert gradclip.get_num_threads() == 1
        torch.set_num_threads(2)
        assert gradclip.get_num_threads() == 2
        gradclip.set_num_threads(3)
        assert gradclip.get_num_threads() == 3
        torch.set_num_threads(1)
        assert gradclip.get_num_threads() == 3  # pinned
        gradclip.set_num_threads(0)
        assert gradclip.get_num_threads() == 1  # following torch again
    finally:
        torch.set_num_threads(old)
    with pytest.raises(ValueError):
        gradclip.set_num_threads(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_results_have_the_same_bits_for_any_thread_count(dtype):
    # large enough for the library to fork (above its 256 KiB threshold)
    grads = make_grads([(1_000_003,), (300, 1000), (17,)], dtype, seed=8)
    runs = []
    for n in (1, 2, 3, 8):
        gradclip.set_num_threads(n)
        ps = params_with(grads)
        f64 = gradclip.clip_grad_norm_f64_(ps, 0.1)
        runs.append((f64, [p.grad for p in ps]))
    for f64, out in runs[1:]:
        assert f64.hex() == runs[0][0].hex()
        assert all(same_bits(a, b) for a, b in zip(out, runs[0][1]))


def test_the_gil_is_released_while_the_kernels_run():
    x = np.random.default_rng(0).standard_normal(20_000_000).astype(np.float32)
    gradclip.set_num_threads(1)
    gradclip.get_total_norm(x)  # warm the pool
    spans = []
    done = threading.Event()

    def work():
        for _ in range(5):
            t0 = time.perf_counter()
            gradclip.get_total_norm(x)
            spans.append((t0, time.perf_counter()))
        done.set()

    ticks = []
    th = threading.Thread(target=work)
    th.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
    th.join()
    # ticks of this thread that fall strictly inside a native call: with the GIL held during the
    # call there would be none (or a handful around the switch interval)
    inside = sum(1 for t in ticks for a, b in spans if a + 1e-4 < t < b - 1e-4)
    total_call = sum(b - a for a, b in spans)
    assert total_call > 0.01
    assert inside > 100, (inside, total_call)
