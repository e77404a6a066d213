#!/usr/bin/env python3
"""Writes tests/fixtures/autoclip_reference.json: what the AutoClip authors' rule does per step.

Anchor: Seetharaman et al. (2020), "AutoClip: Adaptive Gradient Clipping for Source Separation
Networks", reference code github.com/pseeth/autoclip ``autoclip.py``: after each backward pass the
total L2 gradient norm (the per-parameter ``grad.norm(2).item()`` values combined in Python floats)
is appended to the history, ``clip_value = np.percentile(history, p)``, and
``torch.nn.utils.clip_grad_norm_(parameters, clip_value)`` is applied. ``reference_step`` below
restates that with one float32 parameter.

The point of interest is a zero percentile with a non-zero current norm:
``clip_grad_norm_`` with ``max_norm = 0`` multiplies the gradient by ``0 / (norm + 1e-6) = 0``,
i.e. the reference zeroes the gradient. The crate deliberately does not (see
src/monitor/autoclip.rs); the Rust test checks both that the fixture shows the zeroing and that
the crate leaves those gradients unchanged, and that every other step matches.

Run: ``python3 scripts/make_autoclip_fixtures.py`` (torch, numpy).
"""

import json
import pathlib

import numpy as np
import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "autoclip_reference.json"


def reference_step(param, history, grad, p):
    param.grad = torch.tensor(grad, dtype=torch.float32)
    history.append(param.grad.norm(2).item())
    clip_value = float(np.percentile(history, p))
    torch.nn.utils.clip_grad_norm_([param], clip_value)
    return clip_value, [float(x) for x in param.grad.tolist()]


def run(name, p, grads):
    param = torch.nn.Parameter(torch.zeros(len(grads[0])))
    history, steps = [], []
    for g in grads:
        t, out = reference_step(param, history, g, p)
        steps.append({"grad": g, "threshold": t, "out": out})
    return {"name": name, "percentile": p, "steps": steps}


def main():
    runs = []
    # Issue 13: p = 10, nine zero gradients, then non-zero ones. With 9 zeros the 10th
    # percentile stays 0 until the history holds 82 norms, so the reference zeroes the next 72
    # gradients; from the 82nd step on it clips normally. Pythagorean pairs keep every norm exact.
    triples = [[3.0, 4.0], [6.0, 8.0], [5.0, 12.0], [8.0, 15.0], [7.0, 24.0], [20.0, 21.0]]
    grads = [[0.0, 0.0]] * 9 + [triples[i % len(triples)] for i in range(81)]
    runs.append(run("issue13_p10_nine_zeros", 10.0, grads))
    # Zero gradients mixed into a random stream (every 4th step zero), p = 10 and p = 50.
    rng = np.random.default_rng(13)
    mixed = []
    for i in range(120):
        g = (rng.standard_normal(4) * np.exp(rng.standard_normal())).astype(np.float32)
        mixed.append([0.0] * 4 if i % 4 == 0 else [float(x) for x in g])
    runs.append(run("mixed_zeros_p10", 10.0, mixed))
    runs.append(run("mixed_zeros_p50", 50.0, mixed))
    # A zero percentile: every step clips to the smallest norm so far (0 after the first zero).
    runs.append(run("mixed_zeros_p0", 0.0, mixed[1:40]))
    doc = {
        "generator": "scripts/make_autoclip_fixtures.py",
        "anchor": "github.com/pseeth/autoclip autoclip.py (np.percentile + torch clip_grad_norm_)",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "runs": runs,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    for r in runs:
        zeroed = sum(
            1 for s in r["steps"] if s["threshold"] == 0.0 and any(x != 0.0 for x in s["grad"])
        )
        print(f"{r['name']:>24}: {len(r['steps'])} steps, {zeroed} non-zero gradients zeroed by the reference")


if __name__ == "__main__":
    main()
