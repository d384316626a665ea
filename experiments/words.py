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
codes are masked. A second table: single objects drawn for every one-object caption (DRAWS
samples each), the share in which the checker finds the asked-for shape, per shape and per
caption split (seen in training, or held out: the GenEval prompts come from the held-out
ones), which tells drawing a shape apart from composing an unseen caption. Beside the
tables, a picture: the same validation prompts of single objects drawn by each model (its
own sampler settings), with the checker's verdicts. Writes docs/experiments/words.{md,json}
and words_samples.png.
"""
import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import drawn_with_verdicts, measured_models, measuring_parser, table, \
    write_measured

from minimoe import atomic, cli, evaluation, geneval, inference
from minimoe.data import COLOURS, SHAPES, SIZES, random_shape_objects, render_shapes, \
    sample_key, shapes_caption, split_of
from minimoe.data.shapes import EDGE_MARGIN
from minimoe.inference import Session
from minimoe.plots import image_grid
from minimoe.sequences import t2i_row
from minimoe.tokenizers import ImageTokenizer, images_to_tensor

SCENES = 200  # held-out single-object scenes (drawn from their own seed, not the data stream)
MASKED = (0.9, 0.5)  # shares of the codes masked: the start of sampling, and half-way
WORDS = {"shape": list(SHAPES), "colour": list(COLOURS), "size": list(SIZES)}
LIT = 60  # a pixel brighter than this (max channel) is part of an object (the checker's rule)
SAMPLE_PROMPTS = 8  # validation prompts of single objects each model draws in the picture
DRAWS = 10  # samples of every one-object caption in the per-shape table


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


def one_object_prompts() -> list:
    """Every one-object caption ("a small red circle"), as a single-object GenEval prompt."""
    return [geneval.Prompt(f"a {size} {colour} {shape}", "single_object",
                           [{"shape": shape, "colour": colour, "size": size}])
            for size in SIZES for colour in COLOURS for shape in SHAPES]


def caption_split(caption: str) -> str:
    return split_of(sample_key("shapes", caption))


def per_shape(session: Session, tok: ImageTokenizer, draws: int) -> dict:
    """{shape: {split: share of samples with the asked-for shape}} over every one-object
    caption, `draws` samples each."""
    prompts = one_object_prompts()
    images = inference.generate(session, tok, [p.caption for p in prompts for _ in range(draws)],
                                seed=0)
    verdicts: dict[str, dict[str, list[bool]]] = {}
    for i, p in enumerate(prompts):
        for image in images[i * draws:(i + 1) * draws]:
            of_split = verdicts.setdefault(p.objects[0]["shape"], {}).setdefault(
                caption_split(p.caption), [])
            of_split.append(geneval.check(p, geneval.find_objects(image)))
    return {shape: {split: round(sum(v) / len(v), 4) for split, v in by_split.items()}
            for shape, by_split in verdicts.items()}


def shapes_markdown(results: dict, draws: int) -> str:
    prompts = one_object_prompts()
    held = Counter(p.objects[0]["shape"] for p in prompts if caption_split(p.caption) == "heldout")
    header = ["run"] + [f"{shape}, {split}" for shape in SHAPES for split in ("seen", "held out")]
    rows = [[run] + [f"{100 * r['shapes'][shape].get(split, float('nan')):.0f} %"
                     for shape in SHAPES for split in ("train", "heldout")]
            for run, r in results.items()]
    counts = ", ".join(f"{shape} {held[shape]}" for shape in SHAPES)
    return ("## Single objects drawn with the asked-for shape, captions seen in training or "
            f"held out ({draws} samples a caption)\n\n" + table(header, rows) +
            f"\n\nHeld-out one-object captions ({sum(held.values())} of "
            f"{len(prompts)}, {len(prompts) // len(SHAPES)} a shape): "
            f"{counts}; a cell holds its captions times {draws} samples. A blob is read as a "
            "circle, so circles pass more often than they are drawn.")


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
    for run, r in results.items():
        for share, ce in r["masked"].items():
            true = ce["true"]["object"]
            rows.append([run, f"{100 * float(share):.0f} %", f"{true:.3f}",
                         *[f"{ce['other ' + w]['object'] - true:+.3f}" for w in WORDS],
                         f"{ce['empty']['object'] - true:+.3f}",
                         f"{ce['true']['background']:.3f}",
                         f"{ce['empty']['background'] - ce['true']['background']:+.3f}"])
    bound = max(math.log(centres(size, f * size)) for f in SIZES.values())
    return ("## What a caption's words are worth to the codes (mean nats a masked code; "
            "+: the rise when the word is swapped)\n\n" + table(header, rows) +
            f"\n\nA perfect model needs at most {bound:.1f} nats for a whole {size}-pixel "
            "single-object scene given its caption (the log of the number of centres), "
            "whatever share of its codes is masked.")


def main() -> None:
    p = measuring_parser(__doc__, "an untrained micro model, 8 scenes")
    p.add_argument("--scenes", type=int, default=SCENES,
                   help="single-object scenes of the cross-entropy table")
    p.add_argument("--draws", type=int, default=DRAWS,
                   help="samples of every one-object caption in the per-shape table")
    args = p.parse_args()
    if args.scenes < 1 or args.draws < 1:
        p.error(f"--scenes {args.scenes} and --draws {args.draws}: each needs at least 1")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    results, size, images, labels = {}, None, [], []
    with cli.user_errors(args.debug):  # a missing or corrupt checkpoint: one line, exit 2
        # byte captions in the micro model: no merges are learnt there
        for name, micro, cfg, session, tok in measured_models(p, args, text_len=48):
            results[name] = {"masked": measure(session, tok, cfg, 8 if micro else args.scenes),
                             "shapes": per_shape(session, tok, args.draws)}
            size = cfg.data.image_size
            prompts = [q for q in geneval.prompt_set(size, SAMPLE_PROMPTS,
                                                     evaluation.VALIDATION_SEED)
                       if q.category == "single_object"]
            drawn, named_verdicts = drawn_with_verdicts(name, session, tok, prompts)
            images.extend(drawn)
            labels.extend(named_verdicts)
    write_measured(Path(args.docs), "words", markdown(results, size) + "\n\n" +
                   shapes_markdown(results, args.draws) +
                   "\n\n![the same prompts drawn by each model](words_samples.png)", results)
    atomic.save_png(image_grid(images, labels, cols=SAMPLE_PROMPTS),
                    Path(args.docs) / "words_samples.png")


if __name__ == "__main__":
    main()
