"""Encode a dataset once with a trained image tokenizer into shards of codes (--data codes:DIR).

Training from them reads each image's codes and never runs the VQ encoder.

    python -m minimoe.pretokenize --ckpt out/dense/vq.pt --data folder:/data/mine --out codes/mine
    python -m minimoe.pretokenize --ckpt out/dense/vq.pt --data builtin --samples 64000 \\
        --out codes/builtin
    python train.py --data codes:codes/mine --out out/mine

Both splits are written, train and held-out. A folder is read whole, or its first --samples /
--heldout-samples; the endless sources (builtin, and wds: shards, read as a stream of epochs)
need --samples, and their held-out split gets --heldout-samples (default: as many as the split
rule's 10 % share would give, at least 1024). DIR receives a copy of the tokenizer as vq.pt
and a manifest.json with the tokenizer's fields and a hash of its weights; the format is in
minimoe/data/codes.py.
"""
from __future__ import annotations

import itertools
import os
import sys

from tqdm import tqdm

from . import checkpoint, cli, config
from .data import SPLITS, open_source
from .data.base import HELDOUT_FRACTION
from .data.codes import (MANIFEST, PREFIX, SHARD_SAMPLES, TOKENIZER_FILE, ShardWriter,
                         vq_fingerprint, write_manifest)
from .run import VQ_IDENTITY, evaluate_tokenizer
from .tokenizers import ImageTokenizer
from .vq import VQModel

ENCODE_BATCH = 256  # images per encoder call
# Held-out samples of a source without an end, at least: a run's held-out batches (routing
# reads 8 of the small preset's 96 samples) then never wrap around to repeat samples.
MIN_HELDOUT = 1024


def split_size(source, split: str, samples: int | None, heldout_samples: int | None,
               spec: str) -> int:
    """How many samples of `split` to encode: a finite source whole (or capped by the flag);
    a source without an end (builtin, wds) exactly as many as asked."""
    asked = samples if split == "train" else heldout_samples
    if split != "train" and asked is None and samples is not None:
        asked = max(MIN_HELDOUT, round(samples * HELDOUT_FRACTION / (1 - HELDOUT_FRACTION)))
    if hasattr(source, "__len__"):
        return len(source) if asked is None else min(asked, len(source))
    if asked is None:
        raise cli.UserError(f"--data {spec} has no end: pass --samples N, the training samples "
                            f"to encode")
    return asked


def _samples(source, n: int):
    if hasattr(source, "__getitem__"):
        return (source[i] for i in range(n))
    return itertools.islice(iter(source), n)


def encode_split(source, n: int, image_tok: ImageTokenizer, writer: ShardWriter, grid,
                 batch: int, progress: bool, desc: str) -> int:
    """Encode the first n samples of `source` into `writer`; returns how many were written.
    A finite source hands a bad image over to its next row, so a key met twice is written
    once."""
    finite, seen, pending, written = hasattr(source, "__len__"), set(), [], 0

    def flush():
        codes = image_tok.encode([s.image for s in pending]).view(len(pending), *grid)
        writer.add(codes, pending)
        pending.clear()

    for s in tqdm(_samples(source, n), total=n, desc=desc, unit="img", disable=not progress):
        if finite and s.key in seen:
            continue
        seen.add(s.key)
        pending.append(s)
        written += 1
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    return written


