"""The bad-input matrix: every way a user can hand train.py, sample.py, eval.py or the library
something wrong, one row each. A script answers with exactly one line on stderr that names the
problem and the fix, a non-zero exit and no traceback (--debug shows it); the library raises
ValueError or RuntimeError with such a message.  Run: pytest -q tests/test_bad_input.py"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval as eval_script
import sample
import train
from minimoe import checkpoint, config, data, ops, pretokenize, sampler
from minimoe.data import pack
from minimoe.tokenizers import TextTokenizer, Vocab
from test_scripts import MICRO, _torchscript

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"train": train.main, "sample": sample.main, "eval": eval_script.main,
           "pretokenize": pretokenize.main, "pack": pack.main}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished micro dense run, never written to by the rows (they use copies)."""
    out = tmp_path_factory.mktemp("run")
    train.main(MICRO + ["--out", str(out), "--eval-n", "0"])
    return out


# --- what the rows need on disk: each maker gets (tmp, run) and writes under tmp -------------

def copy_run(tmp, run):
    shutil.copytree(run, tmp / "copy")


def with_payload(change):
    """tmp/bad/ckpt.pt: the run's checkpoint with `change` applied to its payload."""
    def make(tmp, run):
        payload = checkpoint.load(run / "ckpt.pt")
        change(payload)
        (tmp / "bad").mkdir()
        torch.save(payload, tmp / "bad" / "ckpt.pt")
    return make


def truncated(tmp, run):
    (tmp / "bad").mkdir()
    (tmp / "bad" / "ckpt.pt").write_bytes((run / "ckpt.pt").read_bytes()[:1000])


def foreign(tmp, run):
    (tmp / "bad").mkdir()
    torch.save({"weights": torch.zeros(2)}, tmp / "bad" / "ckpt.pt")


def moe_stage(payload):
    payload["stage"] = "moe"


def other_version(payload):
    payload["version"] = 99


def other_shape(payload):  # the weights no longer fit the config that travels with them
    payload["config"]["model"]["d_model"] = 64


def not_an_image(tmp, run):
    (tmp / "x.png").write_text("not an image")


def image(tmp, run):
    from PIL import Image
    Image.new("RGB", (16, 16), "red").save(tmp / "in.png")


def broken_folder(tmp, run):
    """A folder dataset whose every row is broken in a different way."""
    folder = tmp / "data"
    folder.mkdir()
    (folder / "a.png").write_text("not an image either")
    (folder / "captions.jsonl").write_bytes(
        b'{"file": "a.png", "caption": "a red circle"\n'  # cut-off JSON
        b'{"file": "missing.png", "caption": "x"}\n'
        b'{"file": "a.png", "caption": "caf\xe9"}\n'  # not UTF-8
        b'["a list"]\n')


def broken_shard(tmp, run):
    """A tar shard whose every sample is broken in a different way."""
    import io
    import tarfile
    with tarfile.open(tmp / "bad.tar", "w") as tar:
        for name, content in (("a.png", b"an image without a caption"),
                              ("b.txt", b"a caption without an image"),
                              ("c.png", b"x"), ("c.json", b'{"caption": '),
                              ("../d.png", b"x"), ("../d.txt", b"climbs out")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def copy_vq(tmp, run):
    (tmp / "bad").mkdir()
    shutil.copy(run / "vq.pt", tmp / "bad" / "vq.pt")


def codes_of_run(tmp, run):
    """tmp/codes: the built-in data pre-tokenised by the run's own tokenizer."""
    pretokenize.main(["--ckpt", str(run / "vq.pt"), "--data", "builtin", "--samples", "20",
                      "--heldout-samples", "10", "--out", str(tmp / "codes"), "--no-progress"])


def other_tokenizer(run) -> dict:
    """The run's vq.pt with its codebook moved: a tokenizer of the same shape that did not
    make the run's codes."""
    payload = checkpoint.load(run / "vq.pt")
    payload["vq"]["codebook.codebook_KD"] += 1
    return {k: payload[k] for k in ("config", "vq", "report", "merges")}


def codes_and_other_run_tokenizer(tmp, run):
    codes_of_run(tmp, run)
    checkpoint.save(other_tokenizer(run), tmp / "r" / "vq.pt")


def codes_with_other_vq_file(tmp, run):
    codes_of_run(tmp, run)
    checkpoint.save(other_tokenizer(run), tmp / "codes" / "vq.pt")


def codes_without_manifest(tmp, run):
    codes_of_run(tmp, run)
    (tmp / "codes" / "manifest.json").unlink()


def codes_all_shards_corrupt(tmp, run):
    codes_of_run(tmp, run)
    for shard in (tmp / "codes" / "train").iterdir():
        shard.write_bytes(shard.read_bytes()[:100])


def no_runs(tmp, run, monkeypatch):
    monkeypatch.chdir(tmp)  # no out/ here


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="the row needs a machine without GPU")

