"""Evaluate one or several trained runs: GenEval-style accuracy, FID, MMU accuracy and routing
specialisation, with pictures.

    python eval.py                                          # newest out/*/ckpt.pt
    python eval.py --ckpt out/dense/ckpt.pt --ckpt out/moe-taylor/ckpt.pt --out out/compare
    python eval.py --quick                                  # the end-of-training check only

Writes into --out (default RUN/eval for one run, out/eval for several): metrics.json (every
number, the checkpoints, presets and sample counts), metrics.md (a table, runs as columns),
metrics.png (a bar chart of the headline numbers),
feature_net.pt (the FID feature classifier, trained once and reused; --inception PATH uses the
standard Inception network from a local TorchScript file instead), and per run a folder
with geneval_<category>.png (samples with the checker's verdicts) and routing.png (MoE runs).
"""
import json
import sys
from pathlib import Path

from minimoe import atomic, cli, cost, evaluation, fid, geneval, inference


def main(argv=None) -> dict:
    p = cli.ArgumentParser(description=cli.about(__doc__))
    p.add_argument("--ckpt", action="append", default=None,
                   help="checkpoint; repeat to compare runs (default: newest out/*/ckpt.pt)")
    p.add_argument("--n", type=int, default=20, help="GenEval prompts per category")
    p.add_argument("--samples", type=int, default=2, help="images per GenEval prompt")
    p.add_argument("--fid-n", type=int, default=300, help="images per FID set")
    p.add_argument("--mmu-n", type=int, default=120, help="held-out images for MMU questions")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--draw", default="evaluation", choices=list(evaluation.DRAWS),
                   help="held-out prompts and images: evaluation (report these) or validation "
                        "(tune on these)")
    cli.add_sampling_flags(p)
    p.add_argument("--inception", default=None,
                   help="local inception-2015-12-05.pt (TorchScript) for standard FID features")
    p.add_argument("--quick", action="store_true", help="only the check train.py ends with")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    cli.add_debug_flag(p)
    args = p.parse_args(argv)
    with cli.user_errors(args.debug):
        for name in ("n", "samples", "fid_n", "mmu_n"):
            least = 2 if name == "fid_n" else 1  # a covariance needs two images
            if getattr(args, name) < least:
                raise cli.UserError(f"--{name.replace('_', '-')} {getattr(args, name)} is "
                                    f"too small; use at least {least}")
        cli.check_sampling(args)
        ckpts = [Path(c) for c in args.ckpt] if args.ckpt else [inference.latest_checkpoint()]
        out = Path(args.out) if args.out else \
            ckpts[0].parent / "eval" if len(ckpts) == 1 else inference.RUNS_ROOT / "eval"
        out.mkdir(parents=True, exist_ok=True)
        device = cli.pick_device(args.device)
        runs = [(c, inference.load(c, device)) for c in ckpts]  # fail early on a bad one
        if args.quick:
            return quick(runs, args, out)
        return full(runs, args, out)


def quick(runs, args, out: Path) -> dict:
    reports = {}
    for ckpt, (cfg, session, image_tok) in runs:
        reports[str(ckpt)] = evaluation.quick_eval(session.model, session.vocab, image_tok, cfg,
                                                 args.mmu_n, not args.no_progress)
        print(evaluation.format_report(reports[str(ckpt)]))
    atomic.write_text(out / "metrics.json", json.dumps(reports, indent=2))
    return reports


def full(runs, args, out: Path) -> dict:
    settings = evaluation.Settings(args.n, args.samples, args.fid_n, args.mmu_n, args.seed,
                                   not args.no_progress, evaluation.DRAWS[args.draw], args.steps,
                                   args.guidance, args.choice_temperature,
                                   args.guidance_schedule, args.code_temperature)
    image_size = runs[0][1][0].data.image_size
    if any(cfg.data.image_size != image_size for _, (cfg, _, _) in runs):
        raise cli.UserError("the runs have different image sizes; evaluate them apart")
    checker = geneval.validate_checker(image_size, args.n)
    if args.inception:
        featurize, features = fid.load_inception(Path(args.inception)), \
            f"Inception pool3 ({args.inception})"
        accuracy = None
    else:
        net, accuracy = fid.cached_feature_net(out / "feature_net.pt", image_size,
                                               not args.no_progress)
        featurize, features = (lambda images: fid.features(net, images)), \
            "minimoe feature net (fid.py)"
    print(f"checker on real images {checker['real']:.1%} (exact {checker['real_exact']:.1%}), "
          f"with wrong captions "
          f"{checker['wrong_captions']:.1%}; FID features: {features}"
          + (f", held-out accuracy {accuracy}" if accuracy else ""))
    if checker["real"] < geneval.TRUSTED_REAL or checker["wrong_captions"] > geneval.TRUSTED_WRONG:
        print(f"warning: at {image_size} px the checker misjudges real images; the GenEval "
              f"numbers below are unreliable (it is validated at 32 and 64 px)")
    reports = {}
    for ckpt, (cfg, session, image_tok) in runs:
        name = ckpt.parent.name + ("" if ckpt.stem == "ckpt" else f"-{ckpt.stem}")
        name = name if name not in reports else str(ckpt).replace("/", "_")
        reports[name] = {"ckpt": str(ckpt), "preset": cfg.preset, "moe": cfg.moe.moe,
                         "cost": cost.run_cost(session.model, cfg, ckpt.parent / "log.jsonl"),
                         **evaluation.evaluate(cfg, session, image_tok, settings, out / name,
                                               featurize, features)}
    evaluation.write(out, reports, {"settings": vars(settings), "checker": checker,
                                    "feature_net_accuracy": accuracy})
    print((out / "metrics.md").read_text())
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.md'} and pictures under {out}")
    return reports


if __name__ == "__main__":
    main(sys.argv[1:])
