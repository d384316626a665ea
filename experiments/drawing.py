"""Drawing, taught nothing else: dense runs on the shapes domain's text-to-image rows alone,
one per image-code lever, so that what a lever does to drawing is measured without the
understanding and text rows that share the main job's steps.

    python experiments/drawing.py            # tiny preset, CPU, alone: about 25 min a seed
    python experiments/drawing.py --smoke    # a micro run of everything (CI)

Each run is `train.py --moe none --domains shapes --batch-mmu 0 --batch-lm 0` on the preset's
defaults (with ARCHIVED, as the archived runs) plus its arm's flags (`arms`). An arm that
names its own tokenizer trains it (stage 1, on shapes); an arm that only changes the
transformer starts from a copy of its tokenizer arm's vq.pt, so that the two differ in the
lever alone. Every model is measured on the validation draw: eval.py (EVAL_PROMPTS prompts a
category, two samples each: the tokenizer ceiling, GenEval, single objects, FID) and
experiments/words.py (every one-object caption drawn DRAWS times, scored for the asked-for
shape; what the shape word is worth in nats with 90 % of the codes masked). Runs use the first
seed of --seeds. Writes docs/experiments/drawing.{md,json}.
"""
import json

import torch
from common import (ARCHIVED, Run, SMOKE, cell, evaluate, parse, run_all, table,
                    train_unless_evaluated, write)
from quality import SHORT, VALIDATION
from steps import ONE_CODEBOOK, _copy_tokenizer, last_heldout, stage2_minutes
from words import measure, per_shape

from minimoe import atomic, inference

EVAL_PROMPTS = 40  # GenEval prompts a category: 480 images a model
SCENES = 200  # single-object scenes behind the shape word's worth
DRAWS = 10  # samples of each of the 48 one-object captions
DRAWING = ["--moe", "none", "--domains", "shapes", "--batch-mmu", "0", "--batch-lm", "0",
           "--sample-every", "0", "--eval-n", "0", "--vq-domains", ""  # tokenizers: shapes too
           ] + ARCHIVED  # as the archived runs
COLOURS = 32  # colours of the factored tokenizer: 32 forms x 32 colours, the default 1024 codes


def arms(smoke: bool) -> dict[str, tuple[list[str], str | None]]:
    """{name: (train.py flags, the arm whose tokenizer it copies, or None: its own)}."""
    factored = ["--vq-colours", str(4 if smoke else COLOURS)]  # the smoke setting has 16 codes
    return {"one codebook": (ONE_CODEBOOK, None),
            "forms x colours": (factored + ["--code-features", "none"], None),
            "forms x colours, shared rows": (factored + ["--code-features", "factors"],
                                             "forms x colours")}


def runs_of(s, seed: int) -> dict[str, Run]:
    preset = [] if s.preset == "tiny" else ["--preset", s.preset]
    flags = preset + (SMOKE if s.smoke else []) + DRAWING + ["--seed", str(seed)]
    runs: dict[str, Run] = {}
    for name, (arm_flags, tokenizer_of) in arms(s.smoke).items():
        folder = s.work / "drawing" / f"seed{seed}" / slug(name)
        source = runs.get(tokenizer_of)
        runs[name] = Run(folder, flags + arm_flags + ["--out", str(folder)],
                         s.docs / "runs" / "drawing" / f"seed{seed}" / slug(name),
                         _copy_tokenizer(source.folder, folder) if source else None,
                         [source] if source else [])
    return runs


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def drawn(s, run: Run, name: str, seed: int, script: str = "drawing") -> dict:
    """words.py's two measures of `run` (cached in `script`'s archive): the share of one-object
    captions drawn with their shape, and the shape word's worth at 90 % masked."""
    archived = s.docs / "runs" / script / f"seed{seed}" / f"words-{slug(name)}.json"
    if archived.exists():
        return json.loads(archived.read_text())
    cfg, session, tok = inference.load(run.folder / "ckpt.pt", "cpu")
    masked = measure(session, tok, cfg, 8 if s.smoke else SCENES)["0.9"]
    shapes = per_shape(session, tok, 1 if s.smoke else DRAWS)
    passed = [share for by_split in shapes.values() for share in by_split.values()]
    result = {"shape_word": masked["other shape"]["object"] - masked["true"]["object"],
              "shapes": shapes, "shapes_mean": sum(passed) / len(passed)}
    atomic.write_text(archived, json.dumps(result, indent=2))
    return result


def measured(s, seed: int, runs: dict[str, Run], script: str = "drawing") -> dict[str, dict]:
    """{arm: its measures} of one seed's runs (evaluations archived under `script`)."""
    reports = evaluate(s, script, seed, runs,
                       tuple(VALIDATION + ["--n", "1" if s.smoke else str(EVAL_PROMPTS)]))
    data = {}
    for name, run in runs.items():
        g, words = reports[name]["geneval"], drawn(s, run, name, seed, script)
        data[name] = {"ceiling": g["ceiling"]["overall"], "geneval": g["overall"],
                      "single_object": g["per_category"]["single_object"],
                      "fid": reports[name]["fid"]["fid"],
                      "heldout_t2i": last_heldout(run).get("t2i"),
                      "stage2_min": stage2_minutes(run), **words}
    return data


def across_seeds(by_seed: dict[int, dict[str, dict]]) -> dict[str, dict[str, list]]:
    """{seed: {arm: measures}} -> {arm: {measure: [its value in each seed, in order]}}."""
    seeds = list(by_seed)
    return {name: {key: [by_seed[seed][name][key] for seed in seeds] for key in measures}
            for name, measures in by_seed[seeds[0]].items()}


def table_of(data: dict[str, dict[str, list]]) -> str:
    """One row an arm, each cell the mean ± sd of its values over the seeds."""
    rows = [[name, cell(d["ceiling"], percent=True), cell(d["heldout_t2i"]),
             cell(d["geneval"], percent=True), cell(d["single_object"], percent=True),
             cell(d["shapes_mean"], percent=True), cell(d["shape_word"], digits=2),
             cell(d["fid"], digits=1), cell(d["stage2_min"], digits=1)]
            for name, d in data.items()]
    return table(["arm", "ceiling %", "held-out T2I", "GenEval %", f"{SHORT['single_object']} %",
                  "one-object captions drawn %", "shape word (nats)", "FID", "stage-2 min"], rows)


def train_and_table(s, script: str, every: dict[int, dict[str, Run]], title: str) -> None:
    """Train what `every` ({seed: {arm: run}}) lacks, measure each arm over the seeds and
    write `script`'s table (headed `title`) and JSON."""
    for seed, runs in every.items():  # words.py needs the checkpoints too
        train_unless_evaluated(s, script, seed, runs.values())
    run_all([r for runs in every.values() for r in runs.values()], s.jobs)
    data = across_seeds({seed: measured(s, seed, runs, script) for seed, runs in every.items()})
    md = table_of(data)
    write(s, script, f"## {title}\n\n{md}", {"runs": data, "seeds": s.seeds}, {})
    print(md)


def main() -> None:
    s = parse(__doc__)
    torch.set_num_threads(2)
    train_and_table(s, "drawing", {seed: runs_of(s, seed) for seed in s.seeds},
                    f"Drawing alone (mean ± sd over seeds, validation draw, {EVAL_PROMPTS} "
                    f"prompts a category; one-object captions: each of the 48 drawn {DRAWS} "
                    f"times, the share with the asked-for shape, mean over shapes and caption "
                    f"splits)")


if __name__ == "__main__":
    main()
