"""What every experiment shares: seeds, cached training runs, a small process pool, evaluation,
mean +- spread over seeds, and writing results into docs/.

A run lives in WORK/seed{S}/{arm} and counts as done once its summary.json exists, so an
interrupted experiment continues where it stopped (a run killed mid-way resumes from its last
checkpoint), and experiments share runs with the same flags (the method comparison's `random`
arm is the specialisation experiment's baseline).
Every arm of a seed starts from that seed's dense model, WORK/seed{S}/dense.

What the tables need of a finished run (summary.json, the MoE stage's routing statistics,
eval.py's metrics) is also archived, a few kB per run, in DOCS/runs/, which is committed: a
later checkout (WORK is not committed) counts those runs as done and only trains what is new,
retraining a seed's dense model when a new arm needs it. CPU training is deterministic at a
given thread count, so with the --jobs it was trained under it is the same model; another
thread count sums in another order, and the rounding grows into another training of the seed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the scripts run from anywhere

import torch  # noqa: E402

from minimoe import atomic, geneval, inference  # noqa: E402  (needs the path above)
from minimoe.build import build_model  # noqa: E402
from minimoe.config import add_arguments, from_args, make_config  # noqa: E402
from minimoe.cli import ArgumentParser, about, add_debug_flag  # noqa: E402
from minimoe.tokenizers import ImageTokenizer  # noqa: E402
from minimoe.vq import VQModel  # noqa: E402

# --smoke: the micro model of the tests, a few steps, so that CI runs every script end to end.
SMOKE = ["--image-size", "16", "--vq-codes", "16", "--vq-colours", "4", "--vq-dim", "8",
         "--vq-channels", "16", "--vq-steps", "10", "--vq-batch", "8", "--d-model", "32",
         "--n-layers", "2", "--n-heads", "2", "--d-ffn", "64", "--dense-steps", "4",
         "--moe-steps", "4", "--batch-t2i", "4", "--batch-mmu", "4", "--batch-lm", "2",
         "--log-every", "2", "--heldout-every", "2", "--sample-every", "0",
         "--taylor-batches", "2"]
# Random and Taylor conversions into 8 routed experts, no shared ones, drawn in 8 MaskGIT steps,
# with float32 eager steps: how every archive was trained and sampled (the preset keeps 2 of the
# 8 slices shared for those two methods, draws in 16 steps and runs a CPU dense stage compiled
# in bf16).
EIGHT_ROUTED = ["--num-experts", "8", "--num-shared", "0", "--text-experts", "4"]
ARCHIVE_PINS = [*EIGHT_ROUTED, "--sample-steps", "8", "--autocast", "off", "--compile", "false"]
# The study's archived runs (DOCS/runs) were trained with the first tokenizers (one codebook of
# 256 codes, MSE alone, a conv encoder; byte text in 64 slots), 1-D rotary, MMU rows of one
# question (no captions) and an even domain mix, 2000 dense steps, and sampled at guidance 2;
# pinned, so that a tiny run trained now is comparable with them.
STUDY = ["--dense-steps", "2000", "--vq-codes", "256", "--vq-colours", "0", "--code-features",
         "none", "--vq-edge-weight", "0", "--vq-encoder", "conv", "--text-vocab", "256",
         "--text-len", "64", "--image-pos", "none", "--caption-share", "0", "--domains",
         "shapes,glyphs,patterns", "--guidance", "2", "--guidance-schedule", "constant",
         "--vq-domains", "", "--mmu-turns", "1", "--lr", "2e-3", "--optimizer", "adamw",
         *ARCHIVE_PINS]
# Archived runs of today's layout were trained before every block convolved the code grid, at
# half today's learning rate, with AdamW throughout, 2800 dense steps, and drawn with guidance 5
# at every step.
ARCHIVED = ["--dense-steps", "2800", "--image-pos", "rotary2d", "--lr", "2e-3", "--guidance", "5",
            "--guidance-schedule", "constant", "--optimizer", "adamw", *ARCHIVE_PINS]
# The defaults recipe trains with the preset's defaults as they are: its archive
# (DOCS/defaults/runs) was made on them, so a default that changes is pinned here to its old
# value. The earlier archives on the defaults keep theirs: that of 2026-12-06 was trained with
# AdamW throughout, 2800 dense steps and 8 routed experts, and drawn at guidance 8; the first
# (2026-12-05) before MMU rows packed several questions, and as ARCHIVED.
RECIPES = {"study": STUDY, "defaults": [],
           "defaults-2026-12-06": ["--dense-steps", "2800", "--optimizer", "adamw",
                                   "--guidance", "8", *ARCHIVE_PINS],
           "defaults-2026-12-05": ["--mmu-turns", "1"] + ARCHIVED}
# Flags pinned in a recipe's MoE arms alone: the defaults archive's MoE stages ran float32 eager
# (what --autocast and --compile auto then chose for a CPU MoE stage), its dense runs as the
# preset still trains them.
MOE_PINS = {"defaults": ["--autocast", "off", "--compile", "false"]}
SMOKE_EVAL = ["--n", "1", "--samples", "1", "--fid-n", "4", "--mmu-n", "2"]
LOCK = "running.pid"  # in a run folder while some process trains it


@dataclass
class Setting:
    seeds: list[int]
    work: Path  # training runs and evaluations
    docs: Path  # tables, JSON and pictures that are committed
    smoke: bool
    jobs: int
    preset: str = "tiny"  # tiny: CPU, minutes a run; small: one GPU (train.py picks it)
    recipe: str = "study"  # tiny only: a name of RECIPES (the flags its archive pins)

    @property
    def steps(self) -> dict:
        """The stage lengths every run of this setting trains (the preset's, or as pinned)."""
        train = config_of(self.flags()).train
        return {"dense_steps": train.dense_steps, "moe_steps": train.moe_steps}

    def flags(self) -> list[str]:
        preset = [] if self.preset == "tiny" else ["--preset", self.preset]
        pinned = RECIPES[self.recipe] if self.preset == "tiny" else []
        return preset + pinned + (SMOKE if self.smoke else [])

    def moe_flags(self) -> list[str]:
        """flags() for a MoE arm: with the recipe's MoE-only pins."""
        return self.flags() + (MOE_PINS.get(self.recipe, []) if self.preset == "tiny" else [])


def config_of(flags: list[str]):
    """The config train.py builds from these command-line flags."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_args(parser.parse_args(flags))


def parse(doc: str, recipes: bool = False) -> Setting:
    """The command line of an experiment script; `recipes`: it offers --recipe (else its
    tiny runs are pinned to STUDY, which its rows are defined against)."""
    p = ArgumentParser(description=about(doc),
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    if recipes:
        p.add_argument("--recipe", default="defaults", choices=tuple(RECIPES),
                       help="tiny preset: defaults trains with the preset's defaults (into "
                       "out/experiments-defaults, docs/experiments/defaults); "
                       "defaults-2026-12-06 with those of the second archive on the defaults "
                       "(AdamW, 2800 dense steps, 8 routed experts, float32); "
                       "defaults-2026-12-05 with those of the first (one question a MMU row, "
                       "no grid convolution, lr 2e-3); study with the first recipe the "
                       "archived runs of docs/experiments were trained with")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--smoke", action="store_true",
                   help="micro model, a few steps, one seed: checks that the script runs")
    p.add_argument("--jobs", type=int, default=1, help="training runs at once (CPU: cores / 2)")
    p.add_argument("--preset", default="tiny", choices=("tiny", "small"),
                   help="tiny: 2 CPU cores; small: one GPU (64 px, 8 layers, d_model 512)")
    p.add_argument("--work", default=None,
                   help="folder of the training runs (default out/experiments[-defaults|-PRESET])")
    p.add_argument("--docs", default=None,
                   help="where results are written (default docs/experiments[/defaults|/PRESET])")
    args = p.parse_args()
    recipe = getattr(args, "recipe", "study")
    if args.preset != "tiny" and recipe == "study" and recipes:
        p.error(f"--recipe study is the tiny preset's first recipe; --preset {args.preset} "
                "has only its defaults")
    # the tiny study recipe's folders carry no name: they hold the first archive
    name = args.preset if args.preset != "tiny" else "" if recipe == "study" else recipe
    args.work = args.work or ("out/experiments" + (f"-{name}" if name else ""))
    args.docs = args.docs or ("docs/experiments" + (f"/{name}" if name else ""))
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: give whole numbers separated by commas, e.g. 0,1,2")
    if args.smoke:
        seeds, args.work = seeds[:1], str(Path(args.work) / "smoke")
    if not seeds or args.jobs < 1:
        p.error("--seeds needs at least one seed and --jobs at least 1")
    return Setting(seeds, Path(args.work), Path(args.docs), args.smoke, args.jobs, args.preset,
                   recipe)


@dataclass
class Run:
    """One training run: `cmd` (train.py's arguments) writing into `folder`, archived in
    `archive`."""
    folder: Path
    cmd: list[str]
    archive: Path
    prepare: Callable[[], None] | None = None  # e.g. copy the run to continue from
    needs: list["Run"] = field(default_factory=list)  # runs that must be trained here first
    local: bool = False  # only a run trained here counts (its checkpoint is still needed)

    @property
    def trained(self) -> bool:
        """Finished here, with its checkpoint."""
        return (self.folder / "summary.json").exists()

    @property
    def done(self) -> bool:
        return self.trained or (not self.local and (self.archive / "summary.json").exists())

    def keep(self) -> None:
        """Archive what the tables read: the summary, the MoE stage's routing NMIs and the
        held-out checks."""
        records = [{"stage": r["stage"], "step": r["step"], "routing": {
            layer: {k: x[k] for k in ("modality_nmi", "domain_nmi")}
            for layer, x in r["routing"].items()}} for r in self.routing_log()]
        records += self.heldout_log()
        atomic.write_text(self.archive / "summary.json", (self.folder / "summary.json")
                          .read_text())
        atomic.write_text(self.archive / "routing.jsonl",
                          "".join(json.dumps(r) + "\n" for r in records))

    @property
    def elsewhere(self) -> bool:
        """Being trained by another process (another experiment script sharing the run)."""
        try:
            os.kill(int((self.folder / LOCK).read_text()), 0)
            return True
        except (OSError, ValueError):  # no lock file, or its process is gone
            return False

    def summary(self) -> dict:
        where = self.folder if self.trained else self.archive
        return json.loads((where / "summary.json").read_text())

    def log(self) -> list[dict]:
        """The training log (from the archive: its routing and held-out records only)."""
        if self.trained:
            return self._local_log()
        lines = (self.archive / "routing.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def routing_log(self) -> list[dict]:
        """The MoE stage's log lines that carry routing statistics, in step order."""
        return [r for r in self.log() if r.get("stage") == "moe" and "routing" in r]

    def heldout_log(self) -> list[dict]:
        """The held-out checks (--heldout-every) of both training stages, in log order."""
        return [r for r in self.log() if "heldout" in r]

    def _local_log(self) -> list[dict]:
        return [json.loads(line) for line in (self.folder / "log.jsonl").read_text().splitlines()]


def train_arms(s: Setting, arms: dict[str, list[str]]) -> dict[str, list[Run]]:
    """Every arm ({name: train.py flags}) for every seed: trained where missing, archived."""
    runs = {name: [arm(s, seed, name, flags) for seed in s.seeds] for name, flags in arms.items()}
    every = [r for rs in runs.values() for r in rs]
    run_all(every, s.jobs)
    keep(every)
    return runs


def keep(runs) -> None:
    """Archive every run trained here."""
    for r in runs:
        if r.trained:
            r.keep()


def dense(s: Setting, seed: int) -> Run:
    folder = s.work / f"seed{seed}" / "dense"
    return Run(folder, s.flags() + ["--seed", str(seed), "--eval-n", "0", "--out", str(folder)],
               s.docs / "runs" / f"seed{seed}" / "dense")


def arm(s: Setting, seed: int, name: str, flags: list[str]) -> Run:
    """A MoE run converted from the seed's dense model (`flags` name the method and options)."""
    base, folder = dense(s, seed), s.work / f"seed{seed}" / name
    eval_n = ["--eval-n", "4"] if s.smoke else []
    return Run(folder, s.moe_flags() + eval_n + ["--seed", str(seed), *flags, "--init",
                                                str(base.folder / "ckpt.pt"), "--out", str(folder)],
               s.docs / "runs" / f"seed{seed}" / name, needs=[base])


def dense_continued(s: Setting, seed: int) -> Run:
    """The dense model trained for as many more steps as the MoE arms get, on the same batches
    (a copy of the dense run, resumed with a longer --dense-steps; its cosine schedule is
    stretched to the new length rather than warmed up again as the MoE stage's is)."""
    base, folder = dense(s, seed), s.work / f"seed{seed}" / "dense-continued"
    total = s.steps["dense_steps"] + s.steps["moe_steps"]

    def prepare():
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(base.folder, folder, ignore=shutil.ignore_patterns("summary.json"))
    eval_n = ["--eval-n", "4"] if s.smoke else []
    return Run(folder, s.flags() + eval_n + ["--resume", "--dense-steps", str(total),
                                            "--out", str(folder)],
               s.docs / "runs" / f"seed{seed}" / "dense-continued", prepare, [base])


def continued(r: Run) -> list[str]:
    """train.py's arguments for `r`: as given, or, if an earlier attempt was interrupted after
    a checkpoint, --resume from it (the checkpoint holds the config and the converted model,
    so --init is dropped)."""
    if not (r.folder / "ckpt.pt").exists() or "--resume" in r.cmd:
        return r.cmd
    cmd = list(r.cmd)
    if "--init" in cmd:
        del cmd[cmd.index("--init"):cmd.index("--init") + 2]
    return cmd + ["--resume"]


def run_all(runs: list[Run], jobs: int) -> None:
    """Train every run not done yet, up to `jobs` at once (dense bases first), each with
    cores / jobs threads; progress on stdout, each run's output in its folder's train.txt."""
    todo = list({r.folder: r for r in runs if not r.done}.values())
    # a base that is only archived is trained again for the runs that start from it
    needed = {n.folder: n for r in todo for n in r.needs if not n.trained}
    todo = list({**needed, **{r.folder: r for r in todo}}.values())
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    active: list[tuple[Run, subprocess.Popen, float]] = []
    finished = 0
    while todo or active:
        todo = [r for r in todo if not r.trained]  # finished by another process meanwhile
        ready = [r for r in todo if not r.elsewhere and all(n.trained for n in r.needs)]
        while ready and len(active) < jobs:
            r = ready.pop(0)
            todo.remove(r)
            if r.prepare:
                r.prepare()
            r.folder.mkdir(parents=True, exist_ok=True)
            cmd = continued(r)
            out = open(r.folder / "train.txt", "a" if cmd is not r.cmd else "w")
            proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--no-progress",
                                     *cmd], stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "OMP_NUM_THREADS": threads})
            (r.folder / LOCK).write_text(str(proc.pid))
            active.append((r, proc, time.time()))
        if not active and todo and not any(r.elsewhere for r in todo):
            sys.exit(f"runs {[str(r.folder) for r in todo]} wait on runs that did not finish")
        time.sleep(1)
        for item in list(active):
            r, proc, t0 = item
            if proc.poll() is None:
                continue
            active.remove(item)
            (r.folder / LOCK).unlink(missing_ok=True)
            if proc.returncode:
                for other, p, _ in active:
                    p.kill()
                sys.exit(f"training {r.folder} failed (exit {proc.returncode}); see "
                         f"{r.folder / 'train.txt'}")
            finished += 1
            print(f"  [{finished}/{finished + len(todo) + len(active)}] {r.folder} "
                  f"in {time.time() - t0:.0f} s", flush=True)


