"""Dense-to-MoE conversion: Taylor scores are the first-order change of the task loss when a
neuron's activation is scaled.  Run: pytest -q tests/test_convert.py"""
import pytest
import torch
import torch.nn.functional as F

from minimoe.batches import Batcher
from minimoe.build import build_model
from minimoe.convert import IMAGE_TASKS, TEXT_TASKS, taylor_scores
from minimoe.data import BuiltinData
from minimoe.tokenizers import ImageTokenizer
from minimoe.sequences import IGNORE, TASKS
from minimoe.vq import VQModel
from conftest import micro_config


def _setup(**overrides):
    cfg = micro_config(**overrides)
    torch.manual_seed(0)
    tok = ImageTokenizer(VQModel(cfg.vq), cfg.vq)
    model, vocab = build_model(cfg)
    model.double()
    batch = Batcher(cfg, BuiltinData(16, ("shapes",), "train", 0), vocab, tok)(0)
    return model, batch


def _task_loss(model, batch, tasks):
    """task_losses' definition, kept in float64 so that a 1e-4 change of a neuron shows."""
    logits = model(batch.tokens_BL, batch.groups_BL).logits_BLV
    sel = batch.labels_BL != IGNORE
    ce = F.cross_entropy(logits[sel], batch.labels_BL[sel], reduction="none")
    task = batch.task_B[:, None].expand_as(batch.labels_BL)[sel]
    return sum(ce[task == TASKS.index(t)].mean() for t in tasks)


def test_scores_match_the_loss_change_when_a_neuron_is_scaled():
    model, batch = _setup()
    for tasks in (IMAGE_TASKS, TEXT_TASKS):
        scores = taylor_scores(model, [batch], tasks)
        assert len(scores) == len(model.blocks) and scores[0].shape == (64,)
        w2 = model.blocks[1].ffn.w2.weight
        eps = 1e-4
        for j in (0, 7, 33):
            col = w2.data[:, j].clone()
            with torch.no_grad():
                w2[:, j] = col * (1 + eps)
                up = _task_loss(model, batch, tasks)
                w2[:, j] = col * (1 - eps)
                down = _task_loss(model, batch, tasks)
                w2[:, j] = col
            first_order = abs(float(up - down) / (2 * eps))
            assert abs(first_order - float(scores[1][j])) <= 1e-3 * first_order + 1e-7


def test_per_token_scores_bound_the_summed_ones_and_absent_tasks_score_zero():
    model, batch = _setup()
    summed = taylor_scores(model, [batch], IMAGE_TASKS)
    per_token = taylor_scores(model, [batch], IMAGE_TASKS, per_token=True)
    assert all((p >= s - 1e-6).all() for p, s in zip(per_token, summed))
    batch.task_B[:] = 2  # every row now counts as LM: no T2I rows
    batch.labels_BL[:] = -100
    assert all((s == 0).all() for s in taylor_scores(model, [batch], IMAGE_TASKS))
    assert not any(h for b in model.blocks for h in b.ffn.w2._forward_pre_hooks.values())


def _dense():
    from minimoe.model import FFN
    torch.manual_seed(0)
    return FFN(8, 24), torch.randn(10, 8)


def test_random_and_taylor_layers_with_all_experts_on_compute_the_dense_ffn():
    from minimoe.convert import moe_from_dense
    dense, x = _dense()
    g = torch.Generator().manual_seed(0)
    scores = (torch.rand(24, generator=g), torch.rand(24, generator=g))
    for method in ("random", "taylor"):
        moe = moe_from_dense(dense, method, num_experts=4, top_k=2, num_shared=2, generator=g,
                             scores=scores)
        assert sum(p.numel() for n, p in moe.named_parameters() if "router" not in n) == \
            sum(p.numel() for p in dense.parameters()), "same parameter count"
        assert torch.allclose(moe.all_experts(x), dense(x)[0], atol=1e-5), method
        y, aux = moe(x[None])
        assert y.shape == (1, 10, 8) and aux.expert_ids_TK.shape == (10, 2)


