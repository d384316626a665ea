"""Tests of minimoe/data.py: generated domains, splits, text budget, ground truth, folder source.

Run: pytest -q tests/test_data.py      (CPU, a few seconds)
"""
from __future__ import annotations

import itertools
import json
import re
import warnings
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from minimoe.data import (COLOURS, DOMAINS, MAX_TEXT_BYTES, NUMBER_WORDS, PLURALS,
                          RELATION_MINOR_RATIO, SHAPES, SHAPES_BACKGROUND, SIZES, BuiltinData,
                          DataWarning, FolderData, load_source, render_shapes, shapes_caption,
                          shapes_qa, split_of)

SIZE = 32
N_TRAIN = 3000  # samples per split checked for disjointness (1000 per domain)
N_HELDOUT = 1500
SINGULAR = {plural: shape for shape, plural in PLURALS.items()}


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


@pytest.fixture(scope="module")
def train_samples():
    data = BuiltinData(SIZE, split="train", seed=0)
    return [data[i] for i in range(N_TRAIN)]


@pytest.fixture(scope="module")
def heldout_samples():
    data = BuiltinData(SIZE, split="heldout", seed=0)
    return [data[i] for i in range(N_HELDOUT)]


def _of(samples, domain):
    return [s for s in samples if s.domain == domain]


# ----------------------------------------------------------------------------------------------
# Determinism, seeds, splits, balance


def test_same_seed_split_index_gives_identical_sample():
    """A sample is a pure function of (seed, split, i): two fresh sources agree byte for byte."""
    a, b = BuiltinData(SIZE, seed=3), BuiltinData(SIZE, seed=3)
    for i in [*range(12), 1000, 123457]:
        sa, sb = a[i], b[i]
        assert sa.image.tobytes() == sb.image.tobytes()
        assert (sa.caption, sa.qa, sa.objects, sa.key) == (sb.caption, sb.qa, sb.objects, sb.key)
    # ...and not a function of access order or of which other domains are mixed in.
    only_glyphs = BuiltinData(SIZE, domains="glyphs", seed=3)
    assert only_glyphs[5].caption == a.domain_sample("glyphs", 5).caption == a[3 * 5 + 1].caption


def test_different_seeds_give_different_samples():
    """Seeds 0 and 1 produce (almost) entirely different images."""
    a, b = BuiltinData(SIZE, seed=0), BuiltinData(SIZE, seed=1)
    same = sum(a[i].image.tobytes() == b[i].image.tobytes() for i in range(30))
    assert same <= 3


def test_splits_are_disjoint_by_key(train_samples, heldout_samples):
    """No key (= domain|caption) is in both splits; each sample's key hashes to its own split."""
    for samples, split in ((train_samples, "train"), (heldout_samples, "heldout")):
        for s in samples:
            assert s.key == f"{s.domain}|{s.caption}"
            assert split_of(s.key) == split
    train_keys = {s.key for s in train_samples}
    heldout_keys = {s.key for s in heldout_samples}
    assert not train_keys & heldout_keys
    # The held-out split is real data in every domain, not an empty corner.
    assert {s.domain for s in heldout_samples} == set(DOMAINS)
    assert len(heldout_keys) > 100


def test_split_of_is_stable_and_about_ten_percent():
    """split_of is a fixed hash (golden values: a change would reshuffle every split) at ~10%."""
    assert split_of("shapes|a small red circle") == "heldout"
    assert split_of("glyphs|the digit 7 in red on blue") == "train"
    assert split_of("folder|a.png") == "train"
    share = Counter(split_of(f"key{i}") for i in range(10000))["heldout"] / 10000
    assert 0.08 < share < 0.12
    assert split_of("key0", heldout_fraction=0.0) == "train"
    assert split_of("key0", heldout_fraction=1.0) == "heldout"


def test_domains_are_balanced_and_in_turn(train_samples):
    """Sample i comes from domains[i % len(domains)]; a comma string selects a subset."""
    assert [s.domain for s in train_samples] == [DOMAINS[i % 3] for i in range(N_TRAIN)]
    two = BuiltinData(SIZE, domains="patterns, glyphs")
    assert [two[i].domain for i in range(6)] == ["patterns", "glyphs"] * 3


