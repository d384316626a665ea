"""Quick quality checks used at the end of `train.py` (the full evaluation grows in `eval.py`).

- `colour_report`: does a generated shapes image show the colours its caption names?
- `mmu_report`: exact-match answer accuracy, per answer type, against a blind baseline.
Each comes with its chance level measured on the same data, so "beats chance" is a comparison,
not an impression.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .data import COLOURS, SHAPES

MIN_AREA = 0.012  # a colour "is present" if at least this share of the pixels is nearest to it
MAX_COLOUR_DIST = 90.0  # ... and within this RGB distance of it (rejects muddy in-between pixels)
COUNT_WORDS = ("one", "two", "three")
POSITION_WORDS = ("left", "right", "above", "below")


def colours_present(image) -> set[str]:
    """Palette colours covering at least MIN_AREA of the image."""
    px = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)
    dist = np.linalg.norm(px[:, None, :] - palette[None], axis=-1)
    nearest, close = dist.argmin(1), dist.min(1) < MAX_COLOUR_DIST
    counts = np.bincount(nearest[close], minlength=len(names))
    return {names[i] for i in np.nonzero(counts >= MIN_AREA * len(px))[0]}


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
