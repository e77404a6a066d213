"""gradclip inside a real training step: is its clip as fast there as alone, and are torch's own
ops unaffected by its threads?

    python bench/train_step.py                        # OMP_WAIT_POLICY=PASSIVE, torch's threads
    python bench/train_step.py --omp-wait-policy unset --threads 2

A small transformer-style MLP stack (about 30M parameters, f32) is trained on random data.
Steps alternate between gradclip's ``clip_grad_norm_`` and torch's. Each step times
forward+backward, the clip, and the optimizer step separately; after the optimizer step, once
torch's threads have gone idle (a short sleep), gradclip's clip is timed again on the same
gradients ("standalone"). Reported: median in-step / standalone clip time for gradclip (target
<= 1.10), and the medians of torch's forward+backward and optimizer-step times in gradclip steps
over those in torch-clip steps (target ~1.0: gradclip's pool does not slow torch's ops).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=40)
ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
ap.add_argument("--omp-wait-policy", default="PASSIVE", help="PASSIVE, ACTIVE or unset")
ap.add_argument("--width", type=int, default=2048)
ap.add_argument("--depth", type=int, default=7)
ap.add_argument("--batch", type=int, default=32)
ARGS = ap.parse_args()
if ARGS.omp_wait_policy != "unset":
    os.environ["OMP_WAIT_POLICY"] = ARGS.omp_wait_policy

import torch  # noqa: E402

import gradclip  # noqa: E402


def model(width, depth):
    layers = []
    for _ in range(depth):
        layers += [torch.nn.LayerNorm(width), torch.nn.Linear(width, width), torch.nn.GELU()]
    layers += [torch.nn.Linear(width, 1)]
    return torch.nn.Sequential(*layers)


def main():
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    torch.manual_seed(0)
    net = model(ARGS.width, ARGS.depth)
    params = list(net.parameters())
    n = sum(p.numel() for p in params)
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
    x = torch.randn(ARGS.batch, ARGS.width)
    y = torch.randn(ARGS.batch, 1)
    clips = {
        "gradclip": lambda: gradclip.clip_grad_norm_(params, 0.1),
        "torch": lambda: torch.nn.utils.clip_grad_norm_(params, 0.1),
    }
    t = {k: {"fwdbwd": [], "clip": [], "step": [], "alone": []} for k in clips}
    for i in range(ARGS.steps + 2):
        mode = "gradclip" if i % 2 else "torch"
        opt.zero_grad(set_to_none=False)
        t0 = time.perf_counter()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        t1 = time.perf_counter()
        clips[mode]()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        time.sleep(0.05)  # torch's threads go idle
        t4 = time.perf_counter()
        clips[mode]()
        t5 = time.perf_counter()
        if i >= 2:  # warm-up
            r = t[mode]
            r["fwdbwd"].append(t1 - t0)
            r["clip"].append(t2 - t1)
            r["step"].append(t3 - t2)
            r["alone"].append(t5 - t4)
    med = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in t.items()}
    g, tt = med["gradclip"], med["torch"]
    print(
        f"{n / 1e6:.1f}M f32 parameters, batch {ARGS.batch}; torch threads "
        f"{torch.get_num_threads()}, gradclip threads {gradclip.get_num_threads()}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("medians (ms)        fwd+bwd    clip  clip alone   opt.step")
    for k in ("gradclip", "torch"):
        m = med[k]
        print(f"  {k:16s} {m['fwdbwd'] * 1e3:9.1f} {m['clip'] * 1e3:7.2f} {m['alone'] * 1e3:11.2f}"
              f" {m['step'] * 1e3:10.2f}")
    print(f"gradclip clip in the step / alone: {g['clip'] / g['alone']:.3f} (target <= 1.10)")
    print(f"torch clip in the step / alone:    {tt['clip'] / tt['alone']:.3f}")
    print(f"torch fwd+bwd, gradclip steps / torch-clip steps: {g['fwdbwd'] / tt['fwdbwd']:.3f}")
    print(f"torch opt.step, gradclip steps / torch-clip steps: {g['step'] / tt['step']:.3f}")


if __name__ == "__main__":
    main()
