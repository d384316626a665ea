"""The three built-in generated image domains (`--data builtin`).

They are drawn on the fly with PIL and numpy (no downloads), deterministic per seed, and look
clearly different from each other so that routing by data domain can be studied:

    shapes    1-3 flat shapes on black     "a small red circle left of a large blue square"
    glyphs    a big digit or letter        "the digit 7 in red on blue"
    patterns  stripes or a checkerboard    "narrow red and blue vertical stripes"

Every sample carries an image, a caption, question/answer pairs with short exact-match answers
("red", "two", "left", "7"), its domain label and its ground-truth objects.

Splits. A sample's identity is its key, f"{domain}|{caption}"; a stable hash of the key puts it
in "train" or "heldout" (10%). Generation for a split redraws the scene until its key falls in
that split, so no caption is ever seen in both: held-out prompts test composition, not recall.

    src = BuiltinData(image_size=32, split="train")
    s = src[0]; s.image, s.caption, s.qa, s.domain, s.objects
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .base import (COLOURS, MAX_TEXT_BYTES, SPLITS, Sample, check_split, fits, sample_key,
                   split_of)
from .shapes import MIN_IMAGE_SIZE, draw_shapes, render_shapes_rng, shapes_qa

DOMAINS: tuple[str, ...] = ("shapes", "glyphs", "patterns")

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
    "shapes": (draw_shapes, render_shapes_rng, shapes_qa),
    "glyphs": (_draw_glyphs, _render_glyphs, glyphs_qa),
    "patterns": (_draw_patterns, _render_patterns, patterns_qa),
}


def parse_domains(domains: tuple[str, ...] | list[str] | str,
                  flag: str = "--domains") -> dict[str, int]:
    """"shapes:2,glyphs,patterns" -> {"shapes": 2, "glyphs": 1, "patterns": 1}: each domain
    with how many turns it takes in a round of the mix (1 unless given)."""
    bad = ValueError(f"{flag} {domains!r}: give distinct names from {', '.join(DOMAINS)}, "
                     f"each optionally with a whole weight >= 1 (shapes:2)")
    parts = [d.strip() for d in (domains.split(",") if isinstance(domains, str) else domains)]
    weights = {}
    for part in (p for p in parts if p):
        name, _, weight = part.partition(":")
        weight = weight or "1"
        if name not in DOMAINS or name in weights or not weight.isdigit() or int(weight) < 1:
            raise bad
        weights[name] = int(weight)
    if not weights:
        raise bad
    return weights


class BuiltinData:
    """The generated domains, mixed in turn: a round takes each domain as many times as its
    weight, in the order given ("shapes:2,glyphs" reads shapes, shapes, glyphs, shapes, ...).

    Indexable by any i >= 0 (there is no end); sample i is a pure function of (seed, split, i).
    """

    def __init__(self, image_size: int = 32, domains: tuple[str, ...] | str = DOMAINS,
                 split: str = "train", seed: int = 0):
        check_split(split)
        if image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size {image_size} is too small; use at least {MIN_IMAGE_SIZE}")
        if seed < 0:
            raise ValueError(f"seed {seed} must be >= 0")
        self.image_size, self.split, self.seed = image_size, split, seed
        self.weights = parse_domains(domains)
        self.domains = tuple(self.weights)
        self.turns = [d for d, w in self.weights.items() for _ in range(w)]  # one round

    def __getitem__(self, i: int) -> Sample:
        if i < 0:
            raise IndexError(f"index {i} must be >= 0")
        rounds, turn = divmod(i, len(self.turns))
        domain = self.turns[turn]
        # the k-th sample of a domain is its k-th in the whole mix: rounds before, then turns
        return self.domain_sample(domain, rounds * self.weights[domain]
                                  + self.turns[:turn].count(domain))

    def domain_sample(self, domain: str, i: int) -> Sample:
        """Sample i of one domain; independent of which other domains are mixed in."""
        if domain not in _DOMAIN_FUNCTIONS:
            raise ValueError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")
        draw, render, make_qa = _DOMAIN_FUNCTIONS[domain]
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), DOMAINS.index(domain), i])
        for _ in range(MAX_REDRAWS):
            objects, caption = draw(rng, self.image_size)
            key = sample_key(domain, caption)
            if split_of(key) == self.split:
                break
        else:
            raise RuntimeError(
                f"no {domain} scene in split {self.split!r} after {MAX_REDRAWS} draws")
        assert fits(caption), f"built-in caption over {MAX_TEXT_BYTES} bytes: {caption!r}"
        image = render(objects, self.image_size, rng)
        return Sample(image, caption, make_qa(objects), domain, objects, key)
