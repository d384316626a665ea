"""What has the model learnt each word of a caption to mean for the image it draws?

    python experiments/words.py --ckpt out/moe-taylor/dense.pt [--ckpt NAME=PATH ...]  # a minute
    python experiments/words.py --smoke                      # an untrained micro model (CI)

Single-object scenes of the shapes domain ("a small red circle") are encoded by each run's
tokenizer and most of their codes masked, as in a T2I training row. The model's cross-entropy
on the masked codes is measured with the true caption, with one word swapped for another value
(the shape, the colour or the size), and with the empty caption. What swapping a word costs is
what the model has learnt that word to tell about the codes; codes are split into object
patches (a pixel of the patch is lit) and background patches, since a scene is mostly
background. For scale: a single-object scene is fixed by its caption and the object's centre,
so a perfect model needs at most log(number of centres) nats for the whole grid, however many
codes are masked. Writes docs/experiments/words.{md,json}.
"""
import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import write_measured

from minimoe import cli, config, inference
from minimoe.build import build_model
from minimoe.data import COLOURS, SHAPES, SIZES, random_shape_objects, render_shapes, \
    shapes_caption
from minimoe.data.shapes import EDGE_MARGIN
from minimoe.inference import Session
from minimoe.sequences import t2i_row
from minimoe.tokenizers import ImageTokenizer, images_to_tensor
from minimoe.vq import VQModel

SCENES = 200  # held-out single-object scenes (drawn from their own seed, not the data stream)
MASKED = (0.9, 0.5)  # shares of the codes masked: the start of sampling, and half-way
WORDS = {"shape": list(SHAPES), "colour": list(COLOURS), "size": list(SIZES)}
LIT = 60  # a pixel brighter than this (max channel) is part of an object (the checker's rule)


