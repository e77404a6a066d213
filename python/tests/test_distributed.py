"""Sharded norms over torch.distributed (gloo on 127.0.0.1, 2 and 3 processes): every rank gets
the same bits, within 1e-14 of the single-process norm, and clips its own shard with them."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gradclip
from conftest import exact_norm, make_grads, rel, same_bits, scaled_reference

SHAPES = [(768, 64), (3072,), (50, 77), (1,), (4096, 17), (333,), (65536 + 5,)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SETS = {}
_EXACT = {}


def full_set(dtype):
    if dtype not in _SETS:
        _SETS[dtype] = make_grads(SHAPES, dtype, seed=11)
    return _SETS[dtype]


def exact(dtype, p):
    if (dtype, p) not in _EXACT:
        _EXACT[(dtype, p)] = exact_norm(full_set(dtype), p)
    return _EXACT[(dtype, p)]


def cuts(n: int, world: int, seed: int):
    """world - 1 arbitrary cut points in [0, n] (uneven shards, possibly empty)."""
    g = torch.Generator().manual_seed(seed)
    pts = sorted(torch.randint(0, n + 1, (world - 1,), generator=g).tolist())
    return [0] + pts + [n]


def fsdp1_shard(tensors, rank, world, seed):
    """FSDP1-like: everything flattened into one buffer, this rank's contiguous slice."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    c = cuts(flat.numel(), world, seed)
    return [flat[c[rank] : c[rank + 1]].clone()]


def fsdp2_shard(tensors, rank, world, seed):
    """FSDP2-like: every tensor flattened and cut at its own arbitrary element boundaries."""
    out = []
    for i, t in enumerate(tensors):
        flat = t.reshape(-1)
        c = cuts(flat.numel(), world, seed + i)
        out.append(flat[c[rank] : c[rank + 1]].clone())
    return out


def _worker(rank, world, port, outdir):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    results = {}
    try:
        for dtype in DTYPES:
            whole = full_set(dtype)
            for layout, shard in (("fsdp1", fsdp1_shard), ("fsdp2", fsdp2_shard)):
                for p in (2.0, 1.0, math.inf):
                    mine = shard(whole, rank, world, seed=world * 7 + 1)
                    key = (str(dtype), layout, p)
                    f64 = gradclip.get_total_norm_f64(mine, p, group=dist.group.WORLD)
                    t = gradclip.get_total_norm(mine, p, group=dist.group.WORLD)
                    params = []
                    for m in mine:
                        q = torch.nn.Parameter(torch.zeros_like(m))
                        q.grad = m.clone()
                        params.append(q)
                    clipped = gradclip.clip_grad_norm_(params, 0.5, p, group=dist.group.WORLD)
                    results[key] = (f64, t, clipped, mine, [q.grad for q in params])
        # a NaN on rank 1 only: every rank raises NonFiniteError, rank 1 names the element
        mine = fsdp2_shard(full_set(torch.float32), rank, world, seed=3)
        if rank == 1:
            mine[4][2] = math.nan
        try:
            gradclip.get_total_norm(mine, error_if_nonfinite=True, group=dist.group.WORLD)
            results["error"] = None
        except gradclip.NonFiniteError as e:
            results["error"] = (e.rank, e.tensor, e.index, str(e))
        # without error_if_nonfinite every rank gets NaN, as torch would compute
        results["nan"] = gradclip.get_total_norm_f64(mine, group=dist.group.WORLD)
    finally:
        dist.destroy_process_group()
    torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_norms_are_bit_identical_across_ranks(world, tmp_path):
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for key in ranks[0]:
        if key in ("error", "nan"):
            continue
        dtype_name, layout, p = key
        dtype = getattr(torch, dtype_name.split(".")[1])
        f64s = [r[key][0] for r in ranks]
        assert len({x.hex() for x in f64s}) == 1, (key, f64s)  # every rank: the same bits
        tensors = [r[key][1] for r in ranks] + [r[key][2] for r in ranks]
        assert all(same_bits(t, tensors[0]) and t.dtype == dtype for t in tensors)
        whole = full_set(dtype)
        single = gradclip.get_total_norm_f64(whole, p)
        assert rel(f64s[0], single) <= 1e-14, key
        assert rel(f64s[0], exact(dtype, p)) <= 1e-14, key
        # each rank clipped its own shard with the common coefficient
        coef = min(1.0, 0.5 / (f64s[0] + 1e-6))
        for r in ranks:
            _, _, _, before, after = r[key]
            for b, a in zip(before, after):
                assert same_bits(a, scaled_reference(b, coef)) if coef < 1 else same_bits(a, b)
    # the NaN on rank 1
    errors = [r["error"] for r in ranks]
    assert all(e is not None and e[0] == 1 for e in errors)
    assert errors[1][1] == 4 and errors[1][2] == 2 and "tensors[4] on rank 1 holds nan" in errors[1][3]
    assert all("rank 1" in e[3] for e in errors)
    assert all(math.isnan(r["nan"]) for r in ranks)


def test_group_none_communicates_nothing():
    # no process group exists here: group=None must not touch torch.distributed
    assert not dist.is_initialized()
    g = make_grads([(10,)], torch.float32)
    assert float(gradclip.get_total_norm(g, group=None)) == float(gradclip.get_total_norm(g))
