"""GenEval-style procedural accuracy for text-to-image on the built-in shapes domain.

A held-out prompt set comes from the data module (held-out split, fixed seed), in six
categories: single object, two objects, counting, colours, position, attribute binding. A
procedural checker finds the objects in an image (palette-colour segmentation, connected
components, shape classification from the silhouette) and decides whether every requirement of
the prompt holds. The checker is validated on real rendered images with their own prompts (it
must pass nearly all) and with another prompt of the same category (it must fail nearly all).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .data import COLOURS, SIZES, BuiltinData, relation, render_shapes, shapes_caption

CATEGORIES = ("single_object", "two_objects", "counting", "colours", "position",
              "attribute_binding")
MAX_COLOUR_DIST = 90.0  # a pixel belongs to a palette colour within this RGB distance
MIN_BRIGHTNESS = 60  # darker pixels (max channel) are background, whatever they are nearest to
MIN_AREA = 0.012  # components smaller than this share of the image are noise
SQUARE_FILL = 0.86  # a square fills its bounding box; a circle about pi/4 of it
TRIANGLE_TOP_RATIO = 0.6  # a triangle (apex up) fills its top third far less than its bottom third
CROSS_CORNERS = 0.3  # a cross leaves its bounding box's corners nearly empty; a circle does not
TRUSTED_REAL, TRUSTED_WRONG = 0.95, 0.1  # the checker is trusted where it scores these or better
# Bounding-box side separating small from large, as a share of the image (between 2 x SIZES).
SIZE_SPLIT = SIZES["small"] + SIZES["large"]


@dataclass
class Found:
    colour: str
    shape: str
    size: str
    cx: float
    cy: float
    area: int


def segment(image) -> np.ndarray:
    """Palette-colour index of every pixel, -1 for background or off-palette pixels."""
    px = np.asarray(image.convert("RGB"), dtype=np.float32)
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    dist = np.linalg.norm(px[:, :, None, :] - palette[None, None], axis=-1)
    label = dist.argmin(-1)
    label[(dist.min(-1) > MAX_COLOUR_DIST) | (px.max(-1) < MIN_BRIGHTNESS)] = -1
    return label


def components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, each as an array of (y, x) pixels."""
    seen = np.zeros_like(mask, dtype=bool)
    H, W = mask.shape
    found = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pixels = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < H and 0 <= nx < W and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        found.append(np.array(pixels))
    return found


