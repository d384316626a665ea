"""Can the tiny transformer read a shape, or where two objects lie, from its image codes when
that is all it is taught?

    python experiments/reading.py --vq out/moe-taylor/vq.pt     # about 4 min on 2 cores
    python experiments/reading.py --vq out/moe-taylor/vq.pt --task position   # about 6 min
    python experiments/reading.py --vq out/moe-taylor/vq.pt --task position \
        --image-pos rotary2d,rotary2d+learned,learned   # one transformer reader a mode
    python experiments/reading.py --smoke                       # an untrained micro tokenizer (CI)

Scenes of the shapes domain are encoded by a run's tokenizer, and readers learn from the code
grid alone, on the same examples, scored on held-out scenes every few steps.
- `--task shape`: the shape of a single object (circle, square, triangle or cross), by
  the project's transformer at the run's sizes, reading the MMU prefix [mmu] [soi] codes
  [eoi] [sot] and answering at the last position (the layout of an MMU question), and by a
  reference: two 3x3 convolutions over learnt code embeddings, then a max over the grid.
  In the full pipeline a shape question is about 2 % of the MMU rows, so the dense stage sees
  a few thousand of them.
- `--task position`: two objects of different colours; the question names the two colours
  (one text id each) and the answer is where the first lies relative to the second (left
  of, right of, above, below: the relation the captions and position questions use). Only
  the transformer reads it (a max over the grid forgets where things are). The dense stage
  asks a few hundred position questions.
`--image-pos` lists the ways the transformer readers are told a code's grid slot (the run's
own by default); each mode is a reader of its own on the same examples.
The curves show how many examples each skill takes when a model sees nothing else. Writes
docs/experiments/reading.{md,json} (shape) or reading_position.{md,json}.
"""
import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import write_measured
from torch import nn

from minimoe import checkpoint, cli, config
from minimoe.build import build_model
from minimoe.data import COLOURS, SHAPES, random_shape_objects, render_shapes
from minimoe.data.shapes import relation
from minimoe.sequences import mmu_prefix
from minimoe.tokenizers import ImageTokenizer
from minimoe.vq import VQModel

BATCH = 64  # scenes a step
TRAIN_SCENES, TEST_SCENES = 8000, 1000
LR = 2e-3


RELATIONS = ("left of", "right of", "above", "below")
CLASSES = 4  # a reader's answers: the four shapes, or the four relations
COLOUR_IDS = {c: ord("a") + k for k, c in enumerate(COLOURS)}  # a colour's one text id


def scenes(n: int, image_size: int, seed: int, task: str = "shape"):
    """(images, questions as text ids, labels): a label is a shape or a relation index."""
    rng = np.random.default_rng(seed)
    images, questions, labels = [], [], []
    while len(images) < n:
        if task == "shape":
            objects = random_shape_objects(rng, image_size, 1)
            questions.append([])
            labels.append(SHAPES.index(objects[0]["shape"]))
        else:
            objects = random_shape_objects(rng, image_size, 2)
            a, b = objects
            if a["colour"] == b["colour"]:  # the question names the objects by colour
                continue
            questions.append([COLOUR_IDS[a["colour"]], COLOUR_IDS[b["colour"]]])
            labels.append(RELATIONS.index(relation(a, b)))
        images.append(render_shapes(objects, image_size))
    return images, questions, torch.tensor(labels)


class ConvReader(nn.Module):
    def __init__(self, codes: int, width: int = 64):
        super().__init__()
        self.embed = nn.Embedding(codes, width)
        self.net = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(width, CLASSES))

    def forward(self, codes_BHW, questions):
        return self.net(self.embed(codes_BHW).permute(0, 3, 1, 2))


class TransformerReader(nn.Module):
    """The run's transformer; the logits of ids 0-3 at the last position are the 4 answers."""

    def __init__(self, cfg):
        super().__init__()
        self.model, self.vocab = build_model(cfg)

    def forward(self, codes_BHW, questions):
        v = self.vocab
        rows = [mmu_prefix((c.flatten() + v.image_offset).tolist(), q, v)
                for c, q in zip(codes_BHW, questions)]
        tokens, groups = (torch.tensor([r[i] for r in rows]) for i in range(2))
        return self.model(tokens, groups).logits_BLV[:, -1, :CLASSES]


