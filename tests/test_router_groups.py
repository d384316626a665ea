"""Modality routing groups (--router-groups modality, MoMa-style): every token routes inside its
own modality's experts, and balance is measured per group.
Run: pytest -q tests/test_router_groups.py"""
import pytest
import torch

from minimoe.build import build_model
from minimoe.config import make_config
from minimoe.metrics import RoutingStats
from minimoe.moe import MoE, MoESpec, Routing, TokenInfo
from minimoe.routing import router_losses, top_shares, update_selection_bias
from conftest import micro_config

GROUPS = (3, 5)  # experts 0-2 serve text, 3-7 images


def _info(T: int, seed: int = 0) -> TokenInfo:
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(T, generator=g) > 0.1
    return TokenInfo(torch.rand(T, generator=g) > 0.4, valid)


def _layer(groups, **extra) -> MoE:
    torch.manual_seed(0)
    return MoE(MoESpec(8, 16, num_experts=8, top_k=2, groups=groups, **extra))


def test_no_token_leaves_its_group_even_when_a_foreign_expert_is_favoured():
    layer = _layer(GROUPS, sample=True, capacity_factor=2.0)
    layer.train()
    with torch.no_grad():
        layer.selection_bias_E[3] = 1e4  # an image expert every text token would otherwise take
        layer.router.bias[0] = 1e4  # and a text expert every image token would take
    info = _info(300)
    _, r = layer(torch.randn(1, 300, 8), info)
    text, image = ~info.image_T, info.image_T
    assert (r.expert_ids_TK[text] < 3).all() and (r.expert_ids_TK[image] >= 3).all()
    assert (r.probs_TE[text][:, 3:] == 0).all() and (r.probs_TE[image][:, :3] == 0).all()
    assert torch.allclose(r.probs_TE.sum(1), torch.ones(300)), "a softmax over the own group"


def test_one_group_of_every_expert_is_the_ungrouped_layer():
    grouped, plain = _layer((8,), capacity_factor=1.0), _layer((), capacity_factor=1.0)
    plain.load_state_dict(grouped.state_dict())
    info, x = _info(64, seed=1), torch.randn(2, 32, 8, requires_grad=True)
    for mode in (False, True):
        grouped.train(mode), plain.train(mode)
        (y1, r1), (y2, r2) = grouped(x, info), plain(x, info)
        assert torch.equal(y1, y2) and torch.equal(r1.expert_ids_TK, r2.expert_ids_TK)
        assert torch.equal(r1.kept_TK, r2.kept_TK)
        assert torch.equal(router_losses([r1])["balance"], router_losses([r2])["balance"])


def _balanced_routing() -> Routing:
    """2 text tokens spread over experts 0-1, 6 image tokens over 2-3, each with uniform
    probabilities inside its group: balanced in each group, though not globally."""
    image = torch.tensor([False, False] + [True] * 6)
    ids = torch.tensor([[0], [1], [2], [3], [2], [3], [2], [3]])
    probs = torch.where(image[:, None], torch.tensor([0, 0, 0.5, 0.5]),
                        torch.tensor([0.5, 0.5, 0, 0]))
    return Routing(torch.zeros(8, 4), probs, ids, torch.ones(8, 1, dtype=torch.bool),
                   TokenInfo(image, torch.ones(8, dtype=torch.bool)), (2, 2))


def test_per_group_balance_loss_is_one_when_each_group_is_balanced():
    r = _balanced_routing()
    assert torch.isclose(router_losses([r, None])["balance"], torch.tensor(1.0))
    r.groups = ()
    assert router_losses([r])["balance"] > 1.2, "globally the image experts carry 3x the load"
    r = _balanced_routing()
    r.expert_ids_TK[2:] = 2  # the image group collapses onto expert 2
    r.probs_TE[2:] = torch.tensor([0, 0, 1.0, 0])
    assert torch.isclose(router_losses([r])["balance"], torch.tensor(1.5)), "mean of 1 and 2"


def test_statistics_measure_balance_inside_each_group():
    stats = RoutingStats([0], 4, ["a"])
    stats.add([_balanced_routing()])
    layer = stats.summary()["layer0"]
    assert layer["max_violation"] == 0 and layer["load_entropy"] == 1
    assert layer["modality_nmi"] == 1.0
    assert top_shares([_balanced_routing()], 4) == [0.5]
    collapsed = _balanced_routing()
    collapsed.expert_ids_TK[2:] = 2  # all image tokens on one expert: 6 of 8 tokens overall
    assert top_shares([collapsed], 4) == [1.0], "the collapse is measured inside its group"


class _OneLayer:
    """What update_selection_bias needs of a Transformer."""

    def __init__(self, layer: MoE):
        self.layer = layer

    def moe_layers(self):
        return [(0, self.layer)]


def test_capacity_and_the_aux_free_bias_compare_an_expert_with_its_own_group():
    layer = _layer(GROUPS, capacity_factor=1.0)
    info = TokenInfo(torch.tensor([False] * 30 + [True] * 90), torch.ones(120, dtype=torch.bool))
    limits = layer.capacities(info)
    assert limits[:3].tolist() == [20] * 3 and limits[3:].tolist() == [36] * 5  # T_g * 2 / E_g
    model = _OneLayer(MoE(MoESpec(8, 4, num_experts=4, top_k=1, groups=(2, 2))))
    update_selection_bias(model, [_balanced_routing()], rate=0.1)
    assert model.layer.selection_bias_E.tolist() == [0, 0, 0, 0], "balanced within each group"
    skewed = _balanced_routing()
    skewed.expert_ids_TK[2:] = 2
    update_selection_bias(model, [skewed], rate=0.1)
    assert model.layer.selection_bias_E.tolist() == pytest.approx([0, 0, -0.1, 0.1])


def test_a_grouped_model_routes_text_and_image_positions_to_their_experts():
    cfg = micro_config(moe="random", num_experts=4, text_experts=2, top_k=1,
                       router_groups="modality")
    torch.manual_seed(0)
    model, vocab = build_model(cfg)
    tokens = torch.randint(0, vocab.size - 1, (2, cfg.seq_len))
    groups = torch.arange(cfg.seq_len).expand(2, -1)
    out = model(tokens, groups)
    image = (tokens >= vocab.image_offset).flatten()
    for r in out.routing:
        assert (r.expert_ids_TK[image] >= 2).all() and (r.expert_ids_TK[~image] < 2).all()


def test_a_group_smaller_than_top_k_is_refused():
    with pytest.raises(ValueError, match="the text group has 1 and the image group 7 experts"):
        make_config("tiny", moe="random", router_groups="modality", text_experts=1)
    with pytest.raises(ValueError, match="at least top_k"):
        MoE(MoESpec(8, 4, num_experts=4, top_k=2, groups=(1, 3)))
