"""Evaluate a trained run: MMU exact-match accuracy and caption colours of generated images,
each on held-out built-in shapes and beside its chance level.

    python eval.py                                   # newest out/*/ckpt.pt
    python eval.py --ckpt out/dense/ckpt.pt --n 300 --out out/dense/eval

This is the quick check that train.py runs at its end; the full evaluation (GenEval-style
accuracy, FID, routing specialisation, plots) is the evaluation issue's work.
"""
import argparse
import json
import sys
from pathlib import Path

from minimoe import pipeline


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default=None, help="checkpoint (default: newest out/*/ckpt.pt)")
    p.add_argument("--n", type=int, default=200, help="held-out images")
    p.add_argument("--out", default=None, help="folder for metrics.json (default: RUN/eval)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    pipeline.add_debug_flag(p)
    args = p.parse_args(argv)
    with pipeline.user_errors(args.debug):
        if args.n < 1:
            raise pipeline.UserError("--n must be at least 1")
        ckpt = Path(args.ckpt) if args.ckpt else pipeline.latest_checkpoint()
        cfg, session, image_tok = pipeline.load_run(ckpt, pipeline.pick_device(args.device))
        report = {"ckpt": str(ckpt), "preset": cfg.preset, "n": args.n,
                  **pipeline.quick_eval(session.model, session.vocab, image_tok, cfg, args.n,
                                        not args.no_progress)}
        out = Path(args.out) if args.out else ckpt.parent / "eval"
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(report, indent=2))
        print(pipeline.format_report(report))
        print(f"wrote {out / 'metrics.json'}")
        return report


if __name__ == "__main__":
    main(sys.argv[1:])
