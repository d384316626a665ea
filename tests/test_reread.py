"""experiments/reread.py: best of K by the model's own reading. The pieces it rests on (the
shape swaps, the caption likelihood against KV-cached decoding, the contrast's bounds) and the
script end to end on an untrained micro model."""
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from common import untrained_micro  # noqa: E402
from reread import caption_logliks, scores, shape_swaps  # noqa: E402

from minimoe.model import KVCache  # noqa: E402
from minimoe.sequences import mmu_prefix  # noqa: E402


def test_each_shape_word_is_swapped_for_every_shape_of_its_number():
    caption = "a small red circle left of a large blue square"
    swaps = shape_swaps(caption)
    assert len(swaps) == 2 and all(len(s) == 4 and caption in s for s in swaps)
    assert "a small red cross left of a large blue square" in swaps[0]
    assert "a small red circle left of a large blue triangle" in swaps[1]
    plural = shape_swaps("two red circles and an orange square")
    assert plural[0] == [f"two red {s} and an orange square"
                         for s in ("circles", "squares", "triangles", "crosses")]
    assert shape_swaps("the digit 3 in yellow on blue") == []


def reference_loglik(session, codes_N, caption):
    """log p(caption | image) by the greedy answerer's route: the captioning prompt through a
    KV cache, then the caption's ids fed one at a time."""
    v = session.vocab
    tokens, groups = mmu_prefix((codes_N + v.image_offset).tolist(), [], v)
    cache = KVCache(len(session.model.blocks))
    logits = session.model(torch.tensor([tokens]), torch.tensor([groups]), cache).logits_BLV[0, -1]
    total, group = 0.0, len(tokens)
    for t in session.text.encode(caption) + [v.eot]:
        total += torch.log_softmax(logits.double(), -1)[t].item()
        logits = session.model(torch.tensor([[t]]), torch.tensor([[group]]),
                               cache).logits_BLV[0, -1]
        group += 1
    return total


def test_caption_likelihood_is_what_decoding_the_caption_token_by_token_gives():
    _, session, _ = untrained_micro(text_len=64)
    draw = torch.Generator().manual_seed(1)
    codes = torch.randint(0, session.vocab.codes, (3, 16), generator=draw)
    captions = ["a small red circle", "two blue squares and a green cross", "a large purple cross"]
    with torch.no_grad():
        got = caption_logliks(session, codes, captions)
        want = [reference_loglik(session, c, cap) for c, cap in zip(codes, captions)]
    assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-3), \
        (got, want)


def test_the_contrast_is_a_log_share_and_the_likelihood_the_prompts_own():
    """Each shape word adds log(p(prompt) / sum over its swaps, the prompt included) <= 0; a
    prompt without shape words scores 0."""
    _, session, _ = untrained_micro(text_len=64)
    captions = ["a small red circle left of a large blue square", "a large green triangle",
                "the digit 3 in yellow on blue"]
    codes = torch.randint(0, session.vocab.codes, (2, 3, 16),
                          generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        likelihood, contrast = scores(session, codes, captions)
        own = torch.stack([caption_logliks(session, codes[k], captions) for k in range(2)], 1)
    assert likelihood.shape == contrast.shape == (3, 2)
    assert torch.allclose(likelihood, own, atol=1e-4)
    assert (contrast[:2] < 0).all() and (contrast[2] == 0).all()
    # with one shape word, the contrast is a log-probability over the four shapes: the four
    # prompts of its swaps share out 1
    swaps = shape_swaps(captions[1])[0]
    with torch.no_grad():
        _, each = scores(session, codes[:, [1] * 4], swaps)
    assert torch.allclose(each.exp().sum(0), torch.ones(2), atol=1e-5)


def test_the_script_runs_on_an_untrained_model_and_bounds_its_picks(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "reread.py"), "--smoke",
                        "--docs", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (run, found), = json.loads((tmp_path / "reread.json").read_text()).items()
    rows = found["by_k"]
    assert set(rows) == {"1", "2"} and found["prompts"] == 6
    one = rows["1"]
    assert one["random"] == one["likelihood"] == one["contrast"] == one["oracle"]
    for r_ in rows.values():  # no pick beats knowing which sample passes
        assert all(0 <= r_[key] <= r_["oracle"] <= 1 for key in ("random", "likelihood",
                                                                  "contrast"))
    assert "| untrained | 2 |" in (tmp_path / "reread.md").read_text()


def test_no_samples_is_a_usage_error(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "reread.py"), "--smoke",
                        "--k", "0", "--docs", str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "at least 1" in r.stderr and "Traceback" not in r.stderr
