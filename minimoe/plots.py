"""Pictures for people: labelled image grids, routing heatmaps, bar charts (with error bars
when there are several seeds) and line charts of a quantity over training steps (small
multiples on a shared scale, or a grid of panels each on its own)."""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field

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
               (120, 120, 120), (30, 170, 190), (190, 180, 40), (220, 110, 180), (130, 85, 70))


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
    _legend_column(draw, runs, ph)
    return img


LINE_PANEL = (260, 170)  # width, height of one panel of a line chart
# Room around a line panel's plot area, in pixels: tick values on the left (up to 8 characters),
# the title above, tick values and the x label below.
PLOT_MARGIN_LEFT, PLOT_MARGIN_TOP, PLOT_MARGIN_RIGHT, PLOT_MARGIN_BOTTOM = 48, 16, 10, 34
Y_TICKS = 3  # values written on the y axis: bottom, middle, top
GRID_COLOUR = (228, 228, 228)  # the faint horizontal line at each y tick
MARK_COLOUR = (140, 140, 140)  # dashed vertical marks (where a stage starts)
DASH = 4  # pixels per dash (and per gap) of a mark
SPARSE = 30  # a series of at most this many points gets a dot on each (held-out checks)
DOT = 2  # radius of those dots


@dataclass
class LinePanel:
    """One panel of a line chart: series {name: (xs, ys)}; points whose y is None, not finite,
    or (on a log scale) not positive are left out."""
    title: str
    series: dict[str, tuple[list[float], list[float]]]
    x_label: str = ""
    marks: dict[float, str] = field(default_factory=dict)  # x -> label of a dashed vertical line
    log_y: bool = False  # y on a log scale: losses that fall by an order of magnitude

    def points(self, name: str) -> list[tuple[float, float]]:
        """The drawable (x, y) of a series, y in axis units (log10 on a log scale)."""
        xs, ys = self.series[name]
        return [(x, math.log10(y) if self.log_y else y) for x, y in zip(xs, ys)
                if y is not None and math.isfinite(y) and (y > 0 or not self.log_y)]


