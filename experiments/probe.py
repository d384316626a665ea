"""How well does the router probe of `--moe taylor` tell text from image tokens?

    python experiments/probe.py --ckpt out/moe-taylor/dense.pt     # about a minute on 2 cores
    python experiments/probe.py --smoke                            # an untrained micro model (CI)

At conversion, `taylor` starts every router as a linear text/image probe
(`convert.probe_router_init_`): along d = mean(text) - mean(image) of a layer's FFN inputs,
z(x) = 2 (x - m).d / |d|^2 is +1 at the text mean and -1 at the image mean, and text experts
get the logit +2 z(x), image experts -2 z(x). Per layer of a dense model, on held-out batches,
this prints where the tokens fall along z (mean and spread by kind: text, image code, [MASK])
and the share on the wrong side of 0, beside a Fisher discriminant (the same two means and
their pooled covariance) fitted on every other token and scored on the rest: how separable
the two modalities are for a linear router at all. Writes docs/experiments/probe.{md,json}.
"""
import argparse
import tempfile
from pathlib import Path

import torch
from common import write_measured

from minimoe import cli
from minimoe.convert import each_ffn_input
from minimoe.evaluation import heldout_batches
from minimoe.inference import load

BATCHES = 8  # held-out batches, as many as the conversion's calibration batches
RIDGE = 1e-3  # added to the pooled covariance's diagonal: some directions carry no variance


def separation(x_TD: torch.Tensor, text_T: torch.Tensor, kinds: dict[str, torch.Tensor]) -> dict:
    """The probe's z by token kind (mean, sd, share on the wrong side) and the held-out
    accuracy of a Fisher discriminant, for FFN inputs x of text (text_T) and image tokens."""
    x = x_TD.double()
    mean_text, mean_image = x[text_T].mean(0), x[~text_T].mean(0)
    d = mean_text - mean_image
    z = (x - (mean_text + mean_image) / 2) @ (2 * d / d.square().sum())
    row = {"distance": round(d.norm().item(), 3)}
    for name, sel in kinds.items():
        wrong = z[sel] < 0 if name == "text" else z[sel] > 0
        row[name] = {"z_mean": round(z[sel].mean().item(), 3),
                     "z_sd": round(z[sel].std().item(), 3),
                     "wrong": round(wrong.double().mean().item(), 4)}
    fit, test = torch.arange(len(x)) % 2 == 0, torch.arange(len(x)) % 2 == 1
    a, b = x[fit & text_T], x[fit & ~text_T]
    cov = torch.cov(torch.cat([a - a.mean(0), b - b.mean(0)]).T)
    w = torch.linalg.solve(cov + RIDGE * torch.eye(len(d), dtype=x.dtype), a.mean(0) - b.mean(0))
    says_text = x @ w > w @ (a.mean(0) + b.mean(0)) / 2
    row["fisher_text"] = round(says_text[test & text_T].double().mean().item(), 4)
    row["fisher_image"] = round((~says_text[test & ~text_T]).double().mean().item(), 4)
    return row


@torch.no_grad()
def measure(path: str) -> list[dict]:
    """separation() of every block's FFN input of the dense model at `path`."""
    cfg, session, image_tok = load(path, "cpu")
    model, v = session.model.eval(), session.vocab
    batches = heldout_batches(cfg, v, image_tok, BATCHES)
    inputs = [[] for _ in model.blocks]
    each_ffn_input(model, batches, lambda i, x_TD, info: inputs[i].append(x_TD))
    tokens = torch.cat([b.tokens_BL.flatten() for b in batches])
    real, image = tokens != v.pad, tokens >= v.image_offset
    kinds = {"text": ~image, "code": image & (tokens != v.mask), "mask": tokens == v.mask}
    return [separation(torch.cat(x)[real], (~image)[real], {k: s[real] for k, s in kinds.items()})
            for x in inputs]


def markdown(results: dict[str, list[dict]]) -> str:
    lines = ["## The router probe at conversion: z along the text/image mean difference "
             "(text +1, image -1), by token kind, and a Fisher discriminant's held-out accuracy",
             "", "| model | layer | text z | wrong side | code z | wrong side | [MASK] z | "
             "wrong side | Fisher: text | Fisher: image |", "|---" * 10 + "|"]
    for name, layers in results.items():
        for i, r in enumerate(layers):
            cells = [f"{r[k]['z_mean']:+.2f} ± {r[k]['z_sd']:.2f} | {100 * r[k]['wrong']:.1f} %"
                     for k in ("text", "code", "mask")]
            lines.append(f"| {name} | {i} | " + " | ".join(cells)
                         + f" | {100 * r['fisher_text']:.1f} % | {100 * r['fisher_image']:.1f} % |")
    return "\n".join(lines)


def smoke_checkpoint(folder: Path) -> str:
    """An untrained micro dense model with its tokenizers, saved as a checkpoint."""
    from minimoe import checkpoint, config
    from minimoe.build import build_model
    from minimoe.run import learn_vocab
    from minimoe.vq import VQModel
    cfg = config.make_config("tiny", image_size=16, text_len=64, text_vocab=256, vq_codes=16,
                             vq_colours=4, vq_dim=8, vq_channels=16, d_model=32, n_layers=2,
                             n_heads=2, d_ffn=64, domains="shapes")
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    vocab = learn_vocab(cfg)
    path = folder / "dense.pt"
    checkpoint.save({"config": config.to_dict(cfg), "stage": "dense", "step": 0,
                     "model": model.state_dict(), "vq": VQModel(cfg.vq).state_dict(),
                     "merges": [list(m) for m in vocab.merges]}, path)
    return str(path)


def main() -> None:
    p = argparse.ArgumentParser(description=cli.about(__doc__))
    p.add_argument("--ckpt", action="append", default=[],
                   help="a dense model (a dense run's ckpt.pt or a MoE run's dense.pt); repeat")
    p.add_argument("--smoke", action="store_true", help="an untrained micro model")
    p.add_argument("--docs", default="docs/experiments")
    args = p.parse_args()
    torch.manual_seed(0)
    docs = Path(args.docs)
    if args.smoke:
        args.ckpt = [smoke_checkpoint(Path(tempfile.mkdtemp()))]
    if not args.ckpt:
        p.error("give --ckpt RUN/dense.pt (or --smoke)")
    results = {path: measure(path) for path in args.ckpt}
    write_measured(docs, "probe", markdown(results), results)


if __name__ == "__main__":
    main()
