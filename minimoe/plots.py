"""Pictures for people: labelled image grids (more plots arrive with the evaluation)."""
from __future__ import annotations

import textwrap

from PIL import Image, ImageDraw, ImageFont

CELL = 128  # pixels a side of each image in a grid (small images are upscaled, nearest)
LABEL_LINES = 3  # caption lines under each image
FONT_SIZE = 11
LINE_HEIGHT = 13
CHARS_PER_LINE = 21  # fits CELL at FONT_SIZE


def image_grid(images: list[Image.Image], labels: list[str] | None = None, cols: int = 8
               ) -> Image.Image:
    """A grid of images, each upscaled to CELL and captioned with its label."""
    cols = max(1, min(cols, len(images)))
    rows = (len(images) + cols - 1) // cols
    label_h = LABEL_LINES * LINE_HEIGHT if labels else 0
    grid = Image.new("RGB", (cols * CELL, rows * (CELL + label_h)), "white")
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default(size=FONT_SIZE)
    for i, im in enumerate(images):
        x, y = (i % cols) * CELL, (i // cols) * (CELL + label_h)
        grid.paste(im.convert("RGB").resize((CELL, CELL), Image.NEAREST), (x, y))
        if labels:
            lines = textwrap.wrap(labels[i], CHARS_PER_LINE)[:LABEL_LINES]
            for j, line in enumerate(lines):
                draw.text((x + 2, y + CELL + j * LINE_HEIGHT), line, fill="black", font=font)
    return grid
