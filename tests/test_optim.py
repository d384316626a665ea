"""Muon with AdamW (minimoe/optim.py): the Newton-Schulz iteration finds the orthogonal
factor, the AdamW part is torch's AdamW, the Muon update has AdamW's RMS, and the split puts
exactly the blocks' matrices under Muon.  Run: pytest -q tests/test_optim.py"""
import pytest
import torch

from minimoe.build import build_model
from minimoe.optim import RMS_MATCH, MuonAdamW, orthogonalize, uses_muon
from minimoe.trainer import make_optimizer
from conftest import micro_config


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (3, 32, 24)])
def test_orthogonalize_approximates_the_polar_factor(shape):
    torch.manual_seed(0)
    G = torch.randn(shape)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    O = orthogonalize(G)
    assert O.shape == G.shape and O.dtype == G.dtype
    # The quintic trades exactness for speed: singular values land near 1, not on it.
    s = torch.linalg.svdvals(O)
    assert s.min() > 0.5 and s.max() < 1.5, s
    cos = (O * (U @ Vh)).sum((-2, -1)) / (O.norm(dim=(-2, -1)) * (U @ Vh).norm(dim=(-2, -1)))
    assert (cos > 0.95).all(), cos


def test_orthogonalize_treats_a_stack_as_separate_matrices():
    torch.manual_seed(0)
    G = torch.randn(3, 20, 12)
    G[1] *= 100  # a scale per matrix, not one over the stack
    stacked = orthogonalize(G)
    for i in range(3):
        assert torch.allclose(stacked[i], orthogonalize(G[i]), atol=2e-2)


def test_the_adamw_groups_step_exactly_as_torch_adamw():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(10, 5))
    b = torch.nn.Parameter(a.detach().clone())
    reference = torch.optim.AdamW([a], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.05)
    ours = MuonAdamW([{"params": [b], "weight_decay": 0.05}], lr=1e-2)
    for _ in range(5):
        g = torch.randn(10, 5)
        a.grad, b.grad = g.clone(), g.clone()
        reference.step(), ours.step()
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (4, 16, 64)])
def test_a_muon_update_has_adamws_rms(shape):
    """0.2 sqrt(max(m, n)) x an orthogonal update (RMS 1 / sqrt(max(m, n))) moves each weight
    by about 0.2 lr, what AdamW moves it by, whatever the gradient's scale."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(shape))
    opt = MuonAdamW([{"params": [p], "muon": True}], lr=1e-2)
    p.grad = 1e3 * torch.randn(shape)
    opt.step()
    rms = p.detach().pow(2).mean().sqrt().item()
    assert 0.6 * RMS_MATCH * 1e-2 < rms < 1.3 * RMS_MATCH * 1e-2


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    for moe in ("none", "taylor"):
        cfg = micro_config(optimizer="muon", moe=moe)
        model, _ = build_model(cfg)
        opt = make_optimizer(model, cfg)
        muon = {id(p) for g in opt.param_groups if g["muon"] for p in g["params"]}
        names = {n for n, p in model.named_parameters() if id(p) in muon}
        assert names and all(n.startswith("blocks.") for n in names)
        assert not any("norm" in n or "conv" in n or "router" in n for n in names), names
        linears = {f"{n}.weight" for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and n.startswith("blocks.")
                   and "router" not in n}
        assert linears <= names, linears - names
        assert sum(len(g["params"]) for g in opt.param_groups) == \
            sum(1 for p in model.parameters() if p.requires_grad)
        assert uses_muon("blocks.0.attn.qkv.weight", torch.zeros(3, 3))
        assert not uses_muon("embed.weight", torch.zeros(3, 3))