def test_domain_weights_take_turns_and_keep_each_domains_own_sequence():
    """"shapes:2,glyphs" reads shapes, shapes, glyphs per round, and the k-th shapes sample is
    the k-th of the unweighted mix: a weight changes how often a domain comes, not what."""
    weighted = BuiltinData(SIZE, domains="shapes:2,glyphs")
    plain = BuiltinData(SIZE, domains="shapes,glyphs")
    assert [weighted[i].domain for i in range(6)] == ["shapes", "shapes", "glyphs"] * 2
    shapes_w = [weighted[i].key for i in range(12) if weighted[i].domain == "shapes"]
    shapes_p = [plain[i].key for i in range(16) if plain[i].domain == "shapes"]
    assert shapes_w == shapes_p[:len(shapes_w)] and len(shapes_w) == 8
    glyphs_w = [weighted[i].key for i in range(12) if weighted[i].domain == "glyphs"]
    assert glyphs_w == [plain[i].key for i in range(16) if plain[i].domain == "glyphs"][:4]


def test_bad_arguments_raise():
    """Unknown or repeated domains, weights that are not whole numbers >= 1, unknown splits and
    tiny images are refused with a ValueError."""
    for kwargs in (dict(domains="shapes,faces"), dict(domains=""), dict(split="test"),
                   dict(domains="shapes,shapes"), dict(domains="shapes:0"),
                   dict(domains="shapes:1.5"), dict(domains="shapes:-1,glyphs"),
                   dict(image_size=8)):
        with pytest.raises(ValueError):
            BuiltinData(**kwargs)


def test_images_are_rgb_of_the_requested_size():
    """Every domain renders RGB images image_size a side, at the tiny and a larger size."""
    for size in (SIZE, 64):
        data = BuiltinData(size)
        for i in range(6):
            image = data[i].image
            assert image.mode == "RGB" and image.size == (size, size)


# ----------------------------------------------------------------------------------------------
# Text


def test_every_text_fits_the_budget(train_samples, heldout_samples):
    """Every caption and every f"{question} {answer}" is at most MAX_TEXT_BYTES bytes."""
    for s in train_samples + heldout_samples:
        assert _nbytes(s.caption) <= MAX_TEXT_BYTES, s.caption
        assert s.qa, s.caption
        for q, a in s.qa:
            assert _nbytes(f"{q} {a}") <= MAX_TEXT_BYTES, (q, a)
            assert a == a.lower() and a.strip() == a and 0 < len(a.split()) <= 3


def _obj(shape, colour, size, cx=0.0, cy=0.0):
    return {"shape": shape, "colour": colour, "size": size, "cx": cx, "cy": cy,
            "r": SIZES[size] * SIZE}


def test_longest_possible_shapes_texts_fit_the_budget():
    """Exhaustively: every 3-object caption, and every 2-object caption and qa, fits."""
    kinds = list(itertools.product(SHAPES, COLOURS))
    for combo in itertools.combinations_with_replacement(kinds, 3):
        objects = [_obj(shape, colour, "large") for shape, colour in combo]
        assert _nbytes(shapes_caption(objects)) <= MAX_TEXT_BYTES, shapes_caption(objects)
    # Only the longest words matter for 2 objects: every shape and colour, one size.
    offsets = [(10.0, 0.0), (-10.0, 0.0), (0.0, 10.0), (0.0, -10.0)]
    for (s1, c1), (s2, c2) in itertools.product(kinds, repeat=2):
        for (dx, dy), sizes in itertools.product(offsets, [("small", "large"), ("small", "small")]):
            objects = [_obj(s1, c1, sizes[0]), _obj(s2, c2, sizes[1], dx, dy)]
            assert _nbytes(shapes_caption(objects)) <= MAX_TEXT_BYTES
            for q, a in shapes_qa(objects):
                assert _nbytes(f"{q} {a}") <= MAX_TEXT_BYTES


CAPTION_OBJECT = re.compile(r"a (small|large) (\w+) (\w+)")
CAPTION_GROUP = re.compile(r"(an?|two|three) (\w+) (\w+)")
RELATIONS = ("left of", "right of", "above", "below")


