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


def test_a_checkpoint_without_a_newer_field_reads_as_what_it_meant():
    """A run saved before a field existed was computed as its ABSENT value says, not as
    today's default (a sampler default that moved would otherwise redraw old runs)."""
    d = config.to_dict(config.make_config(guidance_schedule="rising"))
    for name in config.ABSENT:
        del d[config.section_of(name)][name]
    cfg = config.from_dict(d)
    for name, value in config.ABSENT.items():
        assert getattr(getattr(cfg, config.section_of(name)), name) == value
    assert cfg.train.guidance_schedule == "constant"


@pytest.mark.parametrize("overrides,match", [
    (dict(d_model=30), "--n-heads"),
    (dict(optimizer="muon", fsdp=True), "--optimizer adamw with --fsdp"),
    (dict(optimizer="sgd"), "--optimizer 'sgd': use one of adamw, muon"),
    (dict(vq_downsample=3), "power of two"),
    (dict(moe="magic"), "--moe 'magic': use one of none, scratch"),
    (dict(data="http://x"), "folder:PATH"),
    (dict(dense_steps=-1), "dense-steps"), (dict(nonsense=1), "unknown config field"),
    (dict(moe="random", top_k=9), "--top-k 9 must be between 1 and --num-experts 8"),
    (dict(moe="taylor", random_routing=True), "--random-routing True needs --top-k 2"),
    (dict(moe="taylor", num_shared=2), "into --num-experts 8 \\+ --num-shared 2"),
    (dict(moe="taylor", num_experts=7), "--d-ffn 512 does not split"),
    (dict(moe="random", num_experts=6, num_shared=2), None),  # 512 = 8 experts of 64: fine
    (dict(moe="naive", num_shared=1), "--num-shared 0"),
    (dict(moe="taylor", text_experts=8), "--text-experts 8"),
    (dict(moe="taylor", moe_layers="first:2"), "--moe-layers"),
    (dict(moe="taylor", random_routing=True, top_k=1), "--top-k 2"),
    (dict(moe="taylor", anneal_shape="exponential"), "use linear or cosine"),
    (dict(moe="taylor", capacity_factor=-1.0), "--capacity-factor")])
def test_invalid_values_are_refused_with_the_flag_named(overrides, match):
    if match is None:
        config.make_config("tiny", **overrides)
        return
    with pytest.raises(ValueError, match=match):
        config.make_config("tiny", **overrides)


def test_moe_layer_choice_and_expert_width():
    assert config.moe_layer_ids("all", 4) == [0, 1, 2, 3]
    assert config.moe_layer_ids("every_other", 4) == [1, 3]
    assert config.moe_layer_ids("last:1", 4) == [3]
    assert config.expert_hidden(config.make_config(moe="naive")) == 512, "upcycled: full width"
    assert config.expert_hidden(config.make_config(moe="taylor", num_shared=0)) == 64


@pytest.mark.parametrize("overrides, layout", [
    (dict(moe="taylor"), (6, 2, 3, 3)), (dict(moe="random"), (6, 2, 3, 3)),
    (dict(moe="naive"), (8, 0, 4, 2)), (dict(moe="none"), (8, 0, 4, 2)),
    (dict(moe="taylor", num_shared=0), (8, 0, 4, 2)),
    (dict(moe="random", num_experts=4, text_experts=2), (4, 0, 2, 2)),
    (dict(moe="taylor", top_k=1), (8, 0, 4, 1)),
])
def test_split_methods_keep_two_of_eight_slices_shared_unless_a_flag_sets_the_layout(
        overrides, layout):
    """random and taylor default to 6 routed + 2 shared experts (3 text), top-3, as one unit;
    a flag for any of the four fields starts all four from the preset's 8 / 0 / 4, top-2."""
    m = config.make_config(**overrides).moe
    assert (m.num_experts, m.num_shared, m.text_experts, m.top_k) == layout


def test_boolean_flags_parse_words_not_truthiness():
    import argparse
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    assert parser.parse_args(["--random-routing", "false"]).random_routing is False
    assert parser.parse_args(["--random-routing", "yes"]).random_routing is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--random-routing", "maybe"])


def test_unknown_preset():
    with pytest.raises(ValueError, match="tiny, small, full"):
        config.make_config("huge")


def test_describe_lists_every_field():
    text = config.describe(config.make_config("tiny"))
    for name in config.flat(config.make_config("tiny")):
        assert name in text


def test_every_flag_has_its_fields_comment_as_help():
    from dataclasses import fields
    for section in config.SECTIONS:
        cls = type(getattr(config.Config(), section))
        comments = config.field_comments(cls)
        assert all(comments.get(f.name) for f in fields(cls)), section
    assert config.field_comments(config.MoEConfig)["top_k"].startswith("experts per token")
