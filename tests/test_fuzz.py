"""Seeded-loop fuzzing of the MoE ops (ext against the float64 torch reference) and of the
decoding loops' invariants: many small random shapes per test, fixed seeds, a few seconds.
Run: pytest -q tests/test_fuzz.py"""
import random

import pytest
import torch
import torch.nn.functional as F

from minimoe import moe, ops
from minimoe.sampler import greedy, maskgit

TRIALS = 50
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def need(backend):
    if backend == "ext" and not ops.EXT_AVAILABLE:  # as tests/test_ops.py decides
        pytest.skip("extension not built")
    return ops.EXT if backend == "ext" else moe.TORCH


def draw_ids(T, K, E, rng, g):
    """Expert ids [T, K] with the skews that break kernels: empty experts, one hot expert and
    repeated ids within a token (the ops' contract does not require distinct experts)."""
    how = rng.choice(["distinct", "with_replacement", "all_to_one", "few_experts"])
    if how == "with_replacement":
        return torch.randint(0, E, (T, K), generator=g)
    if how == "all_to_one":
        return torch.full((T, K), rng.randrange(E))
    pool = torch.randperm(E, generator=g)[:K] if how == "few_experts" else torch.arange(E)
    return torch.stack([pool[torch.randperm(len(pool), generator=g)[:K]] for _ in range(T)])


def strided(t, rng):
    """t itself or a non-contiguous view of the same values (the wrappers must cope)."""
    return torch.stack([t, torch.zeros_like(t)], -1)[..., 0] if rng.random() < 0.5 else t


def trials():
    for seed in range(TRIALS):
        rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
        E = rng.randint(1, 9)
        yield seed, rng, g, rng.randint(1, 64), rng.randint(1, E), E


@pytest.mark.parametrize("device", DEVICES)
def test_ext_ops_and_their_gradients_match_the_float64_reference(device):
    """For random T, D, H, E, K, skewed expert ids, random weights, float32/float64 and strided
    inputs: ext permute gives exactly the reference slots, offsets and rows; grouped_mm and
    unpermute, and the gradients of x, the router weights and the expert weights, are allclose
    to the float64 torch reference."""
    ext = need("ext")
    for seed, rng, g, T, K, E in trials():
        D, H = rng.randint(1, 32), rng.randint(1, 32)
        dtype = rng.choice([torch.float32, torch.float64])
        ids = draw_ids(T, K, E, rng, g)
        leaves64 = [torch.randn(T, D, generator=g, dtype=torch.float64),
                    torch.randn(E, D, H, generator=g, dtype=torch.float64),
                    torch.rand(T, K, generator=g, dtype=torch.float64)]
        probe = torch.randn(T, H, generator=g, dtype=torch.float64)
        # router weights may stay float64 under float32 rows: the wrapper casts them
        wdtype = rng.choice([dtype, torch.float64])
        ours = [t.to(device, d, copy=True).requires_grad_()
                for t, d in zip(leaves64, (dtype, dtype, wdtype))]
        refs = [t.clone().requires_grad_() for t in leaves64]

        rows, slots, offsets = ext.permute(strided(ours[0], rng), strided(ids, rng).to(device), E)
        ref_rows, ref_slots, ref_offsets = moe.permute(refs[0], ids, E)
        assert torch.equal(slots.cpu(), ref_slots), seed
        assert torch.equal(offsets.cpu(), ref_offsets), seed
        assert torch.equal(rows.detach().cpu(), ref_rows.detach().to(dtype)), seed
        w = ours[1] if rng.random() < 0.5 else ours[1].transpose(1, 2).contiguous().transpose(1, 2)
        y = ext.grouped_mm(rows, w, offsets)
        ref_y = moe.grouped_mm(ref_rows, refs[1], ref_offsets)
        tol = TOL[dtype]
        assert torch.allclose(y.detach().cpu().double(), ref_y.detach(), rtol=tol,
                              atol=tol * D), seed
        out = ext.unpermute(y, slots, strided(ours[2], rng))
        ref_out = moe.unpermute(ref_y, ref_slots, refs[2])
        assert torch.allclose(out.detach().cpu().double(), ref_out.detach(), rtol=tol,
                              atol=tol * D * K), seed

        (out * probe.to(device, dtype)).sum().backward()
        (ref_out * probe).sum().backward()
        for name, a, b in zip(("x", "w_EDH", "weights"), ours, refs):
            assert a.grad.dtype == a.dtype, (seed, name)
            assert torch.allclose(a.grad.cpu().double(), b.grad, rtol=10 * tol,
                                  atol=tol * (D + H) * K), (seed, name)


