"""Turning a trained dense FFN into experts (docs/design.md, "Mixture of experts").

Hidden neuron j of a dense FFN is row j of W1 and column j of W2 (see `model.FFN`). Splitting
the neurons into groups and stacking each group as an expert keeps the parameter count; with
every expert active at weight 1 the experts sum exactly to the dense FFN (tested).

- `moe_from_dense`: one entry point for every `--moe` method (scratch, naive, drop, random,
  taylor).
- `drop`: Drop-Upcycling (Nakamura et al. 2025): naive copies, then in each expert a different
  random share `--drop-ratio` of the hidden neurons starts fresh, so the experts begin diverse.
- `random_groups`: neurons split at random (the control).
- `taylor_scores` + `taylor_groups`: neurons ranked by first-order Taylor importance
  |sum over tokens of a_j * dL/da_j| for text tasks (MMU + LM) and image tasks (T2I), grouped
  into text, image and shared experts.
"""
from __future__ import annotations

from typing import Iterable

import torch

from .build import build_model
from .config import UPCYCLED, Config
from .losses import labelled_losses
from .model import FFN
from .moe import MoE, MoESpec
from .sequences import Batch
from .untie import tied_name

TEXT_TASKS = ("mmu", "lm")  # whose loss gradients score a neuron's importance for text
IMAGE_TASKS = ("t2i",)


