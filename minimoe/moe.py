"""The Mixture-of-Experts layer in four named steps, with a slow per-expert twin for tests.

    route -> permute -> expert FFNs (grouped matmuls) -> unpermute / combine

Shape legend (suffixes on tensor names):
    T tokens (batch and sequence flattened), D d_model, H expert hidden size, E routed experts,
    K experts per token (top-k), N = T*K routed rows, E1 = E + 1 offsets, G prior groups.

Router of one layer, for a token x (docs/design.md, "Mixture of experts"):

    logits = W x + b  (+ s(t) * prior[group of the token])     b: learnable bias (optional)
    logits[e] = -inf for e outside the token's routing group    only with routing groups
    probs  = softmax(logits / tau(t))                          tau: annealed temperature
    chosen = top-k of (logits / tau(t) + selection_bias)        selection_bias: aux-loss-free
    weights = probs[chosen] / sum(probs[chosen])                 renormalised over the k
    y = expert_scale * sum_k weights_k * expert_k(x)  (+ shared experts(x))

Routing groups (MoMa, Lin et al. 2024): with `groups = (n_text, n_image)` the experts are
split into a text group (the first n_text) and an image group, and each token routes only
inside its own modality's group. Masking the logits before the softmax, not the probabilities
after it, keeps the k weights a softmax over the token's own group.

Temperature does not change *which* experts win (top-k of logits / tau is top-k of logits)
unless a selection bias is in play or training samples the choice (`router_sample`); it
changes the mixing weights and how much gradient every chosen expert's router logit receives.

Dropped slots (padding, over capacity, the second expert under random routing) are moved to a
sink group after the last expert: permuted like any other, computed along with the last
expert's rows, combined with weight 0. A dropped token's MoE output is therefore zero (never the
input passed through).

This file is the readable pure-PyTorch backend (`TORCH`): the C++/CUDA extension (csrc/,
wrapped in ops.py) provides `permute`, `unpermute` and `grouped_mm` with the same contracts, and
the layer is handed whichever `Backend` --moe-backend picks. It imports nothing from the
package: the dense FFN type for shared experts is passed in too. The schedules and losses that
training needs live in `routing.py`; how a dense FFN becomes experts in `convert.py`; expert
parallelism, which swaps a layer's `Experts` for a sharded module, in `dist.py`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TokenInfo:
    """What the router may know about each token besides its hidden state."""
    image_T: torch.Tensor  # bool: an image position (code or [MASK]); else text
    valid_T: torch.Tensor  # bool: not padding (padding is never routed)
    domain_T: torch.Tensor | None = None  # long: data-domain index of the token (its sample's)

    @staticmethod
    def plain(T: int, device) -> "TokenInfo":
        """Every token valid text: for calling a layer on bare activations."""
        return TokenInfo(torch.zeros(T, dtype=torch.bool, device=device),
                         torch.ones(T, dtype=torch.bool, device=device))


@dataclass
class Routing:
    """One MoE layer's routing of one forward pass: what the losses and statistics read."""
    logits_TE: torch.Tensor  # router logits before temperature (prior bias included)
    probs_TE: torch.Tensor  # softmax(logits / tau), float32
    expert_ids_TK: torch.Tensor  # long: the chosen experts
    kept_TK: torch.Tensor  # bool: False where the slot was dropped (padding, capacity, random)
    info: TokenInfo
    groups: tuple[int, ...] = ()  # experts per routing group (MoESpec.groups)

    def group_parts(self) -> list[tuple[torch.Tensor, int, int]]:
        return group_parts(self.info, self.groups, self.probs_TE.shape[1])


def token_groups(info: TokenInfo, num_groups: int) -> torch.Tensor:
    """Routing group of each token: 0 text, 1 image (one group: all 0)."""
    return info.image_T.long().clamp(max=num_groups - 1)


def group_parts(info: TokenInfo, groups: tuple[int, ...], num_experts: int
                ) -> list[tuple[torch.Tensor, int, int]]:
    """Per routing group: (its non-padding tokens [T] bool, its first expert, one past its last
    expert), the units that capacity and balance are measured in. No groups: one group of
    every token and every expert."""
    if not groups:
        return [(info.valid_T, 0, num_experts)]
    token_group_T = token_groups(info, len(groups))
    ends = torch.tensor(groups).cumsum(0).tolist()
    return [(info.valid_T & (token_group_T == g), end - n, end)
            for g, (n, end) in enumerate(zip(groups, ends))]


