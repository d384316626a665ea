"""Tar shards (`--data wds:PATTERN`, minimoe/data/shards.py) and the packer
(`python -m minimoe.data.pack`): packing a folder keeps its samples; the stream is a pure
function of the index however it is read; bad samples are reported once and cost nothing
else; ranks read disjoint shards; shard data trains, and a killed run resumes to the same
losses.  Run: pytest -q tests/test_shards.py   (the kill/resume test is marked slow)"""
import io
import json
import shutil
import signal
import sys
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch.distributed as dist

import train
from minimoe import checkpoint
from minimoe.data import DataWarning, FolderData, ShardData, load_source, split_of
from minimoe.data.pack import main as pack_main
from minimoe.data.pack import pack
from test_dist import spawn
from test_reliability import losses
from test_reliability import train as train_subprocess
from test_scripts import MICRO

SIZE = 16
N_SAMPLES = 60  # samples of the generated folder: both splits get some
SHARD_SIZE = 7  # 9 shards of the generated folder (the last one short)


def generated_folder(path: Path, n: int = N_SAMPLES) -> Path:
    """A data folder of built-in shapes images (PNG and JPEG, some in a subfolder) with their
    captions, questions and domain."""
    source = load_source("builtin", SIZE, "train", domains="shapes")
    (path / "sub").mkdir(parents=True)
    rows = []
    for i in range(n):
        s = source[i]
        file = f"sub/{i}.png" if i % 3 else f"{i}.jpg"
        s.image.save(path / file, quality=95)
        rows.append({"file": file, "caption": s.caption, "qa": s.qa, "domain": s.domain})
    (path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """(folder, shard pattern) of the generated folder packed SHARD_SIZE samples a shard."""
    root = tmp_path_factory.mktemp("packed")
    folder = generated_folder(root / "folder")
    return folder, pack(str(folder), str(root / "shards"), SHARD_SIZE)


def one_epoch(source) -> list:
    """Every sample of a shard source's first epoch, in stream order."""
    samples = []
    while len(source.epoch_starts) < 2:
        samples.append(source[len(samples)])
    return samples[:source.epoch_starts[1]]


def identity(s) -> tuple:
    return s.caption, tuple(map(tuple, s.qa)), s.domain, s.image.tobytes()


def keys_in(split: str, n: int, stem: str = "s") -> list[str]:
    """n sample keys whose shard samples land in `split`."""
    return [k for k in (f"{stem}{i}" for i in range(100 * n))
            if split_of(f"wds|{k}") == split][:n]


def test_packing_then_reading_gives_the_folders_samples(packed):
    """Over both splits, one epoch of the shards holds exactly the folder's samples: the same
    captions, questions, domains and decoded pixels, each once. The packer names the shards
    with a brace pattern that --data wds: expands."""
    folder, pattern = packed
    assert pattern.endswith("shard-{000000..000008}.tar")
    shards, rows = Counter(), Counter()
    for split in ("train", "heldout"):
        source = load_source(f"wds:{pattern}", SIZE, split)
        shards.update(identity(s) for s in one_epoch(source))
        folder_split = FolderData(str(folder), SIZE, split)
        rows.update(identity(folder_split[i]) for i in range(len(folder_split)))
    assert sum(shards.values()) == N_SAMPLES and shards == rows


def test_the_packer_says_what_to_train_with_and_refuses_a_used_folder(packed, tmp_path,
                                                                       capsys):
    """It prints the --data flag to train from (quoted: the shell would expand the braces),
    and will not mix its shards with an earlier packing's."""
    folder, _ = packed
    pattern = pack_main([str(folder), str(tmp_path / "out"), "--shard-size", "100"])
    out = capsys.readouterr().out
    assert pattern == str(tmp_path / "out" / "shard-000000.tar")
    assert f"--data 'wds:{pattern}'" in out
    with pytest.raises(SystemExit):
        pack_main([str(folder), str(tmp_path / "out")])
    assert "already holds shards" in capsys.readouterr().err


def test_sample_i_is_a_pure_function_of_i_however_the_stream_is_read(packed):
    """Reading out of order, backwards (a restart of the epoch), far ahead (a skip over
    epochs) or from a fresh source gives the samples of one sequential read; every epoch
    holds the same samples in its own order; another seed gives another order."""
    _, pattern = packed
    spec = f"wds:{pattern}"
    once = load_source(spec, SIZE, "train")
    straight = [once[i].key for i in range(150)]
    wild = load_source(spec, SIZE, "train")
    for i in (120, 3, 4, 149, 0, 60, 59, 61, 2):
        assert wild[i].key == straight[i], i
    n = wild.epoch_starts[1]
    assert sorted(straight[:n]) == sorted(straight[n:2 * n]) and straight[:n] != straight[n:2 * n]
    other_seed = load_source(spec, SIZE, "train", seed=1)
    assert [other_seed[i].key for i in range(n)] != straight[:n]


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def png(colour: str = "red") -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def caption_json(caption: str, **more) -> bytes:
    return json.dumps({"caption": caption, **more}).encode()


def test_bad_samples_are_skipped_with_one_warning_each_and_nothing_else_is_lost(tmp_path):
    """Every kind of bad sample in a shard (an image that does not decode, bad JSON, JSON or
    txt that is not UTF-8, a caption over the limit, a bad qa, no image, no caption, an
    absolute or climbing member name) is reported once, one line naming it and the reason, over
    several epochs of both splits; every good sample is read, with json or txt captions."""
    good_keys = keys_in("train", 8, "good") + keys_in("heldout", 4, "good")  # both splits
    # A sample's members lie next to each other in its tar; half the captions in json (with
    # questions), half in txt.
    good = [m for i, k in enumerate(good_keys) for m in
            ((f"{k}.png", png()), (f"{k}.json", caption_json(k, qa=[["q?", "a"]])) if i % 2
             else (f"{k}.txt", k.encode()))]
    bad = {"corrupt": [("corrupt.png", b"\x89PNG\r\n\x1a\n not a png"),
                       ("corrupt.json", caption_json("corrupt"))],
           "badjson": [("badjson.png", png()), ("badjson.json", b'{"caption": ')],
           "latin1json": [("latin1json.png", png()),
                          ("latin1json.json", b'{"caption": "caf\xe9"}')],
           "latin1txt": [("latin1txt.png", png()), ("latin1txt.txt", b"caf\xe9")],
           "long": [("long.png", png()), ("long.txt", b"x" * 61)],
           "badqa": [("badqa.png", png()),
                     ("badqa.json", caption_json("ok", qa=[["only a question"]]))],
           "noimage": [("noimage.json", caption_json("no image"))],
           "nocaption": [("nocaption.png", png())],
           "/abs/olute": [("/abs/olute.png", png()), ("/abs/olute.txt", b"abs")],
           "../climbs": [("../climbs.png", png()), ("../climbs.txt", b"up")]}
    reasons = {"corrupt": "cannot decode image", "badjson": "json invalid JSON",
               "latin1json": "json not valid UTF-8", "latin1txt": "txt not valid UTF-8",
               "long": "caption is 61 bytes, over the 60 that fit", "badqa": "qa item",
               "noimage": "no image", "nocaption": "no caption",
               "/abs/olute": "inside the shard", "../climbs": "inside the shard"}
    samples = [good[2 * i:2 * i + 2] for i in range(len(good_keys))] + list(bad.values())
    half = len(samples) // 2
    write_tar(tmp_path / "a.tar", [m for sample in samples[:half] for m in sample])
    write_tar(tmp_path / "b.tar", [m for sample in samples[half:] for m in sample])
    read = Counter()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for split in ("train", "heldout"):
            source = load_source(f"wds:{tmp_path}/{{a,b}}.tar", SIZE, split)
            epoch = one_epoch(source)
            read.update(s.caption for s in epoch)
            for i in range(len(epoch), 3 * len(epoch)):  # two epochs more: no new warnings
                source[i]
    messages = [str(w.message) for w in record if issubclass(w.category, DataWarning)]
    assert len(messages) == len(bad) and all("\n" not in m for m in messages), messages
    for key, reason in reasons.items():
        assert sum(f"sample {key}:" in m and reason in m for m in messages) == 1, (key, messages)
    assert set(read) == set(good_keys)  # the corrupt image's turn went to the next sample


def test_a_truncated_shard_is_reported_and_the_rest_is_read(tmp_path):
    """A shard cut short mid-member: one warning, the samples before the cut and every other
    shard's are read."""
    names = keys_in("train", 12)
    for shard, part in (("whole", names[:6]), ("cut", names[6:])):
        write_tar(tmp_path / f"{shard}.tar", [m for n in part for m in
                                              ((f"{n}.png", png()), (f"{n}.txt", n.encode()))])
    with tarfile.open(tmp_path / "cut.tar") as tar:  # cut inside the 4th sample's image
        cut = tar.getmember(f"{names[9]}.png").offset_data + 40
    (tmp_path / "cut.tar").write_bytes((tmp_path / "cut.tar").read_bytes()[:cut])
    with pytest.warns(DataWarning, match="unreadable tar data") as record:
        got = {s.caption for s in one_epoch(load_source(f"wds:{tmp_path}/{{whole,cut}}.tar",
                                                        SIZE, "train"))}
    assert len([w for w in record if issubclass(w.category, DataWarning)]) == 1
    assert got == set(names[:9])


def test_patterns_that_name_no_shards_and_too_few_shards_are_refused(packed, tmp_path):
    """A pattern naming no file, an empty one, one with a missing shard, and fewer shards than
    ranks: a one-line ValueError each."""
    _, pattern = packed
    for spec, match in ((f"wds:{tmp_path}/none-{{0..3}}.tar", "no shard file matches"),
                        ("wds:", "names no shards"),
                        (f"wds:{pattern.replace('000008', '000009')}",
                         "1 of its 10 shards do not exist")):
        with pytest.raises(ValueError, match=match):
            load_source(spec, SIZE, "train")
    with pytest.raises(ValueError, match="9 shards for 16 ranks"):
        load_source(f"wds:{pattern}", SIZE, "train").for_rank(3, 16)


def test_without_webdataset_the_error_says_how_to_install_it(packed, monkeypatch):
    _, pattern = packed
    monkeypatch.setitem(sys.modules, "webdataset", None)  # import raises ImportError
    with pytest.raises(ValueError, match=r'pip install -e "\.\[data\]"'):
        load_source(f"wds:{pattern}", SIZE, "train")


def _rank_reader(rank: int, store: str, pattern: str, failures):
    try:
        from minimoe.batches import Batcher
        from minimoe.tokenizers import ImageTokenizer, Vocab
        from minimoe.vq import VQModel
        from conftest import micro_config
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
        cfg = micro_config(data=f"wds:{pattern}")
        tok = ImageTokenizer(VQModel(cfg.vq), cfg.vq)
        batcher = Batcher(cfg, load_source(cfg.data.data, SIZE, "train"), Vocab(16), tok,
                          rank=rank, world=2)
        source = batcher.source
        assert source.per_rank and (source.rank, source.world) == (rank, 2)
        n_epoch = len(one_epoch(ShardData(pattern, SIZE, "train", rank=rank, world=2)))
        per_step = sum(batcher.sizes)
        steps = (n_epoch + per_step - 1) // per_step
        keys = [s.key for step in range(steps) for s in batcher.samples(step)][:n_epoch]
        assert len(set(keys)) == n_epoch, "a rank reads each of its samples once an epoch"
        everyone = [None, None]
        dist.all_gather_object(everyone, keys)
        assert not set(everyone[0]) & set(everyone[1]), "ranks read disjoint samples"
        everything = {s.key for s in one_epoch(ShardData(pattern, SIZE, "train"))}
        assert set(everyone[0]) | set(everyone[1]) == everything
        batcher(0)  # the batch builds from the rank's samples
        dist.destroy_process_group()
    except Exception as e:  # reported to the parent, which fails the test
        failures.put(f"rank {rank}: {type(e).__name__}: {e}")
        raise


def test_two_ranks_under_gloo_read_disjoint_samples(packed, tmp_path):
    """Under data parallelism each rank's Batcher reads its own shards, indexed by its
    rank-local position: in an epoch the two ranks read disjoint samples that together are
    the whole train split."""
    _, pattern = packed
    spawn(_rank_reader, str(tmp_path / "store"), pattern)


def test_packed_shards_train_end_to_end_with_loading_workers(packed, tmp_path):
    """A micro run (BPE merges learnt from the shards, the tokenizer, the dense stage) trains
    from packed shards with 2 loading workers."""
    _, pattern = packed
    out = tmp_path / "run"
    summary = train.main(MICRO + ["--data", f"wds:{pattern}", "--vq-steps", "2",
                                  "--dense-steps", "3", "--workers", "2", "--eval-n", "0",
                                  "--sample-every", "0", "--out", str(out)])
    assert "vq" in summary and checkpoint.load(out / "ckpt.pt")["step"] == 3
    assert len(losses(out)) == 3


@pytest.mark.slow
def test_a_killed_run_on_shards_resumes_to_the_same_losses(packed, tmp_path):
    """As tests/test_reliability.py does for the built-in data: a run on shard data killed
    mid-stage (two steps after its step-3 checkpoint) resumes, with 2 loading workers this
    time, to the losses of an uninterrupted run, step for step: the checkpoint's step is all
    the data position there is."""
    _, pattern = packed
    data = ["--data", f"wds:{pattern}"]
    straight = tmp_path / "straight"
    rc, _, err = train_subprocess(straight, *data)
    assert rc == 0, err
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(straight / "vq.pt", out / "vq.pt")  # the tokenizer stage is not under test
    rc, _, _ = train_subprocess(out, *data, fault="kill-step:5")
    assert rc == -signal.SIGKILL and checkpoint.load(out / "ckpt.pt")["step"] == 3
    rc, _, err = train_subprocess(out, "--resume", "--workers", "2")
    assert rc == 0, err
    ref, got = losses(straight), losses(out)
    assert got.keys() == ref.keys()
    assert max(abs(got[k][name] - ref[k][name]) for k in ref for name in ref[k]) == 0.0