# (id, script, argv with {run} and {tmp}, maker or None, what the message must say)
SCRIPT_ROWS = [
    # unknown flags and values
    ("train-unknown-flag", "train", ["--bogus"], None, "unrecognized arguments: --bogus"),
    ("train-unknown-method", "train", ["--moe", "tayler"], None, "invalid choice: 'tayler'"),
    ("train-unknown-preset", "train", ["--preset", "huge"], None, "invalid choice: 'huge'"),
    ("train-not-an-int", "train", ["--d-model", "abc"], None, "invalid int value: 'abc'"),
    ("train-not-a-bool", "train", ["--random-routing", "maybe"], None, "is not a boolean"),
    ("train-nan-guidance", "train", ["--guidance", "nan"], None,
     "--guidance nan is not a finite number"),
    ("train-negative-choice-temperature", "train", ["--choice-temperature", "-2"], None,
     "--choice-temperature -2.0 must be >= 0"),
    ("train-negative-code-temperature", "train", ["--code-temperature", "-0.5"], None,
     "--code-temperature -0.5 must be >= 0"),
    ("train-zero-sample-steps", "train", ["--sample-steps", "0"], None,
     "--sample-steps 0 must be >= 1"),
    ("train-text-vocab-below-bytes", "train", ["--text-vocab", "100"], None,
     "--text-vocab 100: text needs at least the 256 byte ids"),
    ("train-text-len-too-short-for-bpe", "train", MICRO + ["--text-vocab", "400", "--text-len",
                                                          "8", "--out", "{tmp}/r"], None,
     "--text-len 8: the training texts need up to"),
    ("train-negative-steps", "train", ["--dense-steps", "-1", "--out", "{tmp}/r"], None,
     "--dense-steps -1 must be >= 0"),
    ("train-nonfinite-policy", "train", ["--on-nonfinite", "ignore"], None, "invalid choice"),
    ("train-unknown-guidance-schedule", "train", ["--guidance-schedule", "up"], None,
     "invalid choice: 'up'"),
    ("train-autocast-fp16", "train", ["--autocast", "fp16"], None, "invalid choice"),
    ("train-negative-max-skips", "train", ["--max-skips", "-1", "--out", "{tmp}/r"], None,
     "--max-skips -1 must be >= 0"),
    ("train-caption-share-over-one", "train", ["--caption-share", "1.5"], None,
     "--caption-share 1.5: use a probability in [0, 1]"),
    ("train-mask-power-zero", "train", ["--mask-power", "0"], None,
     "--mask-power 0.0 must be a positive number"),
    ("train-t2i-focal-negative", "train", ["--t2i-focal", "-1"], None,
     "--t2i-focal -1.0 must be >= 0"),
    ("train-t2i-smoothing-one", "train", ["--t2i-smoothing", "1"], None,
     "--t2i-smoothing 1.0 must be in [0, 1)"),
    ("train-mmu-turns-zero", "train", ["--mmu-turns", "0"], None, "--mmu-turns 0 must be >= 1"),
    ("train-zero-domain-weight", "train", ["--domains", "shapes:0", "--out", "{tmp}/r"], None,
     "each optionally with a whole weight >= 1"),
    ("train-unknown-tokenizer-domain", "train", ["--vq-domains", "shapes,photos", "--out",
                                                 "{tmp}/r"], None, "--vq-domains 'shapes,photos'"),
    ("train-bad-data-spec", "train", ["--data", "imagenet", "--out", "{tmp}/r"], None,
     "use 'builtin' or 'folder:PATH'"),
    ("train-cuda-without-gpu", "train", ["--device", "cuda", "--out", "{tmp}/r"], None,
     "use --device cpu"),
    # contradictory flags
    ("train-heads-do-not-divide", "train", ["--d-model", "30", "--n-heads", "4", "--out",
                                            "{tmp}/r"], None, "--n-heads"),
    ("train-top-k-over-experts", "train", ["--moe", "random", "--top-k", "9", "--out", "{tmp}/r"],
     None, "--top-k 9 must be between 1 and --num-experts 8"),
    ("train-experts-do-not-split", "train", ["--moe", "taylor", "--num-experts", "7", "--out",
                                             "{tmp}/r"], None, "does not split into"),
    ("train-naive-with-shared", "train", ["--moe", "naive", "--num-shared", "2", "--out",
                                          "{tmp}/r"], None, "use --num-shared 0"),
    ("train-drop-with-shared", "train", ["--moe", "drop", "--num-shared", "1", "--out",
                                         "{tmp}/r"], None, "--moe drop copies the dense FFN"),
    ("train-drop-ratio-over-one", "train", ["--moe", "drop", "--drop-ratio", "1.5", "--out",
                                            "{tmp}/r"], None, "--drop-ratio 1.5 must be between"),
    ("train-group-under-top-k", "train", ["--moe", "taylor", "--router-groups", "modality",
                                          "--text-experts", "1", "--out", "{tmp}/r"], None,
     "the text group has 1 and the image group 7 experts"),
    ("train-groups-without-moe", "train", ["--router-groups", "modality", "--out", "{tmp}/r"],
     None, "--router-groups modality changes the MoE stage; pick a --moe method"),
    ("train-untie-without-moe", "train", ["--untie-attention", "modality", "--out", "{tmp}/r"],
     None, "--untie-attention modality changes the MoE stage"),
    ("train-unknown-groups", "train", ["--router-groups", "domain"], None,
     "invalid choice: 'domain'"),
    ("train-random-routing-top-1", "train", ["--moe", "random", "--top-k", "1",
                                             "--random-routing", "true", "--out", "{tmp}/r"],
     None, "needs --top-k 2"),
    ("train-init-without-moe", "train", ["--init", "{run}/ckpt.pt", "--out", "{tmp}/r"], None,
     "needs --moe METHOD"),
    ("train-init-and-resume", "train", ["--moe", "random", "--init", "{run}/ckpt.pt",
                                        "--resume", "--out", "{tmp}/copy"], copy_run,
     "drop --resume"),
    ("train-ep-without-moe", "train", ["--ep", "2", "--out", "{tmp}/r"], None, "needs --moe"),
    # run folders and checkpoints
    ("train-overwrite", "train", MICRO + ["--out", "{tmp}/copy"], copy_run, "pass --resume"),
    ("train-resume-nothing", "train", ["--resume", "--out", "{tmp}/none"], None,
     "nothing to resume"),
    ("train-resume-other-architecture", "train", ["--d-model", "64", "--resume", "--out",
                                                  "{tmp}/copy"], copy_run, "--d-model 32, not 64"),
    ("train-resume-other-optimizer", "train", ["--optimizer", "adamw", "--resume", "--out",
                                               "{tmp}/copy"], copy_run,
     "--optimizer muon, not adamw"),
    ("train-resume-other-preset", "train", ["--preset", "small", "--resume", "--out",
                                            "{tmp}/copy"], copy_run,
     "trained with --preset tiny, not small"),
    ("train-resume-corrupt", "train", ["--resume", "--out", "{tmp}/bad"], truncated, "corrupt"),
    ("train-resume-foreign", "train", ["--resume", "--out", "{tmp}/bad"], foreign,
     "not a minimoe checkpoint"),
    ("train-resume-other-version", "train", ["--resume", "--out", "{tmp}/bad"],
     with_payload(other_version), "checkpoint version 99"),
    ("train-init-missing", "train", ["--moe", "naive", "--init", "{tmp}/none.pt", "--out",
                                     "{tmp}/r"], None, "does not exist"),
    ("train-init-not-dense", "train", ["--moe", "naive", "--init", "{tmp}/bad/ckpt.pt", "--out",
                                       "{tmp}/r"], with_payload(moe_stage), "not a dense one"),
    ("train-init-other-shape", "train", MICRO + ["--d-model", "64", "--moe", "naive", "--init",
                                                 "{run}/ckpt.pt", "--out", "{tmp}/r"], None,
     "pass --d-model 32"),
    ("train-tokenizer-other-size", "train", ["--out", "{tmp}/bad"], copy_vq,
     "holds a tokenizer with image_size=16"),
    ("train-no-tokenizer", "train", ["--vq-steps", "0", "--out", "{tmp}/r"], None,
     "train a tokenizer first"),
    # data folders
    ("train-folder-missing", "train", ["--data", "folder:{tmp}/missing", "--out", "{tmp}/r"],
     None, "does not exist; it must hold the images and captions.jsonl"),
    ("train-folder-all-rows-broken", "train", MICRO + ["--data", "folder:{tmp}/data", "--out",
                                                       "{tmp}/r"], broken_folder,
     "no usable rows"),
    # tar shards (--data wds:PATTERN, python -m minimoe.data.pack) and loading workers
    ("train-wds-no-shard-matches", "train", ["--data", "wds:{tmp}/cc-{{000000..000003}}.tar",
                                             "--out", "{tmp}/r"], None, "no shard file matches"),
    ("train-wds-empty-pattern", "train", ["--data", "wds:", "--out", "{tmp}/r"], None,
     "--data wds: names no shards"),
    ("train-wds-all-samples-broken", "train", MICRO + ["--data", "wds:{tmp}/bad.tar", "--out",
                                                      "{tmp}/r"], broken_shard,
     "no usable sample in split 'train'"),
    ("train-negative-workers", "train", ["--workers", "-1", "--out", "{tmp}/r"], None,
     "--workers -1 must be >= 0"),
    ("pack-folder-missing", "pack", ["{tmp}/none", "{tmp}/out"], None,
     "does not exist; it must hold the images and captions.jsonl"),
    ("pack-zero-shard-size", "pack", ["{tmp}/data", "{tmp}/out", "--shard-size", "0"],
     broken_folder, "--shard-size 0 must be >= 1"),
    # pre-tokenised codes (pretokenize and --data codes:DIR)
    ("pretokenize-builtin-without-samples", "pretokenize", ["--ckpt", "{run}/vq.pt", "--data",
                                                            "builtin", "--out", "{tmp}/c"],
     None, "--data builtin has no end: pass --samples N"),
    ("pretokenize-codes-as-source", "pretokenize", ["--ckpt", "{run}/vq.pt", "--data",
                                                    "codes:{tmp}/codes", "--out", "{tmp}/c"],
     codes_of_run, "is codes already; pass the source they were made from"),
    ("pretokenize-over-codes", "pretokenize", ["--ckpt", "{run}/vq.pt", "--data", "builtin",
                                               "--samples", "4", "--out", "{tmp}/codes"],
     codes_of_run, "already holds codes (manifest.json); pick another --out"),
    ("pretokenize-missing-ckpt", "pretokenize", ["--ckpt", "{tmp}/none.pt", "--data", "builtin",
                                                 "--samples", "4", "--out", "{tmp}/c"], None,
     "does not exist"),
    ("pretokenize-zero-samples", "pretokenize", ["--ckpt", "{run}/vq.pt", "--data", "builtin",
                                                 "--samples", "0", "--out", "{tmp}/c"], None,
     "--samples 0 must be >= 1"),
    ("pretokenize-no-out", "pretokenize", ["--ckpt", "{run}/vq.pt", "--data", "builtin"], None,
     "the following arguments are required: --out"),
    ("train-codes-missing", "train", ["--data", "codes:{tmp}/missing", "--out", "{tmp}/r"], None,
     "does not exist; make it with python -m minimoe.pretokenize"),
    ("train-codes-without-manifest", "train", ["--data", "codes:{tmp}/codes", "--out", "{tmp}/r"],
     codes_without_manifest, "has no manifest.json; make it with python -m minimoe.pretokenize"),
    ("train-codes-other-vq-flag", "train", ["--data", "codes:{tmp}/codes", "--vq-codes", "32",
                                            "--out", "{tmp}/r"], codes_of_run,
     "holds codes made with --vq-codes 16; drop --vq-codes 32"),
    ("train-codes-run-has-other-tokenizer", "train", ["--data", "codes:{tmp}/codes", "--out",
                                                      "{tmp}/r"], codes_and_other_run_tokenizer,
     "r/vq.pt is not the tokenizer that made the codes"),
    ("train-codes-vq-file-replaced", "train", ["--data", "codes:{tmp}/codes", "--out",
                                               "{tmp}/r"], codes_with_other_vq_file,
     "codes/vq.pt is not the tokenizer that made the codes"),
    ("train-codes-all-shards-corrupt", "train", MICRO + ["--data", "codes:{tmp}/codes", "--out",
                                                         "{tmp}/r"], codes_all_shards_corrupt,
     "no usable shard or row in codes folder"),
    # sample.py
    ("sample-nothing-asked", "sample", ["--ckpt", "{run}/ckpt.pt"], None, "pass either --prompt"),
    ("sample-both-asked", "sample", ["--ckpt", "{run}/ckpt.pt", "--prompt", "a", "--image", "x"],
     None, "pass either --prompt"),
    ("sample-empty-prompt", "sample", ["--ckpt", "{run}/ckpt.pt", "--prompt", ""], None,
     "--prompt is empty"),
    ("sample-blank-prompt", "sample", ["--ckpt", "{run}/ckpt.pt", "--prompt", " \t "], None,
     "--prompt is empty"),
    ("sample-long-prompt", "sample", ["--ckpt", "{run}/ckpt.pt", "--prompt", "a red circle " * 20],
     None, "--prompt: text is 61 tokens long but at most 21 fit; shorten it"),
    ("sample-zero-samples", "sample", ["--ckpt", "{run}/ckpt.pt", "--prompt", "a", "--n", "0"],
     None, "--n 0: draw 1 to 1024 samples"),
    ("sample-absurd-samples", "sample", ["--ckpt", "{run}/ckpt.pt", "--prompt", "a", "--n",
                                         "100000"], None, "--n 100000: draw 1 to 1024 samples"),
    ("sample-zero-steps", "sample", ["--ckpt", "{run}/ckpt.pt", "--prompt", "a", "--steps", "0"],
     None, "--steps 0: use 1 to 1024 MaskGIT steps"),
    ("sample-absurd-steps", "sample", ["--ckpt", "{run}/ckpt.pt", "--prompt", "a", "--steps",
                                       "99999"], None, "--steps 99999: use 1 to 1024"),
    ("sample-nan-guidance", "sample", ["--ckpt", "{run}/ckpt.pt", "--prompt", "a", "--guidance",
                                       "nan"], None, "--guidance nan is not a number"),
    ("sample-inf-guidance", "sample", ["--ckpt", "{run}/ckpt.pt", "--prompt", "a", "--guidance",
                                       "inf"], None, "--guidance inf is not a number"),
    ("sample-unknown-guidance-schedule", "sample", ["--ckpt", "{run}/ckpt.pt", "--prompt", "a",
                                                    "--guidance-schedule", "cosine"], None,
     "invalid choice: 'cosine'"),
    ("sample-negative-choice-temperature", "sample", ["--ckpt", "{run}/ckpt.pt", "--prompt", "a",
                                                      "--choice-temperature", "-1"], None,
     "--choice-temperature -1.0: use a finite number >= 0"),
    ("sample-nan-code-temperature", "sample", ["--ckpt", "{run}/ckpt.pt", "--prompt", "a",
                                               "--code-temperature", "nan"], None,
     "--code-temperature nan: use a finite number >= 0"),
    ("sample-tokenizer-file-as-ckpt", "sample", ["--ckpt", "{run}/vq.pt", "--prompt", "a"], None,
     "is the image tokenizer of its run, not a model; pass the run's model checkpoint"),
    ("sample-bad-keep", "sample", ["--prompt", "a", "--keep", "diagonal"], None,
     "invalid choice: 'diagonal'"),
    ("sample-image-without-question", "sample", ["--ckpt", "{run}/ckpt.pt", "--image",
                                                 "{tmp}/in.png"], image, "non-empty --question"),
    ("sample-long-question", "sample", ["--ckpt", "{run}/ckpt.pt", "--image", "{tmp}/in.png",
                                        "--question", "what colour " * 10], image,
     "--question: text is 29 tokens long but at most 18 fit"),
    ("sample-not-an-image", "sample", ["--ckpt", "{run}/ckpt.pt", "--image", "{tmp}/x.png",
                                       "--question", "what?"], not_an_image, "not an image"),
    ("sample-image-missing", "sample", ["--ckpt", "{run}/ckpt.pt", "--image", "{tmp}/no.png",
                                        "--question", "what?"], None, "does not exist"),
    ("sample-init-image-not-an-image", "sample", ["--ckpt", "{run}/ckpt.pt", "--prompt", "a",
                                                  "--init-image", "{tmp}/x.png"], not_an_image,
     "not an image"),
    ("sample-missing-ckpt", "sample", ["--ckpt", "{tmp}/no.pt", "--prompt", "a"], None,
     "does not exist"),
    ("sample-corrupt-ckpt", "sample", ["--ckpt", "{tmp}/bad/ckpt.pt", "--prompt", "a"],
     truncated, "corrupt"),
    ("sample-foreign-ckpt", "sample", ["--ckpt", "{tmp}/bad/ckpt.pt", "--prompt", "a"], foreign,
     "not a minimoe checkpoint"),
    ("sample-ckpt-not-matching-its-config", "sample", ["--ckpt", "{tmp}/bad/ckpt.pt", "--prompt",
                                                       "a"], with_payload(other_shape),
     "does not match its own config"),
    ("sample-no-runs-at-all", "sample", ["--prompt", "a"], no_runs, "no checkpoint under out"),
    ("sample-cuda-without-gpu", "sample", ["--ckpt", "{run}/ckpt.pt", "--prompt", "a",
                                           "--device", "cuda"], None, "use --device cpu"),
    # eval.py
    ("eval-unknown-flag", "eval", ["--fid", "10"], None, "unrecognized arguments: --fid"),
    ("eval-zero-prompts", "eval", ["--ckpt", "{run}/ckpt.pt", "--n", "0", "--out", "{tmp}/e"],
     None, "--n 0 is too small; use at least 1"),
    ("eval-zero-samples", "eval", ["--ckpt", "{run}/ckpt.pt", "--samples", "0", "--out",
                                   "{tmp}/e"], None, "use at least 1"),
    ("eval-one-fid-image", "eval", ["--ckpt", "{run}/ckpt.pt", "--fid-n", "1", "--out",
                                    "{tmp}/e"], None, "use at least 2"),
    ("eval-missing-ckpt", "eval", ["--ckpt", "{tmp}/none.pt", "--out", "{tmp}/e"], None,
     "does not exist"),
    ("eval-second-ckpt-corrupt", "eval", ["--ckpt", "{run}/ckpt.pt", "--ckpt",
                                          "{tmp}/bad/ckpt.pt", "--out", "{tmp}/e"], truncated,
     "corrupt"),
    ("eval-inception-not-a-network", "eval", ["--ckpt", "{run}/ckpt.pt", "--inception",
                                              "{tmp}/x.png", "--n", "1", "--out", "{tmp}/e"],
     not_an_image, "not the FID Inception TorchScript"),
    ("eval-inception-other-network", "eval", ["--ckpt", "{run}/ckpt.pt", "--inception",
                                              "{tmp}/net.pt", "--n", "1", "--out", "{tmp}/e"],
     lambda tmp, run: _torchscript(tmp / "net.pt", 64), "not (2048,)"),
]


