"""Text tokenizer round trips, the joint vocabulary, and the image tokenizer wrapper.
Run: pytest -q tests/test_tokenizers.py"""
import pytest
import torch
from PIL import Image

from minimoe.config import VQConfig
from minimoe import bpe
from minimoe.tokenizers import (ImageTokenizer, TextTokenizer, Vocab, images_to_tensor,
                                tensor_to_images)
from minimoe.vq import VQModel

TEXT = TextTokenizer(Vocab(256))


@pytest.mark.parametrize("s", ["", "a red circle", "héllo wörld", "数字 7", "emoji 🟥🔵",
                               "tab\tnew\nline", "\x00nul"])
def test_text_round_trip(s):
    ids = TEXT.encode(s)
    assert all(0 <= i < 256 for i in ids)
    assert TEXT.decode(ids) == s


@pytest.mark.parametrize("text", [256, 512])
def test_vocab_layout_has_mask_last_and_disjoint_ranges(text):
    v = Vocab(100, text)
    specials = [v.pad, v.t2i, v.mmu, v.sot, v.eot, v.soi, v.eoi]
    assert len(set(specials)) == 7 and all(text <= s < v.image_offset for s in specials)
    assert v.image_offset == text + 7 and v.mask == v.image_offset + 100 == v.size - 1


TEXTS = ["a small red circle left of a large blue square", "what colour is the square? red",
         "the letter w in red on yellow", "two red circles and an orange square"] * 5


def test_bpe_merges_words_and_every_string_still_round_trips():
    merges = bpe.train(TEXTS, 400)
    text = TextTokenizer(Vocab(16, 400, tuple(merges)))
    assert len(text.encode("a small red circle")) == 4, "a frequent word is one token"
    for s in TEXTS[:4] + ["", "héllo  wörld!!", "数字 7", "emoji 🟥🔵", "tab\tnew\nline",
                          "unseen words zebra", "\x00nul", "  two  spaces "]:
        ids = text.encode(s)
        assert all(0 <= i < 400 for i in ids) and text.decode(ids) == s, s
    assert bpe.train(TEXTS, 400) == merges, "training is deterministic"
    assert bpe.train(TEXTS, 260) == merges[:4], "a smaller vocabulary keeps the first merges"


def random_unicode(rng, n: int) -> str:
    """n code points from every plane, surrogates excluded (they are not text)."""
    out = []
    while len(out) < n:
        c = rng.randrange(0x110000)
        if not 0xD800 <= c <= 0xDFFF:
            out.append(chr(c))
    return "".join(out)


def test_bpe_round_trips_arbitrary_unicode():
    """Merges learnt on mixed-script texts (so merges inside multi-byte characters exist)
    still give back every string, in or out of what they were learnt on."""
    import random
    rng = random.Random(0)
    learnt_on = [random_unicode(rng, 20) for _ in range(50)] + ["数字 数字 ünï ünï 🟥🟥"] * 5
    merges = bpe.train(learnt_on + TEXTS, 512)
    text = TextTokenizer(Vocab(16, 512, tuple(merges)))
    assert any(m[0] >= 128 or m[1] >= 128 for m in merges), "some merge joins non-ASCII bytes"
    for s in learnt_on + [random_unicode(rng, rng.randrange(60)) for _ in range(200)]:
        ids = text.encode(s)
        assert all(0 <= i < 512 for i in ids) and text.decode(ids) == s, repr(s)


def test_bpe_encoding_applies_merges_in_the_order_they_were_learnt():
    merges = bpe.train(["abab abab"] * 3, 300)
    enc = bpe.BPE(merges)
    ids = enc.encode("abab")
    assert len(ids) == 1 and enc.decode_bytes(ids) == b"abab"
    assert enc.encode("ba") == [ord("b"), ord("a")], "merges never cross into unseen pairs"


def test_an_over_long_text_is_measured_in_tokens_with_bpe():
    text = TextTokenizer(Vocab(16, 400, tuple(bpe.train(TEXTS, 400))))
    with pytest.raises(ValueError, match="text is 4 tokens long but at most 3 fit"):
        text.encode("a small red circle", max_len=3)
    with pytest.raises(ValueError, match="do not fit in 300 text ids"):
        Vocab(16, 300, tuple(bpe.train(TEXTS, 400)))


def test_over_long_text_is_rejected_not_truncated():
    with pytest.raises(ValueError, match="at most 4"):
        TEXT.encode("héllo", max_len=4)  # 6 bytes
    assert TEXT.encode("héllo", max_len=6) == list("héllo".encode())


def test_non_utf8_text_is_rejected():
    bad = b"caf\xe9".decode("utf-8", errors="surrogateescape")
    with pytest.raises(ValueError, match="UTF-8"):
        TEXT.encode(bad)


def test_decode_drops_specials_and_replaces_invalid_bytes():
    v = Vocab(16)
    assert TEXT.decode([104, v.eot, 105, v.mask]) == "hi"
    assert TEXT.decode([0xE9]) == "\ufffd"


def test_image_tokenizer_shapes_and_conversions():
    cfg = VQConfig(vq_downsample=4, vq_codes=16, vq_colours=4, vq_dim=8, vq_channels=16)
    tok = ImageTokenizer(VQModel(cfg), cfg)
    images = [Image.new("RGB", (16, 16), c) for c in ("red", "blue", "white")]
    codes = tok.encode(images)
    assert codes.shape == (3, 16) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    out = tok.decode(codes)
    assert out.shape == (3, 3, 16, 16) and 0 <= float(out.min()) and float(out.max()) <= 1
    x = images_to_tensor(images)
    assert torch.equal(images_to_tensor(tensor_to_images(x)), x), "uint8 round trip"
    with pytest.raises(ValueError, match="square"):
        tok.decode(codes[:, :15])
