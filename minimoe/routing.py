"""Training the router: schedules, auxiliary losses, aux-loss-free balancing, collapse warnings.

Schedules, pure functions of the MoE step s (A = --anneal-steps, or the whole MoE stage):

    tau(s)   = anneal(s, A, router_temp_start, router_temp_end)   softmax temperature
    alpha(s) = anneal(s, A, balance_start, balance_end)           balance-loss coefficient
    prior(s) = anneal(s, A, 1, 0)                                 scales the learnable prior b_i

all with the shape --anneal-shape (schedules.anneal; an exponential prior would never reach
0, so the prior then fades linearly). The loss added to the task losses is

    alpha(s) * mean over MoE layers of balance  +  z_loss_weight * mean over MoE layers of z

where balance = E * sum_e f_e * P_e over the non-padding tokens (moe.balance_loss). It sees the
*tempered* probabilities softmax(logits / tau): those are the probabilities that weight the
experts, so the balance loss regulates the distribution that is actually used, and it equals 1
exactly when that distribution is balanced. With --balance-scope modality it is computed on
the text tokens and on the image tokens separately and averaged, so that the many image tokens
cannot balance the load by pushing themselves into the text experts. A layer with routing
groups (--router-groups modality) is balanced inside each group instead: the balance of the
text tokens over the text experts and of the image tokens over the image experts, averaged;
the aux-loss-free bias and the collapse warning also compare an expert with its own group.

Router collapse: when one expert is among the choices of at least COLLAPSE_SHARE of a layer's
tokens for COLLAPSE_STEPS optimizer steps in a row, training warns (console and log): the
layer then behaves like a dense FFN with idle experts. Only checked when top_k <= E / 2, where
an even router gives every expert at most half of the tokens.

Aux-loss-free balancing (DeepSeek-V3), with rate r = --aux-free-rate: after every optimizer step
each layer's selection bias moves by r * sign(mean load - load_e), so an overloaded expert
becomes less likely to be chosen; the bias never enters the weights or the losses.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import Config
from .metrics import RoutingStats
from .moe import Routing, balance_loss, group_parts, z_loss
from .schedules import anneal

COLLAPSE_SHARE = 0.9  # one expert chosen by this share of a layer's tokens ...
COLLAPSE_STEPS = 50  # ... for this many steps in a row: warn of router collapse


@dataclass
class Schedule:
    temperature: float
    alpha: float
    prior: float


def schedule(cfg: Config, step: int) -> Schedule:
    """The router's schedule values at MoE step `step`."""
    m = cfg.moe
    span = m.anneal_steps or cfg.train.moe_steps
    return Schedule(anneal(step, span, m.router_temp_start, m.router_temp_end, m.anneal_shape),
                    anneal(step, span, m.balance_start, m.balance_end, m.anneal_shape),
                    anneal(step, span, 1.0, 0.0,
                           "linear" if m.anneal_shape == "exponential" else m.anneal_shape))


