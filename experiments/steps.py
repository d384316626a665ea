"""Quality against training time: the dense model of the preset's defaults trained for more and
more steps from one tokenizer, so that the curve shows what each CPU-minute of stage 2 buys.

    python experiments/steps.py            # tiny preset, CPU, alone: about 65 min
    python experiments/steps.py --smoke    # a micro run of everything (CI)

Each run is `train.py --moe none --dense-steps N` on the preset's defaults (the tiny preset's
with one codebook, ONE_CODEBOOK, and ARCHIVED, as its archived runs were trained), for N =
0.5, 1, 2 and 4 times the experiments' dense steps (2000 on the tiny preset); its warmup and
cosine schedule span its own N steps, so every point is a whole run, not a checkpoint of a
longer one. The first run trains the tokenizer and the others start from a copy of its vq.pt:
stage 1 is paid once, and a run's minutes are its stage 2 alone.
Every model is evaluated by eval.py on the validation draw with EVAL_PROMPTS prompts a
category (two samples each). Table: steps, stage-2 minutes, the last held-out losses, GenEval
per category, MMU per question type and FID. Chart: GenEval (beside the tokenizer ceiling),
MMU (beside the majority answer) and the held-out T2I loss against stage-2 minutes. A second
table puts recipe levers (LEVERS) beside the run of 1x the steps, from the same
tokenizer, so that a lever and more steps are weighed on one scale. Runs use the first seed of
--seeds. Writes docs/experiments/steps.{md,json} and steps_curves.png.
"""
import shutil

from common import (ARCHIVED, Run, SMOKE, cell, evaluate, parse, run_all, table,
                    train_unless_evaluated, write)
from quality import MODEL_HEADER, VALIDATION, model_cells, model_columns

from minimoe.plots import line_chart

FACTORS = (0.5, 1, 2, 4)  # dense steps of each run, as multiples of the experiments'
EVAL_PROMPTS = 40  # GenEval prompts a category: 480 images a model, about +-2 points
# The tiny preset's archived runs were trained with one codebook on the run's own mix; pinned,
# so a rerun matches them.
ONE_CODEBOOK = ["--vq-colours", "0", "--code-features", "none", "--vq-domains", ""]
LEVERS = {  # train.py flags, at 1x the dense steps
    "--mmu-turns 3": ["--mmu-turns", "3"],  # up to 3 questions about the image a MMU row
}


def runs_of(s, seed: int) -> dict[int, Run]:
    """{dense steps: run}; every run after the first reuses the first's tokenizer."""
    preset = ONE_CODEBOOK + ARCHIVED if s.preset == "tiny" else ["--preset", s.preset]
    flags = preset + (SMOKE if s.smoke else [])
    runs, first = {}, None
    for n in sorted({max(1, int(f * s.steps["dense_steps"])) for f in FACTORS}):
        folder = s.work / "steps" / f"seed{seed}" / str(n)
        prepare = None if first is None else _copy_tokenizer(first.folder, folder)
        runs[n] = Run(folder, flags + ["--seed", str(seed), "--moe", "none", "--dense-steps",
                                       str(n), "--sample-every", "0", "--eval-n", "0",
                                       "--out", str(folder)],
                      s.docs / "runs" / "steps" / f"seed{seed}" / str(n), prepare,
                      [] if first is None else [first])
        first = first or runs[n]
    return runs


def lever_runs(s, seed: int, runs: dict[int, Run]) -> dict[str, Run]:
    """{lever: run}: 1x the dense steps with the lever's flags, from the same tokenizer."""
    first, base = next(iter(runs.values())), runs[s.steps["dense_steps"]]
    out = {}
    for name, flags in LEVERS.items():
        folder = s.work / "steps" / f"seed{seed}" / name.strip("-").replace(" ", "-")
        cmd = base.cmd[:base.cmd.index("--out")] + flags + ["--out", str(folder)]
        out[name] = Run(folder, cmd, s.docs / "runs" / "steps" / f"seed{seed}" / folder.name,
                        _copy_tokenizer(first.folder, folder), [first])
    return out


def _copy_tokenizer(source, folder):
    def prepare():
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "vq.pt").exists():
            shutil.copy(source / "vq.pt", folder / "vq.pt")
    return prepare


def stage2_minutes(run: Run) -> float:
    return run.summary()["cost"]["stages"]["dense"]["time_s"] / 60


def last_heldout(run: Run) -> dict:
    checks = run.heldout_log()
    return checks[-1]["heldout"] if checks else {}


def measured(run: Run, report: dict) -> tuple[dict, list[str]]:
    """A run's numbers (eval.py's columns, stage-2 minutes, last held-out losses) and the
    table cells after its label."""
    values, losses = model_columns(report), last_heldout(run)
    found = {"columns": values, "stage2_min": stage2_minutes(run), "heldout": losses,
             "mmu_majority": report["mmu"]["majority_baseline"]}
    return found, ([f"{found['stage2_min']:.1f}", cell([losses.get("t2i")]),
                    cell([losses.get("mmu")])] + model_cells(values))


def main() -> None:
    s = parse(__doc__)
    s.seeds = s.seeds[:1]
    seed = s.seeds[0]
    runs, flags = runs_of(s, seed), tuple(VALIDATION + ["--n", str(EVAL_PROMPTS)])
    levers = lever_runs(s, seed, runs)
    for name, group in (("steps", runs), ("steps-levers", levers)):
        train_unless_evaluated(s, name, seed, group.values())
    run_all(list(runs.values()) + list(levers.values()), s.jobs)
    reports = evaluate(s, "steps", seed, {str(n): r for n, r in runs.items()}, flags)
    lever_reports = evaluate(s, "steps-levers", seed, levers, flags)

    data, rows = {}, []
    for n, run in runs.items():
        data[n], cells = measured(run, reports[str(n)])
        rows.append([str(n)] + cells)
    header = ["stage-2 min", "held-out T2I", "held-out MMU"] + MODEL_HEADER
    md = table(["dense steps"] + header, rows)
    base = s.steps["dense_steps"]
    rows = [[f"{base} steps"] + rows[list(runs).index(base)][1:]]
    for name, run in levers.items():
        data[name], cells = measured(run, lever_reports[name])
        rows.append([f"{base} steps, {name}"] + cells)
    levers_md = table(["run"] + header, rows)

    minutes = [data[n]["stage2_min"] for n in runs]

    def series(column: str) -> list[float]:
        return [100 * data[n]["columns"][MODEL_HEADER.index(column)] for n in runs]
    chart = line_chart({
        "GenEval %": {"model": (minutes, series("GenEval %")),
                      "tokenizer ceiling": (minutes, series("ceiling %"))},
        "MMU %": {"model": (minutes, series("MMU %")),
                  "majority answer": (minutes, [100 * data[n]["mmu_majority"] for n in runs])},
        "held-out T2I loss": {"model": (minutes, [data[n]["heldout"].get("t2i", float("nan"))
                                                  for n in runs])},
    }, "stage-2 minutes", from_zero=False)
    write(s, "steps", f"## Dense steps against quality (seed {seed}, validation draw, "
          f"{EVAL_PROMPTS} prompts a category)\n\n{md}\n\n## Levers at {base} steps, from the "
          f"same tokenizer\n\n{levers_md}", {"runs": data, "seed": seed}, {"curves": chart})
    print(md + "\n\n" + levers_md)


if __name__ == "__main__":
    main()
