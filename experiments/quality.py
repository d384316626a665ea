"""Quality levers: what the tokenizer, the training recipe and the sampler each buy the tiny
model, all measured on the validation draw.

    python experiments/quality.py --jobs 2         # tiny preset, CPU: about 100 min
    python experiments/quality.py --smoke          # a micro run of everything (CI)

Every number comes from the validation draw (evaluation.VALIDATION_SEED: other prompts and
other held-out images than the evaluation's fixed draw), so choosing defaults by these tables
does not tune on the reported numbers. Three tables:
1. tokenizer: stage 1 alone per lever and seed. The ceiling is the GenEval-style checker on
   the VQ reconstructions of TOKENIZER_PROMPTS real images per category: no model drawing
   through that decoder can score more.
2. recipe: a dense run (train.py --moe none: stages 1 and 2) per lever, evaluated by eval.py:
   ceiling, GenEval per category, MMU per question type, FID and the run's wall time.
3. sampler: the `after` recipe's model under each sampler setting.
The tokenizer rows run on every seed of --seeds (0,1,2); the recipe rows on the first only.
Writes docs/experiments/quality.{md,json} and quality_samples.png (the same validation prompts
drawn by the `before` model and by the recipe's last row, `now`).
"""
import json
import os
import shutil
import time

import torch
from common import (Run, cell, config_of, drawn_with_verdicts, evaluate, parse, run_all, table,
                    write)

from minimoe import evaluation, geneval, inference
from minimoe.plots import image_grid
from minimoe.data import DOMAINS, BuiltinData
from minimoe.run import RunFiles, batch_images, tokenizer_stage
from minimoe.vq import psnr

TOKENIZER_PROMPTS = 40  # real images per GenEval category behind each tokenizer ceiling
DOMAIN_IMAGES = 200  # held-out images per domain behind each tokenizer's PSNR by domain
SAMPLE_PROMPTS = 12  # validation prompts in the before/after picture

BEFORE = ["--vq-codes", "256", "--vq-edge-weight", "0"]  # the tokenizer of the first release
AFTER = ["--vq-codes", "1024", "--vq-edge-weight", "1"]

PATCH = ["--vq-encoder", "patch"]  # a code sees its own 4x4 patch only
SHAPES_TWICE = ["--domains", "shapes:2,glyphs,patterns"]  # shapes are half of every batch
SHAPES_SIX = ["--vq-domains", "shapes:6,glyphs,patterns"]  # stage 1 alone: 3/4 of its images
FORMS = ["--vq-colours", "32"]  # a code is one of 32 forms x one of 32 colours

