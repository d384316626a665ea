"""experiments/words.py: what a caption's words are worth to the codes. The pieces it rests on
(which patches hold an object, a swap changes exactly one word, the count of centres behind
its bound) and the script end to end on an untrained micro model."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from words import MASKED, WORDS, caption_split, centre_range, centres, object_patches, \
    one_object_prompts, swapped  # noqa: E402

from minimoe.data import SHAPES, SIZES, random_shape_objects, render_shapes, \
    shapes_caption  # noqa: E402


def test_object_patches_are_the_patches_with_a_lit_pixel():
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    a[1, 6] = (200, 10, 10)  # one bright pixel in the top-right patch
    a[5, 1] = (40, 40, 40)  # a dark (anti-aliased) pixel is background
    got = object_patches([Image.fromarray(a)], 4)
    assert got.tolist() == [[False, True, False, False]]


def test_a_swap_changes_exactly_one_word_of_the_caption():
    rng = np.random.default_rng(0)
    for _ in range(50):
        obj = random_shape_objects(rng, 32, 1)[0]
        for word in WORDS:
            other = swapped(obj, word, rng)
            assert other[word] != obj[word] and other[word] in WORDS[word]
            assert {k for k in obj if obj[k] != other[k]} == {word}
            before, after = shapes_caption([obj]).split(), shapes_caption([other]).split()
            assert sum(x != y for x, y in zip(before, after)) == 1


def test_the_split_of_a_one_object_caption_is_the_data_modules():
    """Held-out single objects of the data module have captions the script calls held out,
    and every one-object caption is among the script's prompts."""
    from minimoe.data import BuiltinData
    captions = {p.caption for p in one_object_prompts()}
    for split in ("heldout", "train"):
        data = BuiltinData(32, ("shapes",), split, seed=0)
        ones = [data[i] for i in range(200) if len(data[i].objects) == 1]
        assert ones and all(s.caption in captions and caption_split(s.caption) == split
                            for s in ones)


def test_the_bound_counts_every_centre_the_placement_can_draw():
    rng = np.random.default_rng(1)
    seen = {s: set() for s in SIZES}
    for _ in range(4000):
        obj = random_shape_objects(rng, 32, 1)[0]
        seen[obj["size"]].add((obj["cx"], obj["cy"]))
    for size, frac in SIZES.items():
        lo, hi = centre_range(32, frac * 32)
        axes = [sorted({c[i] - 0.5 for c in seen[size]}) for i in (0, 1)]
        assert all(ax[0] == lo and ax[-1] == hi for ax in axes)  # the range is the placement's
        assert len(seen[size]) <= centres(32, frac * 32) == (hi - lo + 1) ** 2


def test_the_script_measures_every_caption_variant_at_every_share(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "words.py"), "--smoke",
                        "--draws", "1", "--docs", str(tmp_path)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (run, found), = json.loads((tmp_path / "words.json").read_text()).items()
    assert set(found["masked"]) == {str(s) for s in MASKED}
    # every shape has captions in both splits, each share a fraction of its samples
    assert set(found["shapes"]) == set(SHAPES)
    assert all(set(v) == {"train", "heldout"} and all(0 <= x <= 1 for x in v.values())
               for v in found["shapes"].values())
    for ce in found["masked"].values():
        assert set(ce) == {"true", "empty", *(f"other {w}" for w in WORDS)}
        for parts in ce.values():
            # an untrained model spreads its guess over all 16 codes: about log 16 nats
            assert all(abs(v - math.log(16)) < 1.0 for v in parts.values())
    table = (tmp_path / "words.md").read_text()
    assert "| untrained | 90 % |" in table and "circle, held out" in table
    with Image.open(tmp_path / "words_samples.png") as im:  # a row of single-object prompts
        assert im.size[0] > 4 * im.size[1] > 100


def test_no_scenes_or_no_draws_is_a_usage_error(tmp_path):
    for flags in (["--scenes", "0"], ["--draws", "-1"]):
        r = subprocess.run([sys.executable, str(ROOT / "experiments" / "words.py"), "--smoke",
                            "--docs", str(tmp_path), *flags], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and "at least 1" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "words.md").exists()


def test_a_missing_checkpoint_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "words.py"), "--ckpt",
                        str(tmp_path / "none.pt"), "--docs", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_a_checkpoint_may_be_named():
    from common import named
    assert named("main job=out/a/ckpt.pt") == ("main job", "out/a/ckpt.pt")
    assert named("out/a=b/ckpt.pt") == ("out/a=b/ckpt.pt", "out/a=b/ckpt.pt")
    assert named("ckpt.pt") == ("ckpt.pt", "ckpt.pt")
