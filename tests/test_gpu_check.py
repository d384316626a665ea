"""bench/gpu_check.sh: its arguments, its step list and time budget, and its summary table
(read from a made-up output folder); the whole dry run is a slow test."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import resume_check  # noqa: E402  (needs the path above)

SCRIPT = ROOT / "bench" / "gpu_check.sh"
STEPS = ["info", "build", "tests", "bench", "train", "resume"]


def check(*args, cwd=ROOT, timeout=60):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def test_list_names_every_step_in_order_within_eight_minutes():
    r = check("--list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert [x.split()[0] for x in lines if x][:-1] == STEPS
    limits = [int(x.split()[1].rstrip("s")) for x in lines if x and x.split()[0] in STEPS]
    assert all(limit > 0 for limit in limits)
    assert sum(limits) <= 8 * 60 and lines[-2] == f"total {sum(limits)}s"


@pytest.mark.parametrize("args, message", [
    (["--fast"], "unknown option --fast"),
    (["a", "b"], "give one output folder"),
])
def test_bad_arguments_get_one_line_and_exit_2(args, message):
    r = check(*args)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1


def summary(folder: Path) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_summary.py"), str(folder)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_summary_reports_each_step_as_it_ended(tmp_path):
    """A step that timed out or failed is named so, and the others still report what they
    measured: the losses and tokens/s of the log, the test counts of the JUnit XML."""
    (tmp_path / "steps.tsv").write_text("tests\tfailed (1)\t12\ntrain\ttimeout\t110\n"
                                        "resume\tok\t40\n")
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite tests="5" failures="1" errors="0" skipped="2"/></testsuites>')
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"stage": "dense", "step": 10, "loss": 5.0, "t2i": 4.0, "mmu": 1.0, "tok_per_s": 900},
        {"stage": "dense", "step": 20, "loss": 4.5, "t2i": 3.5, "mmu": 1.0, "tok_per_s": 1000}]))
    (tmp_path / "resume.txt").write_text("| run | kills | logged steps | max abs loss difference |"
                                         " wall |\n|---|\n| taylor, small preset | x | 210 | "
                                         "0.0 | 30 s |\n")
    out = summary(tmp_path)
    assert "| tests | failed (1) | 12 | 5 tests: 2 passed, 1 failed, 0 errors, 2 skipped |" in out
    assert "| train | timeout | 110 | dense: step 20, loss 4.500" in out and "1000 tok/s" in out
    assert "| resume | ok | 40 | max abs loss difference 0.0 over 210 logged steps |" in out
    assert "no CUDA benchmark rows" in out


def test_resume_steps_of_the_check_and_the_examples_reach_both_kill_points():
    """The step counts gpu_check.sh and resume_check.py's own examples pass satisfy the rule
    that each kill point is reached by one stage only; the rule itself refuses counts where
    the dense kill point comes before a MoE step, or the MoE one after the last MoE step."""
    uses = re.findall(r"--dense-steps (\d+) --moe-steps (\d+) --ckpt-every (\d+)",
                      SCRIPT.read_text())
    uses += [(d, m, "50") for d, m in re.findall(r"--dense-steps (\d+) --moe-steps (\d+)",
                                                 resume_check.__doc__)]
    assert len(uses) == 3
    for dense, moe, every in uses:
        save_at, step_at = resume_check.kill_points(int(dense), int(moe), int(every))
        assert int(moe) < save_at < int(dense) and step_at <= int(moe)
    for dense, moe in [(130, 80), (100, 60), (300, 60)]:
        with pytest.raises(ValueError, match="one stage only"):
            resume_check.kill_points(dense, moe, 50)


@pytest.mark.slow
def test_dry_run_runs_every_step_on_cpu(tmp_path):
    r = check("--dry-run", str(tmp_path / "check"), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    rows = (tmp_path / "check" / "steps.tsv").read_text().splitlines()
    assert [row.split("\t")[:2] for row in rows] == [[s, "ok"] for s in STEPS], rows
    table = (tmp_path / "check" / "summary.md").read_text()
    assert "max abs loss difference 0.0" in table and "tok/s" in table