def test_naive_experts_are_noisy_copies_of_the_dense_ffn():
    from minimoe.convert import moe_from_dense
    dense, x = _dense()
    moe = moe_from_dense(dense, "naive", 4, 2, 0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        y, want = moe(x[None])[0][0], dense(x)[0]
    # every expert ~ the dense FFN and the top-k weights sum to 1: the layer ~ the dense FFN
    assert torch.allclose(y, want, atol=0.05 * float(want.abs().max()))
    assert not torch.equal(moe.experts.w1_EDH[0], moe.experts.w1_EDH[1]), \
        "noise breaks the symmetry"


def test_drop_upcycling_keeps_dense_neurons_and_refreshes_a_different_share_per_expert():
    from minimoe.convert import init_experts_
    from minimoe.moe import MoE, MoESpec
    dense, _ = _dense()
    torch.manual_seed(1)
    moe = MoE(MoESpec(8, 24, num_experts=4, top_k=2))
    fresh = [w.detach().clone() for w in (moe.experts.w1_EDH, moe.experts.w2_EHD)]
    init_experts_(moe, dense, "drop", torch.Generator().manual_seed(0), drop_ratio=0.25)
    w1_DH, w2_HD = dense.w1.weight.T, dense.w2.weight.T
    refreshed = []
    for e in range(4):
        w1, w2 = moe.experts.w1_EDH[e], moe.experts.w2_EHD[e]
        kept_H = (w1 == w1_DH).all(0)
        assert torch.equal(kept_H, (w2 == w2_HD).all(1)), "a neuron is kept or dropped whole"
        assert int((~kept_H).sum()) == 6, "round(0.25 * 24) neurons start fresh"
        assert torch.equal(w1[:, ~kept_H], fresh[0][e][:, ~kept_H])
        assert torch.equal(w2[~kept_H], fresh[1][e][~kept_H])
        refreshed.append(frozenset((~kept_H).nonzero()[:, 0].tolist()))
    assert len(set(refreshed)) == 4, "each expert refreshes its own neurons"


def test_drop_with_ratio_zero_is_naive_upcycling_without_noise():
    _, naive, batch, _ = _converted("naive", naive_noise=0.0)
    _, drop, _, _ = _converted("drop", drop_ratio=0.0)
    for (_, a), (_, b) in zip(naive.moe_layers(), drop.moe_layers()):
        assert torch.equal(a.experts.w1_EDH, b.experts.w1_EDH)
        assert torch.equal(a.experts.w2_EHD, b.experts.w2_EHD)
        assert float(b.expert_scale) == 1.0


def test_conversion_refuses_bad_requests():
    import pytest
    from minimoe.convert import moe_from_dense
    dense, _ = _dense()
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="use none or one of"):
        moe_from_dense(dense, "magic", 4, 2, 0, g)
    with pytest.raises(ValueError, match="Taylor scores"):
        moe_from_dense(dense, "taylor", 4, 2, 0, g)
    with pytest.raises(ValueError, match="equal experts"):
        moe_from_dense(dense, "random", 5, 2, 0, g)
    for method in ("naive", "drop"):
        with pytest.raises(ValueError, match="--num-shared 0"):
            moe_from_dense(dense, method, 4, 2, 1, g)


def test_random_groups_partition_the_neurons():
    from minimoe.convert import random_groups
    groups = random_groups(24, 4, torch.Generator().manual_seed(0))
    assert [len(g) for g in groups] == [6] * 4
    assert torch.equal(torch.cat(groups).sort().values, torch.arange(24))