def learn(reader: nn.Module, train, test, steps: int, every: int):
    (codes, questions, labels), (test_codes, test_questions, test_labels) = train, test
    opt = torch.optim.AdamW(reader.parameters(), LR)
    gen = torch.Generator().manual_seed(0)
    curve, t0 = [], time.time()
    for step in range(steps + 1):
        if step % every == 0:
            reader.eval()
            with torch.no_grad():
                acc = (reader(test_codes, test_questions).argmax(1)
                       == test_labels).float().mean().item()
            reader.train()
            curve.append({"step": step, "examples": step * BATCH, "accuracy": round(acc, 4),
                          "seconds": round(time.time() - t0, 1)})
        if step == steps:
            break
        i = torch.randint(0, len(codes), (BATCH,), generator=gen)
        loss = F.cross_entropy(reader(codes[i], [questions[j] for j in i]), labels[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reader.parameters(), 1.0)
        opt.step()
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=cli.about(__doc__))
    p.add_argument("--vq", default=None, help="a run's vq.pt (its tokenizer and sizes)")
    p.add_argument("--task", choices=("shape", "position"), default="shape")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--image-pos", default="", help="comma-separated --image-pos modes, one "
                   "transformer reader each (default: the tokenizer run's)")
    p.add_argument("--smoke", action="store_true", help="an untrained micro tokenizer, 4 steps")
    p.add_argument("--docs", default="docs/experiments")
    args = p.parse_args()
    torch.manual_seed(0)
    if args.smoke:
        cfg = config.make_config(image_size=16, vq_codes=16, vq_colours=4, vq_dim=8, vq_channels=16,
                                 d_model=32, n_layers=2, n_heads=2, d_ffn=64)
        vq, steps, every, n_train, n_test = VQModel(cfg.vq), 4, 2, 64, 32
    elif args.vq:
        payload = checkpoint.load(args.vq)
        cfg = config.from_dict(payload["config"])
        vq = VQModel(cfg.vq)
        vq.load_state_dict(payload["vq"])
        steps, every, n_train, n_test = args.steps, max(1, args.steps // 10), TRAIN_SCENES, \
            TEST_SCENES
    else:
        p.error("give --vq RUN/vq.pt (or --smoke)")
    tok = ImageTokenizer(vq.eval(), cfg.vq)
    side = cfg.data.image_size // cfg.vq.vq_downsample
    data = []
    for n, seed in ((n_train, 0), (n_test, 1)):
        images, questions, labels = scenes(n, cfg.data.image_size, seed, args.task)
        codes = torch.cat([tok.encode(images[i:i + 256]) for i in range(0, n, 256)])
        data.append((codes.view(-1, side, side), questions, labels))
    modes = [m for m in args.image_pos.split(",") if m] or [cfg.model.image_pos]
    known = config.CHOICES["image_pos"]
    for mode in modes:
        if mode not in known:
            p.error(f"--image-pos {mode!r}: choose from {', '.join(known)}")
    readers = [("transformer" if len(modes) == 1 else f"transformer, {mode}",
                TransformerReader(replace(cfg, model=replace(cfg.model, image_pos=mode))))
               for mode in modes]
    if args.task == "shape":
        readers.insert(0, ("conv", ConvReader(cfg.vq.vq_codes)))
    curves = {}
    for name, reader in readers:
        torch.manual_seed(0)
        curves[name] = learn(reader, *data, steps, every)
    rows = ["| examples seen | " + " | ".join(f"{n} accuracy %" for n in curves) + " |",
            "|---|" + "---|" * len(curves)]
    first = next(iter(curves.values()))
    for k, point in enumerate(first):
        rows.append(f"| {point['examples']} | " + " | ".join(
            f"{100 * c[k]['accuracy']:.1f}" for c in curves.values()) + " |")
    title = ("Reading the shape of one object from its codes" if args.task == "shape" else
             "Reading where one object lies relative to another (named by colour)")
    md = (f"## {title} (held-out scenes; chance 25 %)\n\n"
          + "\n".join(rows) + f"\n\nTokenizer: {args.vq or 'untrained micro'}; transformer: "
          f"d_model {cfg.model.d_model}, {cfg.model.n_layers} layers, --image-pos "
          f"{','.join(modes)}; {BATCH} scenes a step; "
          f"{max(p['seconds'] for p in first)} s for the first reader's {steps} steps.")
    write_measured(Path(args.docs), "reading" if args.task == "shape" else "reading_position",
                   md, curves)


if __name__ == "__main__":
    main()
