"""Crashes and numerical faults: a run killed at any moment (mid-step, mid-checkpoint-write)
resumes to the same losses step for step; a NaN/inf stops the run or skips the step, per
--on-nonfinite, and never reaches a checkpoint; router collapse is reported.
Run: pytest -q tests/test_reliability.py"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minimoe import atomic, checkpoint, routing
from minimoe.moe import Routing, TokenInfo
from minimoe.run import RunFiles, read_losses
from minimoe.trainer import TrainingError, fit, make_optimizer
from conftest import micro_config
from test_trainer import setup

ROOT = Path(__file__).resolve().parents[1]
# One command through every stage: tokenizer (reused from the first run), dense, conversion
# with random routing on (model-side randomness), aux-loss-free biases and a domain prior (router
# state in buffers), MoE training. Checkpoints every 3 steps, a log line every step.
RUN = ["--image-size", "16", "--vq-codes", "16", "--vq-colours", "4", "--vq-dim", "8",
       "--vq-channels", "16", "--vq-steps", "20", "--vq-batch", "8", "--d-model", "32",
       "--n-layers", "2", "--n-heads", "2", "--d-ffn", "64", "--dense-steps", "7",
       "--moe-steps", "8", "--batch-t2i", "4", "--batch-mmu", "4", "--batch-lm", "2",
       "--ckpt-every", "3", "--sample-every", "0", "--log-every", "1", "--eval-n", "0",
       "--no-progress", "--moe", "random", "--num-experts", "4", "--random-routing", "true",
       "--aux-free-rate", "0.01", "--router-prior", "domain", "--moe-backend", "torch"]
LOSSES = ("loss", "t2i", "mmu", "lm", "balance", "z", "grad_norm")


def train(out: Path, *extra: str, fault: str = "", wait: bool = True):
    env = {**os.environ, "MINIMOE_FAULT": fault, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "train.py", *RUN, "--out", str(out), *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stdout, stderr


def losses(out: Path) -> dict:
    """(stage, step) -> every loss logged for it; a step logged twice fails (read_losses)."""
    return {key: {k: v for k, v in rec.items() if k in LOSSES}
            for key, rec in read_losses(out / "log.jsonl").items()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run: the reference curve, and the tokenizer the other runs reuse."""
    out = tmp_path_factory.mktemp("straight")
    rc, _, err = train(out)
    assert rc == 0, err
    return out


def fresh(tmp_path: Path, straight: Path) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(straight / "vq.pt", out / "vq.pt")  # the tokenizer stage is not under test
    return out


def resume_and_compare(out: Path, straight: Path) -> float:
    """Resume a killed run (or restart it, if it died before its first checkpoint) and return
    the largest loss difference to the uninterrupted run over every step."""
    rc, _, err = train(out, *(["--resume"] if (out / "ckpt.pt").exists() else []))
    assert rc == 0, err
    assert not list(out.glob("*.tmp")), "a crash's temporary file outlived the next save"
    ref, got = losses(straight), losses(out)
    assert got.keys() == ref.keys()
    return max(abs(got[k][name] - ref[k][name]) for k in ref for name in ref[k])


@pytest.mark.slow
@pytest.mark.parametrize("fault,stage,step", [
    ("kill-step:5", "dense", 3),   # mid-stage, two steps after the step-3 checkpoint
    ("kill-save:6", "dense", 3),   # half-way through writing step 6's: step 3's must survive
    ("kill-step:7", "dense", 7),   # after the dense stage's last step, before conversion
    ("kill-save:8", "moe", 6),     # the MoE stage's last save (the dense stage has no step 8)
])
def test_a_killed_run_resumes_to_the_same_losses(tmp_path, straight, fault, stage, step):
    out = fresh(tmp_path, straight)
    rc, _, _ = train(out, fault=fault)
    assert rc == -signal.SIGKILL
    saved = checkpoint.load(out / "ckpt.pt")
    assert (saved["stage"], saved["step"]) == (stage, step)
    if fault.startswith("kill-save"):
        assert list(out.glob("ckpt.pt.*.tmp")), "the fault should leave a half-written file"
    assert resume_and_compare(out, straight) == 0.0


