"""The MoE layer's four steps against their definitions and the per-expert loop twin.
Run: pytest -q tests/test_moe.py"""
import torch

from minimoe.moe import MoE, MoESpec, expert_ffn, grouped_mm, moe_loop, permute, route, unpermute


def test_route_picks_the_top_k_and_renormalises():
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 0.0, 3.0]])
    weights, ids, probs = route(logits, top_k=2)
    assert ids[0].tolist() == [1, 2]
    assert set(ids[1].tolist()) == {0, 3}
    assert torch.allclose(weights.sum(-1), torch.ones(2))
    p = probs[0]
    assert torch.allclose(weights[0], p[[1, 2]] / p[[1, 2]].sum())
    hot = route(logits, 2, temperature=0.1)[0][0]
    assert hot[0] > weights[0, 0], "a low temperature sharpens the weights"


def test_permute_groups_by_expert_then_slot_with_offsets():
    g = torch.Generator().manual_seed(0)
    T, K, E, D = 7, 2, 5, 3
    x = torch.randn(T, D, generator=g)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
    ids[:, :] = ids.clamp(max=3)  # expert 4 gets no tokens: empty experts are legal
    x_ND, slots, offsets = permute(x, ids, E)
    flat = ids.flatten()
    assert offsets[0] == 0 and offsets[-1] == T * K and offsets[4] == offsets[5]
    for e in range(E):
        rows = slots[offsets[e]:offsets[e + 1]]
        assert (flat[rows] == e).all()
        assert torch.equal(rows, rows.sort().values), "ascending slot order within an expert"
    assert torch.equal(x_ND, x[slots // K])
    assert torch.equal(slots.sort().values, torch.arange(T * K)), "every slot exactly once"


def test_unpermute_inverts_permute_with_unit_weights_per_choice():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, generator=g)
    ids = torch.randint(0, 3, (6, 2), generator=g)
    x_ND, slots, _ = permute(x, ids, 3)
    w = torch.full((6, 2), 0.5)
    assert torch.allclose(unpermute(x_ND, slots, w), x)


def test_grouped_mm_equals_per_row_matmul_with_its_experts_weight():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 4, generator=g)
    w = torch.randn(3, 4, 5, generator=g)
    offsets = torch.tensor([0, 4, 4, 9])  # expert 1 empty
    y = grouped_mm(x, w, offsets)
    expert_of_row = torch.tensor([0] * 4 + [2] * 5)
    assert torch.allclose(y, torch.einsum("nd,ndh->nh", x, w[expert_of_row]), atol=1e-6)


def test_moe_equals_the_loop_twin_forward_and_backward():
    torch.manual_seed(0)
    layer = MoE(MoESpec(d_model=8, d_hidden=16, num_experts=4, top_k=2))
    x = torch.randn(2, 5, 8, requires_grad=True)
    y, aux = layer(x)
    x_TD = x.reshape(-1, 8)
    w, ids, _ = route(layer.router(x_TD), 2)
    experts = layer.experts
    ref = moe_loop(x_TD, w, ids, experts.w1_EDH, experts.w2_EHD).view_as(x)
    assert torch.allclose(y, ref, atol=1e-5)
    assert torch.equal(aux.expert_ids_TK, ids)
    g_fast = torch.autograd.grad(y.square().sum(), [x, experts.w1_EDH, layer.router.weight])
    g_ref = torch.autograd.grad(ref.square().sum(), [x, experts.w1_EDH, layer.router.weight])
    for a, b in zip(g_fast, g_ref):
        assert torch.allclose(a, b, atol=1e-4)


def test_expert_ffn_with_one_expert_is_the_dense_ffn():
    from minimoe.model import FFN
    torch.manual_seed(0)
    dense = FFN(8, 16)
    x = torch.randn(5, 8)
    y = expert_ffn(x, dense.w1.weight.T[None], dense.w2.weight.T[None], torch.tensor([0, 5]))
    assert torch.allclose(y, dense(x)[0], atol=1e-6)


