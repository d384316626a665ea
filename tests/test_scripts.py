"""The scripts end to end on a micro run (their answers to bad input are the matrix in
test_bad_input.py).  Run: pytest -q tests/test_scripts.py"""
import json
from pathlib import Path

import pytest

import sample
import train

ROOT = Path(__file__).resolve().parents[1]
MICRO = ["--image-size", "16", "--vq-codes", "16", "--vq-colours", "4", "--vq-dim", "8",
         "--vq-channels", "16", "--vq-steps", "20", "--vq-batch", "8", "--d-model", "32",
         "--n-layers", "2", "--n-heads", "2", "--d-ffn", "64", "--dense-steps", "6",
         "--batch-t2i", "4", "--batch-mmu", "4", "--batch-lm", "2", "--ckpt-every", "3",
         "--sample-every", "6", "--sample-steps", "2", "--log-every", "1", "--eval-n", "4",
         "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train.main(MICRO + ["--out", str(out)])
    return out


def test_the_tokenizer_is_a_function_of_the_seed_not_of_what_ran_before(tmp_path):
    """Two runs of one seed train the same VQ tokenizer even when the process drew other
    random numbers in between (its initial weights come from the seed, not from the
    process's global random state, which torch starts from a random seed)."""
    import torch
    stage1 = MICRO + ["--dense-steps", "1", "--sample-every", "0", "--eval-n", "0"]
    train.main(stage1 + ["--out", str(tmp_path / "a")])
    torch.rand(1000)
    train.main(stage1 + ["--out", str(tmp_path / "b")])
    a, b = (torch.load(tmp_path / x / "vq.pt", weights_only=False)["vq"] for x in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_tokenizer_trains_on_the_mix_of_vq_domains():
    """Stage 1 draws its images from --vq-domains (glyphs alone here), and from the run's own
    mix when that flag is empty."""
    from minimoe import config
    from minimoe.data import BuiltinData
    from minimoe.run import tokenizer_source
    cfg = config.make_config(image_size=16, vq_domains="glyphs", seed=3)
    glyphs = BuiltinData(16, "glyphs", "train", seed=3)
    assert all(tokenizer_source(cfg)[i].caption == glyphs[i].caption for i in range(8))
    own = config.make_config(image_size=16, vq_domains="", seed=3)
    mix = BuiltinData(16, own.data.domains, "train", seed=3)
    assert [tokenizer_source(own)[i].caption for i in range(8)] == [mix[i].caption
                                                                    for i in range(8)]


def fails(capsys, fn, argv, match):
    with pytest.raises(SystemExit) as e:
        fn(argv)
    err = capsys.readouterr().err
    assert e.value.code != 0
    assert match in err, err
    assert "Traceback" not in err
    return err


def test_train_writes_every_artifact(run_dir):
    from PIL import Image
    from minimoe.curves import curve_panels
    for name in ("vq.pt", "ckpt.pt", "log.jsonl", "summary.json", "samples/dense_000006.png",
                 "curves.png"):
        assert (run_dir / name).exists(), name
    log = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in log} == {"vq", "dense"}
    with Image.open(run_dir / "curves.png") as curves:
        assert curves.format == "PNG"
    assert [p.title for p in curve_panels(log)] == [
        "vq losses", "t2i loss", "mmu loss", "lm loss", "learning rate", "tokens/s"], \
        "a dense run's curves: no routing panel"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"vq", "mmu", "colours", "wall_s", "peak_rss_mb", "cost"} <= set(summary)
    assert [r["step"] for r in log if "heldout" in r] == [6], "the last step is always checked"
    dense = summary["cost"]["stages"]["dense"]
    assert list(summary["cost"]["stages"]) == ["dense"] and dense["steps"] == 6
    # the trainer counts the tokens it saw, and the cost module prices that count (time_s
    # is logged to 0.01 s, which over a stage of a tenth of a second is 5 % alone)
    tokens = [r["tokens"] for r in log if r["stage"] == "dense" and "tokens" in r][-1]
    assert dense["tok_per_s"] * dense["time_s"] == pytest.approx(
        tokens, rel=0.05, abs=0.006 * dense["tok_per_s"])
    assert dense["train_flops"] == tokens * dense["train_flops_per_token"]
    assert dense["tokens_per_step"] == pytest.approx(tokens / dense["steps"], abs=0.05)


