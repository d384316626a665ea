"""Every experiment script end to end in its --smoke setting (micro model, a few steps, one
seed): it trains what it needs, reuses runs it shares with the others, and writes its table,
JSON and pictures.  Run: pytest -q tests/test_experiments.py"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # the experiment scripts end to end: most tests here train micro runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from quality import RECIPE, SAMPLER, TOKENIZER  # noqa: E402  (needs the path above)
from reading import CLASSES, COLOUR_IDS, RELATIONS, scenes  # noqa: E402
from steps import LEVERS  # noqa: E402

from minimoe.data import COLOURS, SHAPES  # noqa: E402
from minimoe.evaluation import VALIDATION_SEED  # noqa: E402


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    return root / "work", root / "docs"


def smoke(name, dirs, *flags):
    work, docs = dirs
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / f"{name}.py"), "--smoke",
                        "--work", str(work), "--docs", str(docs), *flags], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    data = json.loads((docs / f"{name}.json").read_text())
    table = (docs / f"{name}.md").read_text()
    for png in docs.glob(f"{name}_*.png"):
        with Image.open(png) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    return r.stdout, data, table


def test_methods(dirs):
    out, data, table = smoke("methods", dirs)
    arms = ("dense", "dense-continued", "scratch", "naive", "random", "taylor")
    assert list(data["arms"]) == list(arms)
    for a in arms:
        assert f"| {a} |" in table
        (seed,) = data["arms"][a].values()
        assert 0 <= seed["geneval"] <= 1 and seed["fid"] >= 0 and 0 <= seed["mmu"] <= 1
        assert (seed["modality_nmi"] is None) == (a in ("dense", "dense-continued"))
    assert (dirs[1] / "methods_bars.png").exists()
    assert list(data["converted"]) == list(arms[2:])  # each conversion before any MoE step
    for a, by_seed in data["converted"].items():
        (seed,) = by_seed.values()
        assert 0 <= seed["geneval"] <= 1 and seed["fid"] >= 0 and seed["modality_nmi"] >= 0
        assert f"| {a} |" in table.split("before its first MoE step")[1]


def test_grouping_compares_modality_splits_and_their_costs(dirs):
    """Runs while the method comparison's checkpoints are still in the work folder: its
    evaluation reads them (the archive alone keeps no checkpoints)."""
    out, data, table = smoke("grouping", dirs)
    trained = [line.split()[1] for line in out.splitlines() if line.strip().startswith("[")]
    assert not any(t.endswith(("/taylor", "/random", "/naive")) for t in trained), \
        "the method comparison's arms are reused"
    arms = data["arms"]
    assert set(arms) == {"dense-continued", "taylor", "taylor-grouped", "random",
                         "random-grouped", "naive", "naive-grouped", "taylor-untied", "drop"}
    for name in arms:
        assert f"| {name} |" in table
    one = {name: seeds["0"] if "0" in seeds else seeds[0] for name, seeds in arms.items()}
    for name in ("taylor-grouped", "random-grouped", "naive-grouped"):
        assert one[name]["modality_nmi"] == pytest.approx(1.0), "a grouped router never mixes"
    assert one["taylor-untied"]["params"] > one["taylor"]["params"]
    assert one["taylor-untied"]["active_params"] == one["taylor"]["active_params"], \
        "a token uses one copy of each untied weight"
    assert one["naive"]["flops_per_token"] > one["taylor"]["flops_per_token"], \
        "an upcycled expert is as wide as the dense FFN; a split one is 1/E of it"
    assert one["dense-continued"]["modality_nmi"] is None
    for x in ("flops", "seconds"):
        assert (dirs[1] / f"grouping_{x}.png").exists()


def test_a_fresh_checkout_rebuilds_the_table_from_the_archive_without_training(dirs):
    """The work folder (checkpoints, not committed) is gone; docs/experiments/runs is not."""
    import shutil
    work, docs = dirs
    before = (docs / "methods.md").read_text()
    assert (docs / "runs" / "eval-methods" / "seed0.json").exists()
    assert (docs / "runs" / "seed0" / "taylor" / "routing.jsonl").exists()
    shutil.rmtree(work)
    out, _, table = smoke("methods", dirs)
    assert not [line for line in out.splitlines() if line.strip().startswith("[")], out
    assert table == before


def test_specialisation_reuses_the_method_runs(dirs):
    out, data, table = smoke("specialisation", dirs)
    trained = [line for line in out.splitlines() if line.strip().startswith("[")]
    assert not any(line.split()[1].endswith(("/random", "/taylor")) for line in trained), \
        "the random and taylor runs of the method comparison are reused"
    first = {name: d["modality_nmi_first"][0] for name, d in data.items()}
    assert first["taylor"] > max(v for k, v in first.items() if k != "taylor"), \
        "taylor's router starts as a modality probe; the random conversion's from zero"
    for name, d in data.items():  # one seed: the column is the layer mean of the curves' start
        starts = [ys[0] for _, ys in d["curves"].values()]
        assert abs(first[name] - sum(starts) / len(starts)) < 1e-9


def test_domains(dirs):
    _, data, table = smoke("domains", dirs)
    assert set(data) == {"taylor", "taylor-domain-prior", "random", "random-domain-prior"}
    assert (dirs[1] / "domains_heatmaps_taylor-domain-prior.png").exists()
    assert all(0 <= v <= 1 for d in data.values() for v in d["domain_nmi"])


def test_taylor_ablations(dirs):
    _, data, table = smoke("taylor_ablations", dirs)
    assert "| taylor-no-shared |" in table and "| taylor-no-router-init |" in table
    assert data["taylor"]["modality_nmi"][0] > data["taylor-no-router-init"]["modality_nmi"][0]


def test_the_small_preset_runs_end_to_end(tmp_path):
    """--preset small reaches every train.py run (the micro model's widths still apply)."""
    work = tmp_path / "work"
    _, data, table = smoke("taylor_ablations", (work, tmp_path / "docs"), "--preset", "small")
    assert set(data) == {"taylor", "taylor-no-shared", "taylor-per-token",
                         "taylor-no-router-init"}, "a preset without pins ablates its own taylor"
    for run in ("dense", *data):
        assert "preset = small" in (work / "smoke" / "seed0" / run / "train.txt").read_text()


# what every archive was made with (common.ARCHIVE_PINS)
ARCHIVE = ["--num-experts", "8", "--num-shared", "0", "--text-experts", "4", "--sample-steps", "8",
           "--autocast", "off", "--compile", "false"]
STUDY_FLAGS = ["--dense-steps", "2000", "--vq-codes", "256", "--vq-colours", "0",
               "--code-features", "none", "--vq-edge-weight", "0", "--vq-encoder", "conv",
               "--text-vocab", "256", "--text-len", "64", "--image-pos", "none",
               "--caption-share", "0", "--domains", "shapes,glyphs,patterns", "--guidance", "2",
               "--guidance-schedule", "constant", "--vq-domains", "", "--mmu-turns", "1",
               "--lr", "2e-3", "--optimizer", "adamw", *ARCHIVE]


@pytest.mark.parametrize("recipes, argv, work, docs, flags, steps", [
    (False, [], "out/experiments", "docs/experiments", STUDY_FLAGS, (2000, 600)),
    (True, ["--recipe", "study"], "out/experiments", "docs/experiments", STUDY_FLAGS,
     (2000, 600)),
    (True, [], "out/experiments-defaults", "docs/experiments/defaults", [], (3500, 600)),
    (True, ["--recipe", "defaults-2026-12-06"], "out/experiments-defaults-2026-12-06",
     "docs/experiments/defaults-2026-12-06",
     ["--dense-steps", "2800", "--optimizer", "adamw", "--guidance", "8", *ARCHIVE], (2800, 600)),
    (True, ["--recipe", "defaults-2026-12-05"], "out/experiments-defaults-2026-12-05",
     "docs/experiments/defaults-2026-12-05",
     ["--mmu-turns", "1", "--dense-steps", "2800", "--image-pos", "rotary2d", "--lr", "2e-3",
      "--guidance", "5", "--guidance-schedule", "constant", "--optimizer", "adamw", *ARCHIVE],
     (2800, 600)),
    (True, ["--preset", "small"], "out/experiments-small", "docs/experiments/small",
     ["--preset", "small"], (20000, 5000)),
    (False, ["--preset", "small"], "out/experiments-small", "docs/experiments/small",
     ["--preset", "small"], (20000, 5000)),
])
def test_the_preset_picks_folders_train_flags_and_stage_lengths(monkeypatch, recipes, argv, work,
                                                                docs, flags, steps):
    """Runs of another preset or recipe never mix with the tiny study recipe's, those keep the
    tokenizer and sampler of the archived study runs (always, in a script whose rows are
    defined against them), and dense-continued trains as many extra steps as that setting's
    MoE stage."""
    import common
    monkeypatch.setattr(sys, "argv", ["x"] + argv)
    s = common.parse("doc", recipes=recipes)
    assert (str(s.work), str(s.docs), s.flags()) == (work, docs, flags)
    assert (s.steps["dense_steps"], s.steps["moe_steps"]) == steps
    continued = common.dense_continued(s, 0).cmd
    last = max(i for i, a in enumerate(continued) if a == "--dense-steps")  # the one that counts
    assert continued[last + 1] == str(sum(steps))


@pytest.mark.parametrize("recipe", ["study", "defaults", "defaults-2026-12-06",
                                    "defaults-2026-12-05"])
def test_an_arm_name_is_one_model_across_the_experiments(recipe):
    """Experiments share a run by its folder, which is the arm's name: every script that names
    an arm must train the same model under it, or one reuses another's run as its own."""
    import common
    import domains
    import grouping
    import methods
    import specialisation
    import taylor_ablations

    from minimoe.config import to_dict

    pins = common.RECIPES[recipe]
    arms = [{m: ["--moe", m] for m in methods.METHODS}, specialisation.ARMS, domains.ARMS,
            grouping.ARMS, taylor_ablations.arms_of(pins)]
    seen = {}
    for script in arms:
        for name, flags in script.items():
            model = to_dict(common.config_of(pins + flags))
            assert seen.setdefault(name, model) == model, f"{name} names two models"
    assert len(seen) >= 15


def test_the_defaults_recipe_keeps_its_archived_moe_stages_float32_eager(tmp_path):
    """Its archive's MoE arms trained float32 eager, what --autocast and --compile auto chose
    for a CPU MoE stage then; its dense runs train as the preset does."""
    import common
    s = common.Setting(seeds=[0], work=tmp_path, docs=tmp_path, smoke=False, jobs=1,
                       recipe="defaults")
    arm_cmd = common.arm(s, 0, "taylor", ["--moe", "taylor"]).cmd
    dense_cmd = common.dense(s, 0).cmd
    assert arm_cmd[:len(s.moe_flags())] == s.moe_flags()
    assert dense_cmd[:len(s.flags())] == s.flags()
    moe, dense = common.config_of(s.moe_flags()).train, common.config_of(s.flags()).train
    assert (moe.autocast, moe.compile) == ("off", "false")
    assert (dense.autocast, dense.compile) == ("auto", "auto")
    assert "--autocast" not in dense_cmd


@pytest.mark.parametrize("argv, says", [
    (["--jobs", "0"], "--jobs at least 1"),
    (["--seeds", "a,b"], "--seeds 'a,b': give whole numbers"),
    (["--seeds", ","], "at least one seed"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--job", "2"], "unrecognized arguments: --job 2"),  # not taken for --jobs
    (["--preset", "small", "--recipe", "study"], "has only its defaults"),
    (["--recipe", "old"], "invalid choice: 'old'"),
])
def test_a_bad_command_line_is_one_line_and_exit_2(argv, says):
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "domains.py"), *argv],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and says in r.stderr


