"""Tests of the VQ image tokenizer (`minimoe/vq.py`). CPU only, about half a minute.

    python -m pytest -q tests/test_vq.py

The images are made here (flat shapes, glyphs, stripes) so the tests do not depend on
`minimoe/data.py`.
"""
from __future__ import annotations

import math
import random

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from minimoe.config import VQConfig
from minimoe.vq import VQModel, codebook_stats, psnr, train_vq

PALETTE = [(230, 40, 40), (40, 200, 60), (50, 90, 230), (240, 220, 40), (230, 120, 30),
           (170, 60, 210)]  # red, green, blue, yellow, orange, purple
GLYPHS = "0123456789ABCDEFGHKMNPRSTXYZ"


def _shape_image(rng: random.Random, size: int) -> Image.Image:
    """1-3 flat-coloured circles/squares/triangles on black."""
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 3)):
        r = rng.randint(size // 8, size // 3)
        cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
        colour, kind = rng.choice(PALETTE), rng.choice(["circle", "square", "triangle"])
        if kind == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif kind == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img


def _glyph_image(rng: random.Random, size: int) -> Image.Image:
    """A digit or letter in one palette colour on another."""
    fg, bg = rng.sample(PALETTE, 2)
    img = Image.new("RGB", (size, size), bg)
    font = ImageFont.load_default(size=int(size * 0.8))
    ImageDraw.Draw(img).text((size / 2, size / 2), rng.choice(GLYPHS), fill=fg, font=font,
                             anchor="mm")
    return img


def _pattern_image(rng: random.Random, size: int) -> Image.Image:
    """Two-colour stripes (horizontal or vertical) or a checkerboard."""
    a, b = rng.sample(PALETTE + [(0, 0, 0)], 2)
    period, kind = rng.choice([4, 8]), rng.choice(["h", "v", "check"])
    img = Image.new("RGB", (size, size), a)
    draw = ImageDraw.Draw(img)
    for i in range(0, size, period):
        for j in range(0, size, period):
            cell = {"h": i // period, "v": j // period, "check": i // period + j // period}[kind]
            if cell % 2:
                draw.rectangle([j, i, j + period - 1, i + period - 1], fill=b)
    return img


def synthetic_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """n images [n,3,size,size] in [0,1]: half shapes, a quarter glyphs, a quarter patterns."""
    rng = random.Random(seed)
    makers = [_shape_image, _shape_image, _glyph_image, _pattern_image]
    imgs = [makers[i % 4](rng, size) for i in range(n)]
    data = torch.tensor([list(im.tobytes()) for im in imgs], dtype=torch.uint8)
    return data.view(n, size, size, 3).permute(0, 3, 1, 2).float() / 255