def _relation_holds(a: dict, b: dict, rel: str) -> bool:
    """Relation of a to b from the centres, with the dominant axis winning by a clear margin."""
    dx, dy = b["cx"] - a["cx"], b["cy"] - a["cy"]
    horizontal = abs(dy) <= RELATION_MINOR_RATIO * abs(dx)
    vertical = abs(dx) <= RELATION_MINOR_RATIO * abs(dy)
    return {"left of": horizontal and dx > 0, "right of": horizontal and dx < 0,
            "above": vertical and dy > 0, "below": vertical and dy < 0}[rel]


def test_captions_state_every_object(train_samples):
    """Shapes captions name each object's colour and shape (and size, relation for 1-2 objects);
    glyph and pattern captions name their glyph, colours and layout."""
    for s in _of(train_samples, "shapes"):
        objects, caption = s.objects, s.caption
        assert 1 <= len(objects) <= 3
        assert shapes_caption(objects) == caption
        if len(objects) <= 2:
            # "a small red circle[ left of a large blue square]"
            rel = next((r for r in RELATIONS if f" {r} " in caption), None)
            phrases = caption.split(f" {rel} ") if rel else [caption]
            assert len(phrases) == len(objects)
            for phrase, o in zip(phrases, objects):
                stated = CAPTION_OBJECT.fullmatch(phrase).groups()
                assert stated == (o["size"], o["colour"], o["shape"])
            if rel:
                assert _relation_holds(objects[0], objects[1], rel), (caption, objects)
        else:
            # "two red circles and an orange square": the counted groups equal the objects
            stated = Counter()
            for count, colour, noun in CAPTION_GROUP.findall(caption):
                number = 1 if count in ("a", "an") else NUMBER_WORDS.index(count)
                assert count != "an" or colour[0] in "aeiou"
                stated[(colour, SINGULAR.get(noun, noun))] += number
            assert stated == Counter((o["colour"], o["shape"]) for o in objects), caption
    for s in _of(train_samples, "glyphs"):
        o = s.objects[0]
        assert s.caption == f"the {o['kind']} {o['glyph']} in {o['colour']} on {o['background']}"
        assert o["colour"] != o["background"]
    for s in _of(train_samples, "patterns"):
        o = s.objects[0]
        assert f"{o['colours'][0]} and {o['colours'][1]}" in s.caption
        assert o["pattern"] in s.caption and o["scale"] in s.caption
        assert o.get("direction", "") in s.caption


def _resolve(reference: str, objects: list[dict]) -> dict:
    """The one object a question's reference ("red circle", "small one", "cross") denotes."""
    words = [w for w in reference.split() if w != "one"]
    found = [o for o in objects if all(w in (o["colour"], o["shape"], o["size"]) for w in words)]
    assert len(found) == 1, (reference, objects)
    return found[0]


def _check_shapes_answer(q: str, a: str, objects: list[dict]) -> None:
    shapes = Counter(o["shape"] for o in objects)
    if q == "how many objects are there?":
        assert a == NUMBER_WORDS[len(objects)]
    elif m := re.fullmatch(r"how many (\w+) are there\?", q):
        assert a == NUMBER_WORDS[shapes[SINGULAR[m[1]]]]
    elif m := re.fullmatch(r"what colour is the (\w+)\?", q):
        assert a == _resolve(m[1], objects)["colour"]
    elif m := re.fullmatch(r"is the (\w+) small or large\?", q):
        assert a == _resolve(m[1], objects)["size"]
    elif m := re.fullmatch(r"what shape is the (\w+) object\?", q):
        assert a == _resolve(m[1], objects)["shape"]
    elif m := re.fullmatch(r"is the (.+) left or right of the (.+)\?", q):
        assert a in ("left", "right")
        assert _relation_holds(_resolve(m[1], objects), _resolve(m[2], objects), f"{a} of")
    elif m := re.fullmatch(r"is the (.+) above or below the (.+)\?", q):
        assert a in ("above", "below")
        assert _relation_holds(_resolve(m[1], objects), _resolve(m[2], objects), a)
    else:
        raise AssertionError(f"unexpected shapes question {q!r}")