def short_number(v: float) -> str:
    """A tick value in a few characters: 0.002, 1.81, 17.3k, 2.1M, 22.7T."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.3g}"


def draw_line_panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], size: tuple[int, int],
                    panel: LinePanel, x_range: tuple[float, float], y_range: tuple[float, float],
                    colours: dict[str, tuple[int, int, int]], legend: bool = False) -> None:
    """`panel` in the box of `size` at `origin`: title, axes with tick values, the x label, the
    marks inside x_range, one line per series (y_range in axis units, log10 on a log scale),
    and with `legend` a row naming the series under the x label. The marks' labels get a band
    of their own at the top, so that no line runs through them."""
    font = ImageFont.load_default(size=FONT_SIZE)
    (x0, y0), (w, h) = origin, size
    left, top = x0 + PLOT_MARGIN_LEFT, y0 + PLOT_MARGIN_TOP
    right = x0 + w - PLOT_MARGIN_RIGHT
    bottom = y0 + h - PLOT_MARGIN_BOTTOM - (LINE_HEIGHT if legend else 0)
    (x_lo, x_hi), (y_lo, y_hi) = x_range, y_range

    def px(x: float) -> float:
        return left + (right - left) * (x - x_lo) / (x_hi - x_lo)

    data_top = top + (LINE_HEIGHT if panel.marks else 0)

    def py(y: float) -> float:
        return bottom - (bottom - data_top) * (y - y_lo) / (y_hi - y_lo)

    title = panel.title + (" (log scale)" if panel.log_y else "")
    draw.text((left, y0 + 2), title, fill="black", font=font)
    for i in range(Y_TICKS):
        y = y_lo + (y_hi - y_lo) * i / (Y_TICKS - 1)
        label = short_number(10 ** y if panel.log_y else y)
        if i:
            draw.line([left, py(y), right, py(y)], fill=GRID_COLOUR)
        draw.text((left - 3 - draw.textlength(label, font=font), py(y) - FONT_SIZE // 2), label,
                  fill="black", font=font)
    draw.line([left, top, left, bottom, right, bottom], fill="black")
    below = bottom + 4
    draw.text((left, below), short_number(x_lo), fill="black", font=font)
    hi = short_number(x_hi)
    draw.text((right - draw.textlength(hi, font=font), below), hi, fill="black", font=font)
    # The x label goes between the end values, or under them where it would touch them.
    label_w = draw.textlength(panel.x_label, font=font)
    room = right - left - draw.textlength(short_number(x_lo), font=font) - \
        draw.textlength(hi, font=font)
    draw.text(((left + right - label_w) / 2, below + (0 if label_w + 8 < room else FONT_SIZE)),
              panel.x_label, fill="black", font=font)
    for x, label in panel.marks.items():
        if x_lo <= x <= x_hi:
            for y in range(int(top), int(bottom), 2 * DASH):
                draw.line([px(x), y, px(x), min(y + DASH, bottom)], fill=MARK_COLOUR)
            draw.text((px(x) + 3, top), label, fill=MARK_COLOUR, font=font)
    for name in panel.series:
        pts = [(px(x), py(y)) for x, y in panel.points(name)]
        if len(pts) > 1:
            draw.line(pts, fill=colours[name], width=2)
        if len(pts) <= SPARSE:
            for x, y in pts:
                draw.ellipse([x - DOT, y - DOT, x + DOT, y + DOT], fill=colours[name])
    if legend:
        x = left
        for name in panel.series:
            _swatch(draw, (x, bottom + LINE_HEIGHT + 6), colours[name])
            draw.text((x + 16, bottom + LINE_HEIGHT + 4), name, fill="black", font=font)
            x += 16 + draw.textlength(name, font=font) + 10


def _swatch(draw: ImageDraw.ImageDraw, at: tuple[float, float], colour) -> None:
    """The small square that stands for a series in a legend."""
    x, y = at
    draw.rectangle([x, y, x + 10, y + 8], fill=colour)


def _legend_column(draw: ImageDraw.ImageDraw, names: list[str], top: int) -> None:
    """A legend under a chart: one line per name, coloured as BAR_COLOURS in that order."""
    font = ImageFont.load_default(size=FONT_SIZE)
    for i, name in enumerate(names):
        y = top + 2 + i * LINE_HEIGHT
        _swatch(draw, (6, y + 2), BAR_COLOURS[i % len(BAR_COLOURS)])
        draw.text((22, y), name, fill="black", font=font)


def _colours(names) -> dict[str, tuple[int, int, int]]:
    return {n: BAR_COLOURS[i % len(BAR_COLOURS)] for i, n in enumerate(names)}


def line_chart(panels: dict[str, dict[str, tuple[list[float], list[float]]]],
               x_label: str = "", from_zero: bool = True) -> Image.Image:
    """Small multiples: one panel per key of `panels`, each with one line per series
    {name: (xs, ys)}, a shared x range from 0 and y range from 0 to the largest value, series
    coloured as in the legend underneath. `from_zero` False gives each panel the y range of
    its own data instead (losses of runs that differ in the second digit)."""
    names = list(dict.fromkeys(n for series in panels.values() for n in series))
    pw, ph = LINE_PANEL
    img = Image.new("RGB", (pw * len(panels), ph + LINE_HEIGHT * len(names) + 6), "white")
    draw = ImageDraw.Draw(img)
    ys_all = [y for series in panels.values() for _, ys in series.values() for y in ys]
    xs_all = [x for series in panels.values() for xs, _ in series.values() for x in xs]
    top, right = (max(ys_all) or 1.0) if ys_all else 1.0, max(xs_all or [1]) or 1
    for p, (title, series) in enumerate(panels.items()):
        panel = LinePanel(title, series, x_label)
        y_range = (0, top) if from_zero else \
            _span([y for name in series for _, y in panel.points(name)], from_zero=False)
        draw_line_panel(draw, (p * pw, 0), LINE_PANEL, panel, (0, right), y_range,
                        _colours(names))
    _legend_column(draw, names, ph)
    return img


CURVE_PANEL = (330, 200)  # width, height of one panel of line_panels (room for its legend)


def _span(values: list[float], from_zero: bool) -> tuple[float, float]:
    """An axis range over `values` (from 0 when asked and they are not negative), widened when
    they are all equal so that the range is never empty."""
    lo, hi = min(values, default=0.0), max(values, default=1.0)
    if from_zero:
        lo = min(lo, 0.0)
    if hi - lo <= abs(hi) * 1e-9:  # a flat series: give it room above and below
        lo, hi = lo - (abs(lo) or 1.0) / 2, hi + (abs(hi) or 1.0) / 2
        lo = max(lo, 0.0) if from_zero else lo
    return lo, hi


def line_panels(panels: list[LinePanel], cols: int, title: str = "") -> Image.Image:
    """A grid of panels, `cols` a row, each scaled to its own data (and marks): x over the
    data, y from 0 (from the lowest value on a log scale) to the top; a legend row under each
    panel with more than one series."""
    pw, ph = CURVE_PANEL
    rows = (len(panels) + cols - 1) // cols
    head = LINE_HEIGHT + 6 if title else 0
    img = Image.new("RGB", (pw * min(cols, len(panels)), head + ph * rows), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((6, 3), title, fill="black", font=ImageFont.load_default(size=FONT_SIZE))
    for i, panel in enumerate(panels):
        pts = [p for name in panel.series for p in panel.points(name)]
        x_range = _span([x for x, _ in pts] + list(panel.marks), from_zero=False)
        y_range = _span([y for _, y in pts], from_zero=not panel.log_y)
        draw_line_panel(draw, ((i % cols) * pw, head + (i // cols) * ph), CURVE_PANEL, panel,
                        x_range, y_range, _colours(panel.series), legend=len(panel.series) > 1)
    return img
