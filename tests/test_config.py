"""Configs: presets, flag mapping, validation, checkpoint round trip.
Run: pytest -q tests/test_config.py"""
import argparse

import pytest

from minimoe import config


def parse(argv):
    p = argparse.ArgumentParser()
    config.add_arguments(p)
    return config.from_args(p.parse_args(argv))


def test_presets_have_the_documented_sizes():
    full = config.make_config("full")
    assert (full.model.n_layers, full.model.d_model, full.image_tokens, full.vq.vq_codes) == \
        (24, 2048, 256, 8192)
    assert config.make_config("small").image_tokens == 256
    assert config.make_config("tiny").image_tokens == 64


def test_every_field_is_a_flag_and_overrides_the_preset():
    cfg = parse(["--preset", "small", "--d-model", "64", "--n-heads", "2", "--lr", "0.5",
                 "--domains", "shapes"])
    assert cfg.preset == "small" and cfg.model.d_model == 64 and cfg.train.lr == 0.5
    assert cfg.model.n_layers == 8, "unset fields keep the preset's value"
    assert cfg.data.domains == "shapes"


def test_checkpoint_dict_round_trip():
    cfg = config.make_config("small", seed=3)
    assert config.from_dict(config.to_dict(cfg)) == cfg


@pytest.mark.parametrize("overrides,match", [
    (dict(d_model=30), "--n-heads"), (dict(vq_downsample=3), "power of two"),
    (dict(moe="naive"), "use --moe none"), (dict(data="http://x"), "folder:PATH"),
    (dict(dense_steps=-1), "dense-steps"), (dict(nonsense=1), "unknown config field")])
def test_invalid_values_are_refused_with_the_flag_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        config.make_config("tiny", **overrides)


def test_unknown_preset():
    with pytest.raises(ValueError, match="tiny, small, full"):
        config.make_config("huge")


def test_describe_lists_every_field():
    text = config.describe(config.make_config("tiny"))
    for name in config.flat(config.make_config("tiny")):
        assert name in text