def test_qa_answers_agree_with_ground_truth(train_samples, heldout_samples):
    """Each answer follows from the objects: counts, colours, shapes, sizes, relations (cx/cy)."""
    for s in train_samples + heldout_samples:
        questions = [q for q, _ in s.qa]
        assert len(set(questions)) == len(questions), s.qa
        o = s.objects[0]
        for q, a in s.qa:
            if s.domain == "shapes":
                _check_shapes_answer(q, a, s.objects)
            elif s.domain == "glyphs":
                expected = {f"what {o['kind']} is this?": o["glyph"],
                            "is this a digit or a letter?": o["kind"],
                            f"what colour is the {o['kind']}?": o["colour"],
                            "what colour is the background?": o["background"]}
                assert expected[q] == a
            else:
                expected = {"what pattern is this?": o["pattern"],
                            "which way do the stripes run?": o.get("direction"),
                            "are the stripes wide or narrow?": o["scale"],
                            "is the checkerboard coarse or fine?": o["scale"],
                            "what colours are the stripes?": " and ".join(o["colours"]),
                            "what colours are the squares?": " and ".join(o["colours"])}
                assert expected[q] == a
    two = [s for s in _of(train_samples, "shapes") if len(s.objects) == 2]
    assert sum(any("left or right" in q or "above or below" in q for q, _ in s.qa) for s in two) \
        >= 0.9 * len(two)  # only look-alike pairs lack a relation question


# ----------------------------------------------------------------------------------------------
# Pixels


def test_shape_centres_have_exact_palette_colour(train_samples):
    """The pixel at every shape's centre is its palette colour; far from all shapes it is black;
    shapes lie inside the image and their bounding boxes do not overlap."""
    larger = [BuiltinData(64).domain_sample("shapes", i) for i in range(10)]
    for s in _of(train_samples, "shapes") + larger:
        pixels = np.asarray(s.image)
        size = pixels.shape[0]
        ys, xs = np.mgrid[:size, :size] + 0.5
        near = np.zeros((size, size), bool)
        for o in s.objects:
            assert tuple(pixels[int(o["cy"]), int(o["cx"])]) == COLOURS[o["colour"]]
            assert o["r"] == pytest.approx(SIZES[o["size"]] * size, abs=1e-3)
            assert 0 < o["cx"] - o["r"] and o["cx"] + o["r"] < size
            assert 0 < o["cy"] - o["r"] and o["cy"] + o["r"] < size
            near |= np.maximum(abs(xs - o["cx"]), abs(ys - o["cy"])) < o["r"] + 1
        assert (pixels[~near] == SHAPES_BACKGROUND).all()
        for a, b in itertools.combinations(s.objects, 2):
            apart = a["r"] + b["r"]
            assert abs(a["cx"] - b["cx"]) > apart or abs(a["cy"] - b["cy"]) > apart
        assert render_shapes(s.objects, size).tobytes() == s.image.tobytes()


def _colour_counts(image: Image.Image) -> list[tuple[tuple[int, int, int], int]]:
    pixels = np.asarray(image).reshape(-1, 3)
    return Counter(map(tuple, pixels.tolist())).most_common()


def test_glyph_pixels_are_background_then_glyph_colour(train_samples):
    """Glyph images: the most common colour is the background, the second the glyph colour."""
    for s in _of(train_samples, "glyphs")[:200]:
        o = s.objects[0]
        (first, n_bg), (second, n_fg) = _colour_counts(s.image)[:2]
        assert first == COLOURS[o["background"]] and second == COLOURS[o["colour"]]
        assert n_fg > 0.05 * SIZE * SIZE  # the glyph is large, not a speck


def test_pattern_pixels_are_the_two_named_colours_in_the_named_layout(train_samples):
    """Pattern images hold exactly the two named colours, each on a fair share of the image;
    stripes are constant along their direction and checkerboards are not."""
    for s in _of(train_samples, "patterns")[:200]:
        o = s.objects[0]
        counts = _colour_counts(s.image)
        assert {c for c, _ in counts} == {COLOURS[name] for name in o["colours"]}
        assert min(n for _, n in counts) > 0.2 * SIZE * SIZE
        pixels = np.asarray(s.image).astype(int)
        rows_constant = (pixels == pixels[:, :1]).all()
        columns_constant = (pixels == pixels[:1, :]).all()
        # Anti-diagonals (x + y constant): compare each pixel to its up-right neighbour.
        diagonal_constant = (pixels[1:, :-1] == pixels[:-1, 1:]).all()
        expected = {"horizontal": (True, False, False), "vertical": (False, True, False),
                    "diagonal": (False, False, True)}.get(o.get("direction"), (False, False, False))
        assert (rows_constant, columns_constant, diagonal_constant) == expected, s.caption


