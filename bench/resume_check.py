"""Exact resume at real sizes: an uninterrupted run against the same run killed twice with
SIGKILL (half-way through a dense checkpoint write, then mid-step in the MoE stage) and resumed
each time. Prints the largest loss difference over every logged step (0.0 on CPU).

    python bench/resume_check.py                       # tiny preset, taylor, about 7 minutes
    python bench/resume_check.py --moe random --dense-steps 180 --moe-steps 80
    python bench/resume_check.py --preset small          # on a GPU (bf16 autocast)

Flags it does not know go to train.py unchanged.

The tests (tests/test_reliability.py) do the same on a micro model; this runs the preset's
real widths, the Taylor conversion included.
"""
import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from anywhere

from minimoe.cli import about  # noqa: E402  (needs the path above)
from minimoe.run import read_losses  # noqa: E402

LOSSES = ("loss", "t2i", "mmu", "lm", "balance", "z", "grad_norm")


def train(flags: list[str], out: Path, fault: str = "", resume: bool = False) -> int:
    cmd = [sys.executable, str(ROOT / "train.py"), *flags, "--out", str(out)]
    env = {**os.environ, "MINIMOE_FAULT": fault}
    with open(out.parent / f"{out.name}.txt", "a") as log:
        return subprocess.run(cmd + (["--resume"] if resume else []), env=env, stdout=log,
                              stderr=subprocess.STDOUT).returncode


def losses(out: Path) -> dict:
    try:
        return read_losses(out / "log.jsonl")
    except ValueError as e:  # a step logged twice
        sys.exit(str(e))


def kill_points(dense_steps: int, moe_steps: int, every: int) -> tuple[int, int]:
    """The two kill points, each reached by one stage only: the write of the dense stage's
    last checkpoint before its end (past every MoE step), then, after resuming from the dense
    checkpoint before it, a MoE step between two MoE checkpoints."""
    save_at = every * ((dense_steps - 1) // every)
    step_at = every + every // 2 + 1
    if not (save_at > moe_steps and step_at <= min(moe_steps, save_at - every)):
        raise ValueError(
            f"the kill points (dense checkpoint write at step {save_at}, MoE step {step_at}) "
            f"must be reached by one stage only: pick --moe-steps >= {step_at} and "
            f"--dense-steps > max(--moe-steps, {step_at + every - 1}) + --ckpt-every")
    return save_at, step_at


def main() -> None:
    p = argparse.ArgumentParser(description=about(__doc__))
    p.add_argument("--preset", default="tiny", help="tiny (CPU) or small (one GPU)")
    p.add_argument("--moe", default="taylor")
    p.add_argument("--vq-steps", type=int, default=300)
    p.add_argument("--dense-steps", type=int, default=200)
    p.add_argument("--moe-steps", type=int, default=120)
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--out", default="out/resume-check")
    args, extra = p.parse_known_args()  # the rest goes to train.py (e.g. --d-model 32)
    flags = ["--preset", args.preset, "--moe", args.moe, "--vq-steps", str(args.vq_steps),
             "--dense-steps", str(args.dense_steps), "--moe-steps", str(args.moe_steps),
             "--ckpt-every", str(args.ckpt_every), "--log-every", "1", "--sample-every", "0",
             "--eval-n", "0", "--no-progress", *extra]
    try:
        save_at, step_at = kill_points(args.dense_steps, args.moe_steps, args.ckpt_every)
    except ValueError as e:
        sys.exit(str(e))
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    straight, killed = root / "straight", root / "killed"

    t0 = time.time()
    if train(flags, straight):
        sys.exit(f"the uninterrupted run failed; see {root}/straight.txt")
    killed.mkdir()
    shutil.copy(straight / "vq.pt", killed / "vq.pt")  # the tokenizer is not checkpointed
    codes = [train(flags, killed, fault=f"kill-save:{save_at}"),
             train(flags, killed, fault=f"kill-step:{step_at}", resume=True),
             train(flags, killed, resume=True)]
    if codes[:2] != [-9, -9] or codes[2]:
        sys.exit(f"exit codes {codes}, expected [-9, -9, 0]; see {root}/killed.txt")
    a, b = losses(straight), losses(killed)
    if a.keys() != b.keys():
        sys.exit(f"the runs logged different steps ({len(a)} vs {len(b)})")
    diff = max(abs(a[k][n] - b[k][n]) for k in a for n in LOSSES if n in a[k])
    print("| run | kills | logged steps | max abs loss difference | wall |\n"
          "|---|---|---|---|---|\n"
          f"| {args.moe}, {args.preset} preset | dense: mid-write of step {save_at}; "
          f"moe: after step {step_at} | {len(a)} | {diff} | {time.time() - t0:.0f} s |")


if __name__ == "__main__":
    main()
