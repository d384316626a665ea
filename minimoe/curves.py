"""curves.png: a run's training curves, drawn from its log.jsonl for people to look at.

One titled panel per quantity, for what the log holds (a dense run has no routing panels):

    vq losses                    the tokenizer's loss and reconstruction loss, over vq steps
    t2i / mmu / lm loss          each task's training loss, and its held-out loss where checked
    learning rate, tokens/s
    modality NMI, domain NMI,    MoE stage: per MoE layer, the routing statistics of each log
    max load                     line (max load: busiest expert / mean load - 1)

The dense and MoE stages share one step axis: MoE steps continue after the dense stage's last
logged step, and a dashed line labelled with the stage's name marks where each stage starts.
Losses are drawn on a log scale, since they fall by an order of magnitude.

    from minimoe.curves import write_curves
    write_curves("out/moe-taylor/log.jsonl", "curves.png", "moe-taylor")  # the panels' titles
"""
from __future__ import annotations

import json
from pathlib import Path

from .atomic import save_png
from .plots import BAR_COLOURS, LinePanel, line_panels
from .sequences import TASKS

COLUMNS = 3  # panels a row
TRAINING_STAGES = ("dense", "moe")  # the stages that share the step axis, in the order they run
VQ_LOSSES = ("loss", "recon")  # the losses of a vq log line
# Per-layer routing statistics of a MoE log line (metrics.RoutingStats.summary): panel title,
# key under routing/layerN.
ROUTING_PANELS = (("modality NMI", "modality_nmi"), ("domain NMI", "domain_nmi"),
                  ("max load (busiest / mean - 1)", "max_violation"))
# More MoE layers than colours would be unreadable: then their mean, min and max are drawn.
MAX_LAYER_LINES = len(BAR_COLOURS)

Series = tuple[list[float], list[float]]


def read_log(path: str | Path) -> list[dict]:
    """The records of a log.jsonl, without a last line that a crash cut short."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def step_offsets(records: list[dict]) -> dict[str, int]:
    """Where each logged training stage starts on the shared step axis: the first at 0, the
    next after the previous one's last logged step."""
    offsets, end = {}, 0
    for stage in TRAINING_STAGES:
        steps = [r["step"] for r in records if r.get("stage") == stage and "step" in r]
        if steps:
            offsets[stage], end = end, end + max(steps)
    return offsets


def _xy(points: list[tuple[float, float]]) -> Series:
    return [x for x, _ in points], [y for _, y in points]


def _panel(title: str, series: dict[str, Series], x_label: str, marks: dict[float, str],
           log_y: bool = False) -> LinePanel | None:
    """A LinePanel of the series that hold a point, or None when none does."""
    kept = {name: s for name, s in series.items() if s[0]}
    return LinePanel(title, kept, x_label, marks, log_y) if kept else None


def _layer_series(records: list[dict], key: str, at) -> dict[str, Series]:
    """One series per MoE layer of routing statistic `key` (None values left out), or the
    layers' mean, min and max when there are more layers than colours."""
    by_layer: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        for layer, stats in r["routing"].items():
            if stats.get(key) is not None:
                by_layer.setdefault(layer, []).append((at(r), stats[key]))
    if len(by_layer) <= MAX_LAYER_LINES:
        return {layer: _xy(points) for layer, points in by_layer.items()}
    steps: dict[float, list[float]] = {}
    for points in by_layer.values():
        for x, y in points:
            steps.setdefault(x, []).append(y)
    xs = sorted(steps)
    return {"mean over layers": (xs, [sum(steps[x]) / len(steps[x]) for x in xs]),
            "min": (xs, [min(steps[x]) for x in xs]), "max": (xs, [max(steps[x]) for x in xs])}


def curve_panels(records: list[dict]) -> list[LinePanel]:
    """The panels that `records` (a log.jsonl's) fill, in reading order."""
    panels: list[LinePanel | None] = []
    vq = [r for r in records if r.get("stage") == "vq" and "step" in r]
    panels.append(_panel("vq losses", {k: _xy([(r["step"], r[k]) for r in vq if k in r])
                                       for k in VQ_LOSSES}, "vq step", {0: "vq"}, log_y=True))

    offsets = step_offsets(records)
    marks = {offset: stage for stage, offset in offsets.items()}
    steps = [r for r in records if r.get("stage") in offsets and "step" in r]
    train = [r for r in steps if "loss" in r]
    heldout = [r for r in steps if "heldout" in r]
    moe = [r for r in train if "routing" in r]

    def at(r: dict) -> int:  # a record's place on the shared step axis
        return offsets[r["stage"]] + r["step"]

    def xy(rows: list[dict], key: str) -> Series:
        return _xy([(at(r), r[key]) for r in rows if key in r])

    for task in TASKS:
        panels.append(_panel(f"{task} loss", {
            "train": xy(train, task),
            "held-out": _xy([(at(r), r["heldout"][task]) for r in heldout
                             if task in r["heldout"]])}, "step", marks, log_y=True))
    panels.append(_panel("learning rate", {"lr": xy(train, "lr")}, "step", marks))
    panels.append(_panel("tokens/s", {"tokens/s": xy(train, "tok_per_s")}, "step", marks))
    moe_marks = {x: stage for x, stage in marks.items() if stage == "moe"}
    for title, key in ROUTING_PANELS:
        panels.append(_panel(title, _layer_series(moe, key, at), "step", moe_marks))
    return [p for p in panels if p is not None]


def write_curves(log: str | Path, path: str | Path, title: str = "") -> list[str]:
    """Draw `log`'s curves as a PNG at `path` (written atomically) and return the panels'
    titles; a log without a curve to draw writes nothing."""
    panels = curve_panels(read_log(log))
    if panels:
        save_png(line_panels(panels, COLUMNS, title), path)
    return [p.title for p in panels]
