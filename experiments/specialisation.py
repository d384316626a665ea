"""Experiment 2: does modality specialisation emerge, and which router schedule drives it?

    python experiments/specialisation.py          # 3 seeds, tiny preset, CPU: about 1 hour
    python experiments/specialisation.py --recipe study   # the first recipe (archived tables)
    python experiments/specialisation.py --smoke  # a micro run of everything (CI)

The `random` conversion (experts are random neuron slices, the router starts from zero, so
any separation is learned) under four router schedules: the default (temperature 2 -> 1,
balance coefficient 0.01 -> 0), no temperature annealing (1 throughout), no balance decay
(0.01 throughout), and auxiliary-loss-free balancing (no balance loss, selection biases at
rate 1e-3). `taylor`, whose router starts as a modality probe, is shown beside them.
Modality NMI per layer over the MoE steps comes from the training log; the table adds the
held-out NMI, MMU accuracy and held-out T2I loss at the end.
Writes docs/experiments/defaults/specialisation.{md,json} and _curves.png
(docs/experiments/ with --recipe study).
"""
from common import cell, curves, layer_mean, parse, table, train_arms, write

from minimoe.plots import line_chart

ARMS = {
    "random": ["--moe", "random"],
    "random-no-anneal": ["--moe", "random", "--router-temp-start", "1.0"],
    "random-no-decay": ["--moe", "random", "--balance-end", "0.01"],
    "random-aux-free": ["--moe", "random", "--balance-start", "0", "--balance-end", "0",
                        "--aux-free-rate", "0.001"],
    "taylor": ["--moe", "taylor"],
}


def first_logged(run, key: str) -> float | None:
    """A routing statistic's layer mean on the MoE stage's first log line (its first
    --log-every steps), i.e. before the router has learned much."""
    return layer_mean(run.routing_log()[0]["routing"], key)


def main() -> None:
    s = parse(__doc__, recipes=True)
    runs = train_arms(s, ARMS)
    rows, data = [], {}
    for name, rs in runs.items():
        summaries = [r.summary() for r in rs]
        nmi = [layer_mean(x["routing"], "modality_nmi") for x in summaries]
        data[name] = {"modality_nmi_heldout": nmi,
                      "mmu": [x["mmu"]["accuracy"] for x in summaries],
                      "t2i_loss": [x["heldout_losses"]["t2i"] for x in summaries],
                      "curves": curves(rs, "modality_nmi")}
        data[name]["modality_nmi_first"] = [first_logged(r, "modality_nmi") for r in rs]
        rows.append([name, cell(data[name]["modality_nmi_first"]), cell(nmi),
                     cell(data[name]["mmu"], percent=True), cell(data[name]["t2i_loss"])])
    md = table(["arm", "NMI over the first logged steps", "held-out NMI at the end",
                "MMU %", "held-out T2I loss"], rows)
    layers = list(data["random"]["curves"])
    panels = {layer: {name: data[name]["curves"][layer] for name in ARMS} for layer in layers}
    write(s, "specialisation", "## Modality NMI under each router schedule (mean ± sd over "
          "seeds; NMI averaged over layers)\n\n" + md, data,
          {"curves": line_chart(panels, "MoE step")})
    print(md)


if __name__ == "__main__":
    main()