def test_a_run_killed_after_a_checkpoint_is_resumed_not_restarted(tmp_path, monkeypatch):
    """An experiment interrupted mid-run continues that run from its checkpoint: started
    again with its original flags, train.py would refuse the folder (it holds a checkpoint)."""
    import common
    s = common.Setting([0], tmp_path / "work", tmp_path / "docs", smoke=True, jobs=1)
    run = common.arm(s, 0, "taylor-ckpt", ["--moe", "taylor", "--ckpt-every", "2"])
    common.run_all(run.needs, 1)  # the dense model, uninterrupted
    monkeypatch.setenv("MINIMOE_FAULT", "kill-step:3")  # SIGKILL after MoE step 3 (ckpt at 2)
    with pytest.raises(SystemExit, match="failed"):
        common.run_all([run], 1)
    assert (run.folder / "ckpt.pt").exists() and not run.trained
    monkeypatch.delenv("MINIMOE_FAULT")
    common.run_all([run], 1)
    assert run.trained
    moe_steps = [r["step"] for r in run.log() if r.get("stage") == "moe" and "loss" in r]
    assert moe_steps == sorted(set(moe_steps)) and moe_steps[-1] == 4, moe_steps
    assert "--resume" in common.continued(run)


def test_quality(dirs):
    """The quality ablation fills every table, measures every number on the validation draw
    (never the evaluation's), and a tokenizer's ceiling is a fraction of its prompts."""
    _, data, table = smoke("quality", dirs)
    assert set(data["tokenizer"]) == set(TOKENIZER) and set(data["recipe"]) == set(RECIPE)
    assert set(data["sampler"]) == set(SAMPLER)
    for rows in data["tokenizer"].values():
        assert all(0 <= r["ceiling"] <= 1 and r["wall_s"] > 0 for r in rows)
        assert all(r["psnr_per_domain"].keys() == {"shapes", "glyphs", "patterns"}
                   for r in rows)  # what weighting stage 1 towards one domain costs the others
    assert all(r["wall_s"] > 0 for r in data["recipe"].values())
    work, docs = dirs
    evals = list((work / "smoke").glob("eval-quality-*/seed0/metrics.json"))
    assert len(evals) == len({(run, tuple(f)) for run, f in RECIPE.values()} |
                             {("after", tuple(f)) for f in SAMPLER.values()})
    assert all(json.loads(e.read_text())["settings"]["draw"] == VALIDATION_SEED for e in evals)
    assert "## Sampler settings" in table and (docs / "quality_samples.png").exists()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows and not [r for r in rows if "±" in r]  # one seed: values alone, no spread of 0


