"""Schedules are pure functions of the step.  Run: pytest -q tests/test_schedules.py"""
import pytest

from minimoe.schedules import ANNEAL_SHAPES, anneal, warmup_cosine


@pytest.mark.parametrize("shape", ANNEAL_SHAPES)
def test_anneal_runs_from_start_to_end_monotonically_and_holds(shape):
    values = [anneal(s, 100, 2.0, 0.5, shape) for s in range(0, 121)]
    assert values[0] == pytest.approx(2.0) and values[100] == pytest.approx(0.5)
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:]))
    assert values[120] == pytest.approx(0.5)


def test_anneal_shapes_differ_midway():
    mid = {s: anneal(50, 100, 4.0, 1.0, s) for s in ANNEAL_SHAPES}
    assert mid["linear"] == pytest.approx(2.5) and mid["cosine"] == pytest.approx(2.5)
    assert mid["exponential"] == pytest.approx(2.0)
    assert anneal(25, 100, 4.0, 1.0, "cosine") > anneal(25, 100, 4.0, 1.0, "linear")


def test_anneal_refuses_bad_input():
    with pytest.raises(ValueError, match="linear, exponential, cosine"):
        anneal(0, 10, 1, 0, "step")
    with pytest.raises(ValueError, match="positive"):
        anneal(0, 10, 1, 0, "exponential")


def test_warmup_cosine():
    assert [warmup_cosine(s, 10, 2, 0.0) for s in (0, 1)] == [0.5, 1.0]
    assert warmup_cosine(10, 10, 2, 0.1) == pytest.approx(0.1)
