"""Train minimoe: stage 1 the VQ image tokenizer, stage 2 the dense unified transformer, and
with --moe stage 3: convert the dense FFNs into experts and train the MoE.

    python train.py                                   # tiny preset, built-in data, CPU, minutes
    python train.py --moe taylor                      # tokenizer -> dense -> Taylor MoE
    python train.py --moe naive --init out/dense/ckpt.pt   # convert an existing dense model
    python train.py --dense-steps 200 --vq-steps 200  # a quicker look
    python train.py --resume                          # continue out/dense where it stopped
    python train.py --preset small --device cuda      # one GPU, about an hour
    python train.py --data folder:/data/mine --out out/mine
    python train.py --data 'wds:/data/cc-{000000..000127}.tar' --workers 4 --out out/cc
    python train.py --data codes:codes/mine --out out/mine   # codes: python -m minimoe.pretokenize
    torchrun --nproc_per_node 8 train.py --preset full --moe taylor   # data parallel
    torchrun --nproc_per_node 8 train.py --preset full --moe naive --ep 8   # + expert parallel

Everything lands in the run folder (--out, default out/dense or out/moe-METHOD): vq.pt (the
tokenizer, reused when it exists), ckpt.pt (written atomically), log.jsonl, samples/*.png,
summary.json, curves.png (the log drawn), for MoE runs dense.pt (the converted model),
routing.json and routing.png, and with --tensorboard true TensorBoard event files.
Under torchrun every rank trains on its own shard of the data (batch sizes are per rank), rank 0
alone trains the tokenizer, prints, logs, samples and writes checkpoints; a checkpoint holds the
whole model, so a run resumes with any number of processes.
"""
import json
import os
import sys
import time

from minimoe import atomic, cli, config, cost, dist, evaluation, run
from minimoe.batches import Batcher
from minimoe.data import open_source


def main(argv=None) -> dict:
    parser = cli.ArgumentParser(description=cli.about(__doc__))
    config.add_arguments(parser)
    parser.add_argument("--out", default=None,
                        help="run folder (default: out/dense or out/moe-METHOD)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    parser.add_argument("--init", default=None,
                        help="dense checkpoint to convert (skips stages 1 and 2; needs --moe)")
    parser.add_argument("--ep", type=int, default=1,
                        help="expert parallelism under torchrun: ranks per expert-parallel group")
    parser.add_argument("--eval-n", type=int, default=120,
                        help="held-out samples in the final check (0: skip it)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    with cli.user_errors(args.debug):
        try:
            return train(args)
        except RuntimeError as e:
            if not dist.lost_peer(e) or args.debug:
                raise
            if dist.rank_world()[0] == 0:
                print(dist.LOST_RANK, file=sys.stderr, flush=True)
            os._exit(1)  # leave at once: tearing down would wait on the dead rank
        finally:
            dist.teardown()


def train(args) -> dict:
    t_start = time.time()
    info = dist.setup()
    if not info.is_main:  # other ranks stay silent (errors still reach stderr)
        sys.stdout = open(os.devnull, "w")
    if args.init and args.resume:
        raise cli.UserError("--init starts a new run from a dense checkpoint; drop --resume "
                            "(or drop --init to continue the run in --out)")
    files = run.RunFiles(run.run_folder(args.out, args.moe))
    cfg, start_step, payload = run.prepare_run(files, args, resume=args.resume)
    stage = payload["stage"] if payload else None
    if args.init and cfg.moe.moe == "none":
        raise cli.UserError("--init converts a dense checkpoint: it needs --moe METHOD")
    init = run.load_dense(args.init, cfg) if args.init else None
    run.open_events(files, cfg.train.tensorboard)  # --tensorboard true: the log goes there too
    ep = None
    if args.ep > 1:  # expert parallelism: each group of --ep ranks holds the experts once
        if cfg.moe.moe == "none":
            raise cli.UserError("--ep shards MoE experts; it needs --moe METHOD")
        ep = dist.expert_parallel(args.ep, cfg.moe.num_experts)
    device = info.device if info.world > 1 else cli.pick_device(cfg.train.device)
    progress = not args.no_progress
    print(config.describe(cfg))
    print(f"run folder: {files.root}   device: {device}")

    # Stage 1: the tokenizers, text merges and the VQ image tokenizer (made once per run
    # folder, then reused); under torchrun rank 0 makes them and the other ranks load them.
    if not info.is_main:
        dist.barrier()
    image_tok, vocab, vq_report = run.tokenizer_stage(cfg, files, device, progress, init)
    if info.is_main:
        dist.barrier()
    summary = {"vq": vq_report}

    # Stage 2: the dense model on a mix of T2I, MMU and LM batches (skipped once in stage 3).
    if stage == "moe":
        model, optimizer = run.resume_moe(cfg, payload, device, ep)
    else:
        model = run.dense_stage(cfg, files, image_tok, vocab, device, payload, args.init,
                                progress)
        start_step, optimizer = 0, None

    # Stage 3: dense FFNs -> experts, then MoE training; its data continues after stage 2's.
    if cfg.moe.moe != "none":
        batcher = Batcher(cfg, open_source(cfg, "train", vocab.merges), vocab, image_tok,
                          offset=cfg.train.dense_steps * cfg.train.grad_accum, rank=info.rank,
                          world=info.world)
        if stage != "moe":
            model, summary["conversion"] = run.convert_stage(model, cfg, files, vocab,
                                                             image_tok, device, batcher)
            optimizer = run.shard_for_training(model, cfg, None, ep)
        skipped = payload.get("skipped", 0) if stage == "moe" else 0
        run.moe_stage(model, cfg, files, vocab, image_tok, device, batcher, start_step,
                      optimizer, progress, ep, skipped)
        model = run.unshard(model, cfg, device, ep)  # rank 0 evaluates the whole model alone
        if info.is_main:
            summary["heldout_losses"] = evaluation.heldout_losses(model, cfg, vocab, image_tok,
                                                                  device)
            print("held-out losses after MoE training: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in summary["heldout_losses"].items()))
            summary["routing"] = run.routing_report(model, cfg, files, vocab, image_tok, device)

    if not info.is_main:  # the end-of-run check and summary are rank 0's
        return summary
    # A quick check of both abilities on held-out data (the full evaluation is eval.py).
    if args.eval_n:
        summary.update(evaluation.quick_eval(model, vocab, image_tok, cfg, args.eval_n, progress))
    summary["cost"] = cost.run_cost(model, cfg, files.log)
    summary.update(wall_s=round(time.time() - t_start, 1), peak_rss_mb=run.peak_memory_mb())
    atomic.write_text(files.root / "summary.json", json.dumps(summary, indent=2))
    print(run.format_summary(summary))
    if "routing" in summary:
        print(evaluation.format_routing(summary["routing"]))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
