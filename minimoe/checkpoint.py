"""Checkpoints that are never half-written, and loading that says what went wrong.

`save` writes through `atomic.replace`: a crash at any moment leaves either the old complete
file or the new complete one. `load` turns every way a file can be unusable (missing,
truncated, not a torch file, not ours) into a `CheckpointError` with one line saying what to
do.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import atomic, faults
from .cli import UserError
from .config import Config
from .tokenizers import Vocab

FORMAT = "minimoe-checkpoint"  # marks files written by `save`, so foreign .pt files are refused
VERSION = 2  # the layout of the payload and of its state dicts that this code reads


class CheckpointError(UserError):
    """A checkpoint file that cannot be used, with what to do about it."""


def save(payload: dict, path: str | Path) -> None:
    with atomic.replace(path) as f:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
        if faults.fires("kill-save", payload.get("step", -1)):
            f.flush()
            f.truncate(f.tell() // 2)  # what a crash mid-write leaves behind
            faults.kill()


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or train first "
                              f"(python train.py --out {path.parent})")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated/garbled files
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}); "
                              f"delete it and resume from an earlier one, or retrain") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a minimoe checkpoint; pass a ckpt.pt written by "
                              f"train.py")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')}, this code "
                              f"reads version {VERSION}; retrain or use a matching minimoe")
    return payload


def vocab_of(payload: dict, cfg: Config) -> Vocab:
    """The joint vocabulary a checkpoint or vq.pt was made with (its BPE merges, if any)."""
    return Vocab(cfg.vq.vq_codes, cfg.data.text_vocab,
                 tuple(tuple(m) for m in payload.get("merges", ())))
