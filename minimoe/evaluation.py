"""Evaluating a model: the quick check every training run ends with, and the full evaluation
that eval.py runs for one or several runs.

Quick check (`quick_eval`): MMU exact match and caption-colour agreement of generated images on
held-out shapes, each beside its chance level.
Full evaluation (`evaluate`):
- GenEval-style accuracy (geneval.py): `samples` images for each of `per_category` held-out
  prompts in six categories, judged by the procedural checker.
- FID (fid.py) of images generated from held-out captions of every built-in domain against
  other held-out real images, beside the real-vs-real FID of the same sizes (the floor).
- MMU exact-match accuracy on held-out shapes questions, per question type.
- Routing specialisation for MoE checkpoints (metrics.RoutingStats on held-out batches).
Held-out task losses (`heldout_losses`) measure the conversion and the end of MoE training.
Nothing here trains: this module imports no part of the training loop.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import fid as fidlib
from . import geneval
from .atomic import save_png, write_text
from .batches import Batcher
from .config import Config
from .data import DOMAINS, BuiltinData, open_source
from .inference import Session, generate
from .losses import labelled_losses
from .metrics import RoutingStats, colour_report, mmu_report
from .plots import bar_chart, image_grid, routing_heatmaps
from .tokenizers import tensor_to_images

EVAL_SEED = 1234  # the held-out draw of every evaluation, fixed so runs are comparable
# Another held-out draw (prompts, FID and MMU images) for tuning: tuning on EVAL_SEED's draw
# would make its numbers optimistic.
VALIDATION_SEED = 7
DRAWS = {"evaluation": EVAL_SEED, "validation": VALIDATION_SEED}
CONVERSION_BATCHES = 4  # held-out batches that measure the loss jump at conversion
ROUTING_BATCHES = 8  # held-out batches behind routing.json / routing.png


# --- the quick check ------------------------------------------------------------------------

def heldout_shapes(cfg: Config, n: int, draw: int = EVAL_SEED) -> list:
    """The first n held-out shapes samples of a fixed draw (default: the evaluation's)."""
    data = BuiltinData(cfg.data.image_size, ("shapes",), "heldout", seed=draw)
    return [data[i] for i in range(n)]


@torch.no_grad()
def mmu_eval(session: Session, image_tok, samples: list, progress: bool = True) -> dict:
    """Exact-match answers to every question of `samples` (metrics.mmu_report)."""
    codes = image_tok.encode([s.image for s in samples])
    questions, answers, rows = [], [], []
    for i, s in enumerate(samples):
        for q, a in s.qa:
            questions.append(q), answers.append(a), rows.append(i)
    predictions = []
    for i in tqdm(range(0, len(questions), 64), desc="answering", disable=not progress):
        predictions += session.answer(codes[rows[i:i + 64]], questions[i:i + 64])
    return mmu_report(predictions, answers)


@torch.no_grad()
def quick_eval(model, vocab, image_tok, cfg: Config, n: int, progress: bool = True) -> dict:
    """MMU exact-match accuracy and caption-colour agreement of generated images, both on
    held-out built-in shapes, each beside its chance level."""
    session = Session(cfg, model, vocab)
    samples = heldout_shapes(cfg, n)
    images = generate(session, image_tok, [s.caption for s in samples], EVAL_SEED,
                      progress=progress)
    return {"mmu": mmu_eval(session, image_tok, samples, progress),
            "colours": colour_report(images, [s.objects for s in samples]),
            "colours_real": colour_report([s.image for s in samples],
                                          [s.objects for s in samples])["matched"]}


def format_report(s: dict) -> str:
    """The MMU and colour lines of a quick_eval result."""
    m, c = s["mmu"], s["colours"]
    lines = [f"MMU        exact match {m['accuracy']:.1%} on {m['n']} held-out questions "
             f"(blind majority baseline {m['majority_baseline']:.1%})"]
    lines += [f"  {t:<9} {r['accuracy']:.1%} (baseline {r['majority_baseline']:.1%}, n={r['n']})"
              for t, r in m["per_type"].items()]
    lines += [f"colours    generated images show all caption colours {c['matched']['all']:.1%}, "
              f"exactly {c['matched']['exact']:.1%} (shifted captions: {c['chance']['all']:.1%},"
              f" {c['chance']['exact']:.1%}; real images: {s['colours_real']['all']:.1%})"]
    return "\n".join(lines)


# --- held-out losses and routing -------------------------------------------------------------

def heldout_batches(cfg: Config, vocab, image_tok, n: int) -> list:
    # One question a row, as inference asks, and the cosine masking schedule, so that runs
    # with and without packed turns (--mmu-turns) or another --mask-power are measured on the
    # same rows.
    cfg = replace(cfg, train=replace(cfg.train, mmu_turns=1, mask_power=1.0))
    batcher = Batcher(cfg, open_source(cfg, "heldout", vocab.merges), vocab, image_tok)
    return [batcher(i) for i in range(n)]


@torch.no_grad()
def mean_losses(model, batches, device) -> dict[str, float]:
    """Task losses averaged over `batches`, in eval mode."""
    model.eval()
    sums: dict[str, float] = {}
    for b in batches:
        b = b.to(device)
        for k, v in labelled_losses(model, b)[1].items():
            sums[k] = sums.get(k, 0.0) + v.item() / len(batches)
    return {k: round(v, 4) for k, v in sums.items()}


def heldout_losses(model, cfg: Config, vocab, image_tok, device) -> dict[str, float]:
    """Task losses on the fixed held-out batches that also measure the conversion."""
    return mean_losses(model, heldout_batches(cfg, vocab, image_tok, CONVERSION_BATCHES), device)


class HeldoutCheck:
    """heldout_losses of `model` as it trains (--heldout-every), its batches made once."""

    def __init__(self, model, cfg: Config, vocab, image_tok, device):
        self.model, self.device = model, device
        self.make = lambda: heldout_batches(cfg, vocab, image_tok, CONVERSION_BATCHES)
        self.batches = None

    def __call__(self) -> dict[str, float]:
        self.batches = self.batches or self.make()
        return mean_losses(self.model, self.batches, self.device)


@torch.no_grad()
def collect_routing(model, cfg: Config, vocab, image_tok, device,
                    n_batches: int = ROUTING_BATCHES) -> dict:
    """Routing statistics (metrics.RoutingStats.summary) of a MoE on held-out batches; for
    taylor also the share of text slots in text experts and of image slots in image experts."""
    stats = RoutingStats([i for i, _ in model.moe_layers()], cfg.moe.num_experts,
                         cfg.domain_names)
    model.eval()
    for b in heldout_batches(cfg, vocab, image_tok, n_batches):
        b = b.to(device)
        stats.add(model(b.tokens_BL, b.groups_BL, domain_BL=b.domain_BL).routing)
    summary = stats.summary()
    if cfg.moe.moe == "taylor":
        n = cfg.moe.text_experts
        for layer in summary.values():
            layer["text_to_text_experts"] = round(sum(layer["text"][:n]), 4)
            layer["image_to_image_experts"] = round(sum(layer["image"][n:]), 4)
    return summary


def format_routing(summary: dict) -> str:
    lines = []
    for name, s in summary.items():
        extra = (f", text->text experts {s['text_to_text_experts']:.0%}, image->image experts "
                 f"{s['image_to_image_experts']:.0%}" if "text_to_text_experts" in s else "")
        lines.append(f"routing    {name}: modality NMI {s['modality_nmi']:.3f}, domain NMI "
                     f"{s['domain_nmi'] if s['domain_nmi'] is not None else '-'}, max load "
                     f"+{s['max_violation']:.0%}{extra}")
    return "\n".join(lines)


# --- the full evaluation --------------------------------------------------------------------

@dataclass
class Settings:
    per_category: int = 20  # GenEval prompts per category
    samples: int = 2  # images per GenEval prompt
    fid_n: int = 300  # generated (and real) images per FID set
    mmu_n: int = 120  # held-out shapes images whose questions are asked
    seed: int = 0  # sampling seed
    progress: bool = True
    draw: int = EVAL_SEED  # which held-out prompts and images (DRAWS)
    steps: int | None = None  # MaskGIT sampling; None: the run's --sample-steps ...
    guidance: float | None = None  # ... --guidance ...
    choice_temperature: float | None = None  # ... --choice-temperature ...
    guidance_schedule: str | None = None  # ... --guidance-schedule ...
    code_temperature: float | None = None  # ... and --code-temperature

    def images(self, session, image_tok, captions: list[str]) -> list:
        """Generated images for `captions` with these sampling settings."""
        return generate(session, image_tok, captions, self.seed, steps=self.steps,
                        guidance=self.guidance, choice_temperature=self.choice_temperature,
                        guidance_schedule=self.guidance_schedule,
                        code_temperature=self.code_temperature, progress=self.progress)


def evaluate(cfg, session, image_tok, s: Settings, out: Path, featurize, features: str) -> dict:
    """Every metric of one run; writes its picture files into `out`. featurize(images) gives
    the FID features, named by `features` in the report."""
    out.mkdir(parents=True, exist_ok=True)
    report = {"geneval": geneval_eval(cfg, session, image_tok, s, out),
              "fid": fid_eval(cfg, session, image_tok, s, featurize, features),
              "mmu": mmu_eval(session, image_tok, heldout_shapes(cfg, s.mmu_n, s.draw),
                              s.progress)}
    if session.model.moe_layers():
        routing = collect_routing(session.model, cfg, session.vocab, image_tok, session.device)
        save_png(routing_heatmaps(routing, f"{out.name}: share of each group's routed slots "
                                  f"per expert (%), held-out"), out / "routing.png")
        report["routing"] = routing
    else:
        print(f"{out.name}: a dense checkpoint, no routing metrics")
    return report


def tokenizer_ceiling(image_tok, image_size: int, per_category: int,
                      seed: int = EVAL_SEED) -> dict:
    """The GenEval-style checker on the tokenizer's reconstructions of the prompts' real
    images (geneval.ceiling): the cap every generated image works under."""
    def reconstruct(images):
        return tensor_to_images(image_tok.decode(image_tok.encode(images)))
    return geneval.ceiling(reconstruct, image_size, per_category, seed)


def geneval_eval(cfg, session, image_tok, s: Settings, out: Path) -> dict:
    prompts = geneval.prompt_set(cfg.data.image_size, s.per_category, seed=s.draw)
    captions = [p.caption for p in prompts for _ in range(s.samples)]
    images = s.images(session, image_tok, captions)
    grouped = [images[i * s.samples:(i + 1) * s.samples] for i in range(len(prompts))]
    scored = geneval.score(prompts, grouped)
    for category in geneval.CATEGORIES:  # a grid per category with the checker's verdicts
        idx = [i for i, p in enumerate(prompts) if p.category == category][:8]
        ims = [im for i in idx for im in grouped[i]]
        labels = [("PASS " if ok else "FAIL ") + prompts[i].caption
                  for i in idx for ok in scored["verdicts"][i]]
        save_png(image_grid(ims, labels, cols=2 * s.samples), out / f"geneval_{category}.png")
    return {"per_category": scored["per_category"], "overall": scored["overall"],
            "exact": scored["exact"], "exact_per_category": scored["exact_per_category"],
            "objects_found": scored["objects_found"],
            "prompts": len(prompts), "samples_per_prompt": s.samples,
            "ceiling": tokenizer_ceiling(image_tok, cfg.data.image_size, s.per_category,
                                         s.draw)}


def fid_eval(cfg, session, image_tok, s: Settings, featurize, features: str) -> dict:
    domains = tuple(d for d in cfg.domain_names if d in DOMAINS) or DOMAINS
    data = BuiltinData(cfg.data.image_size, domains, "heldout", seed=s.draw)
    prompted = [data[i] for i in range(s.fid_n)]
    reference = [data[s.fid_n + i].image for i in range(s.fid_n)]
    generated = s.images(session, image_tok, [x.caption for x in prompted])
    return {"fid": round(fidlib.fid(featurize, generated, reference), 3),
            "real_vs_real": round(fidlib.fid(featurize, [x.image for x in prompted],
                                             reference), 3),
            "images": s.fid_n, "domains": list(domains), "features": features}


def headline(report: dict) -> dict[str, float]:
    """The few numbers a comparison table shows."""
    row = {"GenEval": report["geneval"]["overall"]}
    if "exact" in report["geneval"]:  # reports written before it was measured lack it
        row["GenEval exact (nothing else drawn)"] = report["geneval"]["exact"]
    if "ceiling" in report["geneval"]:
        row["GenEval ceiling"] = report["geneval"]["ceiling"]["overall"]
    row.update({"MMU": report["mmu"]["accuracy"], "FID": report["fid"]["fid"],
                "FID floor": report["fid"]["real_vs_real"]})
    row.update({f"GenEval {c}": v for c, v in report["geneval"]["per_category"].items()})
    if "routing" in report:
        layers = report["routing"].values()
        row["modality NMI"] = float(np.mean([x["modality_nmi"] for x in layers]))
        domain = [x["domain_nmi"] for x in layers if x["domain_nmi"] is not None]
        row["domain NMI"] = float(np.mean(domain)) if domain else float("nan")
    if "cost" in report:  # what a token costs the final model, and what its training took
        c = report["cost"]
        row["active params (M)"] = c["active_params"] / 1e6
        row["train MFLOPs a token"] = c["train_flops_per_token"] / 1e6
        for stage, s in c["stages"].items():
            row[f"{stage} s a step"] = s["s_per_step"]
            row[f"{stage} tokens/s"] = s["tok_per_s"]
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
                         f"{v:.1%}" if m.startswith(("GenEval", "MMU")) else
                         f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(out: Path, reports: dict, meta: dict) -> None:
    rows = {name: headline(r) for name, r in reports.items()}
    write_text(out / "metrics.json", json.dumps({**meta, "runs": reports}, indent=2))
    write_text(out / "metrics.md", markdown_table(rows) + "\n")
    shown = [m for m in ("GenEval", "MMU", "FID", "modality NMI", "domain NMI")
             if any(m in r for r in rows.values())]
    save_png(bar_chart(rows, shown), out / "metrics.png")
