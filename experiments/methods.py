"""Experiment 1: how to turn the dense model into a MoE, at equal training steps.

    python experiments/methods.py                 # 3 seeds, tiny preset, CPU: about 2 hours
    python experiments/methods.py --jobs 2        # two runs at once
    python experiments/methods.py --recipe study  # the first recipe, of the archived tables
    python experiments/methods.py --smoke         # a micro run of everything (CI)

Per seed: the dense model (stages 1-2), then five arms that each train 600 more steps on the
same batches: the dense model continued, and the four conversions (scratch, naive, random,
taylor) with their MoE stage. eval.py measures every arm and the dense model as it was:
GenEval-style accuracy (and exact: nothing beyond the prompt's objects drawn), FID, MMU
accuracy, routing NMI; wall time is the arm's train.py time
(conversion included). Each conversion is also evaluated before its first MoE step
(`--moe-steps 0`), to separate what the conversion costs from what the router's learning does.
Writes docs/experiments/defaults/methods.{md,json,png}
(docs/experiments/ with --recipe study).
"""
from common import (arm, bar_stats, cell, dense, dense_continued, evaluate, parse, run_all,
                    table, train_unless_evaluated, write)

from minimoe.plots import bar_chart

METHODS = ("scratch", "naive", "random", "taylor")
ARMS = ("dense", "dense-continued") + METHODS
# (column, key, shown in percent, decimals)
METRICS = (("GenEval %", "geneval", True, 1), ("GenEval exact %", "geneval_exact", True, 1),
           ("FID", "fid", False, 1), ("MMU %", "mmu", True, 1),
           ("modality NMI", "modality_nmi", False, 3), ("domain NMI", "domain_nmi", False, 3))
PAIRED = METRICS[:4]  # the quality metrics, which every arm has
BASELINE = "dense-continued"  # the arm the conversions are compared with at equal steps


def runs_of(s, seed) -> dict:
    runs = {"dense": dense(s, seed), "dense-continued": dense_continued(s, seed)}
    runs.update({m: arm(s, seed, m, ["--moe", m]) for m in METHODS})
    return runs


def converted_of(s, seed) -> dict:
    """Each conversion as it is before any MoE step: what the router's learning starts from
    (eval.py measures it, so train.py's own final check is skipped)."""
    return {m: arm(s, seed, f"{m}-step0", ["--moe", m, "--moe-steps", "0", "--eval-n", "0"])
            for m in METHODS}


GROUPS = {"methods": runs_of, "methods-step0": converted_of}  # evaluation name: its runs


def numbers(report: dict, run) -> dict:
    """The headline numbers of one arm of one seed."""
    layers = list(report.get("routing", {}).values())
    domain = [x["domain_nmi"] for x in layers if x["domain_nmi"] is not None]
    summary = run.summary()
    return {"geneval": report["geneval"]["overall"],
            "geneval_exact": report["geneval"].get("exact"),  # archived reports may lack it
            "fid": report["fid"]["fid"],
            "fid_floor": report["fid"]["real_vs_real"], "mmu": report["mmu"]["accuracy"],
            "modality_nmi": sum(x["modality_nmi"] for x in layers) / len(layers) if layers
            else None, "domain_nmi": sum(domain) / len(domain) if domain else None,
            "wall_s": summary["wall_s"],
            "params": summary.get("conversion", {}).get("moe_params")}


def main() -> None:
    s = parse(__doc__, recipes=True)
    groups = {(name, seed): runs_for(s, seed) for name, runs_for in GROUPS.items()
              for seed in s.seeds}
    for (name, seed), runs in groups.items():
        train_unless_evaluated(s, name, seed, runs.values())
    run_all([r for runs in groups.values() for r in runs.values()], s.jobs)
    found = {name: {} for name in GROUPS}  # evaluation name -> arm -> seed -> numbers
    for (name, seed), runs in groups.items():
        reports = evaluate(s, name, seed, runs)
        for arm_, run in runs.items():
            found[name].setdefault(arm_, {})[seed] = numbers(reports[arm_], run)

    def column(arm_, key, group="methods"):
        return [found[group][arm_][seed][key] for seed in s.seeds]
    # a metric no archived evaluation has (measured after they were made) is left out
    metrics = [m for m in METRICS if any(v is not None for a in ARMS for v in column(a, m[1]))]
    paired_metrics = [m for m in PAIRED if m in metrics]
    rows = []
    for arm_ in ARMS:
        wall = "-" if arm_ == "dense" else cell(column(arm_, "wall_s"), digits=0)
        rows.append([arm_] + [cell(column(arm_, key), pct, n) for _, key, pct, n in metrics]
                    + [wall])
    md = table(["arm"] + [m for m, _, _, _ in metrics] + ["wall s"], rows)

    # Every arm of a seed starts from the same dense model, so per-seed differences from the
    # equal-steps dense arm take out the dense model's own seed-to-seed spread.
    def paired(arm_, key):
        return [None if a is None or b is None else a - b
                for a, b in zip(column(arm_, key), column(BASELINE, key))]
    diffs = [[arm_] + [cell(paired(arm_, key), pct, n, signed=True)
                       for _, key, pct, n in paired_metrics]
             for arm_ in ARMS if arm_ != BASELINE]
    md += (f"\n\n## Difference from {BASELINE}, same seed (mean ± sd over seeds)\n\n"
           + table(["arm"] + [m for m, _, _, _ in paired_metrics], diffs))

    # Where the router's learning starts: each conversion before its first MoE step.
    header, rows = ["arm"], []
    for label, _, _, _ in paired_metrics:
        header += [f"{label} at step 0", f"{label} after {s.steps['moe_steps']} steps"]
    for arm_ in METHODS:
        rows.append([arm_] + [c for _, key, pct, n in paired_metrics
                              for c in (cell(column(arm_, key, "methods-step0"), pct, n),
                                        cell(column(arm_, key), pct, n))])
    md += ("\n\n## Each conversion before its first MoE step and at the end (mean ± sd over "
           "seeds)\n\n" + table(header, rows))
    means, spread = bar_stats({a: {m: column(a, k) for m, k, _, _ in metrics} for a in ARMS},
                              {m for m, _, pct, _ in metrics if pct})
    write(s, "methods", "## Conversion methods at equal steps (mean ± sd over seeds)\n\n" + md,
          {"arms": found["methods"], "converted": found["methods-step0"], "seeds": s.seeds,
           "steps": s.steps},
          {"bars": bar_chart(means, [m for m, _, _, _ in metrics], spread)})
    print(md)


if __name__ == "__main__":
    main()
