"""Experiment 6: hard modality splits (routing groups, untied attention), Drop-Upcycling, and
what each arm costs, at equal training steps.

    python experiments/grouping.py                # 3 seeds, tiny preset, CPU
    python experiments/grouping.py --recipe study # the first recipe, of the archived tables
    python experiments/grouping.py --smoke        # a micro run of everything (CI)

Per seed, every arm starts from the seed's dense model and trains the same MoE steps on the
same batches: the dense model continued; `taylor`, `random` and `naive`, each as is and with
--router-groups modality (a token routes only among its modality's experts, MoMa-style);
`taylor` with --untie-attention modality (text and image copies of attention and norms,
Mixture-of-Transformers-style); and `drop` (Drop-Upcycling). The arms without the new flags
are the method comparison's runs (experiments/methods.py), shared with it.

Tables: GenEval per category, MMU per answer type, FID, held-out losses and modality NMI at the
end, and each arm's cost: active parameters and training FLOPs a token (minimoe/cost.py) and
the measured seconds a MoE step. The charts draw the held-out losses of the MoE stage
(--heldout-every) against the training FLOPs and against the training seconds spent after the
dense stage, the dense model continued beside the MoE arms.
Writes docs/experiments/defaults/grouping.{md,json} and grouping_{flops,seconds}.png
(docs/experiments/ with --recipe study).
"""
from common import (arm, cell, dense_continued, evaluate, parse, run_all, table,
                    train_unless_evaluated, write)
from methods import numbers

from minimoe.geneval import CATEGORIES
from minimoe.plots import line_chart

GROUPED = ["--router-groups", "modality"]
ARMS = {
    "taylor": ["--moe", "taylor"],
    "taylor-grouped": ["--moe", "taylor", *GROUPED],
    "random": ["--moe", "random"],
    "random-grouped": ["--moe", "random", *GROUPED],
    "naive": ["--moe", "naive"],
    "naive-grouped": ["--moe", "naive", *GROUPED],
    "taylor-untied": ["--moe", "taylor", "--untie-attention", "modality"],
    "drop": ["--moe", "drop"],
}
BASELINE = "dense-continued"
TASKS = ("t2i", "mmu")  # the held-out losses drawn and tabled
MMU_TYPES = ("colour", "count", "shape", "other")


def runs_of(s, seed) -> dict:
    runs = {BASELINE: dense_continued(s, seed)}
    runs.update({name: arm(s, seed, name, flags) for name, flags in ARMS.items()})
    for r in runs.values():  # an archive from before the held-out checks has no curves
        if not r.trained and r.done and not r.heldout_log():
            r.local = True
    return runs


def curve(run, dense_steps: int, task: str, x: str) -> tuple[list[float], list[float]]:
    """(training FLOPs or seconds after the dense stage, held-out loss) at each check."""
    cost = run.summary()["cost"]
    stage = "dense" if "dense" in cost["stages"] and "moe" not in cost["stages"] else "moe"
    per_step = cost["stages"][stage]["tokens_per_step"] * cost["train_flops_per_token"]
    points = [r for r in run.heldout_log() if r["stage"] == stage
              and (stage == "moe" or r["step"] > dense_steps)]
    first = 0 if stage == "moe" else dense_steps
    xs = [(r["step"] - first) * per_step if x == "flops" else r["time_s"] for r in points]
    return xs, [r["heldout"][task] for r in points]


def extra_numbers(report: dict, run) -> dict:
    """What this experiment tables beyond the method comparison's headline numbers."""
    cost = report["cost"]
    checks = run.heldout_log()
    last_heldout = checks[-1]["heldout"] if checks else {}
    mmu = report["mmu"]["per_type"]
    return {**{f"geneval_{c}": report["geneval"]["per_category"][c] for c in CATEGORIES},
            **{f"mmu_{t}": mmu[t]["accuracy"] if t in mmu else None for t in MMU_TYPES},
            # the last held-out check of the run's last stage: the same measure for the dense
            # arm (summary.json's held-out losses are the MoE stage's alone)
            **{f"loss_{t}": last_heldout.get(t) for t in TASKS},
            "active_params": cost["active_params"], "params": cost["params"],
            "flops_per_token": cost["train_flops_per_token"],
            "s_per_step": cost["stages"].get("moe", cost["stages"].get("dense", {}))
            .get("s_per_step")}


def main() -> None:
    s = parse(__doc__, recipes=True)
    runs = {seed: runs_of(s, seed) for seed in s.seeds}
    for seed, rs in runs.items():
        train_unless_evaluated(s, "grouping", seed, rs.values())
    run_all([r for rs in runs.values() for r in rs.values()], s.jobs)
    found = {}  # arm -> seed -> numbers
    for seed, rs in runs.items():
        reports = evaluate(s, "grouping", seed, rs)
        for name, run in rs.items():
            found.setdefault(name, {})[seed] = {**numbers(reports[name], run),
                                                **extra_numbers(reports[name], run)}

    def column(name, key):
        return [found[name][seed][key] for seed in s.seeds]
    arms = list(found)
    quality = [("GenEval %", "geneval", True, 1), ("FID", "fid", False, 1),
               ("MMU %", "mmu", True, 1), ("held-out T2I loss", "loss_t2i", False, 3),
               ("held-out MMU loss", "loss_mmu", False, 3),
               ("modality NMI", "modality_nmi", False, 3)]
    costs = [("active params (M)", "active_params", 1e-6, 3),
             ("train MFLOPs a token", "flops_per_token", 1e-6, 2),
             ("s a step", "s_per_step", 1, 3)]
    rows = [[a] + [cell(column(a, k), pct, n) for _, k, pct, n in quality]
            + [cell([v * f if v is not None else None for v in column(a, k)], digits=n)
               for _, k, f, n in costs]
            for a in arms]
    over = "seed " + str(s.seeds[0]) if len(s.seeds) == 1 else \
        "mean ± sd over seeds " + ", ".join(map(str, s.seeds))
    md = (f"## Modality splits and Drop-Upcycling at equal steps ({over})\n\n"
          + table(["arm"] + [q[0] for q in quality] + [c[0] for c in costs], rows))
    per = [(f"GenEval {c} %", f"geneval_{c}") for c in CATEGORIES] + \
          [(f"MMU {t} %", f"mmu_{t}") for t in MMU_TYPES]
    md += (f"\n\n## GenEval per category and MMU per answer type ({over})\n\n"
           + table(["arm"] + [p[0] for p in per],
                   [[a] + [cell(column(a, k), True) for _, k in per] for a in arms]))

    dense_steps, seed0 = s.steps["dense_steps"], s.seeds[0]
    charts = {x: line_chart({f"held-out {t} loss": {a: curve(runs[seed0][a], dense_steps, t, x)
                                                    for a in arms} for t in TASKS},
                            "training FLOPs after the dense stage" if x == "flops" else
                            "training seconds after the dense stage", from_zero=False)
              for x in ("flops", "seconds")}
    write(s, "grouping", md + f"\n\nThe charts show seed {seed0}.",
          {"arms": found, "seeds": s.seeds, "steps": s.steps}, charts)
    print(md)


if __name__ == "__main__":
    main()