def test_resume_extends_a_finished_run_and_reuses_the_tokenizer(run_dir, capsys):
    train.main(MICRO + ["--out", str(run_dir), "--resume", "--dense-steps", "8"])
    out = capsys.readouterr().out
    assert "reusing the tokenizers" in out and "resuming dense at step 6" in out
    steps = [json.loads(l)["step"] for l in (run_dir / "log.jsonl").read_text().splitlines()
             if '"dense"' in l and '"loss"' in l]
    assert steps[-2:] == [7, 8]


def test_tensorboard_events_of_a_resumed_run_hold_its_whole_log_once(run_dir):
    """--tensorboard true turned on at a resume: the events replay the log so far (the
    tokenizer's steps too) and add the new steps, each logged step once."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from minimoe import checkpoint
    done = checkpoint.load(run_dir / "ckpt.pt")["step"]
    train.main(MICRO + ["--out", str(run_dir), "--resume", "--dense-steps", str(done + 2),
                        "--tensorboard", "true"])
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    log = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()]
    for stage, key in (("vq", "loss"), ("dense", "t2i"), ("dense", "lr")):
        logged = [(r["step"], pytest.approx(r[key])) for r in log
                  if r["stage"] == stage and key in r]
        assert [(e.step, e.value) for e in events.Scalars(f"{stage}/{key}")] == logged
    assert events.Scalars("dense/t2i")[-1].step == done + 2
    assert [e.step for e in events.Scalars("dense/heldout/t2i")] == \
        [r["step"] for r in log if "heldout" in r]


def test_sample_prompt_writes_a_grid(run_dir, tmp_path):
    out = tmp_path / "g.png"
    sample.main(["--ckpt", str(run_dir / "ckpt.pt"), "--prompt", "a red circle", "--n", "2",
                 "--steps", "2", "--out", str(out)])
    assert out.exists()


def test_sample_draws_many_images_in_fixed_size_batches(run_dir, tmp_path, monkeypatch):
    """Memory stays flat in --n: the model never sees more than GENERATE_BATCH prompts at once
    (plus as many unconditional rows for guidance), and every sample lands in the grid."""
    from PIL import Image
    from minimoe import inference
    sizes = []
    real = inference.Session.text_to_image

    def counted(self, captions, *args, **kwargs):
        sizes.append(len(captions))
        return real(self, captions, *args, **kwargs)
    monkeypatch.setattr(inference.Session, "text_to_image", counted)
    out = tmp_path / "many.png"
    n = 2 * inference.GENERATE_BATCH + 3
    sample.main(["--ckpt", str(run_dir / "ckpt.pt"), "--prompt", "a red circle", "--n", str(n),
                 "--steps", "1", "--out", str(out)])
    assert sizes == [inference.GENERATE_BATCH] * 2 + [3]
    with Image.open(out) as grid:  # 8 columns of 128-pixel cells
        assert grid.size == (8 * 128, -(-n // 8) * 128)


@pytest.mark.parametrize("flag", [None, "falling", "rising"])
def test_sample_guides_every_step_by_the_schedule_asked_or_the_runs(run_dir, tmp_path,
                                                                    monkeypatch, flag):
    """Each MaskGIT step asks for its guidance scale with the schedule of --guidance-schedule
    (else the run's) and the share of the grid still masked: all of it at the first step,
    less at each later one, never none (the last step still has codes to fill)."""
    from minimoe import checkpoint, config, inference
    calls = []
    real = inference.guidance_at

    def recorded(schedule, guidance, masked_share):
        calls.append((schedule, guidance, masked_share.tolist()))
        return real(schedule, guidance, masked_share)
    monkeypatch.setattr(inference, "guidance_at", recorded)
    extra = ["--guidance-schedule", flag] if flag else []
    sample.main(["--ckpt", str(run_dir / "ckpt.pt"), "--prompt", "a red circle", "--n", "2",
                 "--steps", "4", "--guidance", "3", "--out", str(tmp_path / "g.png"), *extra])
    run_schedule = config.from_dict(checkpoint.load(run_dir / "ckpt.pt")["config"]) \
        .train.guidance_schedule
    assert [c[0] for c in calls] == [flag or run_schedule] * 4 and {c[1] for c in calls} == {3.0}
    shares = [c[2][0] for c in calls]
    assert shares[0] == 1.0 and all(a > b > 0 for a, b in zip(shares, shares[1:]))
    assert all(c[2][0] == c[2][1] for c in calls), "two rows of one prompt mask alike"


def test_sample_answers_a_question(run_dir, tmp_path, capsys):
    from PIL import Image
    img = tmp_path / "in.png"
    Image.new("RGB", (40, 30), "red").save(img)
    answer = sample.main(["--ckpt", str(run_dir / "ckpt.pt"), "--image", str(img),
                          "--question", "what colour is the circle?"])
    assert isinstance(answer, str) and capsys.readouterr().out.strip() == answer


def test_sample_extrapolates_from_a_kept_half(run_dir, tmp_path):
    from PIL import Image
    img = tmp_path / "in.png"
    Image.new("RGB", (16, 16), "blue").save(img)
    out = tmp_path / "x.png"
    sample.main(["--ckpt", str(run_dir / "ckpt.pt"), "--prompt", "a blue square", "--n", "1",
                 "--steps", "2", "--init-image", str(img), "--keep", "top", "--out", str(out)])
    assert out.exists()


# --- MoE runs ------------------------------------------------------------------------------
MOE = ["--num-experts", "4", "--text-experts", "2", "--moe-steps", "4", "--taylor-batches", "2"]


def test_the_two_stages_of_a_moe_run_keep_their_own_sample_grids(tmp_path):
    """Both stages reach step 6: the MoE stage's grid must not overwrite the dense one's."""
    out = tmp_path / "moe"
    train.main(MICRO + MOE[:-4] + ["--moe-steps", "6", "--moe", "random", "--out", str(out)])
    grids = sorted(p.name for p in (out / "samples").glob("*.png"))
    assert grids == ["dense_000006.png", "moe_000006.png"], grids


@pytest.mark.parametrize("method", ["scratch", "naive", "drop", "random", "taylor"])
def test_every_method_converts_a_dense_checkpoint_trains_and_samples(run_dir, tmp_path, method):
    out = tmp_path / method
    summary = train.main(MICRO + MOE + ["--moe", method, "--init", str(run_dir / "ckpt.pt"),
                                        "--out", str(out)])
    for name in ("vq.pt", "dense.pt", "ckpt.pt", "routing.json", "routing.png", "summary.json",
                 "curves.png"):
        assert (out / name).exists(), name
    assert set(summary["conversion"]["before"]) == set(summary["conversion"]["after"]) == \
        set(summary["heldout_losses"])
    assert set(summary["routing"]) == {"layer0", "layer1"}
    c = summary["conversion"]
    experts_and_rest = c["moe_params"] - c["router_params"]
    if method in ("scratch", "naive", "drop"):
        assert experts_and_rest > c["dense_params"], "upcycling multiplies the FFN parameters"
    else:
        assert experts_and_rest == c["dense_params"], "a split keeps the parameter count"
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    stages = [r["stage"] for r in log]
    # the tokenizer's report (taken from --init, not trained), no dense steps, then the MoE
    assert stages[:2] == ["vq", "convert"] and "report" in log[0] and "dense" not in stages
    assert log[-1]["stage"] == "moe"
    assert "tau" in log[-2] and "layer1" in log[-2]["routing"]
    assert log[-1]["step"] == 4 and set(log[-1]["heldout"]) == set(summary["heldout_losses"])
    cost = summary["cost"]
    assert list(cost["stages"]) == ["moe"] and cost["stages"]["moe"]["steps"] == 4
    assert cost["active_params"] < cost["params"], "a token leaves out the unchosen experts"
    grid = tmp_path / "g.png"
    sample.main(["--ckpt", str(out / "ckpt.pt"), "--prompt", "a red circle", "--n", "1",
                 "--steps", "2", "--out", str(grid)])
    assert grid.exists()


def test_zero_moe_steps_saves_the_converted_model(run_dir, tmp_path):
    out = tmp_path / "z"
    summary = train.main(MICRO + MOE + ["--moe", "random", "--init", str(run_dir / "ckpt.pt"),
                                        "--moe-steps", "0", "--eval-n", "0", "--out", str(out)])
    from minimoe import checkpoint
    saved = checkpoint.load(out / "ckpt.pt")
    assert (saved["stage"], saved["step"]) == ("moe", 0) and "mmu" not in summary
    sample.main(["--ckpt", str(out / "ckpt.pt"), "--prompt", "a red circle", "--n", "1",
                 "--steps", "2", "--out", str(tmp_path / "g.png")])


def test_one_command_runs_every_stage_and_resumes_the_moe_stage(tmp_path, capsys):
    out = tmp_path / "t"
    train.main(MICRO + MOE + ["--moe", "taylor", "--out", str(out)])
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [s for i, s in enumerate(r["stage"] for r in log)
            if i == 0 or log[i - 1]["stage"] != s] == ["vq", "dense", "convert", "moe"]
    from minimoe.curves import ROUTING_PANELS, curve_panels
    drawn = [p.title for p in curve_panels(log)]
    assert [title for title, _ in ROUTING_PANELS] == drawn[-len(ROUTING_PANELS):], \
        "a MoE run's curves end with its routing statistics"
    (out / "curves.png").unlink()
    capsys.readouterr()
    train.main(MICRO + MOE + ["--moe", "taylor", "--out", str(out), "--resume",
                              "--moe-steps", "6"])
    printed = capsys.readouterr().out
    assert "resuming moe at step 4" in printed and "conversion" not in printed
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"] == 6
    assert (out / "curves.png").exists(), "the resumed run draws its curves again"


def test_quick_eval_writes_metrics(run_dir, tmp_path):
    import eval as eval_script
    report = eval_script.main(["--ckpt", str(run_dir / "ckpt.pt"), "--quick", "--mmu-n", "3",
                               "--out", str(tmp_path), "--no-progress"])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    (only,) = saved.values()
    assert only["mmu"]["n"] == list(report.values())[0]["mmu"]["n"] > 0
    assert 0 <= only["colours"]["matched"]["all"] <= 1


def test_full_eval_compares_a_dense_and_a_moe_run(run_dir, tmp_path, capsys, monkeypatch):
    import eval as eval_script
    from minimoe import fid
    monkeypatch.setattr(fid, "TRAIN_STEPS", 5)  # the feature net's quality is not under test
    moe_run = tmp_path / "moe-random"
    train.main(MICRO + MOE + ["--moe", "random", "--init", str(run_dir / "ckpt.pt"),
                              "--out", str(moe_run)])
    out = tmp_path / "eval"
    reports = eval_script.main(["--ckpt", str(run_dir / "ckpt.pt"), "--ckpt",
                                str(moe_run / "ckpt.pt"), "--n", "2", "--samples", "1",
                                "--fid-n", "6", "--mmu-n", "3", "--out", str(out),
                                "--no-progress"])
    dense_name = run_dir.name
    assert set(reports) == {dense_name, "moe-random"}
    for name in ("metrics.json", "metrics.md", "metrics.png", "feature_net.pt",
                 f"{dense_name}/geneval_counting.png", "moe-random/routing.png"):
        assert (out / name).exists(), name
    assert not (out / dense_name / "routing.png").exists()
    printed = capsys.readouterr().out
    assert "no routing metrics" in printed
    assert "unreliable" in printed, "16 px shapes are too small for the checker: say so"
    saved = json.loads((out / "metrics.json").read_text())
    assert 0 <= saved["checker"]["real"] <= 1 and saved["settings"]["samples"] == 1
    moe = saved["runs"]["moe-random"]
    assert set(moe["geneval"]["per_category"]) == set(
        __import__("minimoe.geneval", fromlist=["CATEGORIES"]).CATEGORIES)
    assert moe["fid"]["fid"] >= 0 and "layer0" in moe["routing"]
    # a pass with nothing else drawn is also a pass
    assert 0 <= moe["geneval"]["exact"] <= moe["geneval"]["overall"] <= 1
    table = (out / "metrics.md").read_text()
    assert "modality NMI" in table and "moe-random" in table and "GenEval exact" in table
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in
            table.splitlines()[2:]}
    dense_active, moe_active = (float(v.strip(" |")) for v in rows["active params (M)"])
    assert moe_active < saved["runs"]["moe-random"]["cost"]["params"] / 1e6
    assert rows["dense s a step"][1].strip(" |") == "-", "the MoE run was converted (--init)"
    assert rows["moe s a step"][0].strip(" |") == "-"


def _torchscript(path, width):
    """A stand-in with the FID Inception TorchScript's interface (uint8 NCHW in, features out)."""
    import torch

    class Stand(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.width = width

        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            pooled = x.float().mean((2, 3))  # [N, 3]
            parts = [pooled * (k + 1) + k for k in range(self.width // 3 + 1)]
            return torch.cat(parts, 1)[:, :self.width]
    torch.jit.script(Stand()).save(str(path))
    return path


def test_eval_uses_inception_features_from_a_local_file(run_dir, tmp_path):
    import eval as eval_script
    weights = _torchscript(tmp_path / "inception-2015-12-05.pt", 2048)
    reports = eval_script.main(["--ckpt", str(run_dir / "ckpt.pt"), "--n", "1", "--samples", "1",
                                "--fid-n", "4", "--mmu-n", "2", "--inception", str(weights),
                                "--out", str(tmp_path / "e"), "--no-progress"])
    (report,) = reports.values()
    assert report["fid"]["features"].startswith("Inception pool3")
    assert report["fid"]["fid"] >= 0 and not (tmp_path / "e" / "feature_net.pt").exists()


def test_a_bpe_run_keeps_its_merges_through_checkpoints_and_sampling(tmp_path, capsys):
    """--text-vocab 512: merges learnt in stage 1, saved in vq.pt and every checkpoint, reused
    on resume, and used by sample.py to read prompts and write answers."""
    from minimoe import checkpoint
    from minimoe.tokenizers import TextTokenizer
    out = tmp_path / "bpe"
    bpe_flags = ["--text-vocab", "512", "--text-len", "24"]
    train.main(MICRO + bpe_flags + ["--out", str(out)])
    merges = checkpoint.load(out / "vq.pt")["merges"]
    assert 0 < len(merges) <= 512 - 256
    assert checkpoint.load(out / "ckpt.pt")["merges"] == merges
    train.main(MICRO + bpe_flags + ["--out", str(out), "--resume", "--dense-steps", "7"])
    assert checkpoint.load(out / "ckpt.pt")["merges"] == merges
    _, session, _ = sample.inference.load(out / "ckpt.pt", "cpu")
    assert isinstance(session.text, TextTokenizer) and session.text.bpe is not None
    assert len(session.text.encode("a large red circle")) == 4
    grid = tmp_path / "g.png"
    sample.main(["--ckpt", str(out / "ckpt.pt"), "--prompt", "a large red circle", "--n", "1",
                 "--steps", "2", "--out", str(grid)])
    answer = sample.main(["--ckpt", str(out / "ckpt.pt"), "--image", str(grid), "--question",
                          "what colour is the circle?"])
    assert isinstance(answer, str)


def test_sample_grids_draw_every_prompt_that_fits_in_tokens():
    """With the tiny preset's BPE text, every grid prompt fits its 21-token caption block,
    though the longest is 51 bytes: prompts are measured in the run's text units."""
    from minimoe.build import build_model
    from minimoe.config import make_config
    from minimoe.inference import Session
    from minimoe.run import GRID_PROMPTS, grid_prompts, learn_vocab
    cfg = make_config("tiny", d_model=32, n_layers=1, n_heads=2, d_ffn=64)
    session = Session(cfg, build_model(cfg)[0], learn_vocab(cfg))
    assert max(len(p.encode()) for p in GRID_PROMPTS) > session.max_caption
    assert grid_prompts(session) == list(GRID_PROMPTS)
