"""Tokens/s of training steps whose batches come from images (rendered or read, then run
through the VQ encoder every step) against the same steps from pre-tokenised codes (`--data
codes:DIR`), measured in the same run: the tiny preset at 32 px (8x8 codes) and at 256 px
with 16-pixel patches (16x16 codes, the grid of the `full` preset).

    python bench/codes_vs_images.py                       # both sizes, 2 threads, CPU
    python bench/codes_vs_images.py --sizes 32:4 --steps 30
    python bench/codes_vs_images.py --device cuda --threads 16
    python bench/codes_vs_images.py --vq-encoder conv     # the heavier encoder

A timed step is everything a training step costs: the step's samples from the source (the
built-in domains render their images; a codes folder reads its shards), the batch (with or
without the encoder), forward, backward and AdamW. Both sides read the same samples and train
the same model from the same seed. The tokenizer is untrained (speed does not depend on its
weights); the codes are written first, into a temporary folder, untimed. Prints a table per
size: ms a step (median of --steps after --warmup), the part of it spent making the batch,
tokens/s, and codes' tokens/s over images'.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minimoe import config  # noqa: E402
from minimoe.batches import Batcher  # noqa: E402
from minimoe.build import build_model  # noqa: E402
from minimoe.cli import about, pick_device  # noqa: E402
from minimoe.data import open_source  # noqa: E402
from minimoe.losses import labelled_losses, total_loss  # noqa: E402
from minimoe.pretokenize import pretokenize  # noqa: E402
from minimoe.run import learn_vocab  # noqa: E402
from minimoe.tokenizers import ImageTokenizer  # noqa: E402
from minimoe.trainer import make_optimizer  # noqa: E402
from minimoe.vq import VQModel  # noqa: E402

SIZES = "32:4,256:16"  # image_size:vq_downsample pairs to time
# What pretokenize keeps beside the weights; an untrained tokenizer has no measured report.
NO_REPORT = {"psnr": 0.0, "perplexity": 0.0, "used_fraction": 0.0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(cfg, source, vocab, tok, device, steps: int, warmup: int):
    """(median s a step, median s of it making the batch, tokens a step) of training on
    `source`."""
    torch.manual_seed(cfg.train.seed)
    model, _ = build_model(cfg, device)
    model.train()
    optimizer = make_optimizer(model, cfg)
    batcher = Batcher(cfg, source, vocab, tok)
    total, data = [], []
    for step in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        b = batcher(step).to(device)
        sync(device)
        t1 = time.perf_counter()
        loss = total_loss(labelled_losses(model, b)[1], cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        sync(device)
        if step >= warmup:
            total.append(time.perf_counter() - t0)
            data.append(t1 - t0)
    return statistics.median(total), statistics.median(data), b.tokens_BL.numel()


def main() -> None:
    p = argparse.ArgumentParser(description=about(__doc__))
    p.add_argument("--sizes", default=SIZES, help="image_size:vq_downsample pairs to time")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--vq-encoder", default="patch", choices=("patch", "conv"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    # The BPE merges depend on the captions only; learn them once, at the smallest size.
    vocab = learn_vocab(config.make_config())
    rows = []
    for pair in args.sizes.split(","):
        size, downsample = (int(x) for x in pair.split(":"))
        cfg = config.make_config(image_size=size, vq_downsample=downsample,
                                 vq_encoder=args.vq_encoder)
        torch.manual_seed(0)
        vq = VQModel(cfg.vq).to(device)
        tok = ImageTokenizer(vq, cfg.vq)
        samples = (args.warmup + args.steps) * sum(
            (cfg.train.batch_t2i, cfg.train.batch_mmu, cfg.train.batch_lm))
        payload = {"config": config.to_dict(cfg), "vq": vq.state_dict(), "report": NO_REPORT,
                   "merges": [list(m) for m in vocab.merges]}
        with tempfile.TemporaryDirectory() as folder:
            pretokenize(payload, cfg, folder, samples, heldout_samples=1, device=device,
                        progress=False)
            codes_cfg = config.make_config(**{**config.flat(cfg), "data": f"codes:{folder}"})
            timed = {"images": time_steps(cfg, open_source(cfg, "train", vocab.merges), vocab,
                                          tok, device, args.steps, args.warmup),
                     "codes": time_steps(codes_cfg, open_source(codes_cfg, "train",
                                                                vocab.merges),
                                         vocab, tok, device, args.steps, args.warmup)}
        grid = size // downsample
        base = None
        for name, (step_s, data_s, tokens) in timed.items():
            rate = tokens / step_s
            base = base or rate
            rows.append(f"| {size} | {grid}x{grid} | {cfg.seq_len} | {name} | "
                        f"{1000 * step_s:.1f} | {1000 * data_s:.1f} | {rate:,.0f} | "
                        f"{rate / base:.2f}x |")
    print(f"# tiny preset model, --vq-encoder {args.vq_encoder}, {device}, {args.threads} "
          f"threads, torch {torch.__version__}; median of {args.steps} steps after "
          f"{args.warmup}")
    print("| image px | codes | tokens a row | batches from | ms a step | of it: batch ms | "
          "tokens/s | vs images |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