def object_patches(images, downsample: int) -> torch.Tensor:
    """[B, N] bool: the patch behind each code has a lit pixel."""
    x = images_to_tensor(images).amax(1)  # [B, H, W] brightest channel in [0, 1]
    B, H, W = x.shape
    patches = x.view(B, H // downsample, downsample, W // downsample, downsample)
    return (patches.amax((2, 4)) > LIT / 255).flatten(1)


def swapped(obj: dict, word: str, rng: np.random.Generator) -> dict:
    others = [v for v in WORDS[word] if v != obj[word]]
    return {**obj, word: others[rng.integers(len(others))]}


@torch.no_grad()
def masked_ce(session: Session, captions: list[str], codes_BN, masked_BN) -> torch.Tensor:
    """[B, N] cross-entropy of each code given its caption and the unmasked codes."""
    v, text_len = session.vocab, session.text_len
    rows = [t2i_row(session.caption_ids(c), (row + v.image_offset).tolist(), v, text_len)
            for c, row in zip(captions, codes_BN)]
    tokens, groups = (torch.tensor([r[i] for r in rows]) for i in range(2))
    start, N = text_len + 1, codes_BN.shape[1]
    tokens[:, start:start + N] = torch.where(masked_BN, v.mask, tokens[:, start:start + N])
    logits = session.model(tokens, groups).logits_BLV[:, start:start + N,
                                                      v.image_offset:v.image_offset + v.codes]
    return F.cross_entropy(logits.flatten(0, 1).float(), codes_BN.flatten(),
                           reduction="none").view_as(codes_BN)


def measure(session: Session, tok: ImageTokenizer, cfg, scenes: int, seed: int = 0) -> dict:
    """Mean cross-entropy (nats) on masked object and background codes, per caption variant
    and masked share."""
    rng = np.random.default_rng(seed)
    size = cfg.data.image_size
    objects = [random_shape_objects(rng, size, 1)[0] for _ in range(scenes)]
    images = [render_shapes([o], size) for o in objects]
    codes = tok.encode(images).cpu()
    lit = object_patches(images, cfg.vq.vq_downsample)
    captions = {"true": [shapes_caption([o]) for o in objects],
                **{f"other {w}": [shapes_caption([swapped(o, w, rng)]) for o in objects]
                   for w in WORDS},
                "empty": [""] * scenes}
    gen = torch.Generator().manual_seed(seed)
    result = {}
    for share in MASKED:
        masked = torch.rand(codes.shape, generator=gen) < share
        result[str(share)] = {}
        for name, caps in captions.items():
            ce = masked_ce(session, caps, codes, masked)
            result[str(share)][name] = {"object": round(ce[masked & lit].mean().item(), 4),
                                        "background": round(ce[masked & ~lit].mean().item(), 4)}
    return result


def centre_range(image_size: int, r: float) -> tuple[int, int]:
    """The first and last pixel a centre of an object of half-extent r can sit on, along
    either axis (shapes.py's placement rule)."""
    margin = EDGE_MARGIN * image_size
    return math.ceil(margin + r - 0.5), math.floor(image_size - margin - r - 0.5)


def centres(image_size: int, r: float) -> int:
    lo, hi = centre_range(image_size, r)
    return (hi - lo + 1) ** 2


def markdown(results: dict, size: int) -> str:
    header = ["run", "masked", "object codes, true caption", *[f"+ other {w}" for w in WORDS],
              "+ empty caption", "background codes, true caption", "+ empty caption"]
    rows = []
    for run, by_share in results.items():
        for share, ce in by_share.items():
            true = ce["true"]["object"]
            rows.append([run, f"{100 * float(share):.0f} %", f"{true:.3f}",
                         *[f"{ce['other ' + w]['object'] - true:+.3f}" for w in WORDS],
                         f"{ce['empty']['object'] - true:+.3f}",
                         f"{ce['true']['background']:.3f}",
                         f"{ce['empty']['background'] - ce['true']['background']:+.3f}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    bound = max(math.log(centres(size, f * size)) for f in SIZES.values())
    return ("## What a caption's words are worth to the codes (mean nats a masked code; "
            "+: the rise when the word is swapped)\n\n" + "\n".join(lines) +
            f"\n\nA perfect model needs at most {bound:.1f} nats for a whole {size}-pixel "
            "single-object scene given its caption (the log of the number of centres), "
            "whatever share of its codes is masked.")


def named(spec: str) -> tuple[str, str]:
    """"NAME=PATH" -> (NAME, PATH); a bare path names itself."""
    name, sep, path = spec.partition("=")
    return (name, path) if sep and "/" not in name else (spec, spec)


def main() -> None:
    p = argparse.ArgumentParser(description=cli.about(__doc__))
    p.add_argument("--ckpt", action="append", default=[],
                   help="a model checkpoint, or NAME=PATH to name its table rows; repeat")
    p.add_argument("--scenes", type=int, default=SCENES)
    p.add_argument("--smoke", action="store_true", help="an untrained micro model, 8 scenes")
    p.add_argument("--docs", default="docs/experiments")
    cli.add_debug_flag(p)
    args = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    results, size = {}, None
    if args.smoke:
        torch.manual_seed(0)
        cfg = config.make_config(image_size=16, vq_codes=16, vq_dim=8, vq_channels=16,
                                 d_model=32, n_layers=2, n_heads=2, d_ffn=64,
                                 text_len=48)  # byte captions: no merges are learnt here
        model, vocab = build_model(cfg)
        session, tok = Session(cfg, model, vocab), ImageTokenizer(VQModel(cfg.vq).eval(), cfg.vq)
        results["untrained"], size = measure(session, tok, cfg, 8), cfg.data.image_size
    elif not args.ckpt:
        p.error("give --ckpt RUN/ckpt.pt (repeat to compare runs), or --smoke")
    with cli.user_errors(args.debug):  # a missing or corrupt checkpoint: one line, exit 2
        for spec in args.ckpt:
            name, path = named(spec)
            cfg, session, tok = inference.load(path, "cpu")
            results[name], size = measure(session, tok, cfg, args.scenes), cfg.data.image_size
    write_measured(Path(args.docs), "words", markdown(results, size), results)


if __name__ == "__main__":
    main()
