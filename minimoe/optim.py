"""Muon for the blocks' weight matrices, AdamW for everything else, as one optimizer.

Muon (Jordan et al. 2024) replaces each matrix's momentum-averaged gradient by the nearest
semi-orthogonal matrix (all singular values 1), found by a few Newton-Schulz iterations, so
that an update moves every direction of the matrix by the same amount instead of following
the few directions that dominate the gradient. Embeddings, the output head, norms, the grid
convolution and routers stay with AdamW, as in the reference recipe. The update is scaled
by 0.2 sqrt(max(rows, cols)) (Liu et al. 2025, "Muon is scalable for LLM training"): its
RMS then matches AdamW's, so both parts share one learning rate and weight decay and the
schedule of trainer.lr_at drives both.
"""
from __future__ import annotations

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic of Jordan et al.: fast, not exact
NS_STEPS = 5
RMS_MATCH = 0.2  # AdamW's typical update RMS, which the orthogonal update is scaled to


def orthogonalize(G: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """Approximately U V^T of G = U S V^T, for a matrix or a stack of them ([..., m, n]).

    In float32: the reference runs it in bf16 for speed on large GPUs, but at this project's
    sizes that saves little, and float32 keeps a run's numbers the same on every CPU's kernels.
    """
    a, b, c = NS_COEFFICIENTS
    X = G.float()
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # singular values now <= 1
    wide = X.shape[-2] <= X.shape[-1]
    if not wide:  # iterate on the smaller Gram matrix
        X = X.mT
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return (X if wide else X.mT).to(G.dtype)


def uses_muon(name: str, p: torch.Tensor) -> bool:
    """The matrices of attention and of the FFNs (dense or one per expert); not the
    embeddings, head, norms, grid convolution or routers."""
    return name.startswith("blocks.") and p.dim() in (2, 3) and "conv" not in name \
        and "router" not in name


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer over param groups flagged muon=True (Muon) or False (AdamW)."""

    def __init__(self, groups: list[dict], lr: float, betas=(0.9, 0.95), eps: float = 1e-8,
                 momentum: float = 0.95):
        super().__init__(groups, dict(lr=lr, betas=betas, eps=eps, momentum=momentum,
                                      weight_decay=0.0, muon=False))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            for p in params:
                p.mul_(1 - g["lr"] * g["weight_decay"])  # decoupled, as in AdamW
            if g["muon"]:
                self._muon(params, g)
            else:
                for p in params:
                    self._adamw(p, g, self.state[p])

    def _muon(self, params: list, g: dict) -> None:
        by_shape: dict[tuple, list] = {}
        for p in params:
            by_shape.setdefault(tuple(p.shape), []).append(p)
        for shape, same in by_shape.items():  # one stacked iteration per shape: fewer calls
            nesterov = []
            for p in same:
                state = self.state[p]
                if not state:
                    state["momentum"] = torch.zeros_like(p)
                buf = state["momentum"].mul_(g["momentum"]).add_(p.grad)
                nesterov.append(p.grad.add(buf, alpha=g["momentum"]))
            updates = orthogonalize(torch.stack(nesterov))
            scale = RMS_MATCH * max(shape[-2:]) ** 0.5
            for p, update in zip(same, updates):
                p.add_(update, alpha=-g["lr"] * scale)

    @staticmethod
    def _adamw(p, g, state):
        if not state:
            state["step"] = torch.zeros(())
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        b1, b2 = g["betas"]
        state["step"] += 1
        t = state["step"].item()
        state["exp_avg"].lerp_(p.grad, 1 - b1)
        state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        denom = (state["exp_avg_sq"] / (1 - b2 ** t)).sqrt_().add_(g["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-g["lr"] / (1 - b1 ** t))