def test_quality_rebuilds_from_the_archive_and_keeps_its_picture(dirs):
    """Without the work folder's checkpoints nothing is trained again, the table comes out
    the same and the committed before/after picture stays linked."""
    import shutil
    work, docs = dirs
    before = (docs / "quality.md").read_text()
    picture = (docs / "quality_samples.png").read_bytes()
    shutil.rmtree(work)
    out, _, table = smoke("quality", dirs)
    assert not [line for line in out.splitlines() if line.strip().startswith("[")], out
    assert table == before and (docs / "quality_samples.png").read_bytes() == picture


@pytest.mark.parametrize("task, name, modes, readers", [
    ("shape", "reading", "", {"conv", "transformer"}),
    ("position", "reading_position", "", {"transformer"}),
    ("position", "reading_position", "rotary2d,learned",
     {"transformer, rotary2d", "transformer, learned"})])
def test_reading_curves_each_reader_of_a_task(tmp_path, task, name, modes, readers):
    """One curve a reader: the conv reference for shapes only, and one transformer a mode of
    --image-pos."""
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "reading.py"), "--smoke",
                        "--task", task, "--docs", str(tmp_path), "--image-pos", modes],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    curves = json.loads((tmp_path / f"{name}.json").read_text())
    assert set(curves) == readers
    for curve in curves.values():
        assert [p["examples"] for p in curve] == [0, 128, 256]
        assert all(0 <= p["accuracy"] <= 1 for p in curve)
    assert "| 256 |" in (tmp_path / f"{name}.md").read_text()


