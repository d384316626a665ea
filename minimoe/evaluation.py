"""The full evaluation of a checkpoint, which eval.py runs for one or several runs.

- GenEval-style accuracy (geneval.py): `samples` images for each of `per_category` held-out
  prompts in six categories, judged by the procedural checker.
- FID (fid.py) of images generated from held-out captions of every built-in domain against
  other held-out real images, beside the real-vs-real FID of the same sizes (the floor).
- MMU exact-match accuracy on held-out shapes questions, per question type.
- Routing specialisation for MoE checkpoints (routing.RoutingStats on held-out batches).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import fid as fidlib
from . import geneval
from .atomic import save_png, write_text
from .data import DOMAINS, BuiltinData
from .pipeline import EVAL_SEED, generate, heldout_shapes, mmu_eval
from .plots import bar_chart, image_grid, routing_heatmaps
from .stages import collect_routing
from .tokenizers import Vocab


@dataclass
class Settings:
    per_category: int = 20  # GenEval prompts per category
    samples: int = 2  # images per GenEval prompt
    fid_n: int = 300  # generated (and real) images per FID set
    mmu_n: int = 120  # held-out shapes images whose questions are asked
    seed: int = 0  # sampling seed
    progress: bool = True


def evaluate(cfg, session, image_tok, s: Settings, out: Path, featurize, features: str) -> dict:
    """Every metric of one run; writes its picture files into `out`. featurize(images) gives
    the FID features, named by `features` in the report."""
    out.mkdir(parents=True, exist_ok=True)
    report = {"geneval": geneval_eval(cfg, session, image_tok, s, out),
              "fid": fid_eval(cfg, session, image_tok, s, featurize, features),
              "mmu": mmu_eval(session, image_tok, heldout_shapes(cfg, s.mmu_n), s.progress)}
    if session.model.moe_layers():
        routing = collect_routing(session.model, cfg, Vocab(cfg.vq.vq_codes), image_tok,
                                  session.device)
        save_png(routing_heatmaps(routing, f"{out.name}: share of each group's routed slots "
                                  f"per expert (%), held-out"), out / "routing.png")
        report["routing"] = routing
    else:
        print(f"{out.name}: a dense checkpoint, no routing metrics")
    return report


def geneval_eval(cfg, session, image_tok, s: Settings, out: Path) -> dict:
    prompts = geneval.prompt_set(cfg.data.image_size, s.per_category, seed=EVAL_SEED)
    captions = [p.caption for p in prompts for _ in range(s.samples)]
    images = generate(session, image_tok, captions, cfg, s.seed, progress=s.progress)
    grouped = [images[i * s.samples:(i + 1) * s.samples] for i in range(len(prompts))]
    scored = geneval.score(prompts, grouped)
    for category in geneval.CATEGORIES:  # a grid per category with the checker's verdicts
        idx = [i for i, p in enumerate(prompts) if p.category == category][:8]
        ims = [im for i in idx for im in grouped[i]]
        labels = [("PASS " if ok else "FAIL ") + prompts[i].caption
                  for i in idx for ok in scored["verdicts"][i]]
        save_png(image_grid(ims, labels, cols=2 * s.samples), out / f"geneval_{category}.png")
    return {"per_category": scored["per_category"], "overall": scored["overall"],
            "prompts": len(prompts), "samples_per_prompt": s.samples}


def fid_eval(cfg, session, image_tok, s: Settings, featurize, features: str) -> dict:
    domains = tuple(d for d in cfg.domain_names if d in DOMAINS) or DOMAINS
    data = BuiltinData(cfg.data.image_size, domains, "heldout", seed=EVAL_SEED)
    prompted = [data[i] for i in range(s.fid_n)]
    reference = [data[s.fid_n + i].image for i in range(s.fid_n)]
    generated = generate(session, image_tok, [x.caption for x in prompted], cfg, s.seed,
                         progress=s.progress)
    return {"fid": round(fidlib.fid(featurize, generated, reference), 3),
            "real_vs_real": round(fidlib.fid(featurize, [x.image for x in prompted],
                                             reference), 3),
            "images": s.fid_n, "domains": list(domains), "features": features}


def headline(report: dict) -> dict[str, float]:
    """The few numbers a comparison table shows."""
    row = {"GenEval": report["geneval"]["overall"], "MMU": report["mmu"]["accuracy"],
           "FID": report["fid"]["fid"], "FID floor": report["fid"]["real_vs_real"]}
    row.update({f"GenEval {c}": v for c, v in report["geneval"]["per_category"].items()})
    if "routing" in report:
        layers = report["routing"].values()
        row["modality NMI"] = float(np.mean([x["modality_nmi"] for x in layers]))
        domain = [x["domain_nmi"] for x in layers if x["domain_nmi"] is not None]
        row["domain NMI"] = float(np.mean(domain)) if domain else float("nan")
    return row


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    """Runs as columns, metrics as rows (missing: -)."""
    runs = list(rows)
    metrics = list(dict.fromkeys(k for r in rows.values() for k in r))
    lines = ["| metric | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for m in metrics:
        cells = []
        for r in runs:
            v = rows[r].get(m)
            cells.append("-" if v is None or v != v else
                         f"{v:.1%}" if m.startswith(("GenEval", "MMU")) else f"{v:.3f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(out: Path, reports: dict, meta: dict) -> None:
    rows = {name: headline(r) for name, r in reports.items()}
    write_text(out / "metrics.json", json.dumps({**meta, "runs": reports}, indent=2))
    write_text(out / "metrics.md", markdown_table(rows) + "\n")
    shown = [m for m in ("GenEval", "MMU", "FID", "modality NMI", "domain NMI")
             if any(m in r for r in rows.values())]
    save_png(bar_chart(rows, shown), out / "metrics.png")
