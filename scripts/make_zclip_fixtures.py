#!/usr/bin/env python3
"""Writes tests/fixtures/zclip_reference.json: the decisions of the published ZClip rule.

Anchor: the reference implementation of Kumar et al. (2025), "ZClip: Adaptive Spike Mitigation
for LLM Pre-Training" (github.com/bluorion-com/ZClip, ``zclip/zclip.py``, class ``ZClip``,
``mode="zscore"``). ``reference_zclip`` below restates its per-step rule on plain Python floats
(what ``total_norm.item()`` gives it) without torch: the model is only used there to get the
norm, and the clipping it applies is ``global_norm > effective_clip``. What it reproduces:

* warm-up: the first ``warmup_steps`` norms are buffered; once the buffer holds ``warmup_steps``
  values, mean = their mean, var = their population variance. During warm-up the gradients are
  clipped to ``max_grad_norm`` (if set) when the norm exceeds it.
* after warm-up: std = var ** 0.5, z = (g - mean) / (std + eps). If z > z_thresh the clip value is
  ``(mean + z_thresh * std / (z / z_thresh)) * clip_factor`` (adaptive scaling) or ``mean``;
  otherwise there is none. The effective clip is min(clip value or g, max_grad_norm if set), and
  the gradients are scaled when g exceeds it.
* the statistics are then updated with x = the clip value if there was one, else g:
  mean = a mean + (1 - a) x, var = a var + (1 - a) (x - mean_new)^2 -- skipped on a spike step
  when ``skip_update_on_spike``.

The warm-up sum is a plain left-to-right float sum, as ``sum()`` is on Python <= 3.11 (3.12 made
``sum`` of floats compensated, which can move the mean by an ulp; the Rust test allows for that).

Streams: norms around a slowly decaying level with relative noise 1 %, 5 %, 10 % (Gaussian) and
30 % (log-normal), with injected jumps of x1.05 .. x10 on about 1.5 % of the steps, plus a
constant warm-up followed by a 0.5 %/step rise (the case the optional sigma floor is for).
Norms are rounded to 10 significant digits before use, so the JSON holds them exactly.

Run: ``python3 scripts/make_zclip_fixtures.py`` (numpy only).
"""

import json
import pathlib

import numpy as np

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "zclip_reference.json"

DEFAULTS = dict(
    alpha=0.97,
    z_thresh=2.5,
    max_grad_norm=1.0,
    eps=1e-6,
    warmup_steps=25,
    clip_option="adaptive_scaling",
    clip_factor=1.0,
    skip_update_on_spike=False,
)


def reference_zclip(norms, cfg):
    """Per step: (clipped_to or None, z or None, spike); and the final (mean, std)."""
    alpha, zt, cap, eps = cfg["alpha"], cfg["z_thresh"], cfg["max_grad_norm"], cfg["eps"]
    warm, mean, var, ready = [], None, None, False
    out = []
    for g in norms:
        if not ready:
            warm.append(g)
            if len(warm) >= cfg["warmup_steps"]:
                total = 0.0
                for x in warm:
                    total += x
                mean = total / len(warm)
                sq = 0.0
                for x in warm:
                    sq += (x - mean) ** 2
                var = sq / len(warm)
                ready, warm = True, []
            out.append((cap if cap is not None and g > cap else None, None, False))
            continue
        std = var ** 0.5
        z = (g - mean) / (std + eps)
        clip = None
        if z > zt:
            if cfg["clip_option"] == "adaptive_scaling":
                clip = (mean + (zt * std) / (z / zt)) * cfg["clip_factor"]
            else:
                clip = mean
        effective = clip if clip is not None else g
        if cap is not None:
            effective = min(effective, cap)
        out.append((effective if g > effective else None, z, clip is not None))
        if clip is not None and cfg["skip_update_on_spike"]:
            continue
        x = clip if clip is not None else g
        mean = alpha * mean + (1 - alpha) * x
        var = alpha * var + (1 - alpha) * (x - mean) ** 2
    return out, (mean, var ** 0.5 if var is not None else None)


def round10(xs):
    return [float(f"{x:.10g}") for x in xs]


def noisy_stream(rng, n, level, rel_noise, lognormal=False):
    t = np.arange(n)
    base = level * (1.0 - 0.3 * t / n)  # slow decay, as late in training
    noise = rng.lognormal(0.0, rel_noise, n) if lognormal else 1.0 + rel_noise * rng.standard_normal(n)
    g = base * noise
    jumps = rng.random(n) < 0.015
    jumps[:40] = False  # keep the warm-up clean
    factors = rng.choice([1.05, 1.1, 1.3, 2.0, 10.0], size=n)
    g = np.where(jumps, g * factors, g)
    return round10(g)


def main():
    rng = np.random.default_rng(20250413)
    n = 2000
    streams = {
        "noise_1pct": noisy_stream(rng, n, 0.5, 0.01),
        "noise_5pct": noisy_stream(rng, n, 0.5, 0.05),
        "noise_10pct": noisy_stream(rng, n, 0.5, 0.10),
        "lognormal_30pct": noisy_stream(rng, n, 0.5, 0.30, lognormal=True),
        "constant_warmup_then_rise": round10([0.5] * 25 + [0.5 * 1.005**k for k in range(1, 201)]),
    }
    configs = {
        "defaults": {},
        "no_cap": dict(max_grad_norm=None),
        "mean_no_cap": dict(clip_option="mean", max_grad_norm=None),
        "skip_update_no_cap": dict(skip_update_on_spike=True, max_grad_norm=None),
        "clip_factor_0.8_cap_0.6": dict(clip_factor=0.8, max_grad_norm=0.6),
        "alpha_0.9_z2_warmup10_eps1e-8": dict(
            alpha=0.9, z_thresh=2.0, warmup_steps=10, eps=1e-8, max_grad_norm=None
        ),
    }
    runs = []
    for sname, norms in streams.items():
        for cname, over in configs.items():
            cfg = dict(DEFAULTS, **over)
            steps, (mean, std) = reference_zclip(norms, cfg)
            spike_steps = [i for i, (_, _, s) in enumerate(steps) if s]
            spike10 = spike_steps[9] if len(spike_steps) >= 10 else len(steps)
            runs.append(
                {
                    "stream": sname,
                    "config": cname,
                    "params": cfg,
                    # [step, clipped-to value] for every step the reference scales the gradients
                    "clipped": [[i, c] for i, (c, _, _) in enumerate(steps) if c is not None],
                    "spikes": spike_steps,
                    # z at every 100th step after warm-up and at the first 10 spikes
                    "z": [
                        [i, z]
                        for i, (_, z, s) in enumerate(steps)
                        if z is not None and ((s and i <= spike10) or i % 100 == 0)
                    ],
                    "final_mean": mean,
                    "final_std": std,
                }
            )
    doc = {
        "generator": "scripts/make_zclip_fixtures.py",
        "anchor": "github.com/bluorion-com/ZClip zclip/zclip.py, mode=zscore",
        "streams": streams,
        "runs": runs,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    for r in runs:
        print(f"{r['stream']:>26} {r['config']:>30}: {len(r['spikes']):4} spikes, {len(r['clipped']):4} clipped")


if __name__ == "__main__":
    main()
