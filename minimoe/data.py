"""Training data: three generated image domains, and a folder of real images.

The built-in domains are drawn on the fly with PIL and numpy (no downloads), deterministic per
seed, and look clearly different from each other so that routing by data domain can be studied:

    shapes    1-3 flat shapes on black     "a small red circle left of a large blue square"
    glyphs    a big digit or letter        "the digit 7 in red on blue"
    patterns  stripes or a checkerboard    "narrow red and blue vertical stripes"

Every sample carries an image, a caption, question/answer pairs with short exact-match answers
("red", "two", "left", "7"), its domain label and its ground-truth objects.

Splits. A sample's identity is its key, f"{domain}|{caption}"; a stable hash of the key puts it
in "train" or "heldout" (10%). Generation for a split redraws the scene until its key falls in
that split, so no caption is ever seen in both: held-out prompts test composition, not recall.

`FolderData` reads real data (`--data folder:PATH`): a folder of images plus `captions.jsonl`.
Bad rows and undecodable images are reported one line each and skipped, never fatal.

    src = load_source("builtin", image_size=32, split="train")
    s = src[0]; s.image, s.caption, s.qa, s.domain
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

# ----------------------------------------------------------------------------------------------
# Vocabulary shared by the domains

# Six saturated colours, pairwise far apart in RGB (the closest pair, orange/yellow, is ~100
# apart) so that a colour survives VQ reconstruction and can be read back from pixels.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 25, 35),
    "orange": (255, 130, 0),
    "yellow": (240, 230, 40),
    "green": (30, 170, 50),
    "blue": (40, 90, 235),
    "purple": (150, 60, 210),
}
SHAPES_BACKGROUND: tuple[int, int, int] = (0, 0, 0)  # black: far from every palette colour

# Four shapes with different silhouettes even at 8 px: round, filled box, pointed, hollow-cornered.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles",
                           "cross": "crosses"}

DOMAINS: tuple[str, ...] = ("shapes", "glyphs", "patterns")
SPLITS: tuple[str, ...] = ("train", "heldout")

# Text budget: the tiny preset has 64 text slots, of which the specials ([t2i]/[mmu], [sot],
# [eot]) take a few; captions and "question answer" are byte-tokenized, so count UTF-8 bytes.
MAX_TEXT_BYTES = 60
HELDOUT_FRACTION = 0.1  # share of keys (captions) that only ever appear in the held-out split

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three")

# ----------------------------------------------------------------------------------------------
# Shapes domain: geometry, as fractions of image_size so that scenes scale with the image.

SIZES: dict[str, float] = {"small": 0.13, "large": 0.21}  # half-extent r of the bounding box
MAX_OBJECTS = 3
EDGE_MARGIN = 0.03  # min distance between a shape's bounding box and the image border
OBJECT_GAP = 0.04  # min gap between two bounding boxes (along at least one axis)
# Two-object scenes state a relation, so its axis must be unambiguous: the offset along the
# minor axis is at most this share of the offset along the dominant one.
RELATION_MINOR_RATIO = 0.5
# 3-object scenes copy one (colour, shape) this often, so that counting ("two red circles")
# is common rather than a 1-in-8 accident.
REPEAT_PROB = 0.3
CROSS_ARM = 0.38  # half-thickness of a cross's arms, as a share of r
MIN_IMAGE_SIZE = 16  # below this a small shape is a few pixels and stops being a shape
PLACEMENT_TRIES = 50  # positions tried per object before the whole layout is redrawn
# Draw shapes on a canvas this many pixels (or more) wide, then box-downsample: edges are lightly
# anti-aliased while the interior of each shape keeps its exact palette colour.
SUPERSAMPLED_MIN_SIZE = 128

# ----------------------------------------------------------------------------------------------
# Glyphs domain. I and O are left out: they read as 1 and 0 at 32 px.

DIGITS = "0123456789"
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
GLYPH_FONT_SIZE = 0.85  # font size (em) as a share of image_size; capitals are ~0.6 high
GLYPH_JITTER = 0.06  # the glyph's centre moves up to this share of image_size each way
GLYPH_STROKE = 0.03  # extra outline (share of image_size): the font's thin strokes survive VQ

# ----------------------------------------------------------------------------------------------
# Patterns domain: stripe / cell width as a share of image_size, per pattern and scale word.

PATTERN_SCALES: dict[str, dict[str, float]] = {
    "stripes": {"narrow": 1 / 8, "wide": 1 / 4},
    "checkerboard": {"fine": 1 / 8, "coarse": 1 / 4},
}
STRIPE_DIRECTIONS: tuple[str, ...] = ("horizontal", "vertical", "diagonal")

# A split holds ~10% (heldout) or ~90% (train) of the keys, so a scene is redrawn ~10 times at
# worst; this many failures means a domain has no key at all in the split (a bug).
MAX_REDRAWS = 1000

CAPTIONS_FILE = "captions.jsonl"
FOLDER_ROW_FORMAT = ('{"file": "a.png", "caption": "...", "qa": [["question", "answer"], ...], '
                     '"domain": "..."} (qa and domain optional)')
FOLDER_DOMAIN = "folder"  # domain label of folder rows that do not name one


@dataclass
class Sample:
    image: Image.Image  # RGB, image_size x image_size
    caption: str
    qa: list[tuple[str, str]]  # (question, answer); answers short, lower-case, exact-match
    domain: str  # "shapes" | "glyphs" | "patterns" | a folder row's domain
    objects: list[dict] = field(default_factory=list)  # ground truth (empty for folder rows)
    # Identity that decides the split: f"{domain}|{caption}" (folder rows: f"folder|{file}").
    key: str = ""


def split_of(key: str, heldout_fraction: float = HELDOUT_FRACTION) -> str:
    """"train" or "heldout" for a key, by a stable hash (Python's hash() is salted per run)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    unit = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
    return "heldout" if unit < heldout_fraction else "train"


def _fits(text: str, max_bytes: int = MAX_TEXT_BYTES) -> bool:
    return len(text.encode("utf-8")) <= max_bytes


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use one of {', '.join(SPLITS)}")


# ----------------------------------------------------------------------------------------------
# Shapes


def relation(a: dict, b: dict) -> str:
    """Where a is relative to b along the dominant axis: left of / right of / above / below."""
    dx, dy = b["cx"] - a["cx"], b["cy"] - a["cy"]
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"  # image y grows downwards


def _clearly_placed(a: dict, b: dict, image_size: int, need_relation: bool) -> bool:
    """Bounding boxes apart by OBJECT_GAP; with need_relation, also one clearly dominant axis."""
    need = a["r"] + b["r"] + OBJECT_GAP * image_size
    dx, dy = abs(b["cx"] - a["cx"]), abs(b["cy"] - a["cy"])
    if not need_relation:
        return dx >= need or dy >= need
    major, minor = max(dx, dy), min(dx, dy)
    return major >= need and minor <= RELATION_MINOR_RATIO * major


def _place(rng: np.random.Generator, objects: list[dict], image_size: int) -> bool:
    """Give each object a centre (cx, cy) in place; False if no layout was found."""
    margin = EDGE_MARGIN * image_size
    need_relation = len(objects) == 2
    for k, obj in enumerate(objects):
        r = obj["r"]
        # Centres sit on pixel centres (p + 0.5), so the pixel under a centre lies well inside.
        lo, hi = int(np.ceil(margin + r - 0.5)), int(np.floor(image_size - margin - r - 0.5))
        for _ in range(PLACEMENT_TRIES):
            obj["cx"], obj["cy"] = (float(p) + 0.5 for p in rng.integers(lo, hi + 1, size=2))
            if all(_clearly_placed(other, obj, image_size, need_relation) for other in objects[:k]):
                break
        else:
            return False
    return True


def random_shape_objects(rng: np.random.Generator, image_size: int,
                         n_objects: int | None = None) -> list[dict]:
    """A random non-overlapping scene: [{"shape","colour","size","cx","cy","r"}, ...]."""
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    if not 1 <= n <= MAX_OBJECTS:  # captions count up to MAX_OBJECTS, and more may not fit
        raise ValueError(f"n_objects {n}: use 1 to {MAX_OBJECTS}")
    colours = list(COLOURS)
    while True:  # a failed layout (e.g. three large shapes) is redrawn with new sizes
        objects = []
        for _ in range(n):
            size = list(SIZES)[rng.integers(len(SIZES))]
            objects.append({"shape": SHAPES[rng.integers(len(SHAPES))],
                            "colour": colours[rng.integers(len(colours))],
                            "size": size, "r": SIZES[size] * image_size})
        if n == MAX_OBJECTS and rng.random() < REPEAT_PROB:
            objects[1].update(shape=objects[0]["shape"], colour=objects[0]["colour"])
        if _place(rng, objects, image_size):
            return objects


def _shape_phrase(obj: dict) -> str:
    return f"a {obj['size']} {obj['colour']} {obj['shape']}"


def shapes_caption(objects: list[dict]) -> str:
    """The caption of a shapes scene.

    1 object: "a small red circle"; 2 objects: "a small red circle left of a large blue square"
    (the first object relative to the second, from cx/cy); 3+: counting by (colour, shape),
    without sizes to stay within MAX_TEXT_BYTES: "two red circles and an orange square".
    """
    if not objects:
        raise ValueError("a shapes caption needs at least one object")
    if len(objects) == 1:
        return _shape_phrase(objects[0])
    if len(objects) == 2:
        a, b = objects
        return f"{_shape_phrase(a)} {relation(a, b)} {_shape_phrase(b)}"
    groups = Counter((o["colour"], o["shape"]) for o in objects)
    colour_rank = {c: k for k, c in enumerate(COLOURS)}
    # A canonical order (most numerous first, then palette order) so that one scene content
    # has exactly one caption, hence one key.
    order = sorted(groups, key=lambda cs: (-groups[cs], SHAPES.index(cs[1]), colour_rank[cs[0]]))
    parts = []
    for colour, shape in order:
        count = groups[(colour, shape)]
        if count == 1:
            parts.append(f"{_article(colour)} {colour} {shape}")
        else:
            parts.append(f"{NUMBER_WORDS[count]} {colour} {PLURALS[shape]}")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _relation_references(a: dict, b: dict) -> list[tuple[str, str]]:
    """Ways to name a and b apart in a question, most explicit first."""
    refs = []
    if (a["colour"], a["shape"]) != (b["colour"], b["shape"]):
        refs.append((f"{a['colour']} {a['shape']}", f"{b['colour']} {b['shape']}"))
    if a["shape"] != b["shape"]:
        refs.append((a["shape"], b["shape"]))
    if a["colour"] != b["colour"]:
        refs.append((f"{a['colour']} one", f"{b['colour']} one"))
    if a["size"] != b["size"]:
        refs.append((f"{a['size']} one", f"{b['size']} one"))
    return refs


def _relation_qa(a: dict, b: dict) -> tuple[str, str] | None:
    """"is the red circle left or right of the blue square?" -> "left" (None if a, b look alike)."""
    rel = relation(a, b)
    for ref_a, ref_b in _relation_references(a, b):
        if rel in ("left of", "right of"):
            q, answer = f"is the {ref_a} left or right of the {ref_b}?", rel.split()[0]
        else:
            q, answer = f"is the {ref_a} above or below the {ref_b}?", rel
        if _fits(f"{q} {answer}"):
            return q, answer
    return None


def shapes_qa(objects: list[dict]) -> list[tuple[str, str]]:
    """Every unambiguous question about a scene: counts, colour/shape/size of unique objects,
    and for two objects their relation."""
    qa = [("how many objects are there?", NUMBER_WORDS[len(objects)])]
    shape_count = Counter(o["shape"] for o in objects)
    colour_count = Counter(o["colour"] for o in objects)
    for shape in SHAPES:
        if shape_count[shape]:
            qa.append((f"how many {PLURALS[shape]} are there?", NUMBER_WORDS[shape_count[shape]]))
    for o in objects:
        if shape_count[o["shape"]] == 1:
            qa.append((f"what colour is the {o['shape']}?", o["colour"]))
            qa.append((f"is the {o['shape']} small or large?", o["size"]))
        if colour_count[o["colour"]] == 1:
            qa.append((f"what shape is the {o['colour']} object?", o["shape"]))
    if len(objects) == 2:
        for a, b in (objects, objects[::-1]):
            pair = _relation_qa(a, b)
            if pair is not None:
                qa.append(pair)
    return [pair for pair in qa if _fits(f"{pair[0]} {pair[1]}")]


def _shape_outline(obj: dict, scale: float) -> list[tuple[str, list[tuple[float, float]]]]:
    """The primitives ("ellipse" | "rectangle" | "polygon", points) drawing obj at `scale`."""
    cx, cy, r = obj["cx"] * scale, obj["cy"] * scale, obj["r"] * scale
    box = [(cx - r, cy - r), (cx + r, cy + r)]
    if obj["shape"] == "circle":
        return [("ellipse", box)]
    if obj["shape"] == "square":
        return [("rectangle", box)]
    if obj["shape"] == "triangle":  # apex up, filling the bounding box
        return [("polygon", [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)])]
    if obj["shape"] == "cross":
        arm = CROSS_ARM * r
        return [("rectangle", [(cx - r, cy - arm), (cx + r, cy + arm)]),
                ("rectangle", [(cx - arm, cy - r), (cx + arm, cy + r)])]
    raise ValueError(f"unknown shape {obj['shape']!r}; known: {', '.join(SHAPES)}")


