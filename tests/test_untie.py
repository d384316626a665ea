"""Modality-untied attention (--untie-attention modality, Mixture-of-Transformers): text and image
positions use their own copies of the attention projections and norms under one global
attention. Run: pytest -q tests/test_untie.py"""
import pytest
import torch

from minimoe.batches import Batcher
from minimoe.build import build_model
from minimoe.config import make_config
from minimoe.convert import convert_model
from minimoe.data import BuiltinData
from minimoe.losses import task_losses, total_loss
from minimoe.tokenizers import ImageTokenizer
from minimoe.untie import PerModality, tied_name
from minimoe.vq import VQModel
from conftest import micro_config
from test_model import test_kv_cache_decoding_equals_full_forward


def _dense_and_batch(cfg):
    torch.manual_seed(0)
    tok = ImageTokenizer(VQModel(cfg.vq), cfg.vq)
    dense, vocab = build_model(micro_config())
    batch = Batcher(cfg, BuiltinData(16, ("shapes",), "train", 0), vocab, tok)(0)
    return dense.eval(), batch, vocab


def _untied(method="naive"):
    cfg = micro_config(moe=method, num_experts=4, text_experts=2, naive_noise=0.0,
                       untie_attention="modality")
    dense, batch, vocab = _dense_and_batch(cfg)
    model = convert_model(dense, cfg, [batch], torch.Generator().manual_seed(0))
    return dense, model.eval(), batch, cfg, vocab


def test_every_block_has_text_and_image_copies_of_its_attention_and_norms():
    _, model, _, _, _ = _untied()
    for block in model.blocks:
        untied = [block.attn_norm, block.ffn_norm, block.attn.qkv, block.attn.proj,
                  block.attn.q_norm, block.attn.k_norm]
        assert all(isinstance(m, PerModality) for m in untied)
    assert tied_name("blocks.1.attn.qkv.image.weight") == "blocks.1.attn.qkv.weight"


def test_right_after_conversion_the_untied_model_computes_the_dense_model():
    dense, model, batch, _, _ = _untied()
    with torch.no_grad():
        want = dense(batch.tokens_BL, batch.groups_BL).logits_BLV
        got = model(batch.tokens_BL, batch.groups_BL).logits_BLV
    real = batch.tokens_BL != dense.pad_id
    # naive experts without noise are the dense FFN, and both copies are the dense weights
    assert torch.allclose(got[real], want[real], atol=1e-5)
    for name, p in model.named_parameters():
        if ".text." in name or ".image." in name:
            assert torch.equal(p, dense.state_dict()[tied_name(name)]), name


def test_the_kv_cache_of_an_untied_model_equals_a_full_forward():
    _, model, _, cfg, vocab = _untied("random")
    with torch.no_grad():  # move the copies apart, so a mix-up of copies would show
        for name, p in model.named_parameters():
            if ".image." in name:
                p.add_(torch.randn_like(p) * 0.05)
    test_kv_cache_decoding_equals_full_forward(cfg, (model, vocab))


def test_a_text_only_batch_trains_only_the_text_copies():
    _, model, batch, cfg, _ = _untied("random")
    model.train()
    lm = batch.task_B == 2  # text-only rows hold no image position
    tokens, groups = batch.tokens_BL[lm], batch.groups_BL[lm]
    out = model(tokens, groups)
    sub = type(batch)(tokens, groups, batch.labels_BL[lm], batch.task_B[lm], batch.domain_BL[lm])
    total_loss(task_losses(out.logits_BLV, sub), cfg).backward()
    for name, p in model.named_parameters():
        if ".image." in name:
            assert p.grad is None or not p.grad.any(), name
        elif ".text." in name:
            assert p.grad is not None and p.grad.any(), name


def test_untying_without_a_moe_stage_is_refused():
    with pytest.raises(ValueError, match="--untie-attention modality changes the MoE stage"):
        make_config("tiny", untie_attention="modality")
