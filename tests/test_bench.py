"""bench/train_step.py: train.py flags after `--` set the timed config, a wrong one is refused
by train.py's own parser, and several --moe methods are timed in one run."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


MICRO = ("--d-model", "32", "--n-heads", "2", "--d-ffn", "64", "--n-layers", "1")


def train_step(*flags, moe="none"):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "train_step.py"), "--modes",
                           "eager", "--steps", "1", "--warmup", "0", "--text-lens", "24",
                           "--threads", "1", "--moe", moe, "--", *flags],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_train_flags_after_a_double_dash_set_the_timed_config():
    small = train_step(*MICRO)
    assert small.returncode == 0, small.stderr
    assert "--d-model 32 --n-heads 2 --d-ffn 64 --n-layers 1" in small.stdout
    assert "| none | 24 | eager |" in small.stdout
    bad = train_step("--n-layers", "x")
    assert bad.returncode != 0 and "--n-layers" in bad.stderr


def test_dense_and_moe_steps_are_timed_side_by_side():
    both = train_step(*MICRO, moe="none,taylor")
    assert both.returncode == 0, both.stderr
    rows = [line for line in both.stdout.splitlines() if line.startswith("| ") and "eager" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["none", "taylor"]
    assert rows[0].split("|")[6].strip() == "1.00x"  # ratios are against the first row
