"""Cost accounting: the FLOPs formula of cost.py against a count of every matmul a training
step runs, and active parameters against the modules a token passes through.
Run: pytest -q tests/test_cost.py"""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from minimoe import cost
from minimoe.build import build_model
from conftest import micro_config


def _forward_backward_flops(cfg) -> tuple[int, int]:
    """(FLOPs counted by torch over one forward + backward, tokens) on a batch without padding."""
    torch.manual_seed(0)
    model, vocab = build_model(cfg)
    model.train()
    B, L = 3, cfg.seq_len
    text = torch.randint(0, 256, (B, L // 2))
    codes = torch.randint(vocab.image_offset, vocab.image_offset + vocab.codes, (B, L - L // 2))
    tokens = torch.cat([text, codes], 1)  # no padding: every position costs the same
    groups = torch.arange(L).expand(B, -1)
    # The math kernel runs attention as batched matmuls, which the counter sees; the fused
    # kernel computes the same products out of its sight.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(tokens, groups)
        out.logits_BLV.float().square().mean().backward()
    return counter.get_total_flops(), B * L


@pytest.mark.parametrize("moe", [dict(moe="none"),
                                 dict(moe="taylor", num_experts=4, text_experts=2),
                                 dict(moe="naive", num_experts=4, top_k=1, moe_layers="last:1"),
                                 dict(moe="random", num_experts=6, num_shared=2,
                                      untie_attention="modality")])
def test_training_flops_per_token_match_the_counted_matmuls(moe):
    # the formula leaves out the grid convolution (9 d an image code: a norm's order), and
    # the rows here hold no whole image grid
    cfg = micro_config(moe_backend="torch", image_pos="rotary2d", **moe)
    counted, tokens = _forward_backward_flops(cfg)
    assert counted == cost.train_flops_per_token(cfg) * tokens


def test_active_parameters_leave_out_unchosen_experts_and_the_other_modality_s_copy():
    dense_cfg = micro_config()
    dense = build_model(dense_cfg)[0]
    V, d = dense.embed.weight.shape
    assert cost.active_params(dense, dense_cfg) == dense.num_params() - (V - 1) * d
    cfg = micro_config(moe="naive", num_experts=4, top_k=1)
    model = build_model(cfg)[0]
    expert = 2 * d * cfg.model.d_ffn
    extra_router = sum(layer.router.weight.numel() + layer.router.bias.numel()
                       for _, layer in model.moe_layers())
    # one of four copies of the dense FFN is active: the dense count plus the routers
    assert cost.active_params(model, cfg) == cost.active_params(dense, dense_cfg) + extra_router
    assert model.num_params() - dense.num_params() == 3 * expert * cfg.model.n_layers + extra_router
    untied_cfg = micro_config(moe="naive", num_experts=4, top_k=1, untie_attention="modality")
    untied = build_model(untied_cfg)[0]
    assert untied.num_params() > model.num_params()
    assert cost.active_params(untied, untied_cfg) == cost.active_params(model, cfg)


def test_stage_costs_add_up_the_stretches_of_a_resumed_stage():
    cfg = micro_config(dense_steps=30)
    log = [{"stage": "dense", "step": 10, "time_s": 5.0, "tok_per_s": 100},
           {"stage": "dense", "step": 20, "time_s": 10.0, "tok_per_s": 100},
           {"stage": "dense", "step": 30, "time_s": 4.0, "tok_per_s": 120}]  # after a resume
    c = cost.stage_costs(log, cfg)["dense"]
    assert c["time_s"] == 14.0 and c["steps"] == 30
    assert c["s_per_step"] == pytest.approx(14 / 30, abs=1e-4)
    rows = cfg.train.batch_t2i + cfg.train.batch_mmu + cfg.train.batch_lm
    assert c["train_flops"] == 30 * rows * cfg.seq_len * cost.train_flops_per_token(cfg), \
        "a log that did not count its tokens: a row per sample"
    counted = [dict(r, tokens=n) for r, n in zip(log, (500, 1000, 380))]
    c = cost.stage_costs(counted, cfg)["dense"]
    assert c["train_flops"] == (1000 + 380) * cost.train_flops_per_token(cfg)
    assert c["tokens_per_step"] == pytest.approx(1380 / 30, abs=0.05)