PRESET_TOKENIZER = AFTER + PATCH + SHAPES_TWICE + FORMS + SHAPES_SIX  # the presets' own
TOKENIZER = {
    "256 codes, MSE": BEFORE,
    "256 codes, MSE + edge term": ["--vq-codes", "256", "--vq-edge-weight", "1"],
    "1024 codes, MSE": ["--vq-codes", "1024", "--vq-edge-weight", "0"],
    "1024 codes, MSE + edge term": AFTER,
    "1024 codes, MSE + edge term, patch encoder": AFTER + PATCH,
    # the model's mix (shapes twice a round) against a stage 1 of its own with shapes 6 times
    "+ shapes twice a round": AFTER + PATCH + SHAPES_TWICE,
    "+ shapes twice a round, tokenizer on shapes 6 times": AFTER + PATCH + SHAPES_TWICE
    + SHAPES_SIX,
    "+ shapes twice a round, forms x colours": AFTER + PATCH + SHAPES_TWICE + FORMS,
    "+ shapes twice a round, forms x colours, tokenizer on shapes 6 times": PRESET_TOKENIZER,
    # what stage 1's share of the main job's 15 minutes buys: fewer steps, narrower convs
    "the presets' tokenizer, 1200 steps": PRESET_TOKENIZER + ["--vq-steps", "1200"],
    "the presets' tokenizer, conv width 64": PRESET_TOKENIZER + ["--vq-channels", "64"],
    "the presets' tokenizer, bf16 autocast": PRESET_TOKENIZER + ["--vq-autocast", "bf16"],
}
OLD_SAMPLER = ["--steps", "8", "--guidance", "2", "--choice-temperature", "4.5"]
NEW_SAMPLER = ["--steps", "8", "--guidance", "5", "--choice-temperature", "4.5"]
BPE = ["--text-vocab", "512", "--text-len", "24"]  # 512 text ids: merges of the training texts
GRID = ["--image-pos", "rotary2d"]  # 2-D rotary: codes know their row and column offsets
CAPTIONS = ["--caption-share", "0.5"]  # half the MMU rows caption their image
RUNS = {  # the dense runs: train.py flags (common.STUDY pins what they leave out)
    "before": BEFORE,
    "edge": ["--vq-codes", "256", "--vq-edge-weight", "1"],
    "after": AFTER,
    "after-bpe": AFTER + BPE,
    "patch": AFTER + BPE + PATCH,
    "patch-grid": AFTER + BPE + PATCH + GRID,
    "patch-grid-captions": AFTER + BPE + PATCH + GRID + CAPTIONS,
    # the recipe's last row; the tokenizer table measures forms x colours and stage 1's own mix
    "now": AFTER + BPE + PATCH + GRID + CAPTIONS + SHAPES_TWICE,
}
RECIPE = {  # table row: (run, eval.py sampler flags)
    "before": ("before", OLD_SAMPLER),
    "before, tuned sampler": ("before", NEW_SAMPLER),
    "256 codes, edge term": ("edge", NEW_SAMPLER),
    "after: 1024 codes, edge term": ("after", NEW_SAMPLER),
    "after + 512 BPE text ids, 24-token text block": ("after-bpe", NEW_SAMPLER),
    "+ patch encoder": ("patch", NEW_SAMPLER),
    "+ 2-D rotary": ("patch-grid", NEW_SAMPLER),
    "+ half the MMU rows captioning": ("patch-grid-captions", NEW_SAMPLER),
    "+ shapes twice a round (the recipe's last row)": ("now", NEW_SAMPLER),
}
SAMPLER = {  # eval.py flags on the `after` model
    "8 steps, guidance 2, temperature 4.5": OLD_SAMPLER,
    "8 steps, guidance 5, temperature 4.5": NEW_SAMPLER,
    "8 steps, guidance 8, temperature 4.5": ["--steps", "8", "--guidance", "8",
                                             "--choice-temperature", "4.5"],
    "8 steps, guidance 5, temperature 1": ["--steps", "8", "--guidance", "5",
                                           "--choice-temperature", "1"],
    "16 steps, guidance 5, temperature 4.5": ["--steps", "16", "--guidance", "5",
                                              "--choice-temperature", "4.5"],
    "8 steps, guidance 12, temperature 4.5": ["--steps", "8", "--guidance", "12",
                                              "--choice-temperature", "4.5"],
    "16 steps, guidance 8, temperature 4.5": ["--steps", "16", "--guidance", "8",
                                              "--choice-temperature", "4.5"],
}
VALIDATION = ["--draw", "validation"]
MMU_TYPES = ("colour", "shape", "count", "position")
SHORT = {"single_object": "single", "two_objects": "two", "counting": "count",
         "colours": "colours", "position": "position", "attribute_binding": "binding"}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def tokenizer_row(s, name: str, flags: list[str], seed: int) -> dict:
    """Stage 1 alone (in this process, all cores) and its ceiling on the validation draw;
    archived in DOCS/runs/quality-tokenizer."""
    archived = s.docs / "runs" / "quality-tokenizer" / f"{slug(name)}-seed{seed}.json"
    if archived.exists():
        return json.loads(archived.read_text())
    cfg = config_of(s.flags() + flags + ["--seed", str(seed)])
    folder = s.work / "tokenizer" / slug(name) / f"seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)  # a reused vq.pt would not time the training
    folder.mkdir(parents=True)
    t0 = time.time()
    image_tok, _, report = tokenizer_stage(cfg, RunFiles(folder), "cpu", progress=False)
    wall = time.time() - t0
    per_category = 2 if s.smoke else TOKENIZER_PROMPTS
    ceiling = evaluation.tokenizer_ceiling(image_tok, cfg.data.image_size, per_category,
                                           evaluation.VALIDATION_SEED)
    row = {"ceiling": ceiling["overall"], "per_category": ceiling["per_category"],
           "psnr": report["psnr"], "used_fraction": report["used_fraction"], "wall_s": wall,
           "psnr_per_domain": domain_psnr(image_tok, cfg.data.image_size,
                                          4 if s.smoke else DOMAIN_IMAGES)}
    archived.parent.mkdir(parents=True, exist_ok=True)
    archived.write_text(json.dumps(row, indent=2))
    print(f"  tokenizer {name}, seed {seed}: ceiling {row['ceiling']:.1%}, "
          f"PSNR {row['psnr']:.2f}, {wall:.0f} s", flush=True)
    return row


def domain_psnr(image_tok, image_size: int, n: int) -> dict[str, float]:
    """Held-out PSNR of reconstructions per built-in domain, on n validation images each: what
    a tokenizer weighted towards one domain costs the others."""
    out = {}
    with torch.no_grad():
        for domain in DOMAINS:
            data = BuiltinData(image_size, domain, "heldout", seed=evaluation.VALIDATION_SEED)
            x = batch_images(data, 0, n)
            out[domain] = psnr(image_tok.decode(image_tok.encode(x)), x)
    return out


def recipe_run(s, name: str, flags: list[str], seed: int) -> Run:
    folder = s.work / "quality" / name / f"seed{seed}"
    return Run(folder, s.flags() + flags + ["--seed", str(seed), "--eval-n", "0", "--out",
                                            str(folder)],
               s.docs / "runs" / "quality" / name / f"seed{seed}")


