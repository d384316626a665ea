"""Turning a trained dense FFN into experts (DESIGN section 6).

Hidden neuron j of a dense FFN is row j of W1 and column j of W2 (see `model.FFN`). Splitting
the neurons into groups and stacking each group as an expert keeps the parameter count; with
every expert active at weight 1 the experts sum exactly to the dense FFN (tested).

- `moe_from_dense`: one entry point for every `--moe` method (scratch, naive, random, taylor).
- `random_groups`: neurons split at random (the control).
- `taylor_scores` + `taylor_groups`: neurons ranked by first-order Taylor importance
  |sum over tokens of a_j * dL/da_j| for text tasks (MMU + LM) and image tasks (T2I), grouped
  into text, image and shared experts.
"""
from __future__ import annotations

from typing import Iterable

import torch

from .model import FFN
from .moe import MoE
from .sequences import Batch
from .trainer import task_losses

TEXT_TASKS = ("mmu", "lm")  # whose loss gradients score a neuron's importance for text
IMAGE_TASKS = ("t2i",)


def taylor_scores(model, batches: Iterable[Batch], tasks: tuple[str, ...],
                  per_token: bool = False) -> list[torch.Tensor]:
    """Importance of every hidden neuron of every layer's dense FFN for `tasks`.

    a_j is the neuron's activation (the input of W2) and L the summed loss of `tasks`. The
    default accumulates a_j * dL/da_j over every token of every batch and takes the absolute
    value at the end (DESIGN); per_token=True sums |a_j * dL/da_j| instead (an ablation).
    Returns one tensor [H] per layer.
    """
    acts: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(module, inputs):
            acts[layer] = inputs[0]
        return hook

    handles = [b.ffn.w2.register_forward_pre_hook(keep(i)) for i, b in enumerate(model.blocks)]
    sums = [torch.zeros(b.ffn.w2.in_features, dtype=torch.float64) for b in model.blocks]
    try:
        for batch in batches:
            out = model(batch.tokens_BL, batch.groups_BL)
            losses = task_losses(out.logits_BLV, batch)
            loss = sum(losses[t] for t in tasks if t in losses)
            if not torch.is_tensor(loss):
                continue  # no row of these tasks in this batch
            layers = sorted(acts)
            grads = torch.autograd.grad(loss, [acts[i] for i in layers])
            for i, g in zip(layers, grads):
                contribution = (acts[i] * g).detach().double()
                if per_token:
                    contribution = contribution.abs()
                sums[i] += contribution.reshape(-1, contribution.shape[-1]).sum(0).cpu()
    finally:
        for h in handles:
            h.remove()
    return [s.abs().float() for s in sums]


def stack_experts(w1_HD: torch.Tensor, w2_DH: torch.Tensor, groups: list[torch.Tensor]):
    """Stacked expert weights from a dense FFN (nn.Linear layouts: w1 [H, D], w2 [D, H]) whose
    hidden neurons are split into `groups` (equal sizes). Returns (w1_EDH, w2_EHD)."""
    sizes = {len(g) for g in groups}
    if len(sizes) != 1:
        raise ValueError(f"expert groups must have equal sizes, got {sorted(sizes)}")
    w1_EDH = torch.stack([w1_HD[g].T for g in groups])
    w2_EHD = torch.stack([w2_DH[:, g].T for g in groups])
    return w1_EDH.contiguous(), w2_EHD.contiguous()


