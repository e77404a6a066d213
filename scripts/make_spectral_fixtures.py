#!/usr/bin/env python3
"""Writes tests/fixtures/spectral_norm_torch.json: PyTorch's own spectral-norm states.

Anchors (float64 throughout, so that the Rust test can use tight tolerances):

* ``torch.nn.utils.parametrizations.spectral_norm`` (the current API), applied to an
  ``nn.Linear`` in training mode, as a freshly built module is;
* ``torch.nn.utils.spectral_norm`` (the legacy forward-pre-hook API).

For each case the file holds the matrix W (row-major, ``rows x cols`` = ``out x in``), the raw
Gaussian start vectors torch drew (before its normalisation), torch's ``u``, ``v`` and frozen
``sigma = u^T W v`` right after construction, and then, for each training-mode forward, the
``sigma`` that forward divided by (recomputed with torch's own expression from the very ``u``, ``v``
it used, and checked against ``W / module.weight``) and the ``u``, ``v`` after it.

The start vectors are recovered by replaying torch's generator: save the RNG state, draw
``normal_`` vectors of the two lengths, restore the state, and build the module; the script then
checks that iterating from the recovered draws reproduces torch's buffers bit for bit, so the
fixture cannot hold vectors torch did not use.

Run: ``python3 scripts/make_spectral_fixtures.py`` (torch >= 2.0; the file records the version).
"""

import json
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "spectral_norm_torch.json"
EPS = 1e-12
DT = torch.float64


def lst(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def conditioned_matrix(rows, cols, ratio, seed):
    """W = U diag(s) V^T with s1 = 1, s2 = ratio, the rest spread in (0.05, 0.6)."""
    g = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=g, dtype=DT))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=g, dtype=DT))
    s = torch.linspace(0.6, 0.05, k, dtype=DT)
    s[0], s[1] = 1.0, ratio
    return (u * s) @ v.T


def modular_matrix(rows, cols):
    """A large matrix both sides compute from integers: (((7 i^2 + 13 j + 3 i j) mod 101) - 50) / 50.

    Integer arithmetic, then one correctly rounded division, so Rust builds the same f64 values
    without storing them (the file stays small while the test reaches the parallel mat-vecs).
    """
    i = np.arange(rows, dtype=np.int64)[:, None]
    j = np.arange(cols, dtype=np.int64)[None, :]
    m = ((7 * i * i + 13 * j + 3 * i * j) % 101) - 50
    return torch.from_numpy(m.astype(np.float64) / 50.0)


def replay_draws(rows, cols):
    """The two normal_ draws the next spectral-norm construction will make, without consuming them."""
    state = torch.get_rng_state()
    u = torch.empty(rows, dtype=DT).normal_(0, 1)
    v = torch.empty(cols, dtype=DT).normal_(0, 1)
    torch.set_rng_state(state)
    return u, v


def iterate(w, u, v, n, legacy):
    """Transcription of the two power-iteration orders, used only to verify the recovered draws."""
    for _ in range(n):
        if legacy:
            v = F.normalize(torch.mv(w.t(), u), dim=0, eps=EPS)
            u = F.normalize(torch.mv(w, v), dim=0, eps=EPS)
        else:
            u = F.normalize(torch.mv(w, v), dim=0, eps=EPS)
            v = F.normalize(torch.mv(w.t(), u), dim=0, eps=EPS)
    return u, v


def linear_with(w):
    rows, cols = w.shape
    lin = nn.Linear(cols, rows, bias=False, dtype=DT)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin


def case_record(name, api, w0, n_iter, raw, uv, sigma_frozen):
    """The fields every case has: shape, start draws, the state after construction."""
    rows, cols = w0.shape
    return {
        "name": name,
        "api": api,
        "rows": rows,
        "cols": cols,
        "n_power_iterations": n_iter,
        "u_start": lst(raw[0]),
        "v_start": lst(raw[1]),
        "after_construction": {"u": lst(uv[0]), "v": lst(uv[1]), "sigma_frozen": sigma_frozen},
        "steps": [],
    }


def parametrization_case(name, w0, n_iter, seed, steps, w_steps=None, vectors_at=(), store_w=True):
    """parametrizations.spectral_norm on a module in training mode; `steps` training forwards."""
    rows, cols = w0.shape
    lin = linear_with(w0)
    torch.manual_seed(seed)
    u_raw, v_raw = replay_draws(rows, cols)
    m = parametrizations.spectral_norm(lin, n_power_iterations=n_iter)
    sn = m.parametrizations.weight[0]
    assert m.training and sn.training
    # Construction = 15 warm-up iterations + the n_iter of the one training forward that
    # register_parametrization runs to check the parametrization.
    u_chk, v_chk = iterate(w0, F.normalize(u_raw, dim=0, eps=EPS), F.normalize(v_raw, dim=0, eps=EPS), 15 + n_iter, False)
    assert torch.equal(u_chk, sn._u) and torch.equal(v_chk, sn._v), name
    sigma0 = float(torch.vdot(sn._u, torch.mv(w0, sn._v)))
    case = case_record(name, "parametrization", w0, n_iter, (u_raw, v_raw), (sn._u, sn._v), sigma0)
    if store_w:
        case["w"] = lst(w0)
    if w_steps is not None:
        case["w_steps"] = [lst(w) for w in w_steps]
    orig = m.parametrizations.weight.original
    for k in range(steps):
        w = w0 if w_steps is None else w_steps[k]
        with torch.no_grad():
            orig.copy_(w)
        w_sn = m.weight  # one training-mode forward: n_iter iterations, then W / sigma
        sigma = float(torch.vdot(sn._u, torch.mv(w, sn._v)))
        # The recomputed sigma is the one torch divided by (to the rounding of one division).
        ratio = (w / w_sn.detach())[w.abs() > 1e-3]
        assert float((ratio / sigma - 1).abs().max()) < 1e-15, name
        rec = {"sigma": sigma}
        if k + 1 in vectors_at:
            rec["u"], rec["v"] = lst(sn._u), lst(sn._v)
        case["steps"].append(rec)
    m.eval()
    w_last = w0 if w_steps is None else w_steps[steps - 1]
    w_eval = m.weight  # eval mode: no iteration
    case["eval_sigma"] = float(torch.vdot(sn._u, torch.mv(w_last, sn._v)))
    ratio = (w_last / w_eval.detach())[w_last.abs() > 1e-3]
    assert float((ratio / case["eval_sigma"] - 1).abs().max()) < 1e-15, name
    return case