# ----------------------------------------------------------------------------------------------
# Folder source


def _name_in_split(stem: str, ext: str, split: str) -> str:
    """A file name whose folder key lands in `split` (splits are by file name)."""
    return next(f"{stem}{k}.{ext}" for k in itertools.count()
                if split_of(f"folder|{stem}{k}.{ext}") == split)


@pytest.fixture
def folder(tmp_path):
    """A data folder with three good rows (train), one good row (heldout) and bad rows."""
    names = {role: _name_in_split(role, ext, "train") for role, ext in
             [("wide", "png"), ("photo", "jpg"), ("grey", "png"), ("corrupt", "png"),
              ("missing", "png"), ("long", "png"), ("badqa", "png")]}
    names["held"] = _name_in_split("held", "png", "heldout")
    # 48x24, red at the sides and green in the middle: a centre crop leaves only green.
    wide = np.zeros((24, 48, 3), np.uint8)
    wide[:] = (255, 0, 0)
    wide[:, 12:36] = (0, 255, 0)
    Image.fromarray(wide).save(tmp_path / names["wide"])
    Image.new("RGB", (40, 50), (0, 0, 255)).save(tmp_path / names["photo"], quality=95)
    Image.new("L", (20, 20), 128).save(tmp_path / names["grey"])
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / names["held"])
    Image.new("RGB", (32, 32)).save(tmp_path / names["long"])
    Image.new("RGB", (32, 32)).save(tmp_path / names["badqa"])
    (tmp_path / names["corrupt"]).write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    lines = [
        json.dumps({"file": names["wide"], "caption": "green in the middle",
                    "qa": [["what colour is the middle?", "green"]]}),
        json.dumps({"file": names["photo"], "caption": "a blue photo", "domain": "photos",
                    "qa": [{"question": "what colour?", "answer": "blue"}]}),
        json.dumps({"file": names["grey"], "caption": "grey"}),
        json.dumps({"file": names["held"], "caption": "held out"}),
        json.dumps({"file": names["corrupt"], "caption": "corrupt bytes"}),
        json.dumps({"file": names["missing"], "caption": "no such file"}),
        json.dumps({"file": names["long"], "caption": "x" * (MAX_TEXT_BYTES + 1)}),
        json.dumps({"file": names["badqa"], "caption": "ok", "qa": [["only a question"]]}),
        '{"file": "broken.png", "caption": ',  # invalid JSON
        "",  # blank lines are ignored, not reported
    ]
    raw = "\n".join(lines).encode() + b'\n{"file": "latin1.png", "caption": "caf\xe9"}\n'
    (tmp_path / "captions.jsonl").write_bytes(raw)
    return tmp_path, names


def _messages(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, DataWarning)]


def test_folder_loads_good_rows_and_reports_bad_ones(folder):
    """Good rows load resized, cropped, with caption/qa/domain; every bad row or file is reported
    once, one line naming it and the reason, and skipped without an exception."""
    path, names = folder
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        data = FolderData(str(path), image_size=SIZE, split="train")
    init = _messages(record)
    assert len(init) == 5 and all("\n" not in m for m in init)
    for needle in (f"{names['missing']}: file not found", f"{names['long']}: caption is",
                   f"{names['badqa']}: qa item", "line 9: invalid JSON",
                   "line 11: not valid UTF-8"):
        assert sum(needle in m for m in init) == 1, (needle, init)
    assert len(data) == 4  # wide, photo, grey and corrupt (found only when decoded)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        samples = [data[i] for i in range(3 * len(data))]
    decode = _messages(record)
    assert len(decode) == 1 and names["corrupt"] in decode[0] and "cannot decode" in decode[0]
    by_caption = {s.caption: s for s in samples}
    assert set(by_caption) == {"green in the middle", "a blue photo", "grey"}
    for s in samples:
        assert s.image.mode == "RGB" and s.image.size == (SIZE, SIZE)
    wide = by_caption["green in the middle"]
    assert wide.qa == [("what colour is the middle?", "green")] and wide.domain == "folder"
    assert (np.asarray(wide.image)[:, :, 1] > 200).all()  # the red sides were cropped away
    assert wide.key == f"folder|{names['wide']}" and split_of(wide.key) == "train"
    photo = by_caption["a blue photo"]
    assert photo.qa == [("what colour?", "blue")] and photo.domain == "photos"
    assert by_caption["grey"].qa == []
    assert data[1].caption == data[1 + len(data)].caption  # indices wrap modulo len