def test_balance_loss_is_one_when_balanced_and_larger_when_collapsed():
    from minimoe.moe import balance_loss, z_loss
    E, T = 4, 8
    probs = torch.full((T, E), 1 / E)
    ids = torch.arange(T * 2).view(T, 2) % E
    assert torch.isclose(balance_loss(probs, ids), torch.tensor(1.0))
    collapsed = torch.zeros(T, E)
    collapsed[:, 0] = 1
    assert torch.isclose(balance_loss(collapsed, torch.zeros(T, 1, dtype=torch.long)),
                         torch.tensor(float(E)))
    assert z_loss(torch.zeros(3, E)) == torch.log(torch.tensor(float(E))) ** 2


def test_temperature_changes_weights_but_not_selection_unless_biased_or_sampled():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(50, 6, generator=g)
    w1, ids1, _ = route(logits, 2, temperature=1.0)
    w3, ids3, _ = route(logits, 2, temperature=3.0)
    assert torch.equal(ids1, ids3), "top-k of logits / tau is top-k of logits"
    assert (w3[:, 0] < w1[:, 0]).all(), "a higher temperature evens out the weights"
    bias = torch.tensor([0.0, 0, 0, 0, 0, 1.0])
    _, b1, _ = route(logits, 2, 1.0, bias)
    _, b3, _ = route(logits, 2, 3.0, bias)
    assert not torch.equal(b1, b3), "a selection bias weighs more against flatter logits"
    torch.manual_seed(0)
    _, sampled, _ = route(logits, 2, 1.0, sample=True)
    assert not torch.equal(sampled, ids1), "sampling explores beyond the top-k"
    w_b, ids_b, p_b = route(logits, 2, 1.0, bias)
    assert torch.allclose(w_b, p_b.gather(1, ids_b) / p_b.gather(1, ids_b).sum(1, keepdim=True)), \
        "the selection bias changes the choice, never the weights' formula"


def test_dropped_slots_contribute_zero_and_padding_is_never_routed():
    from minimoe.moe import TokenInfo
    torch.manual_seed(0)
    layer = MoE(MoESpec(8, 16, num_experts=4, top_k=1, capacity_factor=0.25))
    layer.train()
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.bias.copy_(torch.tensor([5.0, 0, 0, 0]))  # every token wants expert 0
    x = torch.randn(1, 16, 8)
    info = TokenInfo(torch.zeros(16, dtype=torch.bool), torch.ones(16, dtype=torch.bool))
    info.valid_T[:2] = False  # two padding tokens
    y, r = layer(x, info)
    # capacity = ceil(0.25 * 14 valid * 1 / 4) = 1 slot for expert 0: the first valid token
    assert r.kept_TK[:, 0].tolist() == [False, False, True] + [False] * 13
    assert (y[0, 3:] == 0).all() and (y[0, :2] == 0).all(), "dropped: zero, not the input"
    want = moe_loop(x[0, 2:3], torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long),
                    layer.experts.w1_EDH, layer.experts.w2_EHD)
    assert torch.allclose(y[0, 2:3], want, atol=1e-6)
    layer.eval()
    assert layer(x, info)[1].kept_TK[2:].all(), "inference is dropless"


def test_capacity_keeps_first_choices_before_second_choices():
    from minimoe.moe import within_capacity
    ids = torch.tensor([[1, 0], [0, 1], [0, 1]])
    kept = within_capacity(ids, torch.ones(3, 2, dtype=torch.bool), 2, limit=2)
    # expert 0: first choices of tokens 1, 2 fill it; token 0's second choice is dropped
    assert kept.tolist() == [[True, False], [True, True], [True, False]]


def test_random_routing_is_unbiased_for_the_deterministic_top2_output():
    from minimoe.moe import random_second
    torch.manual_seed(0)
    weights = torch.tensor([[0.8, 0.2], [0.5, 0.5]]).repeat(20000, 1)
    kept = torch.ones_like(weights, dtype=torch.bool)
    w, k = random_second(weights, kept)
    assert abs(k[0::2, 1].float().mean().item() - 0.4) < 0.02, "kept with probability 2 g2"
    assert k[1::2, 1].all(), "2 g2 >= 1: always kept"
    assert torch.allclose((w * k)[0::2].mean(0), torch.tensor([0.8, 0.2]), atol=0.01)
    assert (w[:, 0] == weights[:, 0]).all()
