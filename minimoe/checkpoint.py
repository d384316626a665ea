"""Checkpoints that are never half-written, and loading that says what went wrong.

`save` writes to a temporary file in the same folder, fsyncs it and renames it over the target:
a crash at any moment leaves either the old complete file or the new complete file (plus, at
worst, a half-written temporary file, which the next save of that target removes). `load`
turns every way a file can be unusable (missing, truncated, not a torch file, not ours) into a
`CheckpointError` with one line saying what to do.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from . import faults

FORMAT = "minimoe-checkpoint"  # marks files written by `save`, so foreign .pt files are refused
VERSION = 1


class CheckpointError(RuntimeError):
    pass


def save(payload: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(path.name + ".*.tmp"):  # left by a crash mid-write
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            if faults.fires("kill-save", payload.get("step", -1)):
                f.truncate(f.tell() // 2)  # what a crash mid-write leaves behind
                faults.kill()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # fsync the folder too, so that the rename itself survives a power cut.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