@pytest.mark.parametrize("script,argv,make,match", [
    pytest.param(*row[1:], id=row[0], marks=[NO_GPU] if "without-gpu" in row[0] else [])
    for row in SCRIPT_ROWS])
def test_script_row(capsys, monkeypatch, tmp_path, run, script, argv, make, match):
    if make is not None:
        make(tmp_path, run, monkeypatch) if make is no_runs else make(tmp_path, run)
    argv = [a.format(run=run, tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as e:
        SCRIPTS[script](argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("warning: ")]
    assert e.value.code != 0
    # one error line (no usage block, no traceback), besides one-line warnings of skipped rows
    assert len(errors) == 1 and errors[0].startswith("error: "), "\n".join(lines)
    assert match in errors[0], errors[0]


def test_non_utf8_prompt(run):
    """Bytes that are not UTF-8 on the command line (a real subprocess: argv is bytes)."""
    r = subprocess.run([sys.executable, "sample.py", "--ckpt", str(run / "ckpt.pt"),
                        "--prompt", b"caf\xe9"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--prompt: text is not valid UTF-8" in r.stderr


def test_debug_shows_the_traceback(run, tmp_path):
    with pytest.raises(checkpoint.CheckpointError):
        sample.main(["--ckpt", str(tmp_path / "no.pt"), "--prompt", "a", "--debug"])


def test_broken_rows_are_skipped_with_one_line_each(capsys, tmp_path):
    """A folder dataset with some broken rows trains on the good ones and names each bad one."""
    from PIL import Image
    broken_folder(tmp_path, None)
    folder = tmp_path / "data"
    (folder / "bad13.png").write_text("no image")  # a held-out row: the tokenizer check reads it
    rows = [b'{"file": "bad13.png", "caption": "a red square"}\n']
    for i in range(40):  # enough good rows that both splits have some
        Image.new("RGB", (16, 16), "red").save(folder / f"ok{i}.png")
        rows.append(f'{{"file": "ok{i}.png", "caption": "a red square"}}\n'.encode())
    with open(folder / "captions.jsonl", "ab") as f:
        f.write(b"".join(rows))
    train.main(MICRO + ["--data", f"folder:{folder}", "--dense-steps", "1", "--vq-steps", "1",
                        "--eval-n", "0", "--out", str(tmp_path / "r")])
    warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith("warning: ")]
    for problem in ("invalid JSON", "missing.png: file not found", "not valid UTF-8",
                    "not a JSON object", "cannot decode image"):
        assert sum(problem in w for w in warnings) >= 1, (problem, warnings)


# --- the library: ValueError / RuntimeError with the same kind of message ---------------------

needs_ext = pytest.mark.skipif(not ops.EXT_AVAILABLE, reason="extension not built")
p = torch.ops.minimoe if ops.EXT_AVAILABLE else None
LIBRARY_ROWS = [
    ("permute-id-out-of-range", RuntimeError, r"expert ids must lie in \[0, 3\)",
     lambda: p.permute(torch.randn(4, 3), torch.tensor([[0], [1], [5], [0]]), 3)),
    ("permute-negative-id", RuntimeError, r"expert ids must lie in \[0, 3\)",
     lambda: p.permute(torch.randn(4, 3), torch.tensor([[0], [-1], [2], [0]]), 3)),
    ("permute-int32-ids", RuntimeError, "expert_ids must be int64",
     lambda: p.permute(torch.randn(4, 3), torch.zeros(4, 1, dtype=torch.int32), 3)),
    ("grouped-mm-integer-x", RuntimeError, "grouped_mm: x must be floating point, got Long",
     lambda: p.grouped_mm(torch.ones(5, 3, dtype=torch.long), torch.ones(2, 3, 4).long(),
                          torch.tensor([0, 2, 5]))),
    ("unpermute-integer-y", RuntimeError, "y must be floating point, got Long",
     lambda: p.unpermute(torch.ones(6, 3).long(), torch.arange(6), torch.ones(3, 2).long())),
    ("permute-1d-x", RuntimeError, "must be 2-D",
     lambda: p.permute(torch.randn(4), torch.zeros(4, 1, dtype=torch.long), 3)),
    ("permute-token-count", RuntimeError, "x has 4 tokens but expert_ids 5",
     lambda: p.permute(torch.randn(4, 3), torch.zeros(5, 1, dtype=torch.long), 3)),
    ("permute-no-experts", RuntimeError, "num_experts must be > 0",
     lambda: p.permute(torch.randn(4, 3), torch.zeros(4, 1, dtype=torch.long), 0)),
    ("grouped-mm-offsets-sum", RuntimeError, "offsets must run from 0 to the 5 rows",
     lambda: p.grouped_mm(torch.randn(5, 3), torch.randn(2, 3, 4), torch.tensor([0, 2, 4]))),
    ("grouped-mm-int32-offsets", RuntimeError, "grouped_mm: offsets must be int64, got Int",
     lambda: p.grouped_mm(torch.randn(5, 3), torch.randn(2, 3, 4),
                          torch.tensor([0, 2, 5], dtype=torch.int32))),
    ("grouped-mm-offsets-decrease", RuntimeError, "offsets must not decrease",
     lambda: p.grouped_mm(torch.randn(5, 3), torch.randn(2, 3, 4), torch.tensor([0, 6, 5]))),
    ("grouped-mm-offsets-length", RuntimeError, "offsets",
     lambda: p.grouped_mm(torch.randn(5, 3), torch.randn(2, 3, 4), torch.tensor([0, 5]))),
    ("grouped-mm-width", RuntimeError, "disagree on D",
     lambda: p.grouped_mm(torch.randn(5, 3), torch.randn(2, 4, 4), torch.tensor([0, 2, 5]))),
    ("grouped-mm-dtypes", RuntimeError, "x is Float but w is Double",
     lambda: p.grouped_mm(torch.randn(5, 3), torch.randn(2, 3, 4).double(),
                          torch.tensor([0, 2, 5]))),
    ("unpermute-weights-shape", RuntimeError, "need y",
     lambda: p.unpermute(torch.randn(6, 3), torch.arange(6), torch.rand(3, 3))),
    ("unpermute-weights-dtype", RuntimeError, "cast the weights",
     lambda: p.unpermute(torch.randn(6, 3), torch.arange(6), torch.rand(3, 2).double())),
    ("backend-unknown", ValueError, "use one of torch, ext, auto", lambda: ops.backend("fast")),
    ("config-unknown-field", ValueError, "unknown config field 'lrate'",
     lambda: config.make_config("tiny", lrate=1.0)),
    ("config-unknown-preset", ValueError, "unknown preset 'huge'",
     lambda: config.make_config("huge")),
    ("data-codes-missing", ValueError, "codes folder '/nonexistent' does not exist",
     lambda: data.load_source("codes:/nonexistent", 16, "train")),
    ("data-unknown-source", ValueError, "use 'builtin' or 'folder:PATH'",
     lambda: data.load_source("imagenet", 16, "train")),
    ("data-unknown-split", ValueError, "split",
     lambda: data.BuiltinData(16, split="test")),
    ("text-not-utf8", ValueError, "not valid UTF-8",
     lambda: TextTokenizer(Vocab(16)).encode("caf\udce9")),
    ("maskgit-zero-steps", ValueError, "steps must be >= 1",
     lambda: sampler.maskgit(lambda ids: torch.zeros(1, 2, 3), torch.full((1, 2), 3), 3, 0)),
    ("checkpoint-missing", RuntimeError, "does not exist",
     lambda: checkpoint.load("/nonexistent/ckpt.pt")),
]


@pytest.mark.parametrize("error,match,call", [
    pytest.param(*row[1:], id=row[0], marks=[needs_ext] if row[0].split("-")[0] in
                 ("permute", "grouped", "unpermute") else []) for row in LIBRARY_ROWS])
def test_library_row(error, match, call):
    with pytest.raises(error, match=match):
        call()


@needs_ext
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_ops_device_mismatch():
    with pytest.raises(RuntimeError, match="move them to one device"):
        p.permute(torch.randn(4, 3, device="cuda"), torch.zeros(4, 1).long(), 2)