def evaluated(s: Setting, name: str, seed: int) -> Path:
    return s.docs / "runs" / f"eval-{name}" / f"seed{seed}.json"


def train_unless_evaluated(s: Setting, name: str, seed: int, runs) -> None:
    """Runs of a seed whose evaluation is not archived yet must be trained here (an archived
    run has no checkpoint, and eval.py needs one)."""
    if not evaluated(s, name, seed).exists():
        for r in runs:
            r.local = True


def evaluate(s: Setting, name: str, seed: int, runs: dict[str, Run],
             flags: tuple[str, ...] = ()) -> dict:
    """eval.py (with `flags`, e.g. the validation draw) on the runs' checkpoints (cached in
    WORK/eval-NAME/seed{S}, archived in DOCS/runs); the FID feature net is trained once in
    WORK and shared, so every seed's FID uses the same features."""
    archived = evaluated(s, name, seed)
    if archived.exists():
        return json.loads(archived.read_text())
    out = s.work / f"eval-{name}" / f"seed{seed}"
    if not (out / "metrics.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        shared = s.work / "feature_net.pt"
        if shared.exists():
            shutil.copy(shared, out / "feature_net.pt")
        cmd = [sys.executable, str(ROOT / "eval.py"), "--no-progress", "--out", str(out)]
        for r in runs.values():
            cmd += ["--ckpt", str(r.folder / "ckpt.pt")]
        with open(out / "eval.txt", "w") as f:
            if subprocess.run(cmd + list(flags) + (SMOKE_EVAL if s.smoke else []), stdout=f,
                              stderr=subprocess.STDOUT).returncode:
                sys.exit(f"eval.py failed; see {out / 'eval.txt'}")
        if not shared.exists():
            shutil.copy(out / "feature_net.pt", shared)
    by_folder = json.loads((out / "metrics.json").read_text())["runs"]
    reports = {v["ckpt"]: v for v in by_folder.values()}
    result = {arm: reports[str(r.folder / "ckpt.pt")] for arm, r in runs.items()}
    atomic.write_text(archived, json.dumps(result, indent=2))
    keep(runs.values())  # a seed's runs are archived once they are evaluated
    return result


def present(values: list[float]) -> list[float]:
    """The values that were measured (not None, not NaN)."""
    return [v for v in values if v is not None and v == v]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = present(values)
    if not values:
        return float("nan"), float("nan")
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 \
        else 0.0
    return m, sd


def cell(values: list[float], percent: bool = False, digits: int = 3,
         signed: bool = False) -> str:
    """'mean ± sd' of a table cell, the value alone when there is one (`signed`: a
    difference, shown with its sign)."""
    m, sd = mean_std(values)
    if m != m:
        return "-"
    if percent:
        m, sd, digits = 100 * m, 100 * sd, 1
    value = f"{m:{'+' if signed else ''}.{digits}f}"
    return value if len(present(values)) == 1 else f"{value} ± {sd:.{digits}f}"


def bar_stats(values: dict[str, dict[str, list]], percent: set[str]) -> tuple[dict, dict]:
    """{arm: {column: values over seeds}} -> the means and sds bar_chart draws, with the
    `percent` columns' fractions shown in percent."""
    stats = {a: {c: mean_std([v * (100 if c in percent else 1) for v in vs if v is not None])
                 for c, vs in columns.items()} for a, columns in values.items()}
    return ({a: {c: m for c, (m, _) in cs.items()} for a, cs in stats.items()},
            {a: {c: sd for c, (_, sd) in cs.items()} for a, cs in stats.items()})


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def write(s: Setting, name: str, markdown: str, data: dict, pictures: dict) -> None:
    """docs/experiments/NAME.md (the table and picture links), NAME.json, NAME_*.png (a
    picture given as None keeps the file drawn by an earlier run)."""
    links = "\n".join(f"![{key}]({name}_{key}.png)" for key in pictures)
    seeds = ", ".join(map(str, s.seeds))
    atomic.write_text(s.docs / f"{name}.md", f"{markdown}\n\nSeeds: {seeds}"
                      f"{' (smoke setting)' if s.smoke else ''}.\n\n{links}\n")
    atomic.write_text(s.docs / f"{name}.json", json.dumps(data, indent=2))
    for key, image in pictures.items():
        if image is not None:
            atomic.save_png(image, s.docs / f"{name}_{key}.png")
    print(f"wrote {s.docs / (name + '.md')}, {name}.json and {len(pictures)} pictures")


def drawn_with_verdicts(name: str, session, image_tok, prompts: list, **sampler
                        ) -> tuple[list, list[str]]:
    """One sample of each GenEval prompt (seed 0; `sampler`: steps, guidance,
    choice_temperature, else the run's) and its label "NAME PASS|FAIL: caption"."""
    images = inference.generate(session, image_tok, [p.caption for p in prompts], seed=0,
                                **sampler)
    verdicts = geneval.score(prompts, [[im] for im in images])["verdicts"]
    return images, [f"{name} {'PASS' if ok[0] else 'FAIL'}: {p.caption}"
                    for p, ok in zip(prompts, verdicts)]


def named(spec: str) -> tuple[str, str]:
    """"NAME=PATH" -> (NAME, PATH); a bare path names itself (scripts that measure --ckpt)."""
    name, sep, path = spec.partition("=")
    return (name, path) if sep and "/" not in name else (spec, spec)


def untrained_micro(**overrides):
    """(cfg, Session, ImageTokenizer) of an untrained micro model and tokenizer, for --smoke
    runs of the scripts that measure given models (16 px images, 16 codes, width 32)."""
    torch.manual_seed(0)
    cfg = make_config(image_size=16, vq_codes=16, vq_colours=4, vq_dim=8, vq_channels=16,
                      d_model=32, n_layers=2, n_heads=2, d_ffn=64, **overrides)
    model, vocab = build_model(cfg)
    tok = ImageTokenizer(VQModel(cfg.vq).eval(), cfg.vq)
    return cfg, inference.Session(cfg, model, vocab), tok


def measuring_parser(doc: str, smoke: str) -> argparse.ArgumentParser:
    """The flags of a script that measures given models: --ckpt (repeat), --smoke (what it
    does: `smoke`), --docs and --debug; the script adds its own."""
    p = argparse.ArgumentParser(description=about(doc))
    p.add_argument("--ckpt", action="append", default=[],
                   help="a model checkpoint, or NAME=PATH to name its table rows; repeat")
    p.add_argument("--smoke", action="store_true", help=smoke)
    p.add_argument("--docs", default="docs/experiments")
    add_debug_flag(p)
    return p


def measured_models(p: argparse.ArgumentParser, args, **smoke):
    """(name, micro, cfg, Session, ImageTokenizer) of each model to measure: the untrained
    micro model under --smoke (`smoke`: its config overrides; micro True), then each --ckpt.
    Giving neither --smoke nor --ckpt is a usage error."""
    if args.smoke:
        yield ("untrained", True, *untrained_micro(**smoke))
    elif not args.ckpt:
        p.error("give --ckpt RUN/ckpt.pt (repeat to compare runs), or --smoke")
    for spec in args.ckpt:
        name, path = named(spec)
        yield (name, False, *inference.load(path, "cpu"))


def write_measured(docs: Path, name: str, markdown: str, data) -> None:
    """DOCS/NAME.md and NAME.json of a script that measures given models or tokenizers
    (no seeds, no runs of its own), and the table on stdout."""
    docs.mkdir(parents=True, exist_ok=True)
    atomic.write_text(docs / f"{name}.md", markdown + "\n")
    atomic.write_text(docs / f"{name}.json", json.dumps(data, indent=1) + "\n")
    print(markdown)


def layer_mean(routing: dict, key: str) -> float | None:
    """The mean over MoE layers of one routing statistic (None where no layer has it)."""
    values = [x[key] for x in routing.values() if x.get(key) is not None]
    return sum(values) / len(values) if values else None


def curves(runs: list[Run], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """Per MoE layer: (steps, the statistic at each logged MoE step, averaged over `runs`,
    i.e. over seeds). Each log line's statistics cover the steps since the previous line."""
    logs = [run.routing_log() for run in runs]
    steps = [rec["step"] for rec in logs[0]]
    return {layer: (steps, [sum(log[i]["routing"][layer][key] or 0.0 for log in logs) /
                            len(logs) for i in range(len(steps))])
            for layer in logs[0][0]["routing"]} if steps else {}
