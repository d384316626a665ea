"""The summary table of bench/gpu_check.sh, read from its output folder.

    python bench/gpu_summary.py OUTDIR

One row per step (outcome, seconds, what it measured), then the benchmark's CUDA rows as
bench/moe_ops.py printed them. Reads only what the steps left, so a failed or timed-out step
shows as such and the others still report.
"""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from anywhere

from minimoe.run import read_losses  # noqa: E402  (needs the path above)


def first_line(path: Path, contains: str = "") -> str:
    if not path.exists():
        return "no output"
    lines = [x for x in path.read_text(errors="replace").splitlines() if contains in x]
    return lines[0].strip() if lines else "-"


def tests(d: Path) -> str:
    if not (d / "tests.xml").exists():
        return "no JUnit XML"
    suite = ET.parse(d / "tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    a = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return (f"{a['tests']} tests: {a['tests'] - a['failures'] - a['errors'] - a['skipped']} "
            f"passed, {a['failures']} failed, {a['errors']} errors, {a['skipped']} skipped")


def train(d: Path) -> str:
    run = d / "train"
    if not (run / "log.jsonl").exists():
        return "no training log"
    records = read_losses(run / "log.jsonl")
    parts = []
    for stage in ("dense", "moe"):
        recs = [r for (s, _), r in sorted(records.items()) if s == stage]
        if recs:
            last = recs[-1]
            parts.append(f"{stage}: step {last['step']}, loss {last['loss']:.3f} (t2i "
                         f"{last.get('t2i', float('nan')):.3f}, mmu "
                         f"{last.get('mmu', float('nan')):.3f}), {last['tok_per_s']} tok/s")
    if (run / "summary.json").exists():
        s = json.loads((run / "summary.json").read_text())
        parts.append(f"peak memory {s['peak_rss_mb']:.0f} MB, wall {s['wall_s']:.0f} s")
    return "; ".join(parts) or "no training steps logged"


def resume(d: Path) -> str:
    path = d / "resume.txt"
    rows = [x for x in path.read_text().splitlines() if x.startswith("| taylor")] \
        if path.exists() else []
    if not rows:
        return "no result"
    cells = [c.strip() for c in rows[-1].strip("|").split("|")]
    return f"max abs loss difference {cells[3]} over {cells[2]} logged steps"


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python bench/gpu_summary.py OUTDIR")
    d = Path(argv[0])
    found = {"info": lambda: first_line(d / "info.txt", "torch"),
             "build": lambda: first_line(d / "build.txt", "extension built"),
             "tests": lambda: tests(d),
             "bench": lambda: first_line(d / "bench.txt", "# "),
             "train": lambda: train(d),
             "resume": lambda: resume(d)}
    print("| step | outcome | seconds | result |\n|---|---|---|---|")
    steps = (d / "steps.tsv").read_text().splitlines() if (d / "steps.tsv").exists() else []
    for line in steps:
        name, outcome, seconds = line.split("\t")
        print(f"| {name} | {outcome} | {seconds} | {found.get(name, lambda: '-')()} |")
    bench = d / "bench.txt"
    rows = [x for x in bench.read_text().splitlines() if "cuda" in x] if bench.exists() else []
    print("\n" + ("\n".join(["| case | implementation | ms | throughput | speed vs baseline |",
                             "|---|---|---|---|---|", *rows]) if rows else
                  "no CUDA benchmark rows (no GPU, or the bench step failed)"))


if __name__ == "__main__":
    main(sys.argv[1:])
