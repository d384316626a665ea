"""Pre-tokenised codes (minimoe/data/codes.py, minimoe/pretokenize.py): the shards hold the
source's samples with what the tokenizer makes of their images, a run from codes trains exactly
as a run from images without running the VQ encoder, and damaged shards or rows are skipped
with one line each (the refusals are rows of test_bad_input.py).

Run: pytest -q tests/test_codes.py      (CPU, about half a minute)
"""
import json
import warnings

import pytest
import torch
from PIL import Image

import train
from conftest import micro_config
from minimoe import checkpoint, config, pretokenize
from minimoe.batches import Batcher
from minimoe.data import BuiltinData, CodesData, DataWarning, FolderData, TextLimit, load_source
from minimoe.data.codes import read_manifest, vq_fingerprint
from minimoe.tokenizers import ImageTokenizer, Vocab
from minimoe.vq import VQModel
from test_scripts import MICRO

REPORT = {"psnr": 0.0, "perplexity": 1.0, "used_fraction": 0.0}  # an untrained tokenizer's
N_TRAIN, N_HELDOUT = 30, 12


def tokenizer_file(cfg, path) -> dict:
    """An untrained tokenizer saved as a run's vq.pt: its codes are still a fixed function."""
    torch.manual_seed(0)
    checkpoint.save({"config": config.to_dict(cfg), "vq": VQModel(cfg.vq).state_dict(),
                     "report": REPORT, "merges": []}, path)
    return checkpoint.load(path)


def image_tokenizer(cfg, payload) -> ImageTokenizer:
    vq = VQModel(cfg.vq)
    vq.load_state_dict(payload["vq"])
    return ImageTokenizer(vq, cfg.vq)


@pytest.fixture
def coded(tmp_path):
    """(cfg, tokenizer payload, codes folder) of the micro config's built-in data."""
    cfg = micro_config()
    payload = tokenizer_file(cfg, tmp_path / "vq.pt")
    pretokenize.pretokenize(payload, cfg, str(tmp_path / "codes"), N_TRAIN, N_HELDOUT,
                            shard_size=7, batch=8, progress=False)
    return cfg, payload, tmp_path / "codes"


def test_codes_hold_the_source_s_samples_and_their_encoding(coded):
    """Sample i of each split is the source's sample i (texts, domain, key, ground truth) with
    the tokenizer's codes of its image, stored as int16 in shards of --shard-size; indices
    wrap; the manifest names the tokenizer by the hash of its weights, and DIR/vq.pt is it."""
    cfg, payload, folder = coded
    tok = image_tokenizer(cfg, payload)
    manifest = read_manifest(str(folder))
    assert manifest["tokenizer"]["vq_sha256"] == vq_fingerprint(payload["vq"])
    assert vq_fingerprint(checkpoint.load(folder / "vq.pt")["vq"]) == vq_fingerprint(payload["vq"])
    assert manifest["tokenizer"]["vq_codes"] == cfg.vq.vq_codes and manifest["grid"] == [4, 4]
    assert [s["samples"] for s in manifest["splits"]["train"]] == [7, 7, 7, 7, 2]
    assert torch.load(folder / "train" / "000000.pt", weights_only=True)["codes"].dtype \
        == torch.int16
    for split, n in (("train", N_TRAIN), ("heldout", N_HELDOUT)):
        source = BuiltinData(cfg.data.image_size, cfg.data.domains, split, seed=0)
        codes = CodesData(str(folder), cfg.data.image_size, split)
        assert len(codes) == n
        originals = [source[i] for i in range(n)]
        encoded = tok.encode([s.image for s in originals]).view(n, 4, 4)
        for i, s in enumerate(originals):
            c = codes[i]
            assert c.image is None and c.codes.dtype == torch.long
            assert torch.equal(c.codes, encoded[i])
            assert (c.caption, c.qa, c.domain, c.key) == (s.caption, s.qa, s.domain, s.key)
            assert json.dumps(c.objects) == json.dumps(s.objects)
        assert codes[n + 3].key == codes[3].key