def evaluated(s, run: str, runs: dict, sampler: list[str], seed: int) -> dict:
    """eval.py on the validation draw with `sampler`, cached per (run, sampler)."""
    name = f"quality-{run}-{slug(' '.join(sampler))}"
    return evaluate(s, name, seed, {run: runs[run]}, tuple(VALIDATION + sampler))[run]


def model_columns(report: dict) -> list[float]:
    g, mmu = report["geneval"], report["mmu"]
    per_type = mmu["per_type"]
    return ([g["ceiling"]["overall"], g["overall"]]
            + [g["per_category"][c] for c in geneval.CATEGORIES]
            + [mmu["accuracy"]] + [per_type.get(t, {}).get("accuracy") for t in MMU_TYPES]
            + [report["fid"]["fid"]])


MODEL_HEADER = (["ceiling %", "GenEval %"] + [f"{SHORT[c]} %" for c in geneval.CATEGORIES]
                + ["MMU %"] + [f"MMU {t} %" for t in MMU_TYPES] + ["FID"])


def model_cells(values: list[float]) -> list[str]:
    """One seed's columns: percentages, then the FID."""
    return [cell([v], percent=True) for v in values[:-1]] + [cell(values[-1:], digits=1)]


def samples_picture(before: Run, now: Run):
    """The same validation prompts drawn by both models (each with its sampler), one sample
    each, with the checker's verdicts."""
    loaded = [(name, inference.load(r.folder / "ckpt.pt", "cpu"), sampler) for name, r, sampler
              in (("before", before, OLD_SAMPLER), ("now", now, NEW_SAMPLER))]
    prompts = geneval.prompt_set(loaded[0][1][0].data.image_size, 2, evaluation.VALIDATION_SEED)
    prompts = prompts[::max(1, len(prompts) // SAMPLE_PROMPTS)][:SAMPLE_PROMPTS]
    images, labels = [], []
    for name, (_, session, image_tok), sampler in loaded:
        drawn, named = drawn_with_verdicts(name, session, image_tok, prompts,
                                           steps=int(sampler[1]), guidance=float(sampler[3]),
                                           choice_temperature=float(sampler[5]))
        images += drawn
        labels += named
    return image_grid(images, labels, cols=max(1, len(prompts) // 2))


def main() -> None:
    s = parse(__doc__)
    torch.set_num_threads(os.cpu_count() or 1)
    data = {"tokenizer": {}, "recipe": {}, "sampler": {}}
    seed = s.seeds[0]
    runs = {name: recipe_run(s, name, flags, seed) for name, flags in RUNS.items()}
    run_all(list(runs.values()), s.jobs)
    rows = []
    for name, (run, sampler) in RECIPE.items():
        values = model_columns(evaluated(s, run, runs, sampler, seed))
        wall = runs[run].summary()["wall_s"]
        data["recipe"][name] = {"columns": values, "wall_s": wall}
        rows.append([name] + model_cells(values) + [f"{wall / 60:.1f}"])
    recipe_md = table(["recipe"] + MODEL_HEADER + ["train min"], rows)
    print(recipe_md)

    rows = []
    for name, sampler in SAMPLER.items():
        data["sampler"][name] = model_columns(evaluated(s, "after", runs, sampler, seed))
        rows.append([name] + model_cells(data["sampler"][name]))
    sampler_md = table(["sampler (after model)"] + MODEL_HEADER, rows)
    print(sampler_md)

    rows = []
    for name, flags in TOKENIZER.items():
        results = [tokenizer_row(s, name, flags, seed) for seed in s.seeds]
        data["tokenizer"][name] = results
        rows.append([name, cell([r["ceiling"] for r in results], percent=True)]
                    + [cell([r["per_category"][c] for r in results], percent=True)
                       for c in geneval.CATEGORIES]
                    + [cell([r["psnr"] for r in results], digits=2)]
                    + [cell([r.get("psnr_per_domain", {}).get(d) for r in results], digits=2)
                       for d in DOMAINS]
                    + [cell([r["wall_s"] for r in results], digits=0)])
    tokenizer_md = table(["tokenizer", "ceiling %"] + [f"{SHORT[c]} %" for c in
                                                       geneval.CATEGORIES]
                         + ["PSNR dB"] + [f"{d} dB" for d in DOMAINS] + ["VQ s"], rows)
    print(tokenizer_md)

    # the picture needs both checkpoints; from the archive alone the committed one stays
    drawn = runs["before"].trained and runs["now"].trained
    pictures = {"samples": samples_picture(runs["before"], runs["now"]) if drawn else None}
    write(s, "quality", "## Tokenizer levers (stage 1 alone; ceiling = the checker on VQ "
          f"reconstructions of real images, validation draw; mean ± sd over seeds)\n\n"
          f"{tokenizer_md}\n\n## Recipe levers (dense model at the end of stage 2, seed "
          f"{seed}, validation draw; train min: the run's wall time, with as many runs at once as "
          f"--jobs gave when it was trained)\n\n{recipe_md}\n\n## Sampler settings (the `after` "
          f"model, validation draw)\n\n{sampler_md}", data, pictures)


if __name__ == "__main__":
    main()
