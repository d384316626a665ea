"""curves.png draws what a log.jsonl holds, and only that: a panel per task loss (held-out
beside training), the learning rate and tokens/s, routing panels only for a MoE stage, the
MoE steps after the dense ones. Synthetic logs, no training.  Run: pytest -q tests/test_curves.py"""
import json

import numpy as np
from PIL import Image

from minimoe.curves import (MAX_LAYER_LINES, curve_panels, read_log, step_offsets,
                            write_curves)
from minimoe.plots import BAR_COLOURS, MARK_COLOUR, LinePanel, line_panels

DENSE_PANELS = ["vq losses", "t2i loss", "mmu loss", "lm loss", "learning rate", "tokens/s"]
ROUTING_PANELS = ["modality NMI", "domain NMI", "max load (busiest / mean - 1)"]
DENSE_STEPS, MOE_STEPS, EVERY = 40, 20, 10


def vq_log() -> list[dict]:
    return [{"stage": "vq", "step": s, "loss": 1.0 / (s + 1), "recon": 0.9 / (s + 1),
             "psnr": 10.0 + s, "perplexity": 5.0, "dead_restarts": 0} for s in range(0, 30, 10)] \
        + [{"stage": "vq", "report": {"psnr": 20.0}}]


def training_log(stage: str, steps: int, routing=None) -> list[dict]:
    records = []
    for s in range(EVERY, steps + 1, EVERY):
        records.append({"stage": stage, "step": s, "loss": 3.0 - s / 100, "lr": 1e-3,
                        "t2i": 2.0, "mmu": 1.0 - s / 100, "lm": 0.5, "tok_per_s": 1000 + s,
                        "time_s": s / 10, **({"routing": routing(s)} if routing else {})})
        records.append({"stage": stage, "step": s, "time_s": s / 10,
                        "heldout": {"t2i": 2.1, "mmu": 1.1, "lm": 0.6}})
    return records


def routing_stats(layers: int, domain_nmi=0.05):
    def at(step):
        return {f"layer{i}": {"text": [0.5, 0.5], "image": [0.5, 0.5], "modality_nmi": 0.1 * i,
                              "domain_nmi": domain_nmi, "max_violation": step / 100}
                for i in range(layers)}
    return at


def moe_log(layers: int = 2, domain_nmi=0.05) -> list[dict]:
    convert = {"stage": "convert", "before": {"t2i": 2.0}, "after": {"t2i": 2.5}}
    return vq_log() + training_log("dense", DENSE_STEPS) + [convert] \
        + training_log("moe", MOE_STEPS, routing_stats(layers, domain_nmi))