def classify(pixels: np.ndarray) -> str:
    """circle | square | triangle | cross from a silhouette's fill of its bounding box."""
    ys, xs = pixels[:, 0], pixels[:, 1]
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    box = np.zeros((h, w), dtype=bool)
    box[ys - ys.min(), xs - xs.min()] = True
    if box.mean() >= SQUARE_FILL:
        return "square"
    third_h, third_w = max(1, h // 3), max(1, w // 3)
    top, bottom = box[:third_h].mean(), box[-third_h:].mean()
    if top < TRIANGLE_TOP_RATIO * bottom:
        return "triangle"
    corners = np.mean([box[:third_h, :third_w].mean(), box[:third_h, -third_w:].mean(),
                       box[-third_h:, :third_w].mean(), box[-third_h:, -third_w:].mean()])
    return "cross" if corners < CROSS_CORNERS else "circle"


def find_objects(image) -> list[Found]:
    """Every object in a shapes image: colour, shape, size and centre (pixels)."""
    label = segment(image)
    S = label.shape[0]
    objects = []
    for c, colour in enumerate(COLOURS):
        for pixels in components(label == c):
            if len(pixels) < MIN_AREA * label.size:
                continue
            extent = max(np.ptp(pixels[:, 0]), np.ptp(pixels[:, 1])) + 1
            objects.append(Found(colour, classify(pixels),
                                 "large" if extent > SIZE_SPLIT * S else "small",
                                 float(pixels[:, 1].mean()) + 0.5,
                                 float(pixels[:, 0].mean()) + 0.5, len(pixels)))
    return objects


@dataclass
class Prompt:
    caption: str
    category: str
    objects: list[dict]  # the ground-truth scene the caption was written for


def prompt_set(image_size: int, per_category: int, seed: int = 0) -> list[Prompt]:
    """Held-out shapes prompts, per_category of each category (disjoint from training
    captions by the data module's split). 1-object scenes give single_object and colours
    prompts, 2-object scenes two_objects, position and attribute_binding, 3-object counting."""
    by_count = {1: ("single_object", "colours"),
                2: ("two_objects", "position", "attribute_binding"), 3: ("counting",)}
    data = BuiltinData(image_size, ("shapes",), "heldout", seed=seed)
    chosen: dict[str, list[Prompt]] = {c: [] for c in CATEGORIES}
    i = 0
    while any(len(v) < per_category for v in chosen.values()):
        s = data[i]
        i += 1
        for category in by_count[len(s.objects)]:
            if len(chosen[category]) < per_category:
                chosen[category].append(Prompt(s.caption, category, s.objects))
    return [p for c in CATEGORIES for p in chosen[c]]


def _has(found: list[Found], colour: str | None, shape: str) -> list[Found]:
    return [f for f in found if f.shape == shape and (colour is None or f.colour == colour)]


def check(prompt: Prompt, found: list[Found]) -> bool:
    """Whether the objects found satisfy the prompt's category requirement."""
    want, cat = prompt.objects, prompt.category
    if cat == "single_object":
        return bool(_has(found, None, want[0]["shape"]))
    if cat == "colours":
        return bool(_has(found, want[0]["colour"], want[0]["shape"]))
    if cat == "two_objects":
        return all(_has(found, None, o["shape"]) for o in want)
    if cat == "attribute_binding":
        return all(_has(found, o["colour"], o["shape"]) for o in want)
    if cat == "position":
        a, b = (_has(found, o["colour"], o["shape"]) for o in want)
        if not a or not b:
            return False
        wanted = relation(*want)
        return any(relation({"cx": p.cx, "cy": p.cy}, {"cx": q.cx, "cy": q.cy}) == wanted
                   for p in a for q in b if p is not q)
    if cat == "counting":
        counts = Counter((f.colour, f.shape) for f in found)
        return all(counts[k] == n for k, n in Counter((o["colour"], o["shape"])
                                                       for o in want).items())
    raise ValueError(f"unknown category {cat!r}; known: {', '.join(CATEGORIES)}")


def score(prompts: list[Prompt], images_per_prompt: list[list]) -> dict:
    """Accuracy per category and overall (the mean of the categories), with each image's
    verdict. images_per_prompt[i] are the samples generated for prompts[i].

    A prompt passes when the objects it asks for are found, whatever else is (as in GenEval),
    so clutter passes by chance: many specks of many colours hold some silhouette of the
    asked-for shape. `exact` also asks that nothing else be found (as many objects as the
    prompt names): a real image passes both, clutter only the first."""
    found = [[find_objects(im) for im in ims] for ims in images_per_prompt]
    verdicts = [[check(p, f) for f in fs] for p, fs in zip(prompts, found)]
    exact = [[ok and len(f) == len(p.objects) for ok, f in zip(oks, fs)]
             for p, oks, fs in zip(prompts, verdicts, found)]

    def per_category(passed):
        return {c: float(np.mean([v for p, vs in zip(prompts, passed) if p.category == c
                                  for v in vs]))
                for c in CATEGORIES if any(p.category == c for p in prompts)}
    per, per_exact = per_category(verdicts), per_category(exact)
    return {"per_category": per, "overall": float(np.mean(list(per.values()))),
            "exact_per_category": per_exact,
            "exact": float(np.mean(list(per_exact.values()))), "verdicts": verdicts,
            "objects_found": float(np.mean([len(f) for fs in found for f in fs]))}


def requirement(prompt: Prompt):
    """What the category checks, as a comparable key (two prompts with the same key ask for
    the same thing)."""
    objs, cat = prompt.objects, prompt.category
    if cat == "single_object":
        return objs[0]["shape"]
    if cat == "two_objects":
        return tuple(sorted(o["shape"] for o in objs))
    if cat == "position":
        return tuple((o["colour"], o["shape"]) for o in objs) + (relation(*objs),)
    return tuple(sorted(Counter((o["colour"], o["shape"]) for o in objs).items()))


def wrong_prompts(prompts: list[Prompt]) -> list[Prompt]:
    """For the checker's false-positive rate, each prompt replaced by one that asks for
    something else: position prompts with the opposite relation (the first object mirrored
    through the second), the others by the next prompt of the category with a different
    requirement."""
    out = []
    for i, p in enumerate(prompts):
        if p.category == "position":
            a, b = p.objects
            mirrored = [{**a, "cx": 2 * b["cx"] - a["cx"], "cy": 2 * b["cy"] - a["cy"]}, b]
            out.append(Prompt(shapes_caption(mirrored), p.category, mirrored))
            continue
        others = [q for q in prompts[i + 1:] + prompts[:i]
                  if q.category == p.category and requirement(q) != requirement(p)]
        out.append(others[0] if others else p)
    return out


def ceiling(reconstruct, image_size: int, per_category: int, seed: int = 0) -> dict:
    """The checker on reconstructions of the prompts' own real images: what a model whose
    tokenizer is `reconstruct` (PIL images -> PIL images, e.g. VQ encode then decode) could
    score at best, since every image it draws passes through that decoder."""
    prompts = prompt_set(image_size, per_category, seed)
    recon = reconstruct([render_shapes(p.objects, image_size) for p in prompts])
    scored = score(prompts, [[im] for im in recon])
    return {"overall": scored["overall"], "per_category": scored["per_category"],
            "prompts": len(prompts)}


def validate_checker(image_size: int, per_category: int, seed: int = 0) -> dict:
    """The checker on real rendered held-out images: with their own prompts (should pass) and
    with another prompt of the same category (should fail)."""
    prompts = prompt_set(image_size, per_category, seed)
    images = [[render_shapes(p.objects, image_size)] for p in prompts]
    right = score(prompts, images)
    wrong = score(wrong_prompts(prompts), images)
    return {"real": right["overall"], "real_per_category": right["per_category"],
            "real_exact": right["exact"],
            "wrong_captions": wrong["overall"], "wrong_per_category": wrong["per_category"]}