def test_reading_refuses_an_unknown_image_pos_mode_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "reading.py"), "--smoke",
                        "--task", "position", "--docs", str(tmp_path),
                        "--image-pos", "rotary2d,sideways"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "'sideways': choose from" in r.stderr.splitlines()[-1]
    assert not list(tmp_path.iterdir())


def test_position_scenes_name_two_colours_and_label_the_first_objects_relation():
    """Each position scene's question is the two objects' colour ids, and its label is the
    relation of the first to the second as the captions state it: the label agrees with
    where the first colour's pixels lie against the second's."""
    assert len(RELATIONS) == len(SHAPES) == CLASSES  # one answer head serves both tasks
    images, questions, labels = scenes(40, 32, seed=3, task="position")
    names = {i: c for c, i in COLOUR_IDS.items()}
    for image, (a, b), label in zip(images, questions, labels.tolist()):
        pixels = np.asarray(image).astype(int)
        centre = []
        for colour in (names[a], names[b]):
            ys, xs = np.nonzero((np.abs(pixels - COLOURS[colour]).sum(-1) == 0))
            centre.append((xs.mean(), ys.mean()))
        (xa, ya), (xb, yb) = centre
        horizontal = abs(xb - xa) >= abs(yb - ya)
        truth = (("left of" if xa < xb else "right of") if horizontal
                 else ("above" if ya < yb else "below"))
        assert RELATIONS[label] == truth


