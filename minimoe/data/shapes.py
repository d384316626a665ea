"""The `shapes` domain: 1-3 flat circles, squares, triangles or crosses in the palette's
colours, small or large, on black, with a caption that names them (and, for two, where one is
relative to the other), every unambiguous question about them, and the ground-truth objects.

    "a small red circle left of a large blue square", "two red circles and an orange square"

Geometry is given as fractions of image_size, so that scenes scale with the image.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
from PIL import Image, ImageDraw

from .base import COLOURS, fits

SHAPES_BACKGROUND: tuple[int, int, int] = (0, 0, 0)  # black: far from every palette colour

# Four shapes with different silhouettes even at 8 px: round, filled box, pointed, hollow-cornered.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles",
                           "cross": "crosses"}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three")

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


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


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
        placed = objects[:k]
        for _ in range(PLACEMENT_TRIES):
            # Two scalar draws take the same values from the stream as one draw of two, at
            # half the cost; a batch makes about 800 tries.
            obj["cx"] = float(rng.integers(lo, hi + 1)) + 0.5
            obj["cy"] = float(rng.integers(lo, hi + 1)) + 0.5
            if all(_clearly_placed(other, obj, image_size, need_relation) for other in placed):
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
            parts.append(f"{article(colour)} {colour} {shape}")
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
        if fits(f"{q} {answer}"):
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
    return [pair for pair in qa if fits(f"{pair[0]} {pair[1]}")]


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


def draw_shapes(rng: np.random.Generator, image_size: int) -> tuple[list[dict], str]:
    objects = random_shape_objects(rng, image_size)
    for o in objects:  # tidy ground truth; centres are already exact pixel centres
        o["r"] = round(o["r"], 3)
    return objects, shapes_caption(objects)


def render_shapes_rng(objects: list[dict], image_size: int, rng: np.random.Generator
                      ) -> Image.Image:
    """render_shapes with the domain interface of builtin.py (a shapes scene needs no rng)."""
    return render_shapes(objects, image_size)
