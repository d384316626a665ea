"""The Mixture-of-Experts layer in four named steps, with a slow per-expert twin for tests.

    route -> permute -> expert FFNs (grouped matmuls) -> unpermute / combine

Shape legend (suffixes on tensor names):
    T tokens (batch and sequence flattened), D d_model, H expert hidden size, E routed experts,
    K experts per token (top-k), N = T*K routed rows, E1 = E + 1 offsets.

This is the readable pure-PyTorch backend: the C++/CUDA extension (its own issue) provides
`permute`, `unpermute` and `grouped_mm` with the same contracts. Also here: always-on shared
experts and the balance and z losses. How a dense FFN becomes experts is `convert.py`. Not yet
wired into the model: router schedules and biases and the `--moe` stage arrive with the rest of
the MoE issue.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def route(logits_TE: torch.Tensor, top_k: int, temperature: float = 1.0):
    """GShard/Switch routing: softmax over experts (at `temperature`), top-k, the k weights
    renormalised to sum to 1.

    Returns:
        weights_TK (float), expert_ids_TK (long), probs_TE (the full softmax, for the losses).
    """
    probs_TE = torch.softmax(logits_TE.float() / temperature, dim=-1)
    top_TK, expert_ids_TK = probs_TE.topk(top_k, dim=-1)
    weights_TK = top_TK / top_TK.sum(-1, keepdim=True)
    return weights_TK, expert_ids_TK, probs_TE


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
    """y_TD[t] = sum_k weights_TK[t, k] * (the row of slot t*K + k), accumulated in float32."""
    T, K = weights_TK.shape
    rows_in_slot_order = torch.empty_like(y_ND, dtype=torch.float32)
    rows_in_slot_order[slots_N] = y_ND.float()
    y_TKD = rows_in_slot_order.view(T, K, -1) * weights_TK.float()[..., None]
    return y_TKD.sum(1).to(y_ND.dtype)


def expert_ffn(x_ND, w1_EDH, w2_EHD, offsets_E1) -> torch.Tensor:
    """Each row through its expert's FFN: w2 gelu(w1 x), as the dense FFN of model.py."""
    return grouped_mm(F.gelu(grouped_mm(x_ND, w1_EDH, offsets_E1)), w2_EHD, offsets_E1)


class MoE(nn.Module):
    """Routed experts with stacked weights plus optional always-on shared experts; returns
    (y, aux) like the dense FFN.

    Shared experts have no router, so they are stored as one dense FFN whose hidden neurons are
    theirs side by side (the sum of several FFNs is one wider FFN). aux holds the router's
    logits, softmax and choices so that the balance losses and routing statistics can be
    computed outside the layer.
    """

    def __init__(self, d_model: int, d_hidden: int, num_experts: int, top_k: int,
                 num_shared: int = 0):
        super().__init__()
        from .model import FFN  # model.py builds MoE layers through make_ffn: import late
        self.num_experts, self.top_k = num_experts, top_k
        self.router = nn.Linear(d_model, num_experts, bias=True)
        self.w1_EDH = nn.Parameter(torch.randn(num_experts, d_model, d_hidden) * d_model ** -0.5)
        self.w2_EHD = nn.Parameter(torch.randn(num_experts, d_hidden, d_model) * d_hidden ** -0.5)
        self.shared = FFN(d_model, num_shared * d_hidden) if num_shared else None

    def forward(self, x_BLD: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x_TD = x_BLD.reshape(-1, x_BLD.shape[-1])
        logits_TE = self.router(x_TD)
        weights_TK, expert_ids_TK, probs_TE = route(logits_TE, self.top_k)
        x_ND, slots_N, offsets_E1 = permute(x_TD, expert_ids_TK, self.num_experts)
        y_ND = expert_ffn(x_ND, self.w1_EDH, self.w2_EHD, offsets_E1)
        y_TD = unpermute(y_ND, slots_N, weights_TK.to(y_ND.dtype))
        if self.shared is not None:
            y_TD = y_TD + self.shared(x_TD)[0]
        return y_TD.view_as(x_BLD), {"logits_TE": logits_TE, "probs_TE": probs_TE,
                                     "expert_ids_TK": expert_ids_TK}

    def all_experts(self, x_TD: torch.Tensor) -> torch.Tensor:
        """Every routed expert at weight 1, plus the shared ones: for a layer split from a
        dense FFN (random or Taylor), exactly that FFN."""
        T, E = x_TD.shape[0], self.num_experts
        x_ND, slots_N, offsets_E1 = permute(x_TD, torch.arange(E).repeat(T, 1), E)
        y_TD = unpermute(expert_ffn(x_ND, self.w1_EDH, self.w2_EHD, offsets_E1), slots_N,
                         x_TD.new_ones(T, E))
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
    and grows as routing collapses (at most E)."""
    E = probs_TE.shape[-1]
    f_E = torch.bincount(expert_ids_TK.flatten(), minlength=E).float() / expert_ids_TK.numel()
    return E * (f_E * probs_TE.mean(0)).sum()


def z_loss(logits_TE: torch.Tensor) -> torch.Tensor:
    """Router z-loss (ST-MoE): mean squared log-sum-exp of the logits; keeps them small."""
    return torch.logsumexp(logits_TE.float(), dim=-1).square().mean()