# --- the four steps --------------------------------------------------------------------------

def route(logits_TE: torch.Tensor, top_k: int, temperature: float | torch.Tensor = 1.0,
          selection_bias_E: torch.Tensor | None = None, sample: bool = False):
    """GShard/Switch routing: softmax over experts at `temperature`, top-k, the k weights
    renormalised to sum to 1.

    selection_bias_E (aux-loss-free balancing) shifts which experts are chosen but not their
    weights. sample=True picks the k experts by sampling softmax(logits / tau) without
    replacement (Gumbel top-k), so that a high temperature explores.

    Returns:
        weights_TK (float32), expert_ids_TK (long), probs_TE (float32, the full softmax).
    """
    scaled_TE = logits_TE.float() / temperature
    probs_TE = torch.softmax(scaled_TE, dim=-1)
    score_TE = scaled_TE
    if sample:
        score_TE = score_TE - torch.empty_like(score_TE).exponential_().log()  # + Gumbel(0, 1)
    if selection_bias_E is not None:
        score_TE = score_TE + selection_bias_E
    expert_ids_TK = score_TE.topk(top_k, dim=-1).indices
    top_TK = probs_TE.gather(1, expert_ids_TK)
    return top_TK / top_TK.sum(-1, keepdim=True), expert_ids_TK, probs_TE


