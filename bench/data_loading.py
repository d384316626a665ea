"""Samples a second that each data source hands to training: a folder of images, the same
images packed into tar shards, each loaded in the training process and in 2 and 4 worker
processes (`--workers`), and pre-tokenised codes, at 32 px (PNG, as the built-in data) and
256 px (JPEG, as photos are stored).

    python bench/data_loading.py                          # 2000 images a size, both sizes
    python bench/data_loading.py --workers 0,2,4,8 --steps 60 --samples 4000
    python bench/data_loading.py --sizes 256 --keep /tmp/loading   # keep the generated data

The data is generated first, untimed, in a temporary folder: --samples built-in images
rendered at the size, their captions and questions as captions.jsonl, the folder packed into
shards of --shard-size (python -m minimoe.data.pack), and for the codes row the folder encoded
by an untrained tokenizer (python -m minimoe.pretokenize; its speed does not depend on the
weights). A timed step is what `batches.Batcher` asks of its source for one step of the tiny
preset (32 samples: read, decoded, scaled and cropped), through `loading.Prefetcher` as
training runs it; the VQ encoder and the model are not run. The first --warmup steps are not
timed (they start the workers and fill the shards' shuffle buffer). Measure on an otherwise
idle machine: the workers need cores of their own.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minimoe import config  # noqa: E402
from minimoe.cli import about  # noqa: E402
from minimoe.batches import StepSamples  # noqa: E402
from minimoe.data import load_source  # noqa: E402
from minimoe.data.base import HELDOUT_FRACTION  # noqa: E402
from minimoe.data.pack import pack  # noqa: E402
from minimoe.loading import Prefetcher  # noqa: E402
from minimoe.pretokenize import pretokenize  # noqa: E402
from minimoe.vq import VQModel  # noqa: E402

SIZES = "32,256"  # image sizes (px) to generate and read at
STORED = {32: "png", 256: "jpg"}  # how each size is stored; other sizes: jpg
JPEG_QUALITY = 90  # about what image-caption datasets store
PATCH = {32: 4}  # pixels a code of the codes row's tokenizer covers; other sizes: 16
DEFAULT_PATCH = 16
NO_REPORT = {"psnr": 0.0, "perplexity": 0.0, "used_fraction": 0.0}  # untrained tokenizer


def generate_folder(folder: Path, size: int, n: int) -> None:
    """A data folder of n built-in images rendered at `size`, stored as STORED[size]."""
    source = load_source("builtin", size, "train")
    ext = STORED.get(size, "jpg")
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        s = source[i]
        s.image.save(folder / f"{i}.{ext}", quality=JPEG_QUALITY)
        rows.append({"file": f"{i}.{ext}", "caption": s.caption, "qa": s.qa,
                     "domain": s.domain})
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_codes(folder: Path, out: Path, size: int) -> str:
    """The folder encoded by an untrained tokenizer into a codes folder; its --data spec."""
    cfg = config.make_config(image_size=size, vq_downsample=PATCH.get(size, DEFAULT_PATCH),
                             text_vocab=256, data=f"folder:{folder}")
    torch.manual_seed(0)
    payload = {"config": config.to_dict(cfg), "vq": VQModel(cfg.vq).state_dict(),
               "report": NO_REPORT, "merges": []}
    pretokenize(payload, cfg, str(out), progress=False)
    return f"codes:{out}"


def samples_per_s(spec: str, size: int, workers: int, steps: int, warmup: int,
                  per_step: int) -> float:
    source = load_source(spec, size, "train")
    load = Prefetcher(StepSamples(source, per_step, 0, 0, 1), workers)
    for step in range(warmup):
        load(step)
    t0 = time.perf_counter()
    for step in range(warmup, warmup + steps):
        load(step)
    return steps * per_step / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=about(__doc__))
    p.add_argument("--sizes", default=SIZES, help="image sizes (px), comma-separated")
    p.add_argument("--samples", type=int, default=2000, help="generated images a size")
    p.add_argument("--shard-size", type=int, default=100, help="samples a shard")
    p.add_argument("--workers", default="0,2,4", help="worker counts to time")
    p.add_argument("--steps", type=int, default=30, help="timed steps a row")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--keep", default=None, help="generate the data here and keep it")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t = config.make_config().train
    per_step = t.batch_t2i + t.batch_mmu + t.batch_lm
    needed = (args.warmup + args.steps) * per_step
    if needed > args.samples * (1 - HELDOUT_FRACTION):  # the train split reads about 90 %
        sys.exit(f"error: {args.warmup + args.steps} steps of {per_step} samples need --samples "
                 f"{round(needed / (1 - HELDOUT_FRACTION))} or more (no epoch read twice)")
    sizes = [int(s) for s in args.sizes.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        specs = {}  # (source name, size) -> --data spec
        for size in sizes:
            folder = root / f"folder{size}"
            generate_folder(folder, size, args.samples)
            specs["folder", size] = f"folder:{folder}"
            specs["shards", size] = "wds:" + pack(str(folder), str(root / f"shards{size}"),
                                                  args.shard_size)
            specs["codes", size] = make_codes(folder, root / f"codes{size}", size)
        rows = [(name, w) for name in ("folder", "shards", "codes") for w in workers]
        table = {row: [samples_per_s(specs[row[0], size], size, row[1], args.steps,
                                     args.warmup, per_step) for size in sizes]
                 for row in rows}
    print(f"# {os.cpu_count()} CPUs, {args.threads} torch threads, torch {torch.__version__}; "
          f"{args.steps} steps of {per_step} samples after {args.warmup}; "
          f"{args.samples} images a size, shards of {args.shard_size}")
    print("| source | workers | " + " | ".join(f"{s} px ({STORED.get(s, 'jpg')}) samples/s"
                                              for s in sizes) + " |")
    print("|---|---|" + "---|" * len(sizes))
    for (name, w), rates in table.items():
        print(f"| {name} | {w} | " + " | ".join(f"{r:,.0f}" for r in rates) + " |")


if __name__ == "__main__":
    main()
