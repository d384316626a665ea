"""Charts draw what they are given: error whiskers where errors are given, one coloured line
per series.  Run: pytest -q tests/test_plots.py"""
import numpy as np

from minimoe.plots import BAR_COLOURS, bar_chart, line_chart


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
