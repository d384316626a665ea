"""Files that are never half-written: everything minimoe writes goes through `replace`.

The content goes to a temporary file in the target's folder, is fsynced, and is renamed over
the target, so a crash at any moment leaves either the old complete file or the new complete
one (plus, at worst, a half-written temporary file, which the next write of that target
removes). The folder is fsynced too, so that the rename itself survives a power cut.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def replace(path: str | Path, mode: str = "wb"):
    """`with replace(path) as f:` writes f's content to `path` in one step, when the block
    completes; if it raises, `path` keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(path.name + ".*.tmp"):  # left by a crash mid-write
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text(path: str | Path, text: str) -> None:
    with replace(path, "w") as f:
        f.write(text)


def save_png(image, path: str | Path) -> None:
    """A PIL image as PNG."""
    with replace(path) as f:
        image.save(f, format="PNG")