def taylor_scores(model, batches: Iterable[Batch], tasks: tuple[str, ...],
                  per_token: bool = False) -> list[torch.Tensor]:
    """Importance of every hidden neuron of every layer's dense FFN for `tasks`.

    a_j is the neuron's activation (the input of W2) and L the summed loss of `tasks`. The
    default accumulates a_j * dL/da_j over every token of every batch and takes the absolute
    value at the end (docs/design.md); per_token=True sums |a_j * dL/da_j| instead (an ablation).
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
            losses = labelled_losses(model, batch)[1]
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


METHODS = ("scratch", "naive", "drop", "random", "taylor")
PROBE_GAIN = 2.0  # router logit of a text expert at the text-token mean (and -2 at the image mean)


def init_experts_(moe: MoE, ffn: FFN, method: str, generator: torch.Generator,
                  scores: tuple | None = None, text_experts: int | None = None,
                  noise: float = 0.01, drop_ratio: float = 0.5) -> None:
    """Fill a MoE layer's experts from a trained dense FFN, in place.

    scratch: keep the fresh experts. naive: every routed expert a copy of the dense FFN plus
    `noise` x (the dense weights' std) Gaussian noise (sparse upcycling). drop: every routed
    expert a copy of the dense FFN except for round(drop_ratio * H) neurons drawn anew per
    expert, which keep the layer's fresh initialisation (a fresh FFN's). random / taylor: the
    dense neurons split into num_experts + shared equal experts (same parameter count); taylor
    needs scores = (text scores [H], image scores [H]) and puts the `text_experts` most
    text-leaning groups first, then the image experts.
    """
    if method not in METHODS:
        raise ValueError(f"unknown --moe {method!r}; use none or one of {', '.join(METHODS)}")
    w1_HD, w2_DH = ffn.w1.weight.detach(), ffn.w2.weight.detach()
    H = w1_HD.shape[0]
    experts = moe.experts
    E, S = moe.num_experts, (moe.shared.w1.out_features // experts.w1_EDH.shape[2]
                             if moe.shared is not None else 0)
    if method in ("naive", "drop") and S:
        raise ValueError(f"--moe {method} copies the dense FFN into routed experts only; "
                         f"use --num-shared 0")
    if method == "scratch":
        return
    if method == "drop":
        dropped = round(drop_ratio * H)
        with torch.no_grad():
            for e in range(E):
                kept = torch.randperm(H, generator=generator)[dropped:]
                experts.w1_EDH[e][:, kept] = w1_HD[kept].T
                experts.w2_EHD[e][kept] = w2_DH[:, kept].T
        return
    if method == "naive":
        with torch.no_grad():
            for w, dense in ((experts.w1_EDH, w1_HD.T), (experts.w2_EHD, w2_DH.T)):
                jitter = torch.randn(w.shape, generator=generator) * noise * dense.std()
                w.copy_(dense.expand_as(w) + jitter)
        return
    if method == "random":
        groups = random_groups(H, E + S, generator)
        routed, shared = groups[:E], groups[E:]
    else:
        if scores is None:
            raise ValueError("--moe taylor needs Taylor scores of the dense FFN")
        n_text = E // 2 if text_experts is None else text_experts
        g = taylor_groups(scores[0], scores[1], n_text, E - n_text, S)
        routed, shared = g["text"] + g["image"], g["shared"]
    w1_EDH, w2_EHD = stack_experts(w1_HD, w2_DH, routed)
    with torch.no_grad():
        experts.w1_EDH.copy_(w1_EDH)
        experts.w2_EHD.copy_(w2_EHD)
        if shared:
            neurons = torch.cat(shared)
            moe.shared.w1.weight.copy_(w1_HD[neurons])
            moe.shared.w2.weight.copy_(w2_DH[:, neurons])


def moe_from_dense(ffn: FFN, method: str, num_experts: int, top_k: int, num_shared: int,
                   generator: torch.Generator, scores: tuple | None = None) -> MoE:
    """A stand-alone MoE layer built from a dense FFN (init_experts_ on a layer of the size
    the method needs)."""
    H, D = ffn.w1.weight.shape
    if method in METHODS and method not in UPCYCLED and H % (num_experts + num_shared):
        raise ValueError(f"--d-ffn {H} does not split into {num_experts + num_shared} equal "
                         f"experts")
    width = H if method in UPCYCLED else H // (num_experts + num_shared)
    moe = MoE(MoESpec(D, width, num_experts, top_k, num_shared), shared_ffn=FFN)
    init_experts_(moe, ffn, method, generator, scores)
    return moe


@torch.no_grad()
def each_ffn_input(model, batches: Iterable[Batch], take) -> None:
    """Run `batches` through `model`, calling take(layer, x [T, D], info) with every block's
    FFN input: what a router in that block sees."""
    def keep(layer):
        def hook(module, args):
            take(layer, args[0].reshape(-1, args[0].shape[-1]), args[1])
        return hook

    handles = [b.ffn.register_forward_pre_hook(keep(i)) for i, b in enumerate(model.blocks)]
    try:
        for batch in batches:
            model(batch.tokens_BL, batch.groups_BL)
    finally:
        for h in handles:
            h.remove()


def modality_means(model, batches: Iterable[Batch]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block: the mean FFN input (what the router sees) of text and of image tokens."""
    sums = [[torch.zeros(model.cfg.d_model, dtype=torch.float64) for _ in range(2)]
            for _ in model.blocks]
    counts = [[0, 0] for _ in model.blocks]

    def take(layer, x_TD, info):
        for m, tokens in enumerate((info.valid_T & ~info.image_T, info.valid_T & info.image_T)):
            sums[layer][m] += x_TD[tokens].double().sum(0).cpu()
            counts[layer][m] += int(tokens.sum())

    each_ffn_input(model, batches, take)
    return [tuple((s / max(1, c)).float() for s, c in zip(sums[i], counts[i]))
            for i in range(len(model.blocks))]


@torch.no_grad()
def probe_router_init_(moe: MoE, mean_text_D: torch.Tensor, mean_image_D: torch.Tensor,
                       text_experts: int) -> None:
    """Start the router as a linear text/image probe on top of its random initialisation.

    With d = mean_text - mean_image and m their midpoint, z(x) = 2 (x - m).d / |d|^2 is +1 at
    the text mean and -1 at the image mean. Text experts get logit +PROBE_GAIN * z(x), image
    experts -PROBE_GAIN * z(x); the random part of the router breaks ties within a kind. The
    router stays fully learnable: nothing anneals away.
    """
    d = mean_text_D - mean_image_D
    u = 2 * d / d.square().sum().clamp_min(1e-12)
    sign_E = torch.ones(moe.num_experts)
    sign_E[text_experts:] = -1
    moe.router.weight += PROBE_GAIN * sign_E[:, None] * u[None, :]
    if moe.router.bias is not None:
        midpoint = (mean_text_D + mean_image_D) / 2
        moe.router.bias -= PROBE_GAIN * sign_E * (midpoint @ u)


