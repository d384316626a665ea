"""Pictures for people: labelled image grids, routing heatmaps, bar charts (with error bars
when there are several seeds) and line charts of a quantity over training steps."""
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


HEAT_CELL = 28  # pixels per (layer, expert) cell of a routing heatmap
HEAT_LABEL = 60  # left margin for the layer names


def _heat_colour(share: float, top: float) -> tuple[int, int, int]:
    """White (0) to dark blue (top), linear."""
    t = min(1.0, share / top) if top > 0 else 0.0
    return (int(255 - 225 * t), int(255 - 175 * t), int(255 - 75 * t))


def routing_heatmaps(summary: dict, title: str = "") -> Image.Image:
    """One panel per modality and per data domain: rows = MoE layers, columns = experts, cell =
    the share of that group's routed slots sent to the expert (written inside, in percent).
    Colour is scaled to 2 / E (twice the even share), so uniform routing looks pale."""
    layers = list(summary)
    if not layers:
        raise ValueError("no MoE layers in the routing summary")
    E = len(summary[layers[0]]["text"])
    panels = [("text tokens", "text"), ("image tokens", "image")]
    panels += [(f"domain: {d}", ("domains", d)) for d in summary[layers[0]]["domains"]]
    font = ImageFont.load_default(size=FONT_SIZE)
    pw, ph = HEAT_LABEL + E * HEAT_CELL + 10, (len(layers) + 2) * HEAT_CELL
    img = Image.new("RGB", (pw * len(panels), ph + LINE_HEIGHT + 4), "white")
    draw = ImageDraw.Draw(img)
    draw.text((4, 2), title, fill="black", font=font)
    top = 2.0 / E
    for p, (name, key) in enumerate(panels):
        x0, y0 = p * pw, LINE_HEIGHT + 4
        draw.text((x0 + HEAT_LABEL, y0), name, fill="black", font=font)
        for r, layer in enumerate(layers):
            row = summary[layer][key] if isinstance(key, str) else summary[layer][key[0]][key[1]]
            y = y0 + (r + 1) * HEAT_CELL
            draw.text((x0 + 4, y + 8), layer, fill="black", font=font)
            for e, share in enumerate(row):
                x = x0 + HEAT_LABEL + e * HEAT_CELL
                fill = _heat_colour(share, top)
                draw.rectangle([x, y, x + HEAT_CELL - 2, y + HEAT_CELL - 2], fill=fill)
                ink = "white" if share > top / 2 else "black"
                draw.text((x + 3, y + 8), f"{100 * share:.0f}", fill=ink, font=font)
        for e in range(E):
            draw.text((x0 + HEAT_LABEL + e * HEAT_CELL + 8, y0 + (len(layers) + 1) * HEAT_CELL + 4),
                      f"e{e}", fill="black", font=font)
    return img


BAR_PANEL = (150, 140)  # least width, height of one metric's panel in a bar chart
BAR_WIDTH = 36  # pixels per bar, room for its value
BAR_COLOURS = ((66, 103, 172), (219, 112, 40), (84, 160, 80), (180, 60, 60), (130, 90, 180),
               (120, 120, 120))


