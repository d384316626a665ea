"""Router training: schedules, losses, aux-loss-free balancing, statistics, and an exactly
resumable MoE stage.  Run: pytest -q tests/test_routing.py"""
import torch

from minimoe import checkpoint
from minimoe.convert import prior_init_
from minimoe.metrics import RoutingStats, group_nmi
from minimoe.moe import MoE, MoESpec, Routing, TokenInfo
from minimoe.routing import (RouterTraining, describe_schedule, router_losses, schedule,
                             update_selection_bias)
from conftest import micro_config


def test_schedules_run_from_start_to_end_and_the_prior_is_gone_after_annealing():
    cfg = micro_config(moe="random", moe_steps=100, anneal_steps=40, router_temp_start=3.0,
                       router_temp_end=1.0, balance_start=0.02, balance_end=0.0,
                       anneal_shape="linear", router_prior="modality")
    start, mid, end, later = (schedule(cfg, s) for s in (0, 20, 40, 90))
    assert (start.temperature, start.alpha, start.prior) == (3.0, 0.02, 1.0)
    assert abs(mid.temperature - 2.0) < 1e-9 and abs(mid.alpha - 0.01) < 1e-9
    assert (end.temperature, end.alpha, end.prior) == (1.0, 0.0, 0.0) == \
        (later.temperature, later.alpha, later.prior)
    assert "step     40: tau 1.000  alpha 0.0000  prior 0.000" in describe_schedule(cfg)


def test_annealed_prior_bias_favours_chosen_experts_then_vanishes():
    torch.manual_seed(0)
    layer = MoE(MoESpec(8, 4, num_experts=4, top_k=1, prior="modality", prior_groups=2))
    prior_init_(layer, "modality", strength=20.0, text_experts=2, num_domains=3)
    x = torch.randn(1, 6, 8)
    image = torch.tensor([False, False, False, True, True, True])
    info = TokenInfo(image, torch.ones(6, dtype=torch.bool))
    layer.prior_scale.fill_(1.0)
    ids = layer(x, info)[1].expert_ids_TK[:, 0]
    assert (ids[:3] < 2).all() and (ids[3:] >= 2).all(), "text -> 0,1; image -> 2,3"
    layer.prior_scale.fill_(0.0)  # the schedule's value after annealing
    assert torch.equal(layer(x, info)[1].logits_TE, layer.router(x[0]))


def test_domain_prior_gives_each_domain_a_block_of_experts():
    layer = MoE(MoESpec(8, 4, num_experts=6, top_k=1, prior="domain", prior_groups=4))
    prior_init_(layer, "domain", 1.0, text_experts=3, num_domains=3)
    assert layer.prior_GE.tolist() == [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0],
                                       [0, 0, 0, 0, 1, 1], [0] * 6]


def _routing(ids, image, E=4):
    T = ids.shape[0]
    probs = torch.nn.functional.one_hot(ids[:, 0], E).float()
    return Routing(torch.zeros(T, E), probs, ids, torch.ones_like(ids, dtype=torch.bool),
                   TokenInfo(image, torch.ones(T, dtype=torch.bool)))


def test_per_modality_balance_sees_what_the_global_loss_hides():
    # 2 text tokens on expert 0 and 6 image tokens spread over 1..3: globally near-even,
    # but the text tokens alone are fully collapsed.
    ids = torch.tensor([[0], [0], [1], [2], [3], [1], [2], [3]])
    image = torch.tensor([False, False] + [True] * 6)
    r = _routing(ids, image)
    glob = router_losses([r], "global")["balance"]
    per = router_losses([r, None], "modality")["balance"]
    assert glob < per
    assert torch.isclose(per, torch.tensor((4.0 + 4 / 3) / 2)), "mean of text (E) and image"


def test_aux_free_bias_moves_a_skewed_router_toward_balance():
    torch.manual_seed(0)
    layer = MoE(MoESpec(8, 4, num_experts=4, top_k=1))
    with torch.no_grad():
        layer.router.bias.copy_(torch.tensor([1.0, 0.5, 0.0, -0.5]))  # skewed to expert 0

    class Model:  # what update_selection_bias needs of a Transformer
        def moe_layers(self):
            return [(0, layer)]
    model, x = Model(), torch.randn(1, 512, 8)

    def max_load():
        r = layer(x)[1]
        return torch.bincount(r.expert_ids_TK.flatten(), minlength=4).max().item() / 128, r
    before, r = max_load()
    for _ in range(200):
        update_selection_bias(model, [r], rate=0.01)
        after, r = max_load()
    assert before > 1.5 and after < 1.15, (before, after)
    assert layer.selection_bias_E[0] < 0 < layer.selection_bias_E[3]