@pytest.mark.slow
def test_a_run_killed_at_a_random_moment_resumes_to_the_same_losses(tmp_path, straight):
    """SIGKILL from outside: a random time after a random log line of the run (so that the
    moment falls inside training on any machine speed), then resume."""
    out = fresh(tmp_path, straight)
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    lines, extra = rng.randrange(1, len(losses(straight))), rng.uniform(0, 0.3)
    proc = train(out, wait=False)
    while proc.poll() is None and (not (out / "log.jsonl").exists() or
                                   (out / "log.jsonl").read_text().count("\n") < lines):
        time.sleep(0.01)
    time.sleep(extra)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    saved = checkpoint.load(out / "ckpt.pt") if (out / "ckpt.pt").exists() else None
    print(f"seed {seed}: killed {extra:.2f} s after log line {lines}, rc {proc.returncode}, "
          f"last checkpoint {saved and (saved['stage'], saved['step'])}")
    assert resume_and_compare(out, straight) == 0.0, f"seed {seed}"


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_starts_over_with_a_clean_log(
        tmp_path, straight):
    out = fresh(tmp_path, straight)
    rc, _, _ = train(out, fault="kill-step:2")
    assert rc == -signal.SIGKILL and not (out / "ckpt.pt").exists()
    assert resume_and_compare(out, straight) == 0.0  # no step logged twice, same losses


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    atomic.write_text(target, "old")
    (tmp_path / "summary.json.abc.tmp").write_text("left by a crash")
    with pytest.raises(OSError):
        with atomic.replace(target, "w") as f:
            f.write("half of the new")
            raise OSError("disk full")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_trim_log_drops_what_a_resumed_run_writes_again(tmp_path):
    files = RunFiles(tmp_path)
    records = [{"stage": "vq", "step": 5}, {"stage": "dense", "step": 3},
               {"stage": "dense", "step": 4}, {"stage": "moe", "step": 1}, {"note": "other"}]
    files.log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"stage": "de')
    assert files.trim_log("dense", 3) == 3  # dense 4, moe 1 and the cut-off line
    kept = [json.loads(line) for line in files.log.read_text().splitlines()]
    assert kept == [records[0], records[1], records[4]]


