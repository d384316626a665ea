"""Train minimoe: stage 1 the VQ image tokenizer, stage 2 the dense unified transformer.

    python train.py                                   # tiny preset, built-in data, CPU, minutes
    python train.py --dense-steps 200 --vq-steps 200  # a quicker look
    python train.py --resume                          # continue out/dense where it stopped
    python train.py --preset small --device cuda      # one GPU, about an hour
    python train.py --data folder:/data/mine --out out/mine

Everything lands in the run folder (--out, default out/dense): vq.pt (the tokenizer, reused
when it exists), ckpt.pt (written atomically), log.jsonl, samples/*.png and summary.json.
"""
import argparse
import json
import sys
import time

import torch

from minimoe import config, pipeline
from minimoe.trainer import Batcher, RunFiles, fit


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    config.add_arguments(parser)
    parser.add_argument("--out", default=None, help="run folder (default: out/dense)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    parser.add_argument("--eval-n", type=int, default=120, help="held-out samples in the final check")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    pipeline.add_debug_flag(parser)
    args = parser.parse_args(argv)
    with pipeline.user_errors(args.debug):
        return run(args)


def run(args) -> dict:
    t_start = time.time()
    files = RunFiles(pipeline.run_folder(args.out, args.moe))
    cfg, start_step, payload = pipeline.prepare_run(files, args, resume=args.resume)
    device = pipeline.pick_device(cfg.train.device)
    progress = not args.no_progress
    print(config.describe(cfg))
    print(f"run folder: {files.root}   device: {device}")

    # Stage 1: the image tokenizer (trained once per run folder, then reused).
    image_tok, vq_report = pipeline.tokenizer_stage(cfg, files, device, progress)

    # Stage 2: the dense model on a mix of T2I, MMU and LM batches.
    torch.manual_seed(cfg.train.seed)
    model, vocab = pipeline.build_model(cfg, device)
    optimizer = None
    if payload is not None:
        model.load_state_dict(payload["model"])
        optimizer = pipeline.restore_optimizer(model, cfg, payload)
        print(f"resuming {payload['stage']} at step {start_step}")
    print(f"dense model: {model.num_params() / 1e6:.2f}M parameters, {cfg.seq_len} tokens a row")
    batcher = Batcher(cfg, pipeline.open_source(cfg, "train"), vocab, image_tok)
    grids = pipeline.GridWriter(model, vocab, image_tok, files.samples, cfg)
    fit(model, cfg, files, "dense", cfg.train.dense_steps, batcher, image_tok, device,
        start_step=start_step, optimizer=optimizer, on_sample=grids, progress=progress)

    # A quick check of both abilities on held-out data (the full evaluation is eval.py).
    summary = {"vq": vq_report,
               **pipeline.quick_eval(model, vocab, image_tok, cfg, args.eval_n, progress),
               "wall_s": round(time.time() - t_start, 1),
               "peak_rss_mb": pipeline.peak_memory_mb()}
    (files.root / "summary.json").write_text(json.dumps(summary, indent=2))
    print(pipeline.format_summary(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