def test_folder_split_is_by_file_name(folder):
    """The held-out split holds exactly the rows whose file name hashes to it."""
    path, names = folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        held = FolderData(str(path), image_size=16, split="heldout")
    assert len(held) == 1 and held[0].caption == "held out" and held[7].image.size == (16, 16)


def test_folder_without_usable_data_raises(tmp_path):
    """Missing folder, no captions.jsonl, or no usable row: ValueError naming the path."""
    with pytest.raises(ValueError, match="does not exist"):
        FolderData(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="captions.jsonl"):
        FolderData(str(tmp_path))
    (tmp_path / "captions.jsonl").write_text("")
    with pytest.raises(ValueError, match="no usable rows"):
        FolderData(str(tmp_path))
    (tmp_path / "captions.jsonl").write_text('{"file": "gone.png", "caption": "x"}\n')
    with pytest.warns(DataWarning, match="gone.png: file not found"):
        with pytest.raises(ValueError, match="no usable rows"):
            FolderData(str(tmp_path))


def test_folder_all_images_undecodable_raises_instead_of_looping(tmp_path):
    """If every image fails to decode, access raises a ValueError rather than spinning."""
    name = _name_in_split("junk", "png", "train")
    (tmp_path / name).write_bytes(b"junk")
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": name, "caption": "junk"}))
    data = FolderData(str(tmp_path))
    with pytest.warns(DataWarning, match="cannot decode"):
        with pytest.raises(ValueError, match="could be decoded"):
            data[0]


def test_load_source(folder):
    """load_source accepts 'builtin' and 'folder:PATH' and rejects anything else by saying so."""
    path, _ = folder
    assert isinstance(load_source("builtin", SIZE, "train", domains="shapes"), BuiltinData)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert isinstance(load_source(f"folder:{path}", SIZE, "train"), FolderData)
    for spec in ("imagenet", "folder:", "Builtin", ""):
        with pytest.raises(ValueError, match="'builtin' or 'folder:PATH'"):
            load_source(spec, SIZE, "train")


def test_folder_rows_naming_files_outside_the_folder_are_refused(tmp_path):
    """A row whose file is absolute or climbs out with '..' is a bad row (reported, skipped),
    even when the file it points at exists; a subfolder inside the dataset is fine."""
    data_dir = tmp_path / "data"
    (data_dir / "sub").mkdir(parents=True)
    outside = tmp_path / "secret.png"
    for path in (outside, data_dir / "sub" / "ok.png"):
        Image.new("RGB", (8, 8)).save(path)
    rows = [{"file": str(outside), "caption": "absolute"},
            {"file": "../secret.png", "caption": "climbs out"},
            {"file": "sub/../../secret.png", "caption": "climbs out later"},
            {"file": "sub/ok.png", "caption": "inside"}]
    (data_dir / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        data = FolderData(str(data_dir), image_size=8, split=split_of("folder|sub/ok.png"))
    messages = _messages(record)
    assert len(messages) == 3 and all("inside the data folder" in m for m in messages)
    assert [r.caption for r in data.rows] == ["inside"]


def test_two_scalar_draws_take_the_values_of_one_draw_of_two():
    """Shape placement draws a centre as two scalar integers, the cheaper call; every seeded
    scene (and so every run's data) stays what a single draw of size 2 gave."""
    for seed, (lo, hi) in itertools.product(range(20), [(3, 27), (0, 1), (1, 10**6)]):
        pairs, scalars = np.random.default_rng(seed), np.random.default_rng(seed)
        for _ in range(50):
            assert [int(v) for v in pairs.integers(lo, hi + 1, size=2)] == \
                [int(scalars.integers(lo, hi + 1)), int(scalars.integers(lo, hi + 1))]
        assert pairs.random() == scalars.random()
