"""bench/train_step.py: train.py flags after `--` set the timed config, and a wrong one is
refused by train.py's own parser."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_step(*flags):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "train_step.py"), "--modes",
                           "eager", "--steps", "1", "--warmup", "0", "--text-lens", "24",
                           "--threads", "1", "--", *flags],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_train_flags_after_a_double_dash_set_the_timed_config():
    small = train_step("--d-model", "32", "--n-heads", "2", "--d-ffn", "64", "--n-layers", "1")
    assert small.returncode == 0, small.stderr
    assert "--d-model 32 --n-heads 2 --d-ffn 64 --n-layers 1" in small.stdout
    assert "| 24 | eager |" in small.stdout
    bad = train_step("--n-layers", "x")
    assert bad.returncode != 0 and "--n-layers" in bad.stderr