@torch.no_grad()
def prior_init_(moe: MoE, kind: str, strength: float, text_experts: int, num_domains: int
                ) -> None:
    """The annealed prior bias b_i(t) at its start: `strength` on the favoured experts.

    modality: row 0 (text tokens) favours experts [0, text_experts), row 1 (image) the rest.
    domain: named domain d favours the experts e with e * num_domains // E == d (contiguous
    blocks); rows of other domains start at zero.
    """
    if moe.prior_GE is None:
        return
    E = moe.num_experts
    moe.prior_GE.zero_()
    if kind == "modality":
        moe.prior_GE[0, :text_experts] = strength
        moe.prior_GE[1, text_experts:] = strength
    else:
        for e in range(E):
            moe.prior_GE[e * num_domains // E, e] = strength


def default_expert_scale(cfg: Config) -> float:
    """The routed output's multiplier when --expert-scale is 0.

    Upcycled experts (scratch, naive, drop) are each a whole FFN and the top-k weights sum to 1: 1.
    Split experts (random, taylor) each hold a share of the dense neurons, and the dense FFN is
    the sum of all E routed experts (plus the shared ones); since the k weights sum to 1,
    E * sum_k w_k expert_k(x) estimates that sum without bias when the choice is uniform: E.
    Measured on the tiny preset, E gave the smallest loss jump of 1, 2, 4 and 8 for random and
    the smallest T2I and MMU jump for taylor (README).
    """
    m = cfg.moe
    if m.expert_scale:
        return m.expert_scale
    return 1.0 if m.moe in UPCYCLED else float(m.num_experts)


def convert_model(dense, cfg: Config, batches: list[Batch], generator: torch.Generator,
                  progress: bool = False):
    """The MoE model of `cfg` built from a trained dense model: every non-FFN weight copied,
    every MoE layer's experts filled by `cfg.moe.moe`, router and prior initialised.
    `batches` are the calibration batches (Taylor scores and the router probe)."""
    m = cfg.moe
    model, _ = build_model(cfg, next(dense.parameters()).device)
    moe_ids = [i for i, _ in model.moe_layers()]
    dense_state = dense.state_dict()
    # Every weight but the MoE layers' FFNs is copied; an untied weight's two copies both
    # start from the dense weight.
    keep = {k: dense_state[tied_name(k)] for k in model.state_dict()
            if tied_name(k) in dense_state
            and not any(k.startswith(f"blocks.{i}.ffn.") for i in moe_ids)}
    missing, unexpected = model.load_state_dict(keep, strict=False)
    assert not unexpected and all(k.split(".")[2] == "ffn" for k in missing), (missing, unexpected)
    scores = means = None
    if m.moe == "taylor":
        text = taylor_scores(dense, batches, TEXT_TASKS, m.taylor_per_token)
        image = taylor_scores(dense, batches, IMAGE_TASKS, m.taylor_per_token)
        scores = list(zip(text, image))
        if m.taylor_router_init:
            means = modality_means(dense, batches)
    scale = default_expert_scale(cfg)
    for i, layer in model.moe_layers():
        init_experts_(layer, dense.blocks[i].ffn, m.moe, generator,
                      scores[i] if scores else None, m.text_experts, m.naive_noise,
                      m.drop_ratio)
        layer.expert_scale.fill_(scale)
        if means is not None:
            probe_router_init_(layer, *means[i], m.text_experts)
        prior_init_(layer, m.router_prior, m.prior_strength, m.text_experts,
                    len(cfg.domain_names))
    return model