def bar_chart(rows: dict[str, dict[str, float]], metrics: list[str],
              errors: dict[str, dict[str, float]] | None = None) -> Image.Image:
    """One panel per metric, one bar per run (in the order of `rows`), value on each bar; each
    panel scaled to its own largest value (bar plus error). `errors` (same keys): a +-
    whisker on each bar, e.g. the standard deviation over seeds."""
    runs = list(rows)
    font = ImageFont.load_default(size=FONT_SIZE)
    pw, ph = max(BAR_PANEL[0], 20 + BAR_WIDTH * len(runs)), BAR_PANEL[1]
    legend_h = LINE_HEIGHT * len(runs) + 6
    img = Image.new("RGB", (pw * len(metrics), ph + legend_h), "white")
    draw = ImageDraw.Draw(img)
    for p, metric in enumerate(metrics):
        x0 = p * pw
        draw.text((x0 + 6, 2), metric, fill="black", font=font)
        values = [rows[r].get(metric) for r in runs]
        spread = [(errors or {}).get(r, {}).get(metric) or 0.0 for r in runs]
        top = max([v + e for v, e in zip(values, spread) if v is not None and v == v]
                  or [1.0]) or 1.0
        bar_w = (pw - 20) // max(1, len(runs))
        for i, v in enumerate(values):
            if v is None or v != v:
                continue
            h = int((ph - 40) * v / top)
            bx = x0 + 10 + i * bar_w
            draw.rectangle([bx, ph - 10 - h, bx + bar_w - 4, ph - 10],
                           fill=BAR_COLOURS[i % len(BAR_COLOURS)])
            if spread[i]:
                mid, dh = bx + (bar_w - 4) // 2, int((ph - 40) * spread[i] / top)
                draw.line([mid, ph - 10 - h - dh, mid, ph - 10 - h + dh], fill="black", width=1)
                for y in (ph - 10 - h - dh, ph - 10 - h + dh):
                    draw.line([mid - 3, y, mid + 3, y], fill="black", width=1)
            draw.text((bx, ph - 24 - h - int((ph - 40) * spread[i] / top)), f"{v:.3g}",
                      fill="black", font=font)
    for i, r in enumerate(runs):
        y = ph + 2 + i * LINE_HEIGHT
        draw.rectangle([6, y + 2, 16, y + 10], fill=BAR_COLOURS[i % len(BAR_COLOURS)])
        draw.text((22, y), r, fill="black", font=font)
    return img


LINE_PANEL = (260, 170)  # width, height of one panel of a line chart


def line_chart(panels: dict[str, dict[str, tuple[list[float], list[float]]]],
               x_label: str = "") -> Image.Image:
    """Small multiples: one panel per key of `panels`, each with one line per series
    {name: (xs, ys)}, a shared y range from 0 to the largest value, series coloured as in the
    legend underneath."""
    names = list(dict.fromkeys(n for series in panels.values() for n in series))
    font = ImageFont.load_default(size=FONT_SIZE)
    pw, ph = LINE_PANEL
    legend_h = LINE_HEIGHT * len(names) + 6
    img = Image.new("RGB", (pw * len(panels), ph + legend_h), "white")
    draw = ImageDraw.Draw(img)
    ys_all = [y for series in panels.values() for _, ys in series.values() for y in ys]
    xs_all = [x for series in panels.values() for xs, _ in series.values() for x in xs]
    top, right = (max(ys_all) or 1.0) if ys_all else 1.0, max(xs_all or [1]) or 1
    left_m, bottom_m = 30, 22
    for p, (title, series) in enumerate(panels.items()):
        x0 = p * pw
        draw.text((x0 + left_m, 2), title, fill="black", font=font)
        draw.line([x0 + left_m, 16, x0 + left_m, ph - bottom_m, x0 + pw - 8, ph - bottom_m],
                  fill="black")
        draw.text((x0 + 2, 14), f"{top:.2f}", fill="black", font=font)
        draw.text((x0 + 2, ph - bottom_m - 8), "0", fill="black", font=font)
        draw.text((x0 + pw - 40, ph - bottom_m + 4), f"{right}", fill="black", font=font)
        draw.text((x0 + left_m, ph - bottom_m + 4), x_label, fill="black", font=font)
        for i, name in enumerate(names):
            if name not in series:
                continue
            xs, ys = series[name]
            pts = [(x0 + left_m + (pw - left_m - 8) * x / right,
                    ph - bottom_m - (ph - bottom_m - 16) * y / top) for x, y in zip(xs, ys)]
            if len(pts) > 1:
                draw.line(pts, fill=BAR_COLOURS[i % len(BAR_COLOURS)], width=2)
    for i, name in enumerate(names):
        y = ph + 2 + i * LINE_HEIGHT
        draw.rectangle([6, y + 2, 16, y + 10], fill=BAR_COLOURS[i % len(BAR_COLOURS)])
        draw.text((22, y), name, fill="black", font=font)
    return img