@pytest.mark.parametrize("backend", ["torch", "ext"])
@pytest.mark.parametrize("device", DEVICES)
def test_permute_invariants_and_the_identity_round_trip(backend, device):
    """offsets start at 0, never decrease and end at T*K; row n holds token slots[n] // K and
    sits in the group of its expert; within a group slots ascend; slots are a permutation;
    permute -> grouped_mm with identity experts -> unpermute with unit weights gives K * x."""
    impl = need(backend)
    for seed, rng, g, T, K, E in trials():
        D = rng.randint(1, 32)
        x = torch.randn(T, D, generator=g, dtype=torch.float64, device="cpu").to(device)
        ids = draw_ids(T, K, E, rng, g).to(device)
        rows, slots, offsets = impl.permute(strided(x, rng), ids, E)
        o, s = offsets.tolist(), slots.cpu()
        assert o[0] == 0 and o[-1] == T * K and len(o) == E + 1, seed
        assert all(a <= b for a, b in zip(o, o[1:])), seed
        assert torch.equal(s.sort().values, torch.arange(T * K)), seed
        assert torch.equal(rows, x[slots // K]), seed
        for e in range(E):
            group = s[o[e]:o[e + 1]]
            assert bool((ids.cpu().flatten()[group] == e).all()), (seed, e)
            assert bool((group[1:] > group[:-1]).all()), (seed, e)
        eye = torch.eye(D, dtype=x.dtype, device=device).expand(E, D, D)
        back = impl.unpermute(impl.grouped_mm(rows, eye, offsets), slots,
                              torch.ones(T, K, dtype=x.dtype, device=device))
        assert torch.allclose(back, K * x, rtol=1e-12, atol=1e-12), seed


def logits_callback(B, N, C, rng, g):
    """A random logits callback for maskgit, and for each position the codes it bans (-inf) and
    the code it makes overwhelmingly likely (or None)."""
    how = rng.choice(["fixed", "fresh", "depends_on_ids", "peaked"])
    base = torch.randn(B, N, C, generator=g) * rng.choice([0.1, 1.0, 5.0])
    target = torch.randint(0, C, (B, N), generator=g) if how == "peaked" else None
    banned = torch.zeros(B, N, C, dtype=torch.bool)
    if rng.random() < 0.5:
        banned = torch.rand(B, N, C, generator=g) < rng.random()
        keep = target if target is not None else torch.randint(0, C, (B, N), generator=g)
        banned.scatter_(-1, keep[..., None], False)  # at least one finite code per position
    call_gen = torch.Generator().manual_seed(rng.randrange(2 ** 31))

    def fn(ids):
        if how == "fresh":
            logits = torch.randn(B, N, C, generator=call_gen)
        elif how == "depends_on_ids":  # favours the code after each position's current value
            after = F.one_hot((ids.clamp(0, C - 1) + 1) % C, C) * (ids < C)[..., None]
            logits = base + 4.0 * after
        elif how == "peaked":
            logits = base + 1e4 * F.one_hot(target, C)
        else:
            logits = base
        return logits.masked_fill(banned, float("-inf"))
    return fn, banned, target


def test_maskgit_fills_every_unknown_with_an_allowed_code_and_keeps_known_ones():
    """For random B, N, C, steps, choice and code temperatures, partly known grids (none to
    all known) and logits callbacks: no mask_id is left, known tokens are unchanged, every
    value is in 0..C-1, a code with -inf logits is never chosen, and a code with an
    overwhelming logit always is."""
    for seed in range(TRIALS):
        rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
        B, N, C = rng.randint(1, 4), rng.randint(1, 40), rng.randint(2, 20)
        steps = rng.randint(1, 12)
        mask_id = C + rng.choice([0, 0, 3])
        known_fraction = rng.choice([0.0, 1.0, rng.random()])
        ids = torch.randint(0, C, (B, N), generator=g)
        unknown = torch.rand(B, N, generator=g) >= known_fraction
        ids[unknown] = mask_id
        fn, banned, target = logits_callback(B, N, C, rng, g)
        out = maskgit(fn, ids, mask_id, steps, choice_temperature=rng.uniform(0, 10),
                      generator=torch.Generator().manual_seed(seed),
                      temperature=rng.choice([0.0, 0.3, 1.0, 3.0]))
        assert out.shape == ids.shape and not bool((out == mask_id).any()), seed
        assert torch.equal(out[~unknown], ids[~unknown]), seed
        assert int(out.min()) >= 0 and int(out.max()) < C, seed
        chose_banned = banned.gather(-1, out[..., None])[..., 0]
        assert not bool(chose_banned[unknown].any()), seed
        if target is not None:
            assert torch.equal(out[unknown], target[unknown]), seed


def test_greedy_is_the_per_row_argmax_up_to_the_stop_token():
    """For random B, V, max_new (0 included) and stop ids: each row's output is the argmax of
    the logits of its successive steps, cut before its first stop_id (never emitted) and at
    max_new tokens; a finished row feeds stop_id to the callback."""
    for seed in range(TRIALS):
        rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
        B, V, max_new = rng.randint(1, 4), rng.randint(2, 12), rng.randint(0, 10)
        stop = rng.randrange(V)
        stop_bias = rng.choice([0.0, 1.0, 3.0])  # how soon rows tend to stop

        def draw():
            logits = torch.randn(B, V, generator=g)
            logits[:, stop] += stop_bias
            return logits
        seen, fed = [draw()], []

        def next_fn(ids):
            fed.append(ids.clone())
            seen.append(draw())
            return seen[-1]
        out = greedy(next_fn, seen[0], max_new, stop)

        assert len(out) == B, seed
        for b, row in enumerate(out):
            want = []
            for logits in seen[:max_new]:
                if int(logits[b].argmax()) == stop:
                    break
                want.append(int(logits[b].argmax()))
            assert stop not in row and len(row) <= max_new, seed
            assert row == want, (seed, b)
            assert [int(ids[b]) for ids in fed] == (want + [stop] * max_new)[:len(fed)], (seed, b)