def test_group_nmi_is_one_for_separated_groups_and_zero_for_identical_ones():
    assert abs(group_nmi([[5, 5, 0, 0], [0, 0, 1, 3]]) - 1) < 1e-9
    assert abs(group_nmi([[1, 2, 3, 4], [10, 20, 30, 40]])) < 1e-9, "group sizes do not matter"
    assert 0 < group_nmi([[3, 1], [1, 3]]) < 1
    assert group_nmi([[1, 1], [0, 0]]) == 0.0, "one non-empty group: nothing to separate"


def test_routing_stats_count_modality_and_domain_shares():
    stats = RoutingStats([1], 4, ["a", "b"])
    ids = torch.tensor([[0, 1], [0, 1], [2, 3], [2, 3]])
    r = _routing(ids, torch.tensor([False, False, True, True]))
    r.info.domain_T = torch.tensor([0, 1, 0, 1])
    r.kept_TK[3, 1] = False
    stats.add([None, r])
    s = stats.summary()["layer1"]
    assert s["text"] == [0.5, 0.5, 0, 0] and s["image"] == [0, 0, 0.5, 0.5]
    assert s["modality_nmi"] == 1.0 and s["domain_nmi"] == 0.0
    assert s["drop_rate"] == 0.125 and s["max_violation"] == 0.0 and s["load_entropy"] == 1.0
    assert s["pure_experts"] == 4, "every expert serves one modality"
    assert set(s["domains"]) == {"a", "b"}, "empty domains are left out"


def _moe_run(tmp_path, cfg):
    from minimoe.batches import Batcher
    from minimoe.build import build_model
    from minimoe.data import BuiltinData
    from minimoe.run import RunWriter
    from minimoe.tokenizers import ImageTokenizer
    from minimoe.vq import VQModel
    torch.manual_seed(0)
    tok = ImageTokenizer(VQModel(cfg.vq), cfg.vq)
    model, vocab = build_model(cfg)
    files = RunWriter(tmp_path, cfg, tok, vocab)
    tmp_path.mkdir(exist_ok=True)
    return model, Batcher(cfg, BuiltinData(16, ("shapes", "glyphs"), "train", 0), vocab, tok), \
        tok, files


def test_moe_stage_resumes_with_identical_losses(tmp_path):
    """Random routing, sampling and aux-free biases all restart exactly from a checkpoint."""
    import pytest
    from minimoe.run import shard_for_training
    from minimoe.trainer import fit
    cfg = micro_config(moe="random", num_experts=4, moe_steps=8, ckpt_every=4, sample_every=4,
                       random_routing=True, router_sample=True, aux_free_rate=0.01,
                       router_prior="domain", domains="shapes,glyphs")
    cpu = torch.device("cpu")

    def run(folder, start=0, payload=None, stop_at=None):
        model, batcher, tok, files = _moe_run(folder, cfg)
        optimizer = None
        if payload:
            model.load_state_dict(payload["model"])
            optimizer = shard_for_training(model, cfg, payload)  # one process: no sharding

        def crash(step):
            if step == stop_at:
                raise KeyboardInterrupt
        return model, files, fit(model, cfg, files, "moe", 8, batcher, cpu, start, optimizer,
                                 on_sample=crash, progress=False,
                                 router=RouterTraining(model, cfg), peak_lr=cfg.train.moe_lr)

    _, _, full = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop_at=4)
    payload = checkpoint.load(tmp_path / "b" / "ckpt.pt")
    assert payload["step"] == 4
    assert payload["model"]["blocks.0.ffn.selection_bias_E"].abs().sum() > 0
    _, _, rest = run(tmp_path / "b", 4, payload)
    assert [r["loss"] for r in full[4:]] == [r["loss"] for r in rest]
    assert "routing" in rest[0] and "balance" in rest[0] and "tau" in rest[0]