def test_probe_errs_where_text_spreads_along_the_mean_difference_and_fisher_does_not():
    """The router probe ranks tokens by their offset along the difference of the two means;
    if text spreads widely along it, a share of the text falls on the image side, while a
    discriminant that weighs directions by their spread still separates the two."""
    import torch
    from probe import separation
    gen = torch.Generator().manual_seed(0)
    n = 4000
    noise = torch.randn(2 * n, 2, generator=gen)
    text = torch.arange(2 * n) < n
    for sd_text, ambiguous in ((3.0, True), (0.05, False)):
        x = torch.where(text[:, None], torch.tensor([1.0, 0.2]), torch.tensor([-1.0, -0.2]))
        x = x + noise * torch.where(text[:, None], torch.tensor([sd_text, 0.01]),
                                    torch.tensor([0.05, 0.01]))
        r = separation(x, text, {"text": text, "code": ~text})
        assert abs(r["text"]["z_mean"] - 1) < 1e-6 and abs(r["code"]["z_mean"] + 1) < 1e-6
        assert (r["text"]["wrong"] > 0.2) == ambiguous, r
        assert r["fisher_text"] > 0.99 and r["fisher_image"] > 0.99, r


def test_probe_measures_every_layer_of_a_dense_model(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "probe.py"), "--smoke",
                        "--docs", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (layers,) = json.loads((tmp_path / "probe.json").read_text()).values()
    assert len(layers) == 2  # the micro model's blocks
    for row in layers:
        assert set(row) >= {"text", "code", "mask", "fisher_text", "fisher_image"}
        assert abs(row["text"]["z_mean"] - 1) < 1e-3  # z is +1 at the text mean by design
    assert "| 1 |" in (tmp_path / "probe.md").read_text()


def test_steps_trains_whole_runs_of_growing_length_from_one_tokenizer(tmp_path):
    """Each point is its own run of N dense steps (not a checkpoint of a longer one), every
    run after the first reuses the first's tokenizer instead of training its own, and the
    models are evaluated on the validation draw."""
    import torch
    work = tmp_path / "work"
    _, data, table = smoke("steps", (work, tmp_path / "docs"))
    steps = sorted(int(n) for n in data["runs"] if n.isdigit())
    assert steps == [2, 4, 8, 16]  # 0.5, 1, 2 and 4 times the smoke setting's 4 dense steps
    assert set(data["runs"]) - {str(n) for n in steps} == set(LEVERS)
    folders = [work / "smoke" / "steps" / "seed0" / str(n) for n in steps]
    first_vq = torch.load(folders[0] / "vq.pt", weights_only=False)["vq"]
    for n, folder in zip(steps, folders):
        assert f"| {n} |" in table
        log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        dense = [r["step"] for r in log if r.get("stage") == "dense" and "loss" in r]
        assert dense[-1] == n, (n, dense)
        trained_vq = any(r.get("stage") == "vq" and "loss" in r for r in log)
        assert trained_vq == (n == steps[0])
        vq = torch.load(folder / "vq.pt", weights_only=False)["vq"]
        assert all(torch.equal(vq[k], first_vq[k]) for k in first_vq)
    for lever in LEVERS:  # beside the run of the preset's steps, from the same tokenizer
        assert f"| 4 steps, {lever} |" in table
        (folder,) = [f for f in (work / "smoke" / "steps" / "seed0").iterdir()
                     if not f.name.isdigit() and f.name in lever.replace(" ", "-")]
        vq = torch.load(folder / "vq.pt", weights_only=False)["vq"]
        assert all(torch.equal(vq[k], first_vq[k]) for k in first_vq)
    for name in ("steps", "steps-levers"):
        (metrics,) = (work / "smoke").glob(f"eval-{name}/seed0/metrics.json")
        assert json.loads(metrics.read_text())["settings"]["draw"] == VALIDATION_SEED
    assert (tmp_path / "docs" / "steps_curves.png").exists()


def test_drawing_tables_each_measure_over_the_seeds():
    """Each arm's measures are listed one value a seed, in the seeds' order, and its cells show
    their mean ± sd (the smoke run trains one seed only, so this is checked on values)."""
    from drawing import across_seeds, table_of
    measures = {"ceiling": 0.9, "heldout_t2i": 1.0, "geneval": 0.1, "single_object": 0.2,
                "shapes_mean": 0.3, "shape_word": 0.25, "fid": 10.0, "stage2_min": 5.0}
    by_seed = {2: {"a": {**measures, "geneval": 0.3}, "b": measures},
               0: {"a": {**measures, "geneval": 0.1}, "b": measures}}
    data = across_seeds(by_seed)
    assert list(data) == ["a", "b"] and data["a"]["geneval"] == [0.3, 0.1]
    row = next(line for line in table_of(data).splitlines() if line.startswith("| a |"))
    assert "| 20.0 ± 14.1 |" in row and "| 90.0 ± 0.0 |" in row


