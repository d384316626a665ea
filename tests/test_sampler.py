"""MaskGIT and greedy decoding invariants.  Run: pytest -q tests/test_sampler.py"""
import math

import pytest
import torch

from minimoe.sampler import greedy, guidance_at, mask_schedule, maskgit, n_masked_after

C, MASK = 10, 10  # candidate values 0..9, mask value 10


def random_logits_fn(seed=0, record=None):
    g = torch.Generator().manual_seed(seed)
    def fn(ids):
        if record is not None:
            record.append((ids == MASK).sum(1).clone())
        return torch.randn(*ids.shape, C, generator=g)
    return fn


def test_guidance_schedules_at_the_empty_grid_halfway_and_the_full_grid():
    share = torch.tensor([1.0, 0.5, 0.0])
    assert guidance_at("constant", 4.0, share).tolist() == [4.0, 4.0, 4.0]
    assert guidance_at("falling", 4.0, share).tolist() == [4.0, 2.0, 0.0]
    assert guidance_at("rising", 4.0, share).tolist() == [0.0, 2.0, 4.0]
    with pytest.raises(ValueError, match="known: constant, falling, rising"):
        guidance_at("cosine", 4.0, share)


def test_mask_schedule_endpoints():
    assert mask_schedule(0) == 1 and abs(mask_schedule(1)) < 1e-12


@pytest.mark.parametrize("steps", [1, 2, 5, 12])
def test_fills_everything_and_follows_the_schedule(steps):
    N = 64
    record = []
    ids = torch.full((3, N), MASK)
    out = maskgit(random_logits_fn(record=record), ids, MASK, steps,
                  generator=torch.Generator().manual_seed(1))
    assert not (out == MASK).any() and int(out.max()) < C
    masked_before = [int(r[0]) for r in record] + [0]
    expected = [N]
    for s in range(steps):
        if expected[-1] == 0:
            break
        expected.append(int(n_masked_after(s, steps, torch.tensor([N]),
                                           torch.tensor([expected[-1]]))[0]))
    assert masked_before == expected[:len(masked_before)]
    # each step reveals at least one, the schedule is cosine: after step s, floor(N cos(pi r/2))
    for s in range(steps - 1):
        r = (s + 1) / steps
        want = max(1, min(expected[s] - 1, math.floor(N * math.cos(math.pi * r / 2))))
        assert expected[s + 1] == want


def test_known_tokens_never_change_inpainting():
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, C, (4, 49), generator=gen)
    unknown = torch.rand(4, 49, generator=gen) < 0.6
    ids[unknown] = MASK
    out = maskgit(random_logits_fn(), ids, MASK, 6, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out[~unknown], ids[~unknown])
    assert not (out == MASK).any()


def test_deterministic_under_a_seed_and_different_across_seeds():
    ids = torch.full((2, 36), MASK)
    run = lambda s: maskgit(random_logits_fn(), ids, MASK, 5,
                            generator=torch.Generator().manual_seed(s))
    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_confident_logits_are_followed():
    """With a peaked distribution the sampler must return its argmax."""
    target = torch.arange(25) % C
    def fn(ids):
        sure = torch.nn.functional.one_hot(target, C).float() * 50
        return sure[None].expand(ids.shape[0], -1, -1)
    out = maskgit(fn, torch.full((2, 25), MASK), MASK, 4)
    assert torch.equal(out, target.expand(2, -1))


def fixed_logits_fn(B, N, seed=0, scale=1.0):
    """The same mild, position-dependent logits at every step."""
    logits = torch.randn(B, N, C, generator=torch.Generator().manual_seed(seed)) * scale
    return (lambda ids: logits), logits


def test_code_temperature_zero_draws_the_likeliest_code_at_every_position():
    fn, logits = fixed_logits_fn(3, 30)
    out = maskgit(fn, torch.full((3, 30), MASK), MASK, 5, temperature=0.0,
                  generator=torch.Generator().manual_seed(4))
    assert torch.equal(out, logits.argmax(-1))


def test_lower_code_temperature_draws_the_likeliest_code_more_often():
    """Dividing the log-probabilities by a temperature below 1 sharpens every draw, above 1
    flattens it: the share of positions holding their most likely code moves accordingly."""
    B, N = 64, 36
    fn, logits = fixed_logits_fn(B, N, seed=1)
    best = logits.argmax(-1)
    share = {t: (maskgit(fn, torch.full((B, N), MASK), MASK, 4, temperature=t,
                         generator=torch.Generator().manual_seed(5)) == best).float().mean().item()
             for t in (0.25, 1.0, 4.0)}
    assert share[0.25] > share[1.0] + 0.2 and share[1.0] > share[4.0] + 0.05, share
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        maskgit(fn, torch.full((B, N), MASK), MASK, 4, temperature=-1.0)


def test_greedy_stops_per_row_and_drops_the_stop_token():
    STOP = 0
    script = {1: [5, 6, STOP], 2: [7, STOP, 9]}  # row 0 starts from 1, row 1 from 2
    state = {"t": 0}
    def logits_for(step):
        lg = torch.full((2, 10), -1.0)
        lg[0, script[1][step]] = 1
        lg[1, script[2][step]] = 1
        return lg
    def next_fn(ids):
        state["t"] += 1
        return logits_for(state["t"])
    out = greedy(next_fn, logits_for(0), max_new=10, stop_id=STOP)
    assert out == [[5, 6], [7]]
    assert greedy(lambda ids: logits_for(1), logits_for(0), max_new=1, stop_id=STOP) == [[5], [7]]
