"""The GenEval-style checker: it must pass real rendered scenes with their own prompts and fail
them with prompts that ask for something else.  Run: pytest -q tests/test_geneval.py"""
import pytest

from minimoe.data import render_shapes, split_of
from minimoe.geneval import (CATEGORIES, Prompt, check, find_objects, prompt_set,
                             validate_checker, wrong_prompts)


@pytest.mark.parametrize("image_size", [32, 64])
def test_checker_passes_real_images_and_fails_wrong_captions(image_size):
    report = validate_checker(image_size, per_category=40)
    assert report["real"] >= 0.95 and report["real_exact"] >= 0.95, report
    assert report["wrong_captions"] <= 0.1, report
    assert set(report["real_per_category"]) == set(CATEGORIES)


def test_objects_are_found_with_colour_shape_size_and_place():
    objects = [{"shape": "triangle", "colour": "green", "size": "large", "cx": 10.5,
                "cy": 20.5, "r": 0.21 * 32},
               {"shape": "cross", "colour": "blue", "size": "small", "cx": 25.5, "cy": 6.5,
                "r": 0.13 * 32}]
    found = sorted(find_objects(render_shapes(objects, 32)), key=lambda f: f.cx)
    assert [(f.colour, f.shape, f.size) for f in found] == [("green", "triangle", "large"),
                                                            ("blue", "cross", "small")]
    assert abs(found[1].cx - 25.5) < 1.5 and abs(found[1].cy - 6.5) < 1.5


def test_each_category_checks_its_own_requirement():
    a = {"shape": "circle", "colour": "red", "size": "small", "cx": 8.5, "cy": 16.5, "r": 4.2}
    b = {"shape": "square", "colour": "blue", "size": "small", "cx": 24.5, "cy": 16.5, "r": 4.2}
    found = find_objects(render_shapes([a, b], 32))
    assert check(Prompt("", "position", [a, b]), found)  # red circle left of blue square
    flipped = {**a, "cx": 40.5}  # the same pair asked the other way round
    assert not check(Prompt("", "position", [flipped, b]), found)
    assert not check(Prompt("", "attribute_binding", [{**a, "colour": "blue"}, b]), found)
    assert check(Prompt("", "two_objects", [{**a, "colour": "blue"}, b]), found), \
        "two_objects ignores colours"
    assert not check(Prompt("", "counting", [a, a, b]), found), "two red circles asked, one seen"


def test_clutter_passes_by_chance_but_not_exactly():
    """Specks of every colour all over the image hold, by chance, the silhouettes the
    single-object prompts ask for: the GenEval rule passes them, `exact` (nothing else
    found) does not, while the real scene passes both."""
    import numpy as np
    from PIL import Image
    from minimoe.data import COLOURS
    from minimoe.geneval import score
    rng = np.random.default_rng(0)
    palette = np.array(list(COLOURS.values()), dtype=np.uint8)
    prompts = [p for p in prompt_set(32, per_category=20) if p.category == "single_object"]
    clutter = []
    for _ in prompts:  # 4x4 patches of random palette colours, a third of them black
        grid = palette[rng.integers(len(palette), size=(8, 8))]
        grid[rng.random((8, 8)) < 1 / 3] = 0
        clutter.append([Image.fromarray(grid.repeat(4, 0).repeat(4, 1))])
    noisy = score(prompts, clutter)
    real = score(prompts, [[render_shapes(p.objects, 32)] for p in prompts])
    assert noisy["overall"] >= 0.25 and noisy["exact"] == 0.0, noisy["overall"]
    assert real["overall"] == real["exact"] == 1.0
    assert noisy["objects_found"] > 3 and real["objects_found"] == 1.0


def test_prompt_set_is_held_out_and_balanced():
    prompts = prompt_set(32, per_category=5)
    assert [p.category for p in prompts] == [c for c in CATEGORIES for _ in range(5)]
    assert all(w.category == p.category for p, w in zip(prompts, wrong_prompts(prompts)))
    assert all(split_of(f"shapes|{p.caption}") == "heldout" for p in prompts), "never trained on"


def test_the_tokenizer_ceiling_scores_reconstructions_not_the_real_images():
    """A perfect tokenizer's ceiling is the checker's score on real images; an untrained VQ
    model's reconstructions (flat colour mush) pass almost nothing."""
    import torch
    from minimoe.config import make_config
    from minimoe.evaluation import tokenizer_ceiling
    from minimoe.geneval import ceiling
    from minimoe.tokenizers import ImageTokenizer
    from minimoe.vq import VQModel
    real = validate_checker(32, per_category=10)["real"]
    assert ceiling(lambda images: images, 32, 10)["overall"] == real
    torch.manual_seed(0)
    cfg = make_config()
    poor = tokenizer_ceiling(ImageTokenizer(VQModel(cfg.vq), cfg.vq), 32, 10)
    assert poor["overall"] < real - 0.5, poor
    assert set(poor["per_category"]) == set(CATEGORIES) and poor["prompts"] == 60