def test_drawing_measures_each_image_code_lever_on_drawing_alone(tmp_path):
    """Every arm is a dense run on shapes T2I rows alone; the arm that changes only the
    transformer starts from its tokenizer arm's vq.pt (no stage 1 of its own); eval.py runs
    on the validation draw and words.py's measures fill every row."""
    import torch
    from drawing import arms, slug

    from minimoe import checkpoint
    from minimoe.config import from_dict
    work = tmp_path / "work"
    _, data, table = smoke("drawing", (work, tmp_path / "docs"))
    assert list(data["runs"]) == list(arms(True))
    folders = {name: work / "smoke" / "drawing" / "seed0" / slug(name) for name in data["runs"]}
    for name, (flags, tokenizer_of) in arms(True).items():
        assert f"| {name} |" in table
        row = data["runs"][name]  # each measure over the seeds (the smoke run has one)
        assert len(row["geneval"]) == len(data["seeds"]) == 1
        assert 0 <= row["geneval"][0] <= 1 and 0 <= row["shapes_mean"][0] <= 1
        assert set(row["shapes"][0]) == {"circle", "square", "triangle", "cross"}
        log = [json.loads(line) for line in (folders[name] / "log.jsonl").read_text().splitlines()]
        assert any(r.get("stage") == "vq" and "loss" in r for r in log) == (tokenizer_of is None)
        cfg = from_dict(checkpoint.load(folders[name] / "ckpt.pt")["config"])
        assert cfg.data.domains == "shapes" and cfg.train.batch_mmu == cfg.train.batch_lm == 0
    mine, copied = (torch.load(folders[n] / "vq.pt", weights_only=False)["vq"]
                    for n in ("forms x colours", "forms x colours, shared rows"))
    assert all(torch.equal(mine[k], copied[k]) for k in mine)
    (metrics,) = (work / "smoke").glob("eval-drawing/seed0/metrics.json")
    assert json.loads(metrics.read_text())["settings"]["draw"] == VALIDATION_SEED


def test_masking_sets_each_arm_against_drawings_default_run(tmp_path):
    """The default arm is drawing.py's default run itself; every other arm trains with its
    own flag from a copy of that run's tokenizer (no stage 1 of its own), and all are
    evaluated on the validation draw."""
    import torch
    from drawing import slug
    from masking import ARMS, DEFAULT

    from minimoe import checkpoint
    from minimoe.config import from_dict
    work = tmp_path / "work"
    _, data, table = smoke("masking", (work, tmp_path / "docs"))
    assert list(data["runs"]) == ["p = 1 (cosine, default)"] + list(ARMS)
    drawing = work / "smoke" / "drawing" / "seed0"
    folders = dict(zip(data["runs"], [drawing / slug(DEFAULT)]
                       + [work / "smoke" / "masking" / "seed0" / slug(n) for n in ARMS]))
    settings = {"p = 1 (cosine, default)": (1.0, 0.0), "p = 0.5": (0.5, 0.0),
                "p = 2": (2.0, 0.0), "focal, g = 2": (1.0, 2.0)}
    for name, (power, focal) in settings.items():
        assert f"| {name} |" in table and len(data["runs"][name]["geneval"]) == 1
        cfg = from_dict(checkpoint.load(folders[name] / "ckpt.pt")["config"])
        assert (cfg.train.mask_power, cfg.train.t2i_focal) == (power, focal)
        assert cfg.data.domains == "shapes"
        log = [json.loads(line) for line in (folders[name] / "log.jsonl").read_text().splitlines()]
        assert not any(r.get("stage") == "vq" and "loss" in r for r in log)
        copied = torch.load(folders[name] / "vq.pt", weights_only=False)["vq"]
        mine = torch.load(drawing / "forms-x-colours" / "vq.pt", weights_only=False)["vq"]
        assert all(torch.equal(mine[k], copied[k]) for k in mine)
    (metrics,) = (work / "smoke").glob("eval-masking/seed0/metrics.json")
    assert json.loads(metrics.read_text())["settings"]["draw"] == VALIDATION_SEED
