"""Time one training step of the tiny preset (real batches: forward, backward, the preset's
optimizer) under each precision and compilation mode, and with a shorter text block, against
the first row, measured in the same run.

    python bench/train_step.py                     # tiny preset, 2 threads, dense model
    python bench/train_step.py --moe taylor        # the MoE model (random experts: speed only)
    python bench/train_step.py --moe none,taylor --text-lens 24   # dense and MoE side by side
    python bench/train_step.py --steps 30 --modes eager,bf16
    python bench/train_step.py --modes eager -- --vq-colours 0 --code-features none

Prints a table: milliseconds a step (median of --steps after --warmup), tokens/s and the ratio
to the first mode. Compile time is reported separately: it is paid once per run. Flags after
`--` are train.py's and change the timed config.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minimoe.batches import Batcher  # noqa: E402
from minimoe.cli import about  # noqa: E402
from minimoe.build import build_model  # noqa: E402
from minimoe.config import add_arguments, explicit_overrides, make_config  # noqa: E402
from minimoe.data import open_source  # noqa: E402
from minimoe.losses import labelled_losses, total_loss  # noqa: E402
from minimoe.routing import RouterTraining  # noqa: E402
from minimoe.run import learn_vocab  # noqa: E402
from minimoe.tokenizers import ImageTokenizer  # noqa: E402
from minimoe.trainer import make_optimizer  # noqa: E402
from minimoe.vq import VQModel  # noqa: E402

MODES = ("eager", "bf16", "compile", "compile-bf16")


def time_mode(cfg, mode: str, steps: int, warmup: int) -> tuple[float, float, int]:
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    vocab = learn_vocab(cfg)  # BPE merges when --text-vocab > 256
    tok = ImageTokenizer(VQModel(cfg.vq), cfg.vq)
    batcher = Batcher(cfg, open_source(cfg, "train", vocab.merges), vocab, tok)
    batches = [batcher(i) for i in range(warmup + steps)]
    optimizer = make_optimizer(model, cfg)
    # a MoE step also sets the router's schedules, adds its losses and counts its statistics
    router = RouterTraining(model, cfg) if cfg.moe.moe != "none" else None
    forward = torch.compile(model) if mode.startswith("compile") else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode.endswith("bf16"))
    times, compile_s = [], 0.0
    model.train()
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        if router:
            router.before_step(i)
        with autocast:
            out, parts = labelled_losses(forward, b)
            loss = total_loss(parts, cfg)
            if router:
                loss = loss + router.weighted(router.losses(out.routing))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if router:
            router.after_step(out.routing, i + 1)
        dt = time.perf_counter() - t0
        if i == 0:
            compile_s = dt
        if i >= warmup:
            times.append(dt)
    return statistics.median(times), compile_s, b.tokens_BL.numel()


def main() -> None:
    p = argparse.ArgumentParser(description=about(__doc__))
    p.add_argument("--moe", default="none", help="comma-separated --moe methods to time")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--text-lens", default="64,24", help="text block sizes to time")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("train_flags", nargs=argparse.REMAINDER, help="-- then train.py flags")
    args = p.parse_args()
    flags = argparse.ArgumentParser(prog="train.py flags")
    add_arguments(flags)
    train_flags = [f for f in args.train_flags if f != "--"]
    overrides = explicit_overrides(flags.parse_args(train_flags))
    torch.set_num_threads(args.threads)
    rows, base = [], None
    for moe in args.moe.split(","):
        for text_len in (int(x) for x in args.text_lens.split(",")):
            extra = {} if text_len == 64 else {"text_vocab": 512}
            cfg = make_config(**{"moe": moe, "text_len": text_len, **extra, **overrides})
            for mode in args.modes.split(","):
                ms, first, tokens = time_mode(cfg, mode, args.steps, args.warmup)
                base = base or ms
                rows.append(f"| {moe} | {text_len} | {mode} | {1000 * ms:.0f} | "
                            f"{tokens / ms:,.0f} | {base / ms:.2f}x | {first:.1f} |")
    print(f"# tiny preset, --moe {args.moe} {' '.join(train_flags)}, {args.threads} "
          f"threads, torch {torch.__version__}; median of {args.steps} steps")
    print("| --moe | text_len | mode | ms a step | tokens/s | vs first row | first step s |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
