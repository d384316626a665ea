"""Pack a data folder (images + captions.jsonl, `--data folder:PATH`) into tar shards for
`--data wds:PATTERN`:

    python -m minimoe.data.pack FOLDER OUT --shard-size 1000
    python train.py --data "wds:OUT/shard-{000000..000012}.tar"    # the pattern it prints

Shard k is OUT/shard-{k:06d}.tar; sample n of the folder (in captions.jsonl's order) is the
members {n:09d}.EXT (the image's bytes as stored; formats other than jpg, png and webp are
written as PNG) and {n:09d}.json ({"caption", "qa", "domain"}). Rows are checked as the folder
source checks them, bad ones reported and left out; texts are not limited here (the run that
reads the shards holds them to its own text budget) and images are not decoded (a damaged one
is reported when a run reads it; only those that must become PNG are decoded here).
"""
from __future__ import annotations

import io
import json
import os
import sys
import warnings
from pathlib import Path

from PIL import Image

from .. import atomic, cli
from .base import NO_TEXT_LIMIT
from .folder import DataWarning, read_rows
from .shards import IMAGE_EXTENSIONS, PREFIX, webdataset

SHARD_STEM, SHARD_DIGITS = "shard-", 6  # shard k is shard-{k:06d}.tar
KEY_DIGITS = 9  # sample keys 000000000 ...: a billion samples sort in order
SHARD_SIZE = 1000  # default samples a shard: about 20 MB of 256 px JPEGs
REENCODED = "png"  # what images of other formats become (lossless)
TAR_MTIME = 0  # members' timestamp: packing the same folder twice gives the same bytes


def image_member(path: str) -> tuple[str, bytes]:
    """(extension, bytes) of an image file as a shard holds it."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext in IMAGE_EXTENSIONS:
        return ext, Path(path).read_bytes()
    buffer = io.BytesIO()
    with Image.open(path) as im:
        im.save(buffer, format=REENCODED)
    return REENCODED, buffer.getvalue()


def shard_name(k: int) -> str:
    return f"{SHARD_STEM}{k:0{SHARD_DIGITS}d}.tar"


def shard_pattern(out: str, n_shards: int) -> str:
    """The brace pattern that names shards 0 .. n_shards - 1 in `out`."""
    if n_shards == 1:
        return os.path.join(out, shard_name(0))
    last = f"{n_shards - 1:0{SHARD_DIGITS}d}"
    return os.path.join(out, f"{SHARD_STEM}{{{0:0{SHARD_DIGITS}d}..{last}}}.tar")


def pack(folder: str, out: str, shard_size: int = SHARD_SIZE) -> str:
    """Write the folder's usable rows into shards in `out`; returns their pattern."""
    if shard_size < 1:
        raise ValueError(f"--shard-size {shard_size} must be >= 1")
    if os.path.isdir(out) and any(Path(out).glob(f"{SHARD_STEM}*.tar")):
        raise ValueError(f"{out} already holds shards; pack into an empty folder")
    rows = read_rows(folder, NO_TEXT_LIMIT)
    if not rows:
        raise ValueError(f"{folder}: no usable rows to pack")
    wds = webdataset()
    n_shards = (len(rows) + shard_size - 1) // shard_size
    for k in range(n_shards):
        with atomic.replace(os.path.join(out, shard_name(k))) as f:
            writer = wds.TarWriter(f, encoder=False, mtime=TAR_MTIME)
            for n in range(k * shard_size, min((k + 1) * shard_size, len(rows))):
                row = rows[n]
                path = os.path.join(folder, row.file)
                try:
                    ext, image = image_member(path)
                except Exception as e:  # PIL raises many types for a file it cannot read
                    warnings.warn(f"{path}: cannot decode image ({type(e).__name__}: {e}); "
                                  f"skipped", DataWarning)
                    continue
                text = {"caption": row.caption, "qa": [list(p) for p in row.qa],
                        "domain": row.domain}
                writer.write({"__key__": f"{n:0{KEY_DIGITS}d}", ext: image,
                              "json": json.dumps(text).encode("utf-8")})
            writer.close()
    print(f"packed {len(rows)} samples of {folder} into {n_shards} shards in {out}")
    return shard_pattern(out, n_shards)


def main(argv=None) -> str:
    parser = cli.ArgumentParser(prog="python -m minimoe.data.pack",
                                description=cli.about(__doc__))
    parser.add_argument("folder", help="a data folder: images and captions.jsonl")
    parser.add_argument("out", help="where the shards go (a new or empty folder)")
    parser.add_argument("--shard-size", type=int, default=SHARD_SIZE,
                        help=f"samples a shard (default {SHARD_SIZE})")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    with cli.user_errors(args.debug):
        pattern = pack(args.folder, args.out, args.shard_size)
        print(f"train from them with: --data '{PREFIX}{pattern}'")
        return pattern


if __name__ == "__main__":
    main(sys.argv[1:])