def test_batches_from_codes_equal_batches_from_images_without_the_encoder(coded):
    """The Batcher builds the same tokens, labels and attention groups from codes as from the
    images they encode, and never calls the encoder for them."""
    cfg, payload, folder = coded
    tok = image_tokenizer(cfg, payload)
    vocab = Vocab(cfg.vq.vq_codes, cfg.data.text_vocab)
    from_images = Batcher(cfg, BuiltinData(cfg.data.image_size, cfg.data.domains), vocab, tok)
    blind = image_tokenizer(cfg, payload)
    blind.encode = None  # calling it would fail
    from_codes = Batcher(cfg, load_source(f"codes:{folder}", cfg.data.image_size, "train"),
                         vocab, blind)
    for step in range(3):  # 3 steps of 10 samples: the 30 encoded
        a, b = from_images(step), from_codes(step)
        for name in ("tokens_BL", "labels_BL", "groups_BL", "task_B", "domain_BL"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (step, name)


def test_a_run_from_codes_logs_the_losses_of_a_run_from_images(tmp_path, monkeypatch):
    """train.py on --data codes:DIR, made by pretokenize from a run's vq.pt, logs exactly the
    training and held-out losses of that run on the built-in images, reuses its tokenizer and
    report, and never runs the VQ encoder."""
    train.main(MICRO + ["--eval-n", "0", "--out", str(tmp_path / "images")])
    pretokenize.main(["--ckpt", str(tmp_path / "images" / "vq.pt"), "--data", "builtin",
                      "--samples", "60", "--heldout-samples", "40", "--out",
                      str(tmp_path / "codes"), "--no-progress"])

    def no_encoder(self, x):
        raise AssertionError("the VQ encoder ran")
    monkeypatch.setattr(VQModel, "encode", no_encoder)
    summary = train.main(MICRO + ["--eval-n", "0", "--data", f"codes:{tmp_path / 'codes'}",
                                  "--out", str(tmp_path / "from_codes")])

    def dense(run):
        lines = (tmp_path / run / "log.jsonl").read_text().splitlines()
        return [{k: r.get(k) for k in ("step", "loss", "t2i", "mmu", "lm", "heldout")}
                for r in map(json.loads, lines) if r["stage"] == "dense"]
    images, codes = dense("images"), dense("from_codes")
    assert len(images) == 7 and codes == images  # 6 steps and the held-out check
    vq = {run: checkpoint.load(tmp_path / run / "vq.pt") for run in ("images", "from_codes")}
    assert vq_fingerprint(vq["images"]["vq"]) == vq_fingerprint(vq["from_codes"]["vq"])
    assert summary["vq"] == vq["images"]["report"]


def _damage(folder, shard: str, how: str) -> None:
    path = folder / shard
    if how == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif how == "remove":
        path.unlink()
    else:  # a torch file of the wrong shape, with the manifest updated to its hash
        import hashlib
        import io
        buffer = io.BytesIO()
        torch.save({"codes": torch.zeros(2, 3, 3, dtype=torch.int16), "rows": "[]"}, buffer)
        path.write_bytes(buffer.getvalue())
        manifest = json.loads((folder / "manifest.json").read_text())
        for entry in manifest["splits"]["train"]:
            if entry["file"] == shard:
                entry["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
        (folder / "manifest.json").write_text(json.dumps(manifest))


def test_damaged_shards_are_skipped_with_one_line_each(coded):
    """A truncated, missing or misshapen shard is reported once, one line naming it, and its
    samples hand over to the next shard's; with no usable shard left, access raises."""
    cfg, _, folder = coded
    for shard, how in (("train/000001.pt", "truncate"), ("train/000002.pt", "remove"),
                       ("train/000004.pt", "shape")):
        _damage(folder, shard, how)
    codes = CodesData(str(folder), cfg.data.image_size, "train")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        keys = [codes[i].key for i in range(2 * N_TRAIN)]
    messages = [str(w.message) for w in record if issubclass(w.category, DataWarning)]
    assert len(messages) == 3 and all("\n" not in m and "unusable shard" in m for m in messages)
    for needle in ("000001.pt: unusable shard (its sha256", "000002.pt: unusable shard (file "
                   "not found)", "000004.pt: unusable shard (codes (2, 3, 3)"):
        assert sum(needle in m for m in messages) == 1, (needle, messages)
    good = [codes[i].key for i in (*range(7), *range(21, 28))]  # shards 0 and 3
    assert keys[7] == keys[14] == good[7], "shards 1 and 2 hand over to shard 3"
    assert set(keys) <= set(good)
    for shard in ("train/000000.pt", "train/000003.pt"):
        _damage(folder, shard, "remove")
    codes = CodesData(str(folder), cfg.data.image_size, "train")
    with pytest.warns(DataWarning), pytest.raises(ValueError, match="no usable shard or row"):
        codes[0]


def test_rows_over_the_run_s_text_limit_are_skipped(coded):
    """Codes keep every text; a run whose text block is too short for some of them skips those
    rows with one line each, and reads the others."""
    cfg, _, folder = coded
    every = [CodesData(str(folder))[i] for i in range(N_TRAIN)]
    texts = lambda s: [s.caption] + [f"{q} {a}" for q, a in s.qa]
    longest = max(len(t.encode()) for s in every for t in texts(s))
    codes = CodesData(str(folder), split="train", limit=TextLimit(most=longest - 1))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        kept = {codes[i].key for i in range(N_TRAIN)}
    messages = [str(w.message) for w in record if issubclass(w.category, DataWarning)]
    over = {s.key for s in every if max(len(t.encode()) for t in texts(s)) == longest}
    assert len(messages) == sum(s.key in over for s in every)
    assert all("bytes, over the" in m and "skipped" in m for m in messages)
    assert kept and not kept & over


def test_a_finite_source_is_encoded_whole_each_row_once(tmp_path):
    """A folder is encoded whole, both splits; an undecodable image (which the folder source
    hands over to its next row) costs that row only, never a duplicate of the next one."""
    cfg = micro_config()
    folder = tmp_path / "data"
    folder.mkdir()
    rows = []
    for i in range(40):
        Image.new("RGB", (20, 20), (6 * i, 0, 0)).save(folder / f"{i}.png")
        rows.append(json.dumps({"file": f"{i}.png", "caption": f"red {i}"}))
    (folder / "3.png").write_bytes(b"not an image")
    (folder / "captions.jsonl").write_text("\n".join(rows))
    payload = tokenizer_file(cfg, tmp_path / "vq.pt")
    spec = f"folder:{folder}"
    cfg = micro_config(data=spec)
    with pytest.warns(DataWarning, match="3.png: cannot decode"):
        pretokenize.pretokenize(payload, cfg, str(tmp_path / "codes"), progress=False)
    counts = {}
    for split in ("train", "heldout"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            images = FolderData(str(folder), cfg.data.image_size, split)
        codes = CodesData(str(tmp_path / "codes"), cfg.data.image_size, split)
        keys = [codes[i].key for i in range(len(codes))]
        assert len(set(keys)) == len(keys)
        assert set(keys) == {f"folder|{r.file}" for r in images.rows} - {"folder|3.png"}
        counts[split] = len(codes)
    assert sum(counts.values()) == 39 and min(counts.values()) > 0
