"""Decoding loops as pure functions over ids and a logits callback; no tokenizers, no model.

`maskgit` fills a grid of image codes by iterative parallel decoding (MaskGIT;
docs/design.md, "Sequences"); `greedy` extends text one token at a time. Invariants, asserted
in the code and checked by the tests: known tokens never change, every step reveals at least
one token, and the grid holds no [MASK] at the end.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .config import GUIDANCE_SCHEDULES

KNOWN_CONFIDENCE = math.inf  # known tokens are never chosen for re-masking
GUMBEL_EPS = 1e-20  # keeps log(-log(u)) finite for u at the ends of (0, 1)


def guidance_at(schedule: str, guidance: float, masked_share: torch.Tensor) -> torch.Tensor:
    """The guidance scale of one MaskGIT step, per row, from the share of the row's initially
    unknown codes still masked (1 at the first step, falling towards 0).

    constant: `guidance` throughout. falling: guidance x masked_share, full strength while
    the caption decides where objects go and what they are, fading as the last codes fill in
    around what is already drawn (measured: as many objects right as constant guidance 8, at
    a lower FID than constant 5). rising: guidance x (1 - masked_share), none at the first step.
    """
    if schedule == "constant":
        return torch.full_like(masked_share, guidance)
    if schedule == "falling":
        return guidance * masked_share
    if schedule == "rising":
        return guidance * (1 - masked_share)
    raise ValueError(f"guidance schedule {schedule!r}; known: {', '.join(GUIDANCE_SCHEDULES)}")


def mask_schedule(r: float) -> float:
    """Fraction of the initially unknown tokens still masked after progress r in [0, 1]."""
    return math.cos(math.pi * r / 2)


def n_masked_after(step: int, steps: int, unknown_at_start: torch.Tensor,
                   unknown_now: torch.Tensor) -> torch.Tensor:
    """How many tokens each row keeps masked after `step` (0-based) of `steps`.

    floor(unknown_at_start * cos(pi r / 2)) with r = (step+1)/steps, but at least 1 (so that the
    last step has something left to do) and at most unknown_now - 1 (so that every step reveals
    at least one); the last step reveals everything.
    """
    if step == steps - 1:
        return torch.zeros_like(unknown_now)
    n = torch.floor(unknown_at_start * mask_schedule((step + 1) / steps)).long()
    return torch.minimum(n.clamp(min=1), (unknown_now - 1).clamp(min=0))


def gumbel(shape, generator: torch.Generator, device) -> torch.Tensor:
    """Standard Gumbel noise in float64 (float32 ties too often among thousands of codes)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    return -torch.log(-torch.log(u.clamp(GUMBEL_EPS, 1 - GUMBEL_EPS)))


def draw(logp_BNC: torch.Tensor, temperature: float, gen: torch.Generator) -> torch.Tensor:
    """One code per position from softmax(logp / temperature); temperature 0 takes the argmax."""
    if temperature == 0:
        return logp_BNC.argmax(-1)
    B, N, C = logp_BNC.shape
    if temperature != 1:
        logp_BNC = torch.log_softmax(logp_BNC / temperature, -1)
    return torch.multinomial(logp_BNC.exp().view(B * N, C), 1, generator=gen).view(B, N)


@torch.no_grad()
def maskgit(logits_fn: Callable[[torch.Tensor], torch.Tensor], ids_BN: torch.Tensor,
            mask_id: int, steps: int, choice_temperature: float = 4.5,
            generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
    """Fill every `mask_id` position of ids_BN in `steps` steps.

    Args:
        logits_fn: ids [B, N] -> logits [B, N, C] over the C candidate values 0..C-1 (already
            guided, if guidance is wanted).
        ids_BN: values in 0..C-1 (known) or mask_id (unknown). A fully masked grid is plain
            generation; a partly known one is inpainting / extrapolation.
        choice_temperature: tau0 of the confidence noise, annealed as tau0 * (1 - r); the
            annealing restarts from tau0 in every step's formula (it does not compound).
        temperature: softmax temperature of the codes drawn at each step (0: the most likely
            code). Confidence stays the untempered log-probability of the drawn code, so the
            order in which codes are kept does not flatten as the temperature falls.
    Returns:
        ids [B, N] with no mask_id left.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    gen = generator if generator is not None else torch.Generator(ids_BN.device).manual_seed(0)
    ids = ids_BN.clone()
    known_at_start = ids != mask_id
    unknown_at_start = (~known_at_start).sum(1)
    for step in range(steps):
        unknown = ids == mask_id
        if not unknown.any():
            break
        r = (step + 1) / steps
        logp_BNC = torch.log_softmax(logits_fn(ids).double(), -1)
        B, N, C = logp_BNC.shape
        sampled = draw(logp_BNC, temperature, gen)
        sampled = torch.where(unknown, sampled, ids)
        confidence = logp_BNC.gather(-1, sampled[..., None])[..., 0]
        confidence = confidence + choice_temperature * (1 - r) * gumbel((B, N), gen, ids.device)
        confidence = torch.where(unknown, confidence, KNOWN_CONFIDENCE)
        n_mask = n_masked_after(step, steps, unknown_at_start, unknown.sum(1))
        rank = confidence.argsort(1).argsort(1)  # 0 = least confident
        ids = torch.where(rank < n_mask[:, None], mask_id, sampled)
        assert torch.equal(ids[known_at_start], ids_BN[known_at_start]), "a known token changed"
    assert not (ids == mask_id).any(), "masked tokens left after the last step"
    return ids


@torch.no_grad()
def greedy(next_logits_fn: Callable[[torch.Tensor], torch.Tensor], first_logits_BV: torch.Tensor,
           max_new: int, stop_id: int) -> list[list[int]]:
    """Greedy decoding of up to `max_new` tokens per row, stopping a row at `stop_id`.

    Args:
        next_logits_fn: the ids [B] just chosen -> logits [B, V] of the position after them
            (a KV cache lives in the callback's closure).
        first_logits_BV: logits of the first position to generate.
    Returns:
        the generated ids of each row, without the stop token.
    """
    logits = first_logits_BV
    out: list[list[int]] = [[] for _ in range(logits.shape[0])]
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    for i in range(max_new):
        ids = logits.argmax(-1)
        ids = torch.where(done, stop_id, ids)  # finished rows keep feeding the stop token
        for b in (~done & (ids != stop_id)).nonzero()[:, 0].tolist():
            out[b].append(int(ids[b]))
        done |= ids == stop_id
        if bool(done.all()) or i == max_new - 1:
            break
        logits = next_logits_fn(ids)
    return out
