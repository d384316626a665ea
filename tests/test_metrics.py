"""The quick checks: the colour check agrees with real images and rejects wrong captions;
MMU scoring and its blind baseline.  Run: pytest -q tests/test_metrics.py"""
from PIL import Image

from minimoe.data import BuiltinData
from minimoe.metrics import answer_type, colour_report, colours_present, mmu_report


def test_colour_check_accepts_real_images_and_rejects_shifted_captions():
    data = BuiltinData(32, ("shapes",), "heldout", seed=5)
    samples = [data[i] for i in range(150)]
    report = colour_report([s.image for s in samples], [s.objects for s in samples])
    assert report["matched"]["all"] >= 0.97 and report["matched"]["exact"] >= 0.95
    assert report["chance"]["exact"] < 0.4


def test_blank_image_shows_no_colour():
    assert colours_present(Image.new("RGB", (32, 32), "black")) == set()
    assert colours_present(Image.new("RGB", (32, 32), (220, 30, 30))) == {"red"}


def test_mmu_report_counts_exact_matches_and_majority_baseline():
    answers = ["red", "red", "blue", "two", "one", "circle"]
    preds = ["red", "blue", "blue", "two", "two", "square"]
    r = mmu_report(preds, answers)
    assert r["accuracy"] == 3 / 6
    assert r["per_type"]["colour"] == {"n": 3, "accuracy": 2 / 3, "majority_baseline": 2 / 3}
    assert r["per_type"]["count"]["accuracy"] == 0.5
    assert r["majority_baseline"] == (2 + 1 + 1) / 6
    assert answer_type("orange and yellow") == "colour" and answer_type("left") == "position"
