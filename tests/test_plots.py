"""Charts draw what they are given: error whiskers where errors are given, one coloured line
per series.  Run: pytest -q tests/test_plots.py"""
import numpy as np

from minimoe.plots import BAR_COLOURS, LINE_PANEL, bar_chart, line_chart


def test_bar_chart_draws_a_whisker_only_where_there_is_a_spread():
    rows = {"a": {"m": 1.0}, "b": {"m": 2.0}}
    plain = np.asarray(bar_chart(rows, ["m"]))
    whiskers = np.asarray(bar_chart(rows, ["m"], {"a": {"m": 0.5}, "b": {"m": 0.0}}))
    assert plain.shape == whiskers.shape
    changed = np.argwhere((plain != whiskers).any(-1))
    # bar a spans x 10-71 of the 150-pixel panel, bar b 75-136: only a (and its value) moved
    assert len(changed) and changed[:, 1].max() < 75, "only bar a has a whisker"


def test_line_chart_draws_each_series_in_its_colour():
    img = np.asarray(line_chart({"layer0": {"up": ([0, 10], [0.0, 1.0]),
                                            "flat": ([0, 10], [0.5, 0.5])}}, "step"))
    for colour in BAR_COLOURS[:2]:
        assert (img == colour).all(-1).sum() > 50, colour


def test_line_chart_without_zero_spreads_close_values_over_the_panel():
    """Losses that differ in the second digit are a flat line from 0, and fill the panel's
    height on their own range."""
    panels = {"loss": {"a": ([0, 10], [2.50, 2.60])}}
    def height(img):
        panel = np.asarray(img)[:LINE_PANEL[1]]  # the legend's swatch underneath is left out
        rows = np.argwhere((panel == BAR_COLOURS[0]).all(-1))[:, 0]
        return rows.max() - rows.min()
    from_zero, own = line_chart(panels, "step"), line_chart(panels, "step", from_zero=False)
    assert height(own) > 5 * height(from_zero)
