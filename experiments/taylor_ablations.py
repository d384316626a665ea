"""Experiment 4: which parts of the Taylor-score construction matter?

    python experiments/taylor_ablations.py        # 3 seeds, tiny preset, CPU: about 1 hour
    python experiments/taylor_ablations.py --recipe study   # the first recipe (archived tables)
    python experiments/taylor_ablations.py --smoke   # a micro run of everything (CI)

Arms, each converted from the seed's dense model and trained 600 MoE steps, each one change
from the recipe's `taylor` (scores |sum a*g| over the calibration batches, router started as a
text/image probe). On the defaults that is the preset's layout (2 shared slices of the dense
FFN's 8, 6 routed, 3 text + 3 image, top-3), and the arms are: no shared experts (8 routed, 4
text + 4 image, top-5: the same 5 slices a token), per-token scores (sum |a*g| per token) and
no router start (router from zero). On a recipe that pins 8 routed experts, top-2 (the
archives), the first change is 2 shared experts instead (6 routed + 2 always-on slices, 3 text
+ 3 image). Reports held-out losses right after conversion and after training, MMU accuracy,
caption-colour agreement of generated images, and modality NMI.
Writes docs/experiments/defaults/taylor_ablations.{md,json,png}
(docs/experiments/ with --recipe study).
"""
from common import EIGHT_ROUTED, bar_stats, cell, layer_mean, parse, table, train_arms, write

from minimoe.plots import bar_chart

# Each arm is one change from the recipe's taylor. An arm's name is its run folder, shared with
# the other experiments, so "taylor" must mean the recipe's own layout.
CHANGES = {
    "taylor-per-token": ["--moe", "taylor", "--taylor-per-token", "true"],
    "taylor-no-router-init": ["--moe", "taylor", "--taylor-router-init", "false"],
}


def arms_of(flags: list[str]) -> dict[str, list[str]]:
    """The arms for a setting whose runs train with `flags` (the recipe's pins)."""
    if "--num-experts" in flags:  # 8 routed experts, top-2 (EIGHT_ROUTED): add shared ones
        layout = {"taylor-2-shared": ["--moe", "taylor", "--num-experts", "6", "--num-shared",
                                      "2", "--text-experts", "3"]}
    else:  # the preset's split layout: route its shared slices too, at the same 5 a token
        layout = {"taylor-no-shared": ["--moe", "taylor", *EIGHT_ROUTED, "--top-k", "5"]}
    return {"taylor": ["--moe", "taylor"], **layout, **CHANGES}


COLUMNS = (("T2I loss before conversion", "t2i_dense", False),
           ("T2I loss after conversion", "t2i_converted", False),
           ("T2I loss after training", "t2i", False), ("MMU %", "mmu", True),
           ("colours %", "colours", True), ("modality NMI", "modality_nmi", False))


def main() -> None:
    s = parse(__doc__, recipes=True)
    arms = arms_of(s.flags())
    runs = train_arms(s, arms)
    data = {}
    for name, rs in runs.items():
        summaries = [r.summary() for r in rs]
        data[name] = {"t2i_dense": [x["conversion"]["before"]["t2i"] for x in summaries],
                      "t2i_converted": [x["conversion"]["after"]["t2i"] for x in summaries],
                      "t2i": [x["heldout_losses"]["t2i"] for x in summaries],
                      "mmu": [x["mmu"]["accuracy"] for x in summaries],
                      "colours": [x["colours"]["matched"]["all"] for x in summaries],
                      "modality_nmi": [layer_mean(x["routing"], "modality_nmi")
                                       for x in summaries]}
    md = table(["arm"] + [c for c, _, _ in COLUMNS],
               [[name] + [cell(data[name][key], pct) for _, key, pct in COLUMNS]
                for name in arms])
    means, spread = bar_stats({n: {c: data[n][k] for c, k, _ in COLUMNS} for n in arms},
                              {c for c, _, pct in COLUMNS if pct})
    write(s, "taylor_ablations", "## Taylor construction ablations (mean ± sd over seeds)\n\n"
          + md, data, {"bars": bar_chart(means, [c for c, _, _ in COLUMNS], spread)})
    print(md)


if __name__ == "__main__":
    main()
