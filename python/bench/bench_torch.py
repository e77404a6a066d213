"""gradclip against torch.nn.utils in one process, on a GPT-2-small-shaped gradient set.

    python bench/bench_torch.py                 # f32, bf16, f16 at 1 and 2 threads
    python bench/bench_torch.py --pairs 9 --dtypes f32 --threads 2
    python bench/bench_torch.py --omp-wait-policy ACTIVE   # default: PASSIVE (see below)

The set has the 148 tensors of GPT-2 small (124.4M elements): token and position embeddings, 12
blocks of (ln_1, c_attn, c_proj, ln_2, c_fc, mlp c_proj) weights and biases, and ln_f. Each case
times gradclip and torch back to back, alternating which goes first, and reports the median over
pairs of the per-pair ratio torch_time / gradclip_time (> 1: gradclip is faster), so that drift
and noise on a shared machine hit both sides of a pair alike. Cases:

* norm     -- ``gradclip.get_total_norm`` vs ``torch.nn.utils.get_total_norm``;
* clip     -- ``clip_grad_norm_`` that writes (coefficient < 1) vs torch's, ``foreach`` on and off;
* noclip   -- nothing to clip (gradclip writes nothing; torch multiplies by 1);
* amp      -- ``gradclip.unscale_clip_grad_norm_(scaler, opt, max_norm)`` vs
  ``scaler.unscale_(opt)`` + ``clip_grad_norm_`` (both clip and write);
* overhead -- one call on 148 one-element tensors: absolute time per call (us), and what the
  torch attribute reads gradclip needs per tensor cost alone.

Threads: ``torch.set_num_threads(n)``; gradclip's pool follows torch's by default.
``OMP_WAIT_POLICY``: torch's OpenMP threads keep spinning for a while after each torch op
(libgomp's default), which takes cores from whatever runs next. The script sets
``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep at once) unless told otherwise; run it
with ``--omp-wait-policy ACTIVE`` or ``unset`` to see the effect on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtypes", default="f32,bf16,f16")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the GPT-2 sizes")
    ap.add_argument("--omp-wait-policy", default="PASSIVE", help="PASSIVE, ACTIVE or unset")
    ap.add_argument("--json", help="also write the results to this file")
    return ap.parse_args()


ARGS = parse()
if ARGS.omp_wait_policy != "unset":
    os.environ["OMP_WAIT_POLICY"] = ARGS.omp_wait_policy  # before torch starts OpenMP

import torch  # noqa: E402
from collections import defaultdict  # noqa: E402
from torch.amp.grad_scaler import _refresh_per_optimizer_state  # noqa: E402

import gradclip  # noqa: E402

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def gpt2_small_shapes(scale=1.0):
    d, ff, vocab, ctx, layers = 768, 3072, 50257, 1024, 12
    shapes = [(int(vocab * scale) or 1, d), (int(ctx * scale) or 1, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, ff), (ff,),
                   (ff, d), (d,)]
    shapes += [(d,), (d,)]
    return shapes


def make_params(shapes, dtype, seed=0):
    """Parameters whose data is one broadcast element (no memory) and whose .grad is real."""
    g = torch.Generator().manual_seed(seed)
    ps = []
    for s in shapes:
        p = torch.nn.Parameter(torch.zeros(1, dtype=dtype).expand(s))
        p.grad = (torch.randn(s, generator=g) * 0.01).to(dtype)
        ps.append(p)
    return ps


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def pairs(ours, theirs, n, setup=None):
    """Median of torch/gradclip time ratios over n interleaved pairs (order alternates)."""
    ratios, t_ours, t_theirs = [], [], []
    for i in range(n + 1):
        order = [("o", ours), ("t", theirs)] if i % 2 else [("t", theirs), ("o", ours)]
        got = {}
        for k, f in order:
            if setup:
                setup()
            got[k] = timed(f)
        if i == 0:
            continue  # warm-up pair
        ratios.append(got["t"] / got["o"])
        t_ours.append(got["o"])
        t_theirs.append(got["t"])
    return statistics.median(ratios), statistics.median(t_ours), statistics.median(t_theirs)


def bench_dtype(name, threads, n):
    dtype = DTYPES[name]
    torch.set_num_threads(threads)
    assert gradclip.get_num_threads() == threads
    ps = make_params(gpt2_small_shapes(ARGS.scale), dtype)
    grads = [p.grad for p in ps]
    elems = sum(g.numel() for g in grads)
    rows = {}
    rows["norm"] = pairs(
        lambda: gradclip.get_total_norm(grads),
        lambda: torch.nn.utils.get_total_norm(grads),
        n,
    )
    # max_norm at half the norm, and the gradients restored before every timed call (untimed):
    # without the restore, the norm after the first call sits at max_norm, the coefficient
    # rounds to 1 in f32 and gradclip writes nothing while torch still multiplies.
    m = gradclip.get_total_norm_f64(grads) / 2
    saved = [g.clone() for g in grads]

    def restore():
        for g, s in zip(grads, saved):
            g.copy_(s)

    for fe in (True, False):
        rows[f"clip foreach={fe}"] = pairs(
            lambda: gradclip.clip_grad_norm_(ps, m),
            lambda fe=fe: torch.nn.utils.clip_grad_norm_(ps, m, foreach=fe),
            n,
            setup=restore,
        )
    rows["nothing to clip"] = pairs(
        lambda: gradclip.clip_grad_norm_(ps, 1e30),
        lambda: torch.nn.utils.clip_grad_norm_(ps, 1e30),
        n,
    )
    if dtype != torch.float16:  # GradScaler.unscale_ refuses float16 gradients
        opt = torch.optim.SGD(ps, lr=0.0)
        scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
        scaler.scale(torch.ones(()))

        def reset():
            scaler._per_optimizer_states = defaultdict(_refresh_per_optimizer_state)
            restore()

        def torch_amp():
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(ps, m)

        rows["amp step"] = pairs(
            lambda: gradclip.unscale_clip_grad_norm_(scaler, opt, m), torch_amp, n, setup=reset
        )
    del ps, grads, saved
    return elems, rows


def bench_overhead(reps=2000):
    ps = []
    for _ in range(148):
        p = torch.nn.Parameter(torch.zeros(1))
        p.grad = torch.full((1,), 1e-3)
        ps.append(p)
    grads = [p.grad for p in ps]

    def per_call(f):
        f()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            best = min(best, (time.perf_counter() - t0) / reps)
        return best * 1e6

    out = {
        "gradclip.clip_grad_norm_": per_call(lambda: gradclip.clip_grad_norm_(ps, 1e30)),
        "gradclip.get_total_norm": per_call(lambda: gradclip.get_total_norm(grads)),
        "torch clip_grad_norm_": per_call(lambda: torch.nn.utils.clip_grad_norm_(ps, 1e30)),
        "torch get_total_norm": per_call(lambda: torch.nn.utils.get_total_norm(grads)),
        # what gradclip must read from torch per tensor, alone, in a Python loop: .grad, dtype,
        # is_cpu, is_contiguous(), numel(), data_ptr()
        "attribute reads alone": per_call(
            lambda: [
                (g.dtype, g.is_cpu, g.is_contiguous(), g.numel(), g.data_ptr())
                for g in (p.grad for p in ps)
            ]
        ),
        "0-dim result tensor": per_call(lambda: torch.scalar_tensor(1.5, dtype=torch.float32)),
    }
    return out


def main():
    print(f"gradclip {gradclip.__version__} ISA {gradclip.ISA}; torch {torch.__version__}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    results = {}
    print("\n| case | dtype | threads | torch / gradclip (median of pairs) | gradclip ms | torch ms |")
    print("|---|---|---|---|---|---|")
    for t in [int(x) for x in ARGS.threads.split(",")]:
        for name in ARGS.dtypes.split(","):
            elems, rows = bench_dtype(name, t, ARGS.pairs)
            for case, (ratio, to, tt) in rows.items():
                results[f"{case} {name} t{t}"] = {"ratio": ratio, "gradclip_s": to, "torch_s": tt}
                print(f"| {case} | {name} | {t} | {ratio:.2f} | {to * 1e3:.1f} | {tt * 1e3:.1f} |")
            sys.stdout.flush()
    torch.set_num_threads(1)
    ov = bench_overhead()
    results["overhead_us"] = ov
    print("\nPer call on 148 one-element tensors (us, best of 5):")
    for k, v in ov.items():
        print(f"  {k:28s} {v:8.1f}")
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
