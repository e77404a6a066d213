"""Sharded norms over torch.distributed (gloo on 127.0.0.1, 2 and 3 processes): every rank gets
the same bits, within 1e-14 of the single-process norm, and clips its own shard with them. In
exact mode (``exact=True``) every rank gets the same bits as the single-process exact norm of the
unsharded data, for any cut points and world size, and the clipped shards are the slices of the
single-process clip, bit for bit."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gradclip
from conftest import (
    exact_norm,
    exact_reference,
    make_grads,
    params_with,
    rel,
    same_bits,
    scaled_reference,
)

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


EXACT_SEEDS = (1, 101, 202)  # three different sets of cut points per layout


def tie_sets():
    """Sets whose exact norm lies just above a rounding tie, where a compensated sum rounds to
    even: (name, tensors, p, the exact norm rounded to float32)."""
    l1 = torch.zeros(5000)  # 1 + 2^-24 + 2^-53 + 2^-106: float32 1 + 2^-23 (compensated: 1.0)
    for i, x in zip((5, 100, 2500, 4999), (1.0, 2.0**-24, 2.0**-53, 2.0**-106)):
        l1[i] = x
    l2 = torch.zeros(5000)  # squares 2.25 + 2^-52 + 2^-106: f64 1.5 + 2^-52 (compensated: 1.5)
    for i, x in zip((4999, 7, 2600), (1.5, 2.0**-26, 2.0**-53)):
        l2[i] = x
    return [
        ("tie_l1", [l1], 1.0, 1.0 + 2.0**-23),
        ("tie_l2", [l2], 2.0, 1.5),
        ("tie_l2_bf16", [l2.to(torch.bfloat16)], 2.0, 1.5),
    ]


def _exact_worker(rank, world, results):
    """Exact mode: norms, clips, ties and a NaN on one rank."""
    w = dist.group.WORLD
    for dtype in DTYPES:
        whole = full_set(dtype)
        for layout, shard in (("fsdp1", fsdp1_shard), ("fsdp2", fsdp2_shard)):
            for p in (2.0, 1.0, math.inf, 3.0):
                for seed in EXACT_SEEDS:
                    mine = shard(whole, rank, world, seed=seed * world)
                    f64 = gradclip.get_total_norm_f64(mine, p, group=w, exact=True)
                    t = gradclip.get_total_norm(mine, p, group=w, exact=True)
                    params = params_with(mine)
                    clipped = gradclip.clip_grad_norm_(params, 0.5, p, group=w, exact=True)
                    c64 = gradclip.clip_grad_norm_f64_(
                        params_with(mine), 0.5, p, group=w, exact=True
                    )
                    results[("exact", str(dtype), layout, p, seed)] = (
                        f64, t, clipped, c64, [q.grad for q in params]
                    )
    for name, tensors, p, _ in tie_sets():
        for seed in EXACT_SEEDS:
            mine = fsdp1_shard(tensors, rank, world, seed=seed + world)
            t = gradclip.get_total_norm(mine, p, group=w, exact=True)
            f64 = gradclip.get_total_norm_f64(mine, p, group=w, exact=True)
            results[("tie", name, seed)] = (f64, t)
    mine = fsdp2_shard(full_set(torch.bfloat16), rank, world, seed=5)
    nonempty = [i for i, m in enumerate(mine) if m.numel()]
    if rank == world - 1:
        mine[nonempty[-1]][-1] = math.inf
    if rank == 1:
        mine[nonempty[0]][0] = math.nan  # the first element of rank 1's shards
        results["exact_poison"] = (nonempty[0], 0)
    try:
        gradclip.get_total_norm(mine, error_if_nonfinite=True, group=w, exact=True)
        results["exact_error"] = None
    except gradclip.NonFiniteError as e:
        results["exact_error"] = (e.rank, e.tensor, e.index, str(e))
    results["exact_nan"] = gradclip.get_total_norm_f64(mine, group=w, exact=True)


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
        _exact_worker(rank, world, results)
    finally:
        dist.destroy_process_group()
    torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))


_RUNS = {}


def run_ranks(world, tmp_path_factory):
    """Every rank's results for a world size (the processes run once per module)."""
    if world not in _RUNS:
        out = tmp_path_factory.mktemp(f"world{world}")
        mp.spawn(_worker, args=(world, free_port(), str(out)), nprocs=world, join=True)
        _RUNS[world] = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]
    return _RUNS[world]


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_norms_are_bit_identical_across_ranks(world, tmp_path_factory):
    ranks = run_ranks(world, tmp_path_factory)
    for key in ranks[0]:
        if isinstance(key, str) or key[0] in ("exact", "tie"):
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