def permute(x_TD: torch.Tensor, expert_ids_TK: torch.Tensor, num_experts: int):
    """Group token rows by expert.

    Slot `t*K + k` is token t's k-th choice. Rows come out in ascending expert order and,
    within an expert, in ascending slot order (a stable sort on the expert id).

    Returns:
        x_ND: the rows, slots_N (long): the slot of each row (its token is slot // K),
        offsets_E1 (long, starts at 0): expert e owns rows offsets_E1[e]:offsets_E1[e+1].
    """
    T, K = expert_ids_TK.shape
    slots_N = torch.sort(expert_ids_TK.flatten(), stable=True).indices
    counts_E = torch.bincount(expert_ids_TK.flatten(), minlength=num_experts)
    offsets_E1 = torch.cat([counts_E.new_zeros(1), counts_E.cumsum(0)])
    return x_TD[slots_N // K], slots_N, offsets_E1


def grouped_mm(x_ND: torch.Tensor, w_EDH: torch.Tensor, offsets_E1: torch.Tensor) -> torch.Tensor:
    """y[rows of e] = x[rows of e] @ w_EDH[e] for every expert e; empty experts are legal."""
    y_NH = x_ND.new_empty(x_ND.shape[0], w_EDH.shape[2])
    bounds = offsets_E1.tolist()
    for e in range(w_EDH.shape[0]):
        y_NH[bounds[e]:bounds[e + 1]] = x_ND[bounds[e]:bounds[e + 1]] @ w_EDH[e]
    return y_NH


def unpermute(y_ND: torch.Tensor, slots_N: torch.Tensor, weights_TK: torch.Tensor
              ) -> torch.Tensor:
    """y_TD[t] = sum_k weights_TK[t, k] * (the row of slot t*K + k), accumulated in float32
    (float64 for float64 inputs)."""
    T, K = weights_TK.shape
    acc = torch.promote_types(y_ND.dtype, torch.float32)
    rows_in_slot_order = torch.empty_like(y_ND, dtype=acc)
    rows_in_slot_order[slots_N] = y_ND.to(acc)
    y_TKD = rows_in_slot_order.view(T, K, -1) * weights_TK.to(acc)[..., None]
    return y_TKD.sum(1).to(y_ND.dtype)


@dataclass(frozen=True)
class Backend:
    """Who computes the three steps with two implementations: the functions above ("torch")
    or the C++/CUDA extension's ops ("ext", see ops.py); --moe-backend picks."""
    name: str
    permute: Callable
    grouped_mm: Callable
    unpermute: Callable


TORCH = Backend("torch", permute, grouped_mm, unpermute)


def expert_ffn(x_ND, w1_EDH, w2_EHD, offsets_E1, ops: Backend = TORCH) -> torch.Tensor:
    """Each row through its expert's FFN: w2 gelu(w1 x), as the dense FFN of model.py."""
    return ops.grouped_mm(F.gelu(ops.grouped_mm(x_ND, w1_EDH, offsets_E1)), w2_EHD, offsets_E1)


def experts_forward(x_TD, weights_TK, expert_ids_TK, kept_TK, w1_EDH, w2_EHD,
                    ops: Backend = TORCH) -> torch.Tensor:
    """permute -> expert FFNs -> unpermute, with dropped slots in a sink group (see the module
    docstring): y_TD = sum over kept k of weights_TK[t, k] * expert_{ids[t, k]}(x_t)."""
    E = w1_EDH.shape[0]
    sink_ids_TK = expert_ids_TK.masked_fill(~kept_TK, E)
    x_ND, slots_N, offsets_E2 = ops.permute(x_TD, sink_ids_TK, E + 1)
    # The sink's rows (the last ones) ride with the last expert and are combined at weight 0,
    # so the host never reads how many rows were routed: torch.compile traces one graph.
    offsets_E1 = torch.cat([offsets_E2[:E], offsets_E2[E + 1:]])
    y_ND = expert_ffn(x_ND, w1_EDH, w2_EHD, offsets_E1, ops)
    return ops.unpermute(y_ND, slots_N, weights_TK.masked_fill(~kept_TK, 0).to(y_ND.dtype))


# --- dropping slots --------------------------------------------------------------------------

def random_second(weights_TK: torch.Tensor, kept_TK: torch.Tensor):
    """GShard random routing: keep each token's second expert with probability p = min(1, 2 g2).

    A kept second weight is divided by p (as inverted dropout does; p counts as a constant for
    the gradient), so that the expected output in training equals the deterministic top-2
    output used at inference. Returns (weights_TK, kept_TK).
    """
    g2_T = weights_TK[:, 1]
    p_T = (2 * g2_T).clamp(max=1.0).detach()
    keep_T = torch.rand_like(p_T) < p_T
    second_T = torch.where(keep_T, g2_T / p_T, 0.0)
    return (torch.stack([weights_TK[:, 0], second_T], 1),
            kept_TK & torch.stack([torch.ones_like(keep_T), keep_T], 1))


def capacity(num_tokens: int, top_k: int, num_experts: int, factor: float) -> int:
    """Slots per expert: factor times the even share T*K/E, rounded up."""
    return math.ceil(factor * num_tokens * top_k / num_experts)


def within_capacity(expert_ids_TK: torch.Tensor, kept_TK: torch.Tensor, num_experts: int,
                    limit: int | torch.Tensor) -> torch.Tensor:
    """kept_TK, minus the slots beyond `limit` per expert (an int, or one per expert: [E]).
    Priority as in GShard: every token's first choice before any second choice, then token
    order."""
    T, K = expert_ids_TK.shape
    ids_N = expert_ids_TK.T.flatten()  # choice-major order = priority order
    live_N = kept_TK.T.flatten()
    onehot_NE = F.one_hot(ids_N, num_experts) * live_N[:, None]
    position_N = (onehot_NE.cumsum(0) * onehot_NE).sum(1) - 1  # rank among the expert's slots
    limit_N = limit[ids_N] if isinstance(limit, torch.Tensor) else limit
    return (live_N & (position_N < limit_N)).view(K, T).T


# --- the layer -------------------------------------------------------------------------------

@dataclass(frozen=True)
class MoESpec:
    """Shape and train-time behaviour of one MoE layer (inference always routes
    deterministically and dropless)."""
    d_model: int
    d_hidden: int  # hidden neurons of one expert
    num_experts: int  # routed experts E
    top_k: int  # experts per token K
    num_shared: int = 0  # always-on experts, stored as one dense FFN of num_shared * d_hidden
    router_bias: bool = True  # learnable bias b in logits = W x + b
    prior: str = "none"  # none | modality | domain: the annealed learnable bias b_i(t)
    prior_groups: int = 0  # rows of that bias: 2 for modality, domains + 1 for domain
    capacity_factor: float = 0.0  # expert capacity as a multiple of the even share (0: dropless)
    random_routing: bool = False  # top-2 only: keep the second expert with probability 2 g2
    sample: bool = False  # Gumbel top-k exploration at the current temperature
    groups: tuple[int, ...] = ()  # experts per routing group: (text, image), or () for none


class Experts(nn.Module):
    """E expert FFNs with stacked weights: permute -> grouped matmuls -> unpermute.

    The routed part of a MoE layer, as a module of its own so that expert parallelism can put
    another module with the same interface in its place (see `dist.parallelize_experts_`)."""

    def __init__(self, num_experts: int, d_model: int, d_hidden: int, backend: Backend = TORCH):
        super().__init__()
        self.num_experts, self.ops = num_experts, backend
        self.w1_EDH = nn.Parameter(torch.randn(num_experts, d_model, d_hidden) * d_model ** -0.5)
        self.w2_EHD = nn.Parameter(torch.randn(num_experts, d_hidden, d_model) * d_hidden ** -0.5)

    def forward(self, x_TD, weights_TK, expert_ids_TK, kept_TK) -> torch.Tensor:
        return experts_forward(x_TD, weights_TK, expert_ids_TK, kept_TK, self.w1_EDH,
                               self.w2_EHD, self.ops)


class MoE(nn.Module):
    """Routed experts plus optional always-on shared experts; returns (y, Routing) where the
    dense FFN returns (y, None).

    Args:
        spec: the layer's shape and train-time routing behaviour.
        backend: who computes permute, grouped_mm and unpermute (TORCH here, or ops.EXT).
        shared_ffn: the dense FFN type (called as shared_ffn(d_model, d_hidden)), needed when
            spec.num_shared > 0. Shared experts have no router, so they are one dense FFN whose
            hidden neurons are theirs side by side (the sum of several FFNs is one wider FFN).

    The router's schedule state (temperature, prior scale) and the aux-loss-free selection bias
    are buffers: `routing.py` sets them during training and they are saved in checkpoints, so
    inference uses their final values.
    """

    def __init__(self, spec: MoESpec, backend: Backend = TORCH,
                 shared_ffn: Callable[[int, int], nn.Module] | None = None):
        super().__init__()
        if spec.num_shared and shared_ffn is None:
            raise ValueError("a MoE layer with shared experts needs shared_ffn (the dense FFN "
                             "type, model.FFN)")
        E = spec.num_experts
        if spec.groups and (sum(spec.groups) != E or min(spec.groups) < spec.top_k
                            or len(spec.groups) > 2):
            raise ValueError(f"routing groups {spec.groups}: one or two groups (text, image) "
                             f"that share the {E} experts, each with at least top_k="
                             f"{spec.top_k} of them")
        self.spec, self.num_experts, self.top_k, self.prior = spec, E, spec.top_k, spec.prior
        self.router = nn.Linear(spec.d_model, E, bias=spec.router_bias)
        self.experts = Experts(E, spec.d_model, spec.d_hidden, backend)
        self.shared = shared_ffn(spec.d_model, spec.num_shared * spec.d_hidden) \
            if spec.num_shared else None
        # prior_GE[g, e]: the annealed learnable bias b_i(t) of group g: modality (0 text,
        # 1 image) or data domain, as `prior` says
        self.prior_GE = nn.Parameter(torch.zeros(spec.prior_groups, E)) \
            if spec.prior != "none" else None
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("prior_scale", torch.tensor(0.0))
        self.register_buffer("selection_bias_E", torch.zeros(E))
        self.register_buffer("expert_scale", torch.tensor(1.0))
        if spec.groups:  # the routing group of each expert (derived from spec: not saved)
            self.register_buffer("group_E", torch.repeat_interleave(
                torch.arange(len(spec.groups)), torch.tensor(spec.groups)), persistent=False)

    def router_logits(self, x_TD: torch.Tensor, info: TokenInfo) -> torch.Tensor:
        logits_TE = self.router(x_TD)
        if self.prior_GE is not None:
            groups_T = info.domain_T if self.prior == "domain" else info.image_T.long()
            if groups_T is not None:
                logits_TE = logits_TE + self.prior_scale * self.prior_GE[groups_T]
        if self.spec.groups:
            own_TE = self.group_E[None, :] == token_groups(info, len(self.spec.groups))[:, None]
            logits_TE = logits_TE.masked_fill(~own_TE, float("-inf"))
        return logits_TE

    def capacities(self, info: TokenInfo) -> torch.Tensor:
        """Slots per expert [E]: capacity_factor times the even share of its routing group."""
        limit_E = torch.empty(self.num_experts, dtype=torch.long)
        for tokens_T, lo, hi in group_parts(info, self.spec.groups, self.num_experts):
            limit_E[lo:hi] = capacity(int(tokens_T.sum()), self.top_k, hi - lo,
                                      self.spec.capacity_factor)
        return limit_E.to(info.valid_T.device)

    def forward(self, x_BLD: torch.Tensor, info: TokenInfo | None = None
                ) -> tuple[torch.Tensor, Routing]:
        x_TD = x_BLD.reshape(-1, x_BLD.shape[-1])
        T, spec, train = x_TD.shape[0], self.spec, self.training
        info = info or TokenInfo.plain(T, x_TD.device)
        logits_TE = self.router_logits(x_TD, info)
        weights_TK, expert_ids_TK, probs_TE = route(
            logits_TE, self.top_k, self.temperature, self.selection_bias_E, train and spec.sample)
        kept_TK = info.valid_T[:, None].expand(T, self.top_k)
        if train and spec.random_routing:
            weights_TK, kept_TK = random_second(weights_TK, kept_TK)
        if train and spec.capacity_factor > 0:
            kept_TK = within_capacity(expert_ids_TK, kept_TK, self.num_experts,
                                      self.capacities(info))
        y_TD = self.expert_scale * self.experts(x_TD, weights_TK, expert_ids_TK, kept_TK)
        if self.shared is not None:
            y_TD = y_TD + self.shared(x_TD)[0]
        return y_TD.view_as(x_BLD), Routing(logits_TE, probs_TE, expert_ids_TK, kept_TK, info,
                                            spec.groups)

    def all_experts(self, x_TD: torch.Tensor) -> torch.Tensor:
        """Every routed expert at weight 1, plus the shared ones: for a layer split from a
        dense FFN (random or Taylor), exactly that FFN."""
        T, E = x_TD.shape[0], self.num_experts
        ones_TE = x_TD.new_ones(T, E)
        y_TD = self.experts(x_TD, ones_TE, torch.arange(E).repeat(T, 1), ones_TE.bool())
        return y_TD + (self.shared(x_TD)[0] if self.shared is not None else 0)


def moe_loop(x_TD, weights_TK, expert_ids_TK, w1_EDH, w2_EHD) -> torch.Tensor:
    """The slow, obviously correct twin: every token, every choice, one expert at a time."""
    y_TD = torch.zeros_like(x_TD)
    for e in range(w1_EDH.shape[0]):
        for k in range(expert_ids_TK.shape[1]):
            chosen = expert_ids_TK[:, k] == e
            h = F.gelu(x_TD[chosen] @ w1_EDH[e]) @ w2_EHD[e]
            y_TD[chosen] += weights_TK[chosen, k, None] * h
    return y_TD


# --- auxiliary losses ------------------------------------------------------------------------

def balance_loss(probs_TE: torch.Tensor, expert_ids_TK: torch.Tensor) -> torch.Tensor:
    """GShard/Switch load balance: E * sum_e f_e * P_e, where f_e is the share of routed slots
    that went to expert e and P_e its mean router probability. Equals 1 when both are uniform,
    and grows as routing collapses (at most E). Only P_e carries a gradient."""
    E = probs_TE.shape[-1]
    f_E = torch.bincount(expert_ids_TK.flatten(), minlength=E).float() / expert_ids_TK.numel()
    return E * (f_E * probs_TE.mean(0)).sum()


def z_loss(logits_TE: torch.Tensor) -> torch.Tensor:
    """Router z-loss (ST-MoE): mean squared log-sum-exp of the logits; keeps them small."""
    return torch.logsumexp(logits_TE.float(), dim=-1).square().mean()