def pretokenize(payload: dict, cfg: config.Config, out: str, samples: int | None = None,
                heldout_samples: int | None = None, shard_size: int = SHARD_SAMPLES,
                batch: int = ENCODE_BATCH, device="cpu", progress: bool = True) -> dict:
    """Encode both splits of cfg's --data (with its --seed and --domains) by the tokenizer in
    `payload` (a vq.pt or ckpt.pt payload whose config is `cfg`'s but for the data) into `out`;
    returns the manifest."""
    vq = VQModel(cfg.vq).to(device)
    vq.load_state_dict(payload["vq"])
    image_tok = ImageTokenizer(vq, cfg.vq)
    side = cfg.data.image_size // cfg.vq.vq_downsample
    flat = config.flat(cfg)
    splits = {}
    for split in SPLITS:
        source = open_source(cfg, split, None)  # every row: the run that trains sets the limit
        writer = ShardWriter(out, split, shard_size, cfg.vq.vq_codes)
        n = split_size(source, split, samples, heldout_samples, cfg.data.data)
        encode_split(source, n, image_tok, writer, (side, side), batch, progress,
                     f"encoding {split}")
        splits[split] = writer.close()
    report = payload.get("report") or evaluate_tokenizer(vq, cfg, device)
    checkpoint.save({"config": payload["config"], "vq": payload["vq"], "report": report,
                     "merges": payload.get("merges", [])}, os.path.join(out, TOKENIZER_FILE))
    manifest = {"source": cfg.data.data, "seed": cfg.train.seed, "domains": cfg.data.domains,
                "tokenizer": {**{name: flat[name] for name in VQ_IDENTITY},
                              "vq_sha256": vq_fingerprint(payload["vq"])},
                "grid": [side, side], "splits": splits}
    write_manifest(out, manifest)  # last: a folder without it is unfinished
    return manifest


def main(argv=None) -> dict:
    parser = cli.ArgumentParser(description=cli.about(__doc__))
    parser.add_argument("--ckpt", required=True,
                        help="the tokenizer: a run's vq.pt (or its ckpt.pt)")
    parser.add_argument("--data", required=True,
                        help="the source to encode: builtin, folder:PATH or wds:PATTERN")
    parser.add_argument("--out", required=True,
                        help="the codes folder to write; train with --data codes:OUT")
    parser.add_argument("--samples", type=int, default=None,
                        help="training samples to encode (needed for builtin and wds; default: "
                             "all)")
    parser.add_argument("--heldout-samples", type=int, default=None,
                        help="held-out samples to encode (default: all of a finite source; "
                             f"for builtin and wds a ninth of --samples, at least {MIN_HELDOUT})")
    parser.add_argument("--shard-size", type=int, default=SHARD_SAMPLES,
                        help="samples a shard file holds")
    parser.add_argument("--batch", type=int, default=ENCODE_BATCH, help="images per encoder call")
    parser.add_argument("--seed", type=int, default=None,
                        help="the source's seed (default: the tokenizer run's --seed)")
    parser.add_argument("--domains", default=None,
                        help="built-in domains to mix (default: the tokenizer run's)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    with cli.user_errors(args.debug):
        return pretokenize_args(args)


def pretokenize_args(args) -> dict:
    for name in ("samples", "heldout_samples", "shard_size", "batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise cli.UserError(f"--{name.replace('_', '-')} {value} must be >= 1")
    if args.data.startswith(PREFIX):
        raise cli.UserError(f"--data {args.data} is codes already; pass the source they were "
                            f"made from (builtin, folder:PATH or wds:PATTERN)")
    if os.path.exists(os.path.join(args.out, MANIFEST)):
        raise cli.UserError(f"{args.out} already holds codes ({MANIFEST}); pick another --out "
                            f"or delete it")
    payload = checkpoint.load(args.ckpt)
    if "vq" not in payload:
        raise cli.UserError(f"{args.ckpt} holds no image tokenizer; pass a run's vq.pt")
    saved = config.from_dict(payload["config"])
    cfg = config.make_config(saved.preset, **{
        **config.flat(saved), "data": args.data,
        "seed": saved.train.seed if args.seed is None else args.seed,
        "domains": args.domains or saved.data.domains})
    device = cli.pick_device(args.device)
    manifest = pretokenize(payload, cfg, args.out, args.samples, args.heldout_samples,
                           args.shard_size, args.batch, device, not args.no_progress)
    counts = {s: sum(x["samples"] for x in manifest["splits"][s]) for s in SPLITS}
    shards = sum(len(v) for v in manifest["splits"].values())
    print(f"{args.out}: {counts['train']} train and {counts['heldout']} held-out samples in "
          f"{shards} shards of {manifest['grid'][0]}x{manifest['grid'][1]} codes; train with "
          f"--data {PREFIX}{args.out}")
    return manifest


if __name__ == "__main__":
    main(sys.argv[1:])