def legacy_case(name, w0, n_iter, seed, steps, vectors_at=(), w_from=None):
    """torch.nn.utils.spectral_norm (forward pre-hook) in training mode."""
    rows, cols = w0.shape
    lin = linear_with(w0)
    torch.manual_seed(seed)
    u_raw, v_raw = replay_draws(rows, cols)
    m = torch.nn.utils.spectral_norm(lin, n_power_iterations=n_iter)
    u0, v0 = F.normalize(u_raw, dim=0, eps=EPS), F.normalize(v_raw, dim=0, eps=EPS)
    assert torch.equal(u0, m.weight_u) and torch.equal(v0, m.weight_v), name  # no warm-up
    sigma0 = float(torch.dot(m.weight_u, torch.mv(w0, m.weight_v)))
    case = case_record(name, "legacy_hook", w0, n_iter, (u_raw, v_raw), (m.weight_u, m.weight_v), sigma0)
    if w_from is None:
        case["w"] = lst(w0)
    else:
        case["w_from"] = w_from  # the same matrix as that case (stored once)
    x = torch.zeros(1, cols, dtype=DT)
    for k in range(steps):
        m(x)  # the pre-hook runs n_iter iterations and sets weight = W / sigma
        sigma = float(torch.dot(m.weight_u, torch.mv(w0, m.weight_v)))
        ratio = (w0 / m.weight.detach())[w0.abs() > 1e-3]
        assert float((ratio / sigma - 1).abs().max()) < 1e-15, name
        rec = {"sigma": sigma}
        if k + 1 in vectors_at:
            rec["u"], rec["v"] = lst(m.weight_u), lst(m.weight_v)
        case["steps"].append(rec)
    m.eval()
    m(x)
    case["eval_sigma"] = float(torch.dot(m.weight_u, torch.mv(w0, m.weight_v)))
    return case


def main():
    torch.set_default_dtype(DT)
    cases = []
    # The matrix of issue 13: 64 x 32, sigma2/sigma1 = 0.93 (slow convergence).
    w_issue = conditioned_matrix(64, 32, 0.93, seed=13)
    cases.append(parametrization_case("issue13_64x32", w_issue, 1, seed=1, steps=10, vectors_at=(1, 2, 10)))
    cases.append(legacy_case("issue13_64x32_legacy", w_issue, 1, seed=1, steps=10, vectors_at=(1, 2, 10), w_from="issue13_64x32"))
    # Wide, three iterations per forward, and W changing every step as under an optimiser
    # (entries rounded to f32 so the test can also feed the f32 path).
    g = torch.Generator().manual_seed(7)
    w_wide = torch.randn(5, 9, generator=g, dtype=DT).float().double()
    w_steps, w = [], w_wide
    for _ in range(6):
        w = (w + 0.05 * torch.randn(5, 9, generator=g, dtype=DT)).float().double()
        w_steps.append(w)
    cases.append(parametrization_case("wide_5x9_n3_changing", w_wide, 3, seed=2, steps=6, w_steps=w_steps, vectors_at=(1, 6)))
    # nn.Linear's default init (Kaiming uniform), tall 12 x 7, n = 2.
    torch.manual_seed(3)
    w_lin = nn.Linear(7, 12, bias=False, dtype=DT).weight.detach().clone()
    cases.append(parametrization_case("linear_init_12x7_n2", w_lin, 2, seed=4, steps=4, vectors_at=(4,)))
    cases.append(legacy_case("linear_init_12x7_n2_legacy", w_lin, 2, seed=4, steps=4, vectors_at=(4,), w_from="linear_init_12x7_n2"))
    # 320 x 256 = 81,920 elements: the crate's parallel mat-vecs (>= 65,536 elements).
    w_big = modular_matrix(320, 256)
    big = parametrization_case("modular_320x256", w_big, 1, seed=5, steps=3, vectors_at=(3,), store_w=False)
    big["w_formula"] = "modular"  # (((7 i^2 + 13 j + 3 i j) mod 101) - 50) / 50
    cases.append(big)

    doc = {
        "generator": "scripts/make_spectral_fixtures.py",
        "torch": torch.__version__,
        "eps": EPS,
        "layout": "W row-major rows x cols (nn.Linear weight: out x in); u has rows entries, v cols",
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
