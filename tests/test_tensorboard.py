"""--tensorboard true: the run folder's TensorBoard events mirror log.jsonl (every number of a
record with a step, at that step, once), and without the package the run stops before it
trains, naming the pip extra. No training here (the end-to-end check is in test_scripts.py).
Run: pytest -q tests/test_tensorboard.py"""
import json
import sys

import pytest

import train
from minimoe import events, run

MICRO = ["--image-size", "16", "--vq-codes", "16", "--vq-colours", "4", "--vq-dim", "8",
         "--vq-channels", "16", "--d-model", "32", "--n-layers", "2", "--n-heads", "2",
         "--d-ffn", "64", "--no-progress"]
RECORDS = [
    {"stage": "vq", "step": 0, "loss": 0.5, "recon": 0.4},
    {"stage": "vq", "report": {"psnr": 20.0}},  # no step: not a scalar series
    {"stage": "dense", "step": 10, "loss": 3.0, "t2i": 2.0, "lr": 1e-3, "time_s": 1.0},
    {"stage": "dense", "step": 10, "time_s": 1.2, "heldout": {"t2i": 2.5}},
    {"stage": "convert", "before": {"t2i": 2.0}, "after": {"t2i": 2.4}},
    {"stage": "moe", "step": 10, "loss": 2.0, "routing": {"layer0": {
        "modality_nmi": 0.3, "domain_nmi": None, "text": [0.5, 0.5]}}},
]


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the folder's event files: tag -> [(step, value)]."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, pytest.approx(e.value)) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def open_run(folder, records) -> run.RunFiles:
    files = run.RunFiles(folder)
    files.log.write_text("".join(json.dumps(r) + "\n" for r in records))
    run.open_events(files, True)
    return files


def test_events_hold_every_number_of_each_record_with_a_step(tmp_path):
    pytest.importorskip("tensorboard")
    files = open_run(tmp_path, RECORDS[:3])
    for record in RECORDS[3:]:  # the log so far is replayed, the rest arrives through the log
        files.log_line(record)
    assert scalars(tmp_path) == {
        "vq/loss": [(0, 0.5)], "vq/recon": [(0, 0.4)],
        "dense/loss": [(10, 3.0)], "dense/t2i": [(10, 2.0)], "dense/lr": [(10, 1e-3)],
        "dense/heldout/t2i": [(10, 2.5)], "moe/loss": [(10, 2.0)],
        "moe/routing/layer0/modality_nmi": [(10, 0.3)]}


def test_reopening_replaces_the_events_by_the_log_so_no_step_shows_twice(tmp_path):
    """A resumed run reopens the events after cutting its log back to the checkpoint."""
    pytest.importorskip("tensorboard")
    crashed = open_run(tmp_path, RECORDS)
    crashed.log_line({"stage": "moe", "step": 20, "loss": 1.5})
    crashed.events.writer.close()  # the process that wrote them has ended
    resumed = open_run(tmp_path, RECORDS)  # the log cut back to moe step 10
    resumed.log_line({"stage": "moe", "step": 20, "loss": 1.4})
    assert len(list(tmp_path.glob(events.EVENT_FILES))) == 1
    assert scalars(tmp_path)["moe/loss"] == [(10, 2.0), (20, 1.4)]


def test_without_the_flag_nothing_is_written(tmp_path):
    files = run.RunFiles(tmp_path)
    run.open_events(files, False)
    files.log_line(RECORDS[2])
    assert files.events is None and not list(tmp_path.glob(events.EVENT_FILES))


def test_without_the_package_the_run_stops_before_training_naming_the_extra(tmp_path, capsys,
                                                                             monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(SystemExit) as stopped:
        train.main(MICRO + ["--out", str(tmp_path), "--tensorboard", "true"])
    err = capsys.readouterr().err
    assert stopped.value.code != 0 and "Traceback" not in err
    assert 'pip install --no-build-isolation -e ".[tensorboard]"' in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "log.jsonl").exists() and not (tmp_path / "vq.pt").exists()
