"""A golden loss curve: 12 steps of a micro run must reproduce tests/assets/golden_losses.json,
so that a silent change to data, masking, the model or the optimizer shows up in CI.

If a change is meant to move the curve, regenerate the file and commit it with the change:
    MINIMOE_UPDATE_GOLDEN=1 pytest -q tests/test_golden.py
Run: pytest -q tests/test_golden.py"""
import json
import os
from pathlib import Path

import pytest
import torch

from minimoe.batches import Batcher
from minimoe.build import build_model
from minimoe.data import BuiltinData
from minimoe.run import RunWriter
from minimoe.tokenizers import ImageTokenizer
from minimoe.trainer import fit
from minimoe.vq import VQModel
from conftest import micro_config

GOLDEN = Path(__file__).parent / "assets" / "golden_losses.json"
STEPS = 12
# Loose enough for other CPUs' float kernels, tight enough for any change of the computation.
RTOL = 2e-3


def micro_curve(tmp_path) -> list[dict]:
    cfg = micro_config(dense_steps=STEPS, ckpt_every=STEPS, domains="shapes,glyphs,patterns")
    torch.manual_seed(0)
    tok = ImageTokenizer(VQModel(cfg.vq), cfg.vq)
    torch.manual_seed(cfg.train.seed)
    model, vocab = build_model(cfg)
    source = BuiltinData(cfg.data.image_size, cfg.data.domains, "train", seed=0)
    records = fit(model, cfg, RunWriter(tmp_path, cfg, tok, vocab), "dense", STEPS,
                  Batcher(cfg, source, vocab, tok), torch.device("cpu"), progress=False)
    return [{k: r[k] for k in ("step", "loss", "t2i", "mmu", "lm")} for r in records]


def test_loss_curve_matches_the_golden_one(tmp_path):
    curve = micro_curve(tmp_path)
    if os.environ.get("MINIMOE_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(curve, indent=1) + "\n")
        pytest.skip(f"rewrote {GOLDEN}")
    golden = json.loads(GOLDEN.read_text())
    assert [r["step"] for r in curve] == [r["step"] for r in golden]
    for got, want in zip(curve, golden):
        for key in ("loss", "t2i", "mmu", "lm"):
            assert got[key] == pytest.approx(want[key], rel=RTOL), (got["step"], key)