def write_log(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def titles(records) -> list[str]:
    return [p.title for p in curve_panels(records)]


def test_a_dense_log_draws_losses_lr_and_speed_but_no_routing_panel(tmp_path):
    log = write_log(tmp_path / "log.jsonl", vq_log() + training_log("dense", DENSE_STEPS))
    drawn = write_curves(log, tmp_path / "curves.png", "run")
    assert drawn == DENSE_PANELS
    with Image.open(tmp_path / "curves.png") as img:
        assert img.format == "PNG"


def test_a_moe_log_adds_nmi_and_load_panels_drawn_as_a_png(tmp_path):
    log = write_log(tmp_path / "log.jsonl", moe_log())
    assert write_curves(log, tmp_path / "curves.png") == DENSE_PANELS + ROUTING_PANELS
    with Image.open(tmp_path / "curves.png") as img:
        assert img.format == "PNG" and img.size[0] > img.size[1] > 0


def test_each_task_panel_shows_training_and_held_out_losses_on_a_log_scale():
    panels = {p.title: p for p in curve_panels(moe_log())}
    for task in ("t2i", "mmu", "lm"):
        assert set(panels[f"{task} loss"].series) == {"train", "held-out"}
        assert panels[f"{task} loss"].log_y
    assert not panels["learning rate"].log_y


def test_moe_steps_follow_the_dense_stage_and_each_stage_start_is_marked():
    records = moe_log()
    assert step_offsets(records) == {"dense": 0, "moe": DENSE_STEPS}
    panels = {p.title: p for p in curve_panels(records)}
    xs, _ = panels["t2i loss"].series["train"]
    assert xs == [s for s in range(EVERY, DENSE_STEPS + 1, EVERY)] + \
        [DENSE_STEPS + s for s in range(EVERY, MOE_STEPS + 1, EVERY)]
    assert panels["t2i loss"].marks == {0: "dense", DENSE_STEPS: "moe"}
    assert panels["modality NMI"].marks == {DENSE_STEPS: "moe"}, "a MoE-only panel: its stage"
    assert min(panels["modality NMI"].series["layer0"][0]) > DENSE_STEPS


def test_a_moe_run_converted_from_init_starts_its_axis_at_zero():
    records = [{"stage": "vq", "report": {"psnr": 20.0}}] + \
        training_log("moe", MOE_STEPS, routing_stats(2))
    assert step_offsets(records) == {"moe": 0}
    assert titles(records) == DENSE_PANELS[1:] + ROUTING_PANELS, "no vq steps: no vq panel"


def test_routing_panels_draw_one_line_per_layer_or_a_summary_of_many_layers():
    few = {p.title: p for p in curve_panels(moe_log(layers=2))}
    assert set(few["modality NMI"].series) == {"layer0", "layer1"}
    many = {p.title: p for p in curve_panels(moe_log(layers=MAX_LAYER_LINES + 1))}
    mean, low, high = (many["modality NMI"].series[k][1] for k in ("mean over layers", "min",
                                                                   "max"))
    assert low[0] == 0.0 and high[0] == 0.1 * MAX_LAYER_LINES
    assert mean[0] == sum(0.1 * i for i in range(MAX_LAYER_LINES + 1)) / (MAX_LAYER_LINES + 1)


def test_a_single_domain_run_has_no_domain_nmi_panel():
    """The log records domain NMI as null when only one domain is seen."""
    assert "domain NMI" not in titles(moe_log(domain_nmi=None))


def test_a_log_without_curves_writes_no_picture(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [{"stage": "vq", "report": {"psnr": 20.0}}])
    assert write_curves(log, tmp_path / "curves.png") == []
    assert not (tmp_path / "curves.png").exists()


def test_the_line_a_crash_cut_short_is_left_out(tmp_path):
    log = write_log(tmp_path / "log.jsonl", training_log("dense", DENSE_STEPS))
    with open(log, "a") as f:
        f.write('{"stage": "dense", "st')
    assert len(read_log(log)) == len(training_log("dense", DENSE_STEPS))


def test_panels_scale_to_their_own_data_and_mark_only_where_asked():
    """Two panels of magnitudes 1e7 apart each fill their own plot area (one series each, so
    no legend swatch in the way); the mark's dashes are drawn in its grey."""
    small = LinePanel("small", {"a": ([0, 10], [0.001, 0.002])}, "step", {5: "moe"})
    large = LinePanel("large", {"a": ([0, 10], [1e4, 2e4])}, "step")
    img = np.asarray(line_panels([small, large], cols=2))
    half = img.shape[1] // 2
    for panel in (img[:, :half], img[:, half:]):
        rows = np.argwhere((panel == BAR_COLOURS[0]).all(-1))[:, 0]
        assert rows.max() - rows.min() > 50, "the line spans most of its panel's height"
    assert (img[:, :half] == MARK_COLOUR).all(-1).sum() > 20, "the stage mark"
    assert not (img[:, half:] == MARK_COLOUR).all(-1).any(), "no mark where none is given"


def test_a_flat_or_single_point_series_still_draws():
    img = np.asarray(line_panels([LinePanel("flat", {"lr": ([1, 2, 3], [0.1, 0.1, 0.1])}),
                                  LinePanel("one", {"x": ([5], [2.0])}, log_y=True)], cols=2))
    half = img.shape[1] // 2
    assert (img[:, :half] == BAR_COLOURS[0]).all(-1).sum() > 50
    assert (img[:, half:] == BAR_COLOURS[0]).all(-1).sum() > 4, "a dot for the one point"