def test_taylor_groups_partition_neurons_by_importance():
    from minimoe.convert import taylor_groups
    g = torch.Generator().manual_seed(1)
    text, image = torch.rand(24, generator=g), torch.rand(24, generator=g)
    text[:4] += 10  # neurons 0-3 matter to text only
    image[4:8] += 10  # 4-7 to images only
    text[8:12] += 10
    image[8:12] += 10  # 8-11 to both
    groups = taylor_groups(text, image, n_text=2, n_image=3, n_shared=1)
    flat = torch.cat(groups["text"] + groups["image"] + groups["shared"])
    assert torch.equal(flat.sort().values, torch.arange(24)), "a partition"
    assert set(groups["text"][0].tolist()) == {0, 1, 2, 3}
    assert set(groups["image"][0].tolist()) == {4, 5, 6, 7}
    assert set(groups["shared"][0].tolist()) == {8, 9, 10, 11}


def _converted(method, image_pos="rotary2d", **overrides):
    from minimoe.config import make_config
    from minimoe.convert import convert_model
    dense, batch = _setup(image_pos=image_pos)
    dense = dense.float()
    base = micro_config(image_pos=image_pos)
    cfg = make_config("tiny", **{**{k: v for k, v in _flat(base).items()}, "moe": method,
                                 "num_experts": 4, "text_experts": 2, **overrides})
    model = convert_model(dense, cfg, [batch], torch.Generator().manual_seed(0))
    return dense, model, batch, cfg


def _flat(cfg):
    from minimoe.config import flat
    return flat(cfg)


def test_naive_model_reproduces_the_dense_model_right_after_conversion():
    dense, model, batch, _ = _converted("naive", naive_noise=0.0)
    with torch.no_grad():
        want = dense(batch.tokens_BL, batch.groups_BL).logits_BLV
        got = model(batch.tokens_BL, batch.groups_BL).logits_BLV
    real = batch.tokens_BL != dense.pad_id  # padding is never routed (and never attended to)
    assert torch.allclose(got[real], want[real], atol=1e-5)
    assert torch.equal(model.embed.weight, dense.embed.weight), "non-FFN weights are copied"


@pytest.mark.parametrize("image_pos", ["rotary2d", "rotary2d+conv"])
def test_split_models_with_every_expert_on_reproduce_the_dense_model(image_pos):
    """Also with a grid convolution in every block, which the conversion copies."""
    for method in ("random", "taylor"):
        dense, model, batch, _ = _converted(method, image_pos, num_shared=0)
        for (i, layer) in model.moe_layers():
            layer.top_k = layer.num_experts  # every expert, and weight 1 each:
            layer.expert_scale.fill_(layer.num_experts)  # weights are 1/E, times E
            with torch.no_grad():
                layer.router.weight.zero_()
                layer.router.bias.zero_()
        with torch.no_grad():
            want = dense(batch.tokens_BL, batch.groups_BL).logits_BLV
            got = model(batch.tokens_BL, batch.groups_BL).logits_BLV
        real = batch.tokens_BL != dense.pad_id
        assert torch.allclose(got[real], want[real], atol=1e-4), method


def test_taylor_probe_init_sends_text_to_text_experts_and_images_to_image_experts():
    def own_kind_share(model, batch):
        """Per layer: share of valid tokens routed to an expert of their own modality."""
        with torch.no_grad():
            routing = model(batch.tokens_BL, batch.groups_BL).routing
        shares = []
        for r in routing:
            text_expert = r.expert_ids_TK[:, 0] < 2
            own = text_expert == ~r.info.image_T
            shares.append(own[r.info.valid_T].float().mean().item())
        return shares
    _, probed, batch, _ = _converted("taylor", top_k=1)
    _, plain, _, _ = _converted("taylor", top_k=1, taylor_router_init=False)
    # an untrained micro model is only roughly linearly separable by modality: 0.8 not 1.0
    assert all(s > 0.8 for s in own_kind_share(probed, batch)), own_kind_share(probed, batch)
    assert not all(s > 0.8 for s in own_kind_share(plain, batch)), "the probe makes the split"


def test_only_the_chosen_layers_become_moe():
    _, model, _, _ = _converted("random", moe_layers="last:1")
    assert [i for i, _ in model.moe_layers()] == [1]