def random_groups(d_ffn: int, num_experts: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The hidden neurons split at random into equal experts (the control for Taylor groups)."""
    if d_ffn % num_experts:
        raise ValueError(f"--d-ffn {d_ffn} does not split into {num_experts} equal experts")
    return list(torch.randperm(d_ffn, generator=generator).view(num_experts, -1))


def taylor_groups(score_text_H: torch.Tensor, score_image_H: torch.Tensor, n_text: int,
                  n_image: int, n_shared: int) -> dict[str, list[torch.Tensor]]:
    """Group neurons by task importance into text, image and shared experts of equal size.

    Scores are first normalised to sum to 1 per task. Shared experts take the neurons that
    matter most to both tasks (largest min of the two scores); of the rest, the neurons that
    lean most to text (largest text - image score) fill the text experts and the others the
    image experts. Within each kind, neurons are cut into experts in order of importance, so
    expert 0 of a kind holds its most important segment.
    """
    H = score_text_H.numel()
    n = n_text + n_image + n_shared
    if n == 0 or H % n:
        raise ValueError(f"--d-ffn {H} does not split into {n} equal experts")
    size = H // n
    t, i = score_text_H / score_text_H.sum(), score_image_H / score_image_H.sum()
    shared = torch.minimum(t, i).argsort(descending=True)[:n_shared * size]
    rest = torch.ones(H, dtype=torch.bool)
    rest[shared] = False
    rest_ids = rest.nonzero()[:, 0]
    lean = (t - i)[rest_ids].argsort(descending=True)
    text_ids, image_ids = rest_ids[lean[:n_text * size]], rest_ids[lean[n_text * size:]]

    def cut(ids: torch.Tensor, score: torch.Tensor, k: int) -> list[torch.Tensor]:
        ordered = ids[score[ids].argsort(descending=True)]
        return list(ordered.view(k, size)) if k else []

    return {"text": cut(text_ids, t, n_text), "image": cut(image_ids, i, n_image),
            "shared": cut(shared, t + i, n_shared)}


METHODS = ("scratch", "naive", "random", "taylor")
NAIVE_NOISE = 0.01  # relative std of the noise that breaks the symmetry of copied experts


def moe_from_dense(ffn: FFN, method: str, num_experts: int, top_k: int, num_shared: int,
                   generator: torch.Generator, scores: tuple | None = None) -> MoE:
    """A MoE layer built from a trained dense FFN.

    scratch / naive: each expert as wide as the dense FFN (E x the parameters), fresh or a copy
    plus NAIVE_NOISE relative noise (sparse upcycling; routed experts only). random / taylor: the dense neurons split
    into num_experts + num_shared equal experts (same parameter count); taylor needs
    scores = (text scores [H], image scores [H]) and makes half of the routed experts text
    experts and half image experts.
    """
    if method not in METHODS:
        raise ValueError(f"unknown --moe {method!r}; use none or one of {', '.join(METHODS)}")
    w1_HD, w2_DH = ffn.w1.weight.detach(), ffn.w2.weight.detach()
    H, D = w1_HD.shape
    if method == "naive" and num_shared:
        raise ValueError("naive upcycling copies the dense FFN into routed experts only; "
                         "use --num-shared 0")
    if method in ("scratch", "naive"):
        moe = MoE(D, H, num_experts, top_k, num_shared)
        if method == "naive":
            with torch.no_grad():
                for w, dense in ((moe.w1_EDH, w1_HD.T), (moe.w2_EHD, w2_DH.T)):
                    noise = torch.randn(w.shape, generator=generator) * NAIVE_NOISE * dense.std()
                    w.copy_(dense.expand_as(w) + noise)
        return moe
    if method == "random":
        groups = random_groups(H, num_experts + num_shared, generator)
        routed, shared = groups[:num_experts], groups[num_experts:]
    else:
        if scores is None:
            raise ValueError("--moe taylor needs Taylor scores of the dense FFN")
        n_text = num_experts // 2
        g = taylor_groups(scores[0], scores[1], n_text, num_experts - n_text, num_shared)
        routed, shared = g["text"] + g["image"], g["shared"]
    moe = MoE(D, H // (num_experts + num_shared), num_experts, top_k, num_shared)
    w1_EDH, w2_EHD = stack_experts(w1_HD, w2_DH, routed)
    with torch.no_grad():
        moe.w1_EDH.copy_(w1_EDH)
        moe.w2_EHD.copy_(w2_EHD)
        if shared:
            neurons = torch.cat(shared)
            moe.shared.w1.weight.copy_(w1_HD[neurons])
            moe.shared.w2.weight.copy_(w2_DH[:, neurons])
    return moe
