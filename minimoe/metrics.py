"""Measures of a model's outputs and of its routing.

- `colour_report`: does a generated shapes image show the colours its caption names?
- `mmu_report`: exact-match answer accuracy, per answer type, against a blind baseline.
- `group_nmi` and `RoutingStats`: how much a MoE layer's expert choice says about a token's
  modality or data domain, its load balance and drop rate.
The first two come with their chance level measured on the same data, so "beats chance" is a
comparison, not an impression.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch

from .data import COLOURS, SHAPES
from .geneval import MIN_AREA, segment
from .moe import Routing

TEXT, IMAGE = 0, 1  # modality rows of the routing statistics
PURITY = 0.9  # an expert is "pure" when more than this share of its slots is one modality
COUNT_WORDS = ("one", "two", "three")
POSITION_WORDS = ("left", "right", "above", "below")


def colours_present(image) -> set[str]:
    """Palette colours covering at least MIN_AREA of the image (pixels matched to the palette
    as the GenEval-style checker matches them)."""
    label = segment(image)
    counts = np.bincount(label[label >= 0], minlength=len(COLOURS))
    return {name for name, n in zip(COLOURS, counts) if n >= MIN_AREA * label.size}


def caption_colours(objects: list[dict]) -> set[str]:
    return {o["colour"] for o in objects}


def colour_report(images, objects_list) -> dict:
    """Share of images showing every colour of their caption ("all") and exactly those
    ("exact"), and the same with captions shifted by one (a chance level on this data)."""
    present = [colours_present(im) for im in images]
    wanted = [caption_colours(o) for o in objects_list]
    shifted = wanted[1:] + wanted[:1]

    def rates(targets):
        return {"all": float(np.mean([t <= p for p, t in zip(present, targets)])),
                "exact": float(np.mean([t == p for p, t in zip(present, targets)]))}

    return {"n": len(images), "matched": rates(wanted), "chance": rates(shifted)}


def answer_type(answer: str) -> str:
    if answer in COLOURS or " and " in answer:
        return "colour"
    if answer in SHAPES:
        return "shape"
    if answer in COUNT_WORDS:
        return "count"
    if answer in POSITION_WORDS:
        return "position"
    return "other"


def mmu_report(predictions: list[str], answers: list[str]) -> dict:
    """Exact-match accuracy overall and per answer type, plus the accuracy of always giving the
    most common answer of each type (a baseline that never looks at the image)."""
    types = [answer_type(a) for a in answers]
    report = {"n": len(answers),
              "accuracy": float(np.mean([p == a for p, a in zip(predictions, answers)])),
              "per_type": {}}
    majority_hits = 0
    for t in sorted(set(types)):
        idx = [i for i, ti in enumerate(types) if ti == t]
        majority, hits = Counter(answers[i] for i in idx).most_common(1)[0]
        majority_hits += hits
        report["per_type"][t] = {
            "n": len(idx),
            "accuracy": float(np.mean([predictions[i] == answers[i] for i in idx])),
            "majority_baseline": hits / len(idx)}
    report["majority_baseline"] = majority_hits / max(1, len(answers))
    return report


def group_nmi(counts_GE) -> float:
    """How much the expert choice says about a token's group (modality or data domain):
    I(G; E) / log G with every non-empty group weighted equally, so that the many image tokens
    cannot dominate. 0: every group spreads over the experts alike; 1: each expert serves one
    group. For two groups this is the Jensen-Shannon divergence of their expert distributions
    in bits."""
    c = np.asarray(counts_GE, dtype=np.float64)
    c = c[c.sum(1) > 0]
    G = c.shape[0]
    if G < 2:
        return 0.0
    p_GE = c / c.sum(1, keepdims=True) / G
    p_E = p_GE.sum(0, keepdims=True)
    nz = p_GE > 0
    return float((p_GE[nz] * np.log(p_GE[nz] * G / np.broadcast_to(p_E, p_GE.shape)[nz])).sum()
                 / np.log(G))


class RoutingStats:
    """Counts of routed slots per MoE layer: by modality, by data domain, and how many were
    dropped. Every non-padding slot counts where the router sent it, dropped or not."""

    def __init__(self, layers: list[int], num_experts: int, domains: list[str]):
        self.layers, self.E, self.domains = layers, num_experts, domains + ["other"]
        self.reset()

    def reset(self) -> None:
        n, E = len(self.layers), self.E
        self.modality_LME = torch.zeros(n, 2, E, dtype=torch.long)
        self.domain_LGE = torch.zeros(n, len(self.domains), E, dtype=torch.long)
        self.dropped_L = torch.zeros(n, dtype=torch.long)
        self.slots_L = torch.zeros(n, dtype=torch.long)
        self.groups: tuple[int, ...] = ()  # experts per routing group, as the layers route

    @torch.no_grad()
    def add(self, routings: list[Routing | None]) -> None:
        for i, r in enumerate(x for x in routings if x is not None):
            self.groups = r.groups
            valid_T = r.info.valid_T
            ids_TK = r.expert_ids_TK.cpu()
            K = ids_TK.shape[1]
            image_T, valid_T = r.info.image_T.cpu(), valid_T.cpu()
            for row, tokens in ((TEXT, valid_T & ~image_T), (IMAGE, valid_T & image_T)):
                self.modality_LME[i, row] += torch.bincount(ids_TK[tokens].flatten(),
                                                            minlength=self.E)
            if r.info.domain_T is not None:
                G = len(self.domains)
                dom_TK = r.info.domain_T.cpu()[:, None].expand(-1, K)
                pair = dom_TK[valid_T] * self.E + ids_TK[valid_T]
                self.domain_LGE[i] += torch.bincount(pair.flatten(), minlength=G * self.E
                                                     ).view(G, self.E)
            self.dropped_L[i] += int((~r.kept_TK.cpu() & valid_T[:, None]).sum())
            self.slots_L[i] += int(valid_T.sum()) * K

    def summary(self) -> dict:
        """Per layer: shares of text / image / each domain's slots per expert; modality and
        domain NMI (for two groups the modality NMI is also the Jensen-Shannon divergence of
        the text and image expert distributions, in bits); pure experts (more than PURITY of
        their slots from one modality); load balance: max violation (max load / mean load - 1)
        and load entropy / log E (1 = even), both inside each routing group when the layers
        have groups (the worst violation, the mean entropy); drop rate."""
        out = {}
        for i, layer in enumerate(self.layers):
            m, d = self.modality_LME[i].double(), self.domain_LGE[i].double()
            load = m.sum(0)
            violation, entropy = _balance(load, self.groups or (self.E,))
            seen = [g for g in range(len(self.domains)) if d[g].sum() > 0]
            out[f"layer{layer}"] = {
                "text": _shares(m[TEXT]), "image": _shares(m[IMAGE]),
                "domains": {self.domains[g]: _shares(d[g]) for g in seen},
                "modality_nmi": round(group_nmi(m), 4),
                "domain_nmi": round(group_nmi(d[seen]), 4) if len(seen) > 1 else None,
                "max_violation": violation, "load_entropy": entropy,
                "pure_experts": int(((m.max(0).values > PURITY * load) & (load > 0)).sum()),
                "drop_rate": round(int(self.dropped_L[i]) / max(1, int(self.slots_L[i])), 4)}
        return out


def _balance(load_E: torch.Tensor, groups: tuple[int, ...]) -> tuple[float | None, float | None]:
    """(max load / mean load - 1, load entropy / log n) within each group of experts: the
    worst violation and the mean entropy over the groups that carry load."""
    violations, entropies = [], []
    for load in torch.split(load_E, list(groups)):
        if load.sum():
            violations.append(float(load.max() / load.mean() - 1))
            if len(load) > 1:
                entropies.append(_entropy(load) / math.log(len(load)))
    return (round(max(violations), 4) if violations else None,
            round(float(np.mean(entropies)), 4) if entropies else None)


def _entropy(counts: torch.Tensor) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def _shares(counts_E: torch.Tensor) -> list[float]:
    total = counts_E.sum()
    return [round(float(c / total), 4) if total else 0.0 for c in counts_E]