def render_shapes(objects: list[dict], image_size: int) -> Image.Image:
    """Draw shape objects (cx, cy, r in pixels of the final image) on the black background."""
    factor = max(1, -(-SUPERSAMPLED_MIN_SIZE // image_size))  # ceil division
    canvas = Image.new("RGB", (image_size * factor, image_size * factor), SHAPES_BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        fill = COLOURS[obj["colour"]]
        for kind, points in _shape_outline(obj, factor):
            getattr(draw, kind)(points, fill=fill)
    return canvas.reduce(factor) if factor > 1 else canvas


def _draw_shapes(rng: np.random.Generator, image_size: int) -> tuple[list[dict], str]:
    objects = random_shape_objects(rng, image_size)
    for o in objects:  # tidy ground truth; centres are already exact pixel centres
        o["r"] = round(o["r"], 3)
    return objects, shapes_caption(objects)


def _render_shapes(objects: list[dict], image_size: int, rng: np.random.Generator) -> Image.Image:
    return render_shapes(objects, image_size)


# ----------------------------------------------------------------------------------------------
# Glyphs


@functools.lru_cache(maxsize=None)
def _glyph_alpha(glyph: str, image_size: int) -> np.ndarray:
    """Coverage in [0, 1] of `glyph` drawn with its ink box centred, (image_size, image_size)."""
    font = ImageFont.load_default(size=round(GLYPH_FONT_SIZE * image_size))
    stroke = round(GLYPH_STROKE * image_size)
    x0, y0, x1, y1 = font.getbbox(glyph, stroke_width=stroke)
    canvas = Image.new("L", (image_size, image_size), 0)
    origin = ((image_size - (x1 - x0)) / 2 - x0, (image_size - (y1 - y0)) / 2 - y0)
    ImageDraw.Draw(canvas).text(origin, glyph, fill=255, font=font, stroke_width=stroke,
                                stroke_fill=255)
    return np.asarray(canvas, dtype=np.float32) / 255


def _shifted(alpha: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """alpha moved by (dx, dy) pixels, zeros shifted in (no wrap-around)."""
    out = np.zeros_like(alpha)
    h, w = alpha.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        alpha[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _draw_glyphs(rng: np.random.Generator, image_size: int) -> tuple[list[dict], str]:
    glyphs = DIGITS + LETTERS
    glyph = glyphs[rng.integers(len(glyphs))]
    fg, bg = (list(COLOURS)[k] for k in rng.choice(len(COLOURS), size=2, replace=False))
    kind = "digit" if glyph in DIGITS else "letter"
    obj = {"glyph": glyph.lower(), "kind": kind, "colour": fg, "background": bg}
    return [obj], f"the {kind} {glyph.lower()} in {fg} on {bg}"


def _render_glyphs(objects: list[dict], image_size: int, rng: np.random.Generator) -> Image.Image:
    obj = objects[0]
    jitter = int(GLYPH_JITTER * image_size)
    dx, dy = (int(d) for d in rng.integers(-jitter, jitter + 1, size=2))
    alpha = _shifted(_glyph_alpha(obj["glyph"].upper(), image_size), dx, dy)[..., None]
    fg = np.array(COLOURS[obj["colour"]], dtype=np.float32)
    bg = np.array(COLOURS[obj["background"]], dtype=np.float32)
    return Image.fromarray(np.rint(bg + (fg - bg) * alpha).astype(np.uint8), "RGB")


def glyphs_qa(objects: list[dict]) -> list[tuple[str, str]]:
    obj = objects[0]
    kind = obj["kind"]
    return [(f"what {kind} is this?", obj["glyph"]),
            ("is this a digit or a letter?", kind),
            (f"what colour is the {kind}?", obj["colour"]),
            ("what colour is the background?", obj["background"])]


# ----------------------------------------------------------------------------------------------
# Patterns


@functools.lru_cache(maxsize=None)
def _pixel_centres(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[:image_size, :image_size].astype(np.float32) + 0.5
    return ys, xs


def _draw_patterns(rng: np.random.Generator, image_size: int) -> tuple[list[dict], str]:
    pattern = list(PATTERN_SCALES)[rng.integers(len(PATTERN_SCALES))]
    scale = list(PATTERN_SCALES[pattern])[rng.integers(len(PATTERN_SCALES[pattern]))]
    # Colours named in palette order: "red and blue" and "blue and red" are one caption.
    a, b = sorted(rng.choice(len(COLOURS), size=2, replace=False))
    colours = [list(COLOURS)[a], list(COLOURS)[b]]
    obj = {"pattern": pattern, "scale": scale, "colours": colours}
    pair = f"{colours[0]} and {colours[1]}"
    if pattern == "stripes":
        obj["direction"] = STRIPE_DIRECTIONS[rng.integers(len(STRIPE_DIRECTIONS))]
        return [obj], f"{scale} {pair} {obj['direction']} stripes"
    return [obj], f"a {scale} {pair} checkerboard"


def _render_patterns(objects: list[dict], image_size: int, rng: np.random.Generator) -> Image.Image:
    obj = objects[0]
    width = PATTERN_SCALES[obj["pattern"]][obj["scale"]] * image_size
    ys, xs = _pixel_centres(image_size)
    # A random phase (within one two-colour period) and colour order vary the image without
    # changing what the caption says.
    off_x, off_y = rng.uniform(0, 2 * width, size=2)
    xs, ys = xs + off_x, ys + off_y
    if obj["pattern"] == "checkerboard":
        band = np.floor(xs / width) + np.floor(ys / width)
    else:
        # Diagonal stripes are measured across the stripe, so they are as wide as the others.
        across = {"horizontal": ys, "vertical": xs, "diagonal": (xs + ys) / np.sqrt(2)}
        band = np.floor(across[obj["direction"]] / width)
    first, second = obj["colours"] if rng.integers(2) else obj["colours"][::-1]
    pixels = np.where((band % 2 == 0)[..., None], np.array(COLOURS[first], np.uint8),
                      np.array(COLOURS[second], np.uint8))
    return Image.fromarray(pixels, "RGB")


def patterns_qa(objects: list[dict]) -> list[tuple[str, str]]:
    obj = objects[0]
    pattern, scale = obj["pattern"], obj["scale"]
    qa = [("what pattern is this?", pattern),
          ("what colours are the stripes?" if pattern == "stripes"
           else "what colours are the squares?", " and ".join(obj["colours"]))]
    if pattern == "stripes":
        qa.append(("which way do the stripes run?", obj["direction"]))
        qa.append(("are the stripes wide or narrow?", scale))
    else:
        qa.append(("is the checkerboard coarse or fine?", scale))
    return qa


# ----------------------------------------------------------------------------------------------
# The built-in source

# Per domain: draw (objects, caption) -> render image (rng: details the caption leaves open) -> qa.
_DOMAIN_FUNCTIONS = {
    "shapes": (_draw_shapes, _render_shapes, shapes_qa),
    "glyphs": (_draw_glyphs, _render_glyphs, glyphs_qa),
    "patterns": (_draw_patterns, _render_patterns, patterns_qa),
}


def _parse_domains(domains: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    names = tuple(d.strip() for d in (domains.split(",") if isinstance(domains, str) else domains))
    names = tuple(d for d in names if d)
    unknown = [d for d in names if d not in DOMAINS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"domains {domains!r}: give distinct names from {', '.join(DOMAINS)}")
    return names


class BuiltinData:
    """The generated domains, mixed in turn: sample i comes from domains[i % len(domains)].

    Indexable by any i >= 0 (there is no end); sample i is a pure function of (seed, split, i).
    """

    def __init__(self, image_size: int = 32, domains: tuple[str, ...] | str = DOMAINS,
                 split: str = "train", seed: int = 0):
        _check_split(split)
        if image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size {image_size} is too small; use at least {MIN_IMAGE_SIZE}")
        if seed < 0:
            raise ValueError(f"seed {seed} must be >= 0")
        self.image_size, self.split, self.seed = image_size, split, seed
        self.domains = _parse_domains(domains)

    def __getitem__(self, i: int) -> Sample:
        if i < 0:
            raise IndexError(f"index {i} must be >= 0")
        n = len(self.domains)
        return self.domain_sample(self.domains[i % n], i // n)

    def domain_sample(self, domain: str, i: int) -> Sample:
        """Sample i of one domain; independent of which other domains are mixed in."""
        if domain not in _DOMAIN_FUNCTIONS:
            raise ValueError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")
        draw, render, make_qa = _DOMAIN_FUNCTIONS[domain]
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), DOMAINS.index(domain), i])
        for _ in range(MAX_REDRAWS):
            objects, caption = draw(rng, self.image_size)
            key = f"{domain}|{caption}"
            if split_of(key) == self.split:
                break
        else:
            raise RuntimeError(
                f"no {domain} scene in split {self.split!r} after {MAX_REDRAWS} draws")
        assert _fits(caption), f"built-in caption over {MAX_TEXT_BYTES} bytes: {caption!r}"
        image = render(objects, self.image_size, rng)
        return Sample(image, caption, make_qa(objects), domain, objects, key)


# ----------------------------------------------------------------------------------------------
# The folder source


class DataWarning(UserWarning):
    """A bad row or file in a data folder, reported and skipped."""


def _report(message: str) -> None:
    warnings.warn(message, DataWarning, stacklevel=3)


@dataclass
class _Row:
    file: str
    caption: str
    qa: list[tuple[str, str]]
    domain: str


def _parse_qa(value: object) -> list[tuple[str, str]]:
    """[["q", "a"], ...] or [{"question": "q", "answer": "a"}, ...] -> [("q", "a"), ...]."""
    if not isinstance(value, list):
        raise ValueError("'qa' must be a list")
    pairs = []
    for item in value:
        if isinstance(item, dict):
            item = [item.get("question"), item.get("answer")]
        is_pair = isinstance(item, list) and len(item) == 2
        if not (is_pair and all(isinstance(t, str) for t in item)):
            raise ValueError(f"qa item {item!r} is not [question, answer] strings")
        pairs.append((item[0], item[1]))
    return pairs


def _parse_row(raw: bytes, folder: str, max_text_bytes: int) -> _Row:
    """One line of captions.jsonl; ValueError says what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    file, caption = row.get("file"), row.get("caption")
    if not isinstance(file, str) or not file:
        raise ValueError("'file' missing or not a string")
    if not isinstance(caption, str):
        raise ValueError(f"{file}: 'caption' missing or not a string")
    if not os.path.isfile(os.path.join(folder, file)):
        raise ValueError(f"{file}: file not found")
    if not _fits(caption, max_text_bytes):
        raise ValueError(f"{file}: caption is {len(caption.encode('utf-8'))} bytes, "
                         f"over max_text_bytes={max_text_bytes}")
    try:
        qa = _parse_qa(row.get("qa", []))
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None
    for q, a in qa:
        if not _fits(f"{q} {a}", max_text_bytes):
            raise ValueError(f"{file}: qa {q!r} {a!r} is over max_text_bytes={max_text_bytes}")
    domain = row.get("domain", FOLDER_DOMAIN)
    if not isinstance(domain, str) or not domain:
        raise ValueError(f"{file}: 'domain' is not a non-empty string")
    return _Row(file, caption, qa, domain)


def fit_image(image: Image.Image, image_size: int) -> Image.Image:
    """RGB, shorter side scaled to image_size, centre crop: how any outside image enters."""
    return ImageOps.fit(image.convert("RGB"), (image_size, image_size), Image.Resampling.BICUBIC)


class FolderData:
    """Images plus captions.jsonl. Rows are checked at init; images are decoded on access.

    Sample i is row order[i % len] where order is a fixed shuffle by seed (so that a file list
    sorted by class does not turn into single-class batches). A row's split is
    split_of(f"folder|{file}"), so the split never depends on the caption text.
    """

    def __init__(self, path: str, image_size: int = 32, split: str = "train", seed: int = 0,
                 max_text_bytes: int = MAX_TEXT_BYTES):
        _check_split(split)
        self.path, self.image_size, self.split = path, image_size, split
        captions = os.path.join(path, CAPTIONS_FILE)
        need = (f"it must hold the images and {CAPTIONS_FILE}, one JSON object per line: "
                f"{FOLDER_ROW_FORMAT}")
        if not os.path.isdir(path):
            raise ValueError(f"data folder {path!r} does not exist; {need}")
        if not os.path.isfile(captions):
            raise ValueError(f"data folder {path!r} has no {CAPTIONS_FILE}; {need}")
        self.rows: list[_Row] = []
        n_good = 0
        with open(captions, "rb") as f:  # bytes, so one non-UTF-8 line costs only that line
            for line_no, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    row = _parse_row(raw.strip(), path, max_text_bytes)
                except ValueError as e:
                    _report(f"{captions} line {line_no}: {e}; skipped")
                    continue
                n_good += 1
                if split_of(f"{FOLDER_DOMAIN}|{row.file}") == split:
                    self.rows.append(row)
        if not self.rows:
            raise ValueError(f"{captions}: no usable rows in split {split!r} "
                             f"({n_good} usable rows in all splits); {need}")
        self.order = np.random.default_rng(seed).permutation(len(self.rows))
        self.bad: set[int] = set()  # rows whose image failed to decode (reported once)

    def __len__(self) -> int:
        return len(self.rows)

    def _load(self, row: _Row) -> Image.Image:
        with Image.open(os.path.join(self.path, row.file)) as im:
            im.draft("RGB", (self.image_size, self.image_size))  # JPEG: decode at reduced scale
            return fit_image(ImageOps.exif_transpose(im), self.image_size)

    def __getitem__(self, i: int) -> Sample:
        if i < 0:
            raise IndexError(f"index {i} must be >= 0")
        n = len(self.rows)
        for step in range(n):  # a bad image hands over to the next row, never crashes a run
            index = int(self.order[(i + step) % n])
            if index in self.bad:
                continue
            row = self.rows[index]
            try:
                image = self._load(row)
            except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
                self.bad.add(index)
                _report(f"{os.path.join(self.path, row.file)}: cannot decode image "
                        f"({type(e).__name__}: {e}); skipped")
                continue
            return Sample(image, row.caption, list(row.qa), row.domain, [],
                          f"{FOLDER_DOMAIN}|{row.file}")
        raise ValueError(f"no image in {self.path!r} split {self.split!r} could be decoded")


# ----------------------------------------------------------------------------------------------


def load_source(spec: str, image_size: int, split: str, seed: int = 0,
                domains: tuple[str, ...] | str = DOMAINS,
                max_text_bytes: int = MAX_TEXT_BYTES) -> BuiltinData | FolderData:
    """--data: "builtin" (generated domains) or "folder:PATH" (images + captions.jsonl)."""
    if spec == "builtin":
        return BuiltinData(image_size, domains, split, seed)
    if spec.startswith("folder:") and spec[len("folder:"):]:
        return FolderData(spec[len("folder:"):], image_size, split, seed, max_text_bytes)
    raise ValueError(f"data source {spec!r}: use 'builtin' or 'folder:PATH'")


__all__ = ["COLOURS", "SHAPES", "DOMAINS", "SPLITS", "MAX_TEXT_BYTES", "Sample", "split_of",
           "BuiltinData", "FolderData", "DataWarning", "load_source", "shapes_caption",
           "shapes_qa", "render_shapes", "random_shape_objects", "relation"]
