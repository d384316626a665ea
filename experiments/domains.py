"""Experiment 3: do experts separate data domains, with and without an annealed domain bias?

    python experiments/domains.py                 # 3 seeds, tiny preset, CPU: about 40 min
    python experiments/domains.py --recipe study  # the first recipe, of the archived tables
    python experiments/domains.py --smoke         # a micro run of everything (CI)

The built-in data has three domains (shapes, glyphs, patterns) in turn. Arms: `taylor` and
`random` as they are, and each with --router-prior domain, the learnable per-domain router
bias b_i(t) that starts at +2 logits for a block of experts per domain and is annealed to
zero over the MoE stage (the study's attempt). Reports held-out domain NMI (0: every domain
routed alike, 1: disjoint experts per domain) beside modality NMI and MMU accuracy, domain NMI
over training, and seed 0's routing heatmaps.
Writes docs/experiments/defaults/domains.{md,json}, _curves.png and _heatmaps_*.png
(docs/experiments/ with --recipe study).
"""
from common import cell, curves, layer_mean, parse, table, train_arms, write

from minimoe.plots import line_chart, routing_heatmaps

ARMS = {
    "taylor": ["--moe", "taylor"],
    "taylor-domain-prior": ["--moe", "taylor", "--router-prior", "domain"],
    "random": ["--moe", "random"],
    "random-domain-prior": ["--moe", "random", "--router-prior", "domain"],
}


def main() -> None:
    s = parse(__doc__, recipes=True)
    runs = train_arms(s, ARMS)
    rows, data = [], {}
    for name, rs in runs.items():
        summaries = [r.summary() for r in rs]
        data[name] = {key: [layer_mean(x["routing"], key) for x in summaries]
                      for key in ("domain_nmi", "modality_nmi")}
        data[name]["mmu"] = [x["mmu"]["accuracy"] for x in summaries]
        data[name]["curves"] = curves(rs, "domain_nmi")
        rows.append([name, cell(data[name]["domain_nmi"]), cell(data[name]["modality_nmi"]),
                     cell(data[name]["mmu"], percent=True)])
    md = table(["arm", "held-out domain NMI", "held-out modality NMI", "MMU %"], rows)
    layers = list(data["taylor"]["curves"])
    panels = {layer: {name: data[name]["curves"][layer] for name in ARMS} for layer in layers}
    pictures = {"curves": line_chart(panels, "MoE step")}
    for name in ("taylor", "taylor-domain-prior"):
        pictures[f"heatmaps_{name}"] = routing_heatmaps(
            runs[name][0].summary()["routing"], f"{name}, seed {s.seeds[0]}: share of each "
            f"group's routed slots per expert (%), held-out")
    write(s, "domains", "## Domain separation with and without the annealed domain bias "
          "(mean ± sd over seeds; NMI averaged over layers)\n\n" + md, data, pictures)
    print(md)


if __name__ == "__main__":
    main()