# --- numerical faults ------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["nan-loss:3", "nan-grad:3"])
def test_nonfinite_step_stops_the_run_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch, fault):
    monkeypatch.setenv("MINIMOE_FAULT", fault)
    cfg = micro_config(dense_steps=6, ckpt_every=2)
    model, batcher, tok, files = setup(cfg, tmp_path)
    with pytest.raises(TrainingError, match="dense step 3: .*not finite.*last good checkpoint"):
        fit(model, cfg, files, "dense", 6, batcher, torch.device("cpu"), progress=False)
    assert checkpoint.load(files.ckpt)["step"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skip_drops_exactly_the_poisoned_updates(tmp_path, monkeypatch):
    """Steps 2 and 4 poisoned and skipped: the weights equal those of a run whose optimizer
    never stepped on those two steps, and the count is logged and checkpointed."""
    cfg = micro_config(dense_steps=5, ckpt_every=5, on_nonfinite="skip", max_skips=2)
    monkeypatch.setenv("MINIMOE_FAULT", "nan-loss:2,nan-grad:4")
    model, batcher, tok, files = setup(cfg, tmp_path / "a")
    (tmp_path / "a").mkdir()
    fit(model, cfg, files, "dense", 5, batcher, torch.device("cpu"), progress=False)
    log = [json.loads(line) for line in files.log.read_text().splitlines()]
    assert [r["step"] for r in log if "warning" in r] == [2, 4]
    assert log[-1]["skipped"] == 2 and checkpoint.load(files.ckpt)["skipped"] == 2

    monkeypatch.delenv("MINIMOE_FAULT")
    ref, batcher, tok, files = setup(cfg, tmp_path / "b")
    (tmp_path / "b").mkdir()
    optimizer, calls = make_optimizer(ref, cfg), iter(range(1, 6))
    real_step = optimizer.step
    optimizer.step = lambda: None if next(calls) in (2, 4) else real_step()
    fit(ref, cfg, files, "dense", 5, batcher, torch.device("cpu"), progress=False,
        optimizer=optimizer)
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name


def test_skip_stops_once_over_the_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMOE_FAULT", "nan-loss:2,nan-loss:3")
    cfg = micro_config(dense_steps=5, ckpt_every=1, on_nonfinite="skip", max_skips=1)
    model, batcher, tok, files = setup(cfg, tmp_path)
    with pytest.raises(TrainingError, match="2 steps skipped, over --max-skips 1"):
        fit(model, cfg, files, "dense", 5, batcher, torch.device("cpu"), progress=False)
    assert checkpoint.load(files.ckpt)["step"] == 2  # step 2 was skipped, and saved as such


def test_weights_that_are_not_finite_are_never_saved(tmp_path):
    cfg = micro_config()
    model, _, tok, files = setup(cfg, tmp_path)
    checkpoint.save({"step": 1}, files.ckpt)
    with torch.no_grad():
        next(model.parameters())[0] = float("inf")
    with pytest.raises(TrainingError, match="not finite, so no checkpoint was written"):
        files.save(model, make_optimizer(model, cfg), "dense", 2)
    assert checkpoint.load(files.ckpt)["step"] == 1


# --- router collapse -------------------------------------------------------------------------

def _routing(ids_TK: torch.Tensor, num_experts: int = 8) -> Routing:
    T, K = ids_TK.shape
    return Routing(logits_TE=torch.zeros(T, num_experts), probs_TE=torch.zeros(T, num_experts),
                   expert_ids_TK=ids_TK, kept_TK=torch.ones(T, K, dtype=torch.bool),
                   info=TokenInfo.plain(T, "cpu"))


class _Layers:
    """Just enough of a model for RouterTraining: two MoE layers, no aux-free biases."""
    def moe_layers(self):
        return [(0, None), (1, None)]


def test_router_collapse_is_warned_once_per_layer_after_enough_steps():
    cfg = micro_config(moe="random", num_experts=8, top_k=2)
    trainer = routing.RouterTraining(_Layers(), cfg)
    collapsed = torch.stack([torch.zeros(100, dtype=torch.long),  # expert 0 in every token
                             torch.randint(1, 8, (100,))], 1)
    even = torch.arange(200).view(100, 2) % 8
    warnings = [trainer.after_step([_routing(collapsed), _routing(even)], s)
                for s in range(1, 2 * routing.COLLAPSE_STEPS)]
    fired = [(s, w) for s, ws in enumerate(warnings, 1) for w in ws]
    assert len(fired) == 1 and fired[0][0] == routing.COLLAPSE_STEPS
    assert "MoE layer 0" in fired[0][1] and "100%" in fired[0][1]


def test_a_collapse_that_recovers_in_time_is_not_warned():
    cfg = micro_config(moe="random", num_experts=8, top_k=2)
    trainer = routing.RouterTraining(_Layers(), cfg)
    collapsed = torch.stack([torch.zeros(100, dtype=torch.long), torch.randint(1, 8, (100,))], 1)
    even = torch.arange(200).view(100, 2) % 8
    for s in range(1, 3 * routing.COLLAPSE_STEPS):  # a balanced step every COLLAPSE_STEPS - 1
        ids = even if s % (routing.COLLAPSE_STEPS - 1) == 0 else collapsed
        assert trainer.after_step([_routing(ids), _routing(even)], s) == []


def test_a_collapsed_router_in_training_is_warned_on_the_console_and_in_the_log(
        tmp_path, capsys):
    from test_routing import _moe_run
    steps = routing.COLLAPSE_STEPS + 2
    cfg = micro_config(moe="random", num_experts=4, moe_steps=steps, ckpt_every=steps)
    model, batcher, tok, files = _moe_run(tmp_path, cfg)
    for _, layer in model.moe_layers():
        layer.selection_bias_E[0] = 1e4  # every token's first choice: expert 0
    fit(model, cfg, files, "moe", steps, batcher, torch.device("cpu"), progress=False,
        router=routing.RouterTraining(model, cfg))
    logged = [json.loads(line) for line in files.log.read_text().splitlines()]
    warned = [r for r in logged if "router collapse" in r.get("warning", "")]
    assert [r["step"] for r in warned] == [routing.COLLAPSE_STEPS] * 2  # both layers, once
    assert "warning: router collapse in MoE layer 0" in capsys.readouterr().out


def test_top_shares_counts_tokens_not_padding():
    ids = torch.tensor([[0, 1], [0, 2], [3, 4], [0, 5]])
    r = _routing(ids)
    r.info.valid_T[2] = False  # padding: its experts do not count
    assert routing.top_shares([None, r], 8) == [1.0]


def test_reading_a_log_refuses_a_step_logged_twice(tmp_path):
    log = tmp_path / "log.jsonl"
    records = [{"stage": "dense", "step": 1, "loss": 2.0},
               {"stage": "dense", "step": 2, "loss": 1.5},
               {"stage": "dense", "step": 2, "loss": 1.5}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records[:2]))
    assert list(read_losses(log)) == [("dense", 1), ("dense", 2)]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match=r"\('dense', 2\) twice"):
        read_losses(log)