def describe_schedule(cfg: Config) -> str:
    """A few sample points of every schedule, printed at the start of a MoE run."""
    span = cfg.moe.anneal_steps or cfg.train.moe_steps
    points = sorted({0, span // 4, span // 2, 3 * span // 4, span})
    prior = cfg.moe.router_prior != "none"
    rows = [f"  step {s:>6}: tau {x.temperature:.3f}  alpha {x.alpha:.4f}"
            + (f"  prior {x.prior:.3f}" if prior else "")
            for s, x in ((s, schedule(cfg, s)) for s in points)]
    return "router schedules (" + cfg.moe.anneal_shape + "):\n" + "\n".join(rows)


def apply_schedule(model, s: Schedule) -> None:
    for _, layer in model.moe_layers():
        layer.temperature.fill_(s.temperature)
        layer.prior_scale.fill_(s.prior)


def router_losses(routings: list[Routing | None], scope: str = "global") -> dict[str, torch.Tensor]:
    """Mean balance loss and mean z-loss over the MoE layers (padding excluded)."""
    balance, z = [], []
    for r in routings:
        if r is None:
            continue
        valid, image, E = r.info.valid_T, r.info.image_T, r.probs_TE.shape[1]
        if r.groups:
            parts = r.group_parts()
        elif scope == "modality":
            parts = [(valid & ~image, 0, E), (valid & image, 0, E)]
        else:
            parts = [(valid, 0, E)]
        parts = [p for p in parts if p[0].any()] or parts[:1]
        balance.append(torch.stack([balance_loss(r.probs_TE[t, lo:hi], r.expert_ids_TK[t] - lo)
                                    for t, lo, hi in parts]).mean())
        z.append(z_loss(r.logits_TE[valid]))
    return {"balance": torch.stack(balance).mean(), "z": torch.stack(z).mean()}


@torch.no_grad()
def update_selection_bias(model, routings: list[Routing | None], rate: float) -> None:
    """One aux-loss-free step: bias_e += rate * sign(mean load - load_e) per MoE layer, the
    mean taken over the expert's routing group."""
    for (_, layer), r in zip(model.moe_layers(), [r for r in routings if r is not None]):
        load_E = torch.bincount(r.expert_ids_TK[r.kept_TK], minlength=layer.num_experts).float()
        if torch.distributed.is_initialized():  # every rank moves the bias by the global load
            torch.distributed.all_reduce(load_E)
        mean_E = torch.empty_like(load_E)
        for _, lo, hi in group_parts(r.info, r.groups, layer.num_experts):
            mean_E[lo:hi] = load_E[lo:hi].mean()
        layer.selection_bias_E += rate * torch.sign(mean_E - load_E)


@torch.no_grad()
def top_shares(routings: list[Routing | None], num_experts: int) -> list[float | None]:
    """Per MoE layer: the share of its non-padding tokens whose top-k holds the most chosen
    expert (a token picks an expert at most once, so this is the expert's slot count); with
    routing groups, the largest such share within a group. Only groups of at least 2 * top_k
    experts count, where an even router gives every expert at most half of the tokens; None
    when there is no such group."""
    shares = []
    for r in (x for x in routings if x is not None):
        K, found = r.expert_ids_TK.shape[1], []
        for tokens_T, lo, hi in group_parts(r.info, r.groups, num_experts):
            if 2 * K > hi - lo:
                continue
            ids = r.expert_ids_TK[tokens_T]
            load = torch.bincount(ids.flatten(), minlength=num_experts)
            found.append(float(load.max()) / max(1, ids.shape[0]))
        shares.append(max(found) if found else None)
    return shares


class RouterTraining:
    """What `trainer.fit` does for the router around each MoE step."""

    def __init__(self, model, cfg: Config):
        self.model, self.cfg = model, cfg
        self.stats = RoutingStats([i for i, _ in model.moe_layers()], cfg.moe.num_experts,
                                  cfg.domain_names)
        self.now = schedule(cfg, 0)
        self.collapsed: dict[int, int] = {}  # layer -> steps in a row it has been collapsed

    def before_step(self, step: int) -> None:
        self.now = schedule(self.cfg, step)
        apply_schedule(self.model, self.now)

    def losses(self, routings) -> dict[str, torch.Tensor]:
        return router_losses(routings, self.cfg.moe.balance_scope)

    def weighted(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.now.alpha * losses["balance"] + self.cfg.moe.z_loss_weight * losses["z"]

    def observe(self, routings) -> None:
        """Statistics of a micro-batch that is not the step's last."""
        self.stats.add(routings)

    def after_step(self, routings, step: int) -> list[str]:
        """After the optimizer step `step` (routings: the last micro-batch's). Returns warnings
        of router collapse, once per layer when its collapse has lasted COLLAPSE_STEPS."""
        if self.cfg.moe.aux_free_rate:
            update_selection_bias(self.model, routings, self.cfg.moe.aux_free_rate)
        self.stats.add(routings)
        warnings, m = [], self.cfg.moe
        for layer, share in zip(self.stats.layers, top_shares(routings, m.num_experts)):
            collapsed = share is not None and share >= COLLAPSE_SHARE
            self.collapsed[layer] = self.collapsed.get(layer, 0) + 1 if collapsed else 0
            if self.collapsed[layer] == COLLAPSE_STEPS:
                warnings.append(f"router collapse in MoE layer {layer}: one expert has taken "
                                f"over {COLLAPSE_SHARE:.0%} of its tokens for {COLLAPSE_STEPS} "
                                f"steps (now {share:.0%}, step {step}); raise --balance-start or "
                                f"--balance-end, or try --aux-free-rate 1e-3")
        return warnings

    def record(self) -> dict:
        """Schedule values and the routing statistics since the last record (then reset)."""
        rec = {"tau": round(self.now.temperature, 4), "alpha": round(self.now.alpha, 5),
               "prior": round(self.now.prior, 4), "routing": self.stats.summary()}
        self.stats.reset()
        return rec
