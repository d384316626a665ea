"""Can the tiny transformer read a shape from its image codes when that is all it is taught?

    python experiments/reading.py --vq out/moe-taylor/vq.pt     # about 4 min on 2 cores
    python experiments/reading.py --smoke                       # an untrained micro tokenizer (CI)

Single-object scenes of the shapes domain are encoded by a run's tokenizer. Two readers learn
the object's shape (circle, square, triangle or cross) from the code grid alone, on the same
examples, and are scored on held-out scenes every few steps:
- the project's transformer at the run's sizes, reading the MMU prefix [mmu] [soi] codes
  [eoi] [sot] and answering at the last position (the layout of an MMU question);
- a reference: two 3x3 convolutions over learnt code embeddings, then a max over the grid.
In the full pipeline a shape question is about 2 % of the MMU rows, so the dense stage sees a
few thousand of them; these curves show how many examples reading a shape takes when a
model sees nothing else. Writes docs/experiments/reading.{md,json}.
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import write_measured
from torch import nn

from minimoe import checkpoint, cli, config
from minimoe.build import build_model
from minimoe.data import SHAPES, random_shape_objects, render_shapes
from minimoe.sequences import mmu_prefix
from minimoe.tokenizers import ImageTokenizer
from minimoe.vq import VQModel

BATCH = 64  # scenes a step
TRAIN_SCENES, TEST_SCENES = 8000, 1000
LR = 2e-3


def scenes(n: int, image_size: int, seed: int):
    rng = np.random.default_rng(seed)
    objects = [random_shape_objects(rng, image_size, 1) for _ in range(n)]
    return ([render_shapes(o, image_size) for o in objects],
            torch.tensor([SHAPES.index(o[0]["shape"]) for o in objects]))


class ConvReader(nn.Module):
    def __init__(self, codes: int, width: int = 64):
        super().__init__()
        self.embed = nn.Embedding(codes, width)
        self.net = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(width, 4))

    def forward(self, codes_BHW):
        return self.net(self.embed(codes_BHW).permute(0, 3, 1, 2))


class TransformerReader(nn.Module):
    """The run's transformer; the logits of ids 0-3 at the last position are the 4 shapes."""

    def __init__(self, cfg):
        super().__init__()
        self.model, self.vocab = build_model(cfg)

    def forward(self, codes_BHW):
        v = self.vocab
        rows = [mmu_prefix((c.flatten() + v.image_offset).tolist(), [], v) for c in codes_BHW]
        tokens, groups = (torch.tensor([r[i] for r in rows]) for i in range(2))
        return self.model(tokens, groups).logits_BLV[:, -1, :len(SHAPES)]


def learn(reader: nn.Module, codes, labels, test_codes, test_labels, steps: int, every: int):
    opt = torch.optim.AdamW(reader.parameters(), LR)
    gen = torch.Generator().manual_seed(0)
    curve, t0 = [], time.time()
    for step in range(steps + 1):
        if step % every == 0:
            reader.eval()
            with torch.no_grad():
                acc = (reader(test_codes).argmax(1) == test_labels).float().mean().item()
            reader.train()
            curve.append({"step": step, "examples": step * BATCH, "accuracy": round(acc, 4),
                          "seconds": round(time.time() - t0, 1)})
        if step == steps:
            break
        i = torch.randint(0, len(codes), (BATCH,), generator=gen)
        loss = F.cross_entropy(reader(codes[i]), labels[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reader.parameters(), 1.0)
        opt.step()
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=cli.about(__doc__))
    p.add_argument("--vq", default=None, help="a run's vq.pt (its tokenizer and sizes)")
    p.add_argument("--steps", type=int, default=500)
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
    images, labels = scenes(n_train, cfg.data.image_size, seed=0)
    test_images, test_labels = scenes(n_test, cfg.data.image_size, seed=1)
    codes = torch.cat([tok.encode(images[i:i + 256]) for i in range(0, n_train, 256)])
    test_codes = tok.encode(test_images)
    codes, test_codes = codes.view(-1, side, side), test_codes.view(-1, side, side)
    curves = {}
    for name, reader in (("conv", ConvReader(cfg.vq.vq_codes)),
                         ("transformer", TransformerReader(cfg))):
        torch.manual_seed(0)
        curves[name] = learn(reader, codes, labels, test_codes, test_labels, steps, every)
    rows = ["| examples seen | " + " | ".join(f"{n} accuracy %" for n in curves) + " |",
            "|---|" + "---|" * len(curves)]
    for k, point in enumerate(curves["conv"]):
        rows.append(f"| {point['examples']} | " + " | ".join(
            f"{100 * c[k]['accuracy']:.1f}" for c in curves.values()) + " |")
    md = ("## Reading the shape of one object from its codes (held-out scenes; chance 25 %)\n\n"
          + "\n".join(rows) + f"\n\nTokenizer: {args.vq or 'untrained micro'}; transformer: "
          f"d_model {cfg.model.d_model}, {cfg.model.n_layers} layers, --image-pos "
          f"{cfg.model.image_pos}; {BATCH} scenes a step.")
    write_measured(Path(args.docs), "reading", md, curves)


if __name__ == "__main__":
    main()