def _unshard(pieces_per_rank, layout):
    """The tensors of the whole set back from each rank's shards (flat)."""
    if layout == "fsdp1":
        return [torch.cat([r[0] for r in pieces_per_rank])]
    return [torch.cat([r[i] for r in pieces_per_rank]) for i in range(len(pieces_per_rank[0]))]


@pytest.mark.parametrize("world", [2, 3])
def test_exact_sharded_norms_have_the_bits_of_the_single_process_exact_norm(
    world, tmp_path_factory
):
    ranks = run_ranks(world, tmp_path_factory)
    checked = 0
    for key in ranks[0]:
        if not (isinstance(key, tuple) and key[0] == "exact"):
            continue
        _, dtype_name, layout, p, seed = key
        dtype = getattr(torch, dtype_name.split(".")[1])
        whole = full_set(dtype)
        f64s = [r[key][0] for r in ranks] + [r[key][3] for r in ranks]
        tensors = [r[key][1] for r in ranks] + [r[key][2] for r in ranks]
        assert len({x.hex() for x in f64s}) == 1, (key, f64s)  # every rank: the same bits
        assert all(same_bits(t, tensors[0]) and t.dtype == dtype for t in tensors), key
        if p == 3.0:
            # no exact partial for P norms: the compensated one, within 1e-12 of one process
            assert rel(f64s[0], gradclip.get_total_norm_f64(whole, p)) <= 1e-12, key
            continue
        single = gradclip.get_total_norm_f64(whole, p, exact=True)
        assert f64s[0].hex() == single.hex() == exact_reference(whole, p).hex(), key
        assert same_bits(tensors[0], gradclip.get_total_norm(whole, p, exact=True)), key
        # the clipped shards are the slices of the single-process exact clip
        flat_whole = [t.reshape(-1) for t in whole]
        if layout == "fsdp1":
            flat_whole = [torch.cat(flat_whole)]
        params = [torch.nn.Parameter(torch.zeros_like(t)) for t in flat_whole]
        for q, t in zip(params, flat_whole):
            q.grad = t.clone()
        gradclip.clip_grad_norm_(params, 0.5, p, exact=True)
        got = _unshard([r[key][4] for r in ranks], layout)
        assert len(got) == len(params)
        for g, q, t in zip(got, params, flat_whole):
            assert same_bits(g, q.grad), key
            assert same_bits(g, scaled_reference(t, min(1.0, 0.5 / (single + 1e-6)))), key
        checked += 1
    assert checked == len(DTYPES) * 2 * 3 * len(EXACT_SEEDS)
    # the ties: every rank rounds up, as one process does in exact mode
    for name, tensors, p, as_f32 in tie_sets():
        single = gradclip.get_total_norm_f64(tensors, p, exact=True)
        assert single.hex() == exact_reference(tensors, p).hex()
        assert single != gradclip.get_total_norm_f64(tensors, p)  # compensated rounds to even
        for seed in EXACT_SEEDS:
            for r in ranks:
                f64, t = r[("tie", name, seed)]
                assert f64.hex() == single.hex(), (name, seed)
                assert t.dtype == tensors[0].dtype and float(t) == float(
                    torch.tensor(as_f32, dtype=torch.float32).to(t.dtype)
                ), (name, seed)
    # NaN on rank 1 and inf on the last rank: every rank raises, naming rank 1 (the first in
    # rank order); without error_if_nonfinite every rank gets NaN
    errors = [r["exact_error"] for r in ranks]
    assert all(e is not None and e[0] == 1 for e in errors)
    assert errors[1][1:3] == ranks[1]["exact_poison"] and "on rank 1 holds nan" in errors[1][3]
    assert all(math.isnan(r["exact_nan"]) for r in ranks)
