"""The transformer: shapes, the mask's effect on outputs, KV-cache decoding equals a full
forward, padding invariance.  Run: pytest -q tests/test_model.py"""
import math

import pytest
import torch

from minimoe.model import KVCache, apply_rotary, rotary
from minimoe.sequences import PAD_GROUP, lm_rows, mmu_prefix, mmu_row, t2i_row


def test_logits_shape_and_aux_per_layer(cfg, model_and_vocab):
    model, v = model_and_vocab
    tokens, groups, _ = t2i_row([104, 105], [v.mask] * cfg.image_tokens, v, cfg.data.text_len)
    out = model(torch.tensor([tokens]), torch.tensor([groups]))
    assert out.logits_BLV.shape == (1, cfg.seq_len, v.size)
    assert len(out.routing) == cfg.model.n_layers


def test_the_head_at_picked_positions_gives_the_full_heads_rows(cfg, model_and_vocab):
    """at_BL computes logits only where it is True: the same rows as the full head's, in
    row-major order, and nothing else."""
    model, v = model_and_vocab
    rows = [t2i_row([104 + i], [v.image_offset + i] * cfg.image_tokens, v, cfg.data.text_len)
            for i in range(3)]
    tokens, groups = (torch.tensor([r[k] for r in rows]) for k in (0, 1))
    at_BL = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    full = model(tokens, groups)
    picked = model(tokens, groups, at_BL=at_BL)
    assert picked.logits_BLV is None and picked.logits_NV.shape == (at_BL.sum(), v.size)
    assert torch.allclose(picked.logits_NV, full.logits_BLV[at_BL], atol=1e-6)


def test_cpu_bf16_autocast_runs_the_projections_in_bf16_and_attention_in_float32(
        cfg, model_and_vocab, monkeypatch):
    """On CPU, bf16 pays only in the matmuls; its attention backward is the slow one, so under
    CPU autocast attention must see float32 queries, keys and values while the projections
    around it still run in bf16."""
    model, v = model_and_vocab
    seen = {"attention": [], "qkv": []}
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, value, **kwargs):
        seen["attention"].append({q.dtype, k.dtype, value.dtype})
        return real(q, k, value, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    hook = model.blocks[0].attn.qkv.register_forward_hook(
        lambda module, inputs, out: seen["qkv"].append(out.dtype))
    tokens, groups, _ = t2i_row([104, 105], [v.mask] * cfg.image_tokens, v, cfg.data.text_len)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.tensor([tokens]), torch.tensor([groups]))
    hook.remove()
    assert seen["qkv"] == [torch.bfloat16]
    assert seen["attention"] == [{torch.float32}] * cfg.model.n_layers
    assert torch.isfinite(out.logits_BLV).all()


def test_rotary_preserves_norm_and_depends_only_on_offsets():
    x = torch.randn(1, 1, 4, 8)
    pos = torch.arange(4)[None]
    cos, sin = rotary(pos, 8, 10000.0)
    y = apply_rotary(x, cos, sin)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    q, k = torch.randn(8), torch.randn(8)
    def dot(pq, pk):
        c, s = rotary(torch.tensor([[pq, pk]]), 8, 10000.0)
        r = apply_rotary(torch.stack([q, k])[None, None], c, s)[0, 0]
        return r[0] @ r[1]
    assert torch.allclose(dot(3, 1), dot(10, 8), atol=1e-5)


def test_text_positions_ignore_the_image_but_image_sees_the_caption(cfg, model_and_vocab):
    """Changing image codes must not change text logits (text is causal and never sees the
    image in T2I); changing the caption must change image logits."""
    model, v = model_and_vocab
    n = cfg.image_tokens
    a = t2i_row([104, 105], [v.image_offset + 1] * n, v, cfg.data.text_len)
    b = t2i_row([104, 105], [v.image_offset + 2] * n, v, cfg.data.text_len)
    c = t2i_row([106, 105], [v.image_offset + 1] * n, v, cfg.data.text_len)
    out = model(torch.tensor([a[0], b[0], c[0]]), torch.tensor([a[1], b[1], c[1]])).logits_BLV
    text = slice(cfg.data.text_len - 5, cfg.data.text_len)  # [t2i] [sot] h i [eot]
    assert torch.allclose(out[0, text], out[1, text], atol=1e-5)
    assert not torch.allclose(out[0, text.stop:], out[2, text.stop:], atol=1e-4)


def test_kv_cache_decoding_equals_full_forward(cfg, model_and_vocab):
    model, v = model_and_vocab
    codes = [v.image_offset + i % v.codes for i in range(cfg.image_tokens)]
    tokens, groups = mmu_prefix(codes, [119, 104, 97, 116], v)
    extra = [32, 114, 101, 100, v.eot]
    full_t = torch.tensor([tokens + extra])
    full_g = torch.tensor([groups + list(range(len(tokens), len(tokens) + len(extra)))])
    full = model(full_t, full_g).logits_BLV
    cache = KVCache(cfg.model.n_layers)
    step = [model(torch.tensor([tokens]), torch.tensor([groups]), cache).logits_BLV[:, -1]]
    for i, t in enumerate(extra[:-1]):
        g = torch.tensor([[len(tokens) + i]])
        step.append(model(torch.tensor([[t]]), g, cache).logits_BLV[:, -1])
    incremental = torch.stack(step, 1)
    assert torch.allclose(incremental, full[:, len(tokens) - 1:-1], atol=1e-5)


def test_left_padding_does_not_change_a_rows_logits(cfg, model_and_vocab):
    model, v = model_and_vocab
    codes = [v.image_offset + 3] * cfg.image_tokens
    tokens, groups = mmu_prefix(codes, [104, 105], v)
    alone = model(torch.tensor([tokens]), torch.tensor([groups])).logits_BLV
    padded = model(torch.tensor([[v.pad] * 5 + tokens]),
                   torch.tensor([[PAD_GROUP] * 5 + groups])).logits_BLV
    assert torch.allclose(alone, padded[:, 5:], atol=1e-5)


def test_a_packed_mmu_turn_computes_what_its_question_alone_computes(cfg, model_and_vocab):
    """Packing questions about one image into a row (--mmu-turns) must not let a turn read
    another's answer: every turn's logits are those of its own single-turn row, which is the
    prompt inference builds."""
    model, v = model_and_vocab
    codes = [v.image_offset + i % v.codes for i in range(cfg.image_tokens)]
    turns = [([119, 104, 63], [114, 101, 100]), ([104, 63], [50]), ([115, 63], [97, 98])]
    seq_len = 3 + len(codes) + sum(len(q) + len(a) + 2 for q, a in turns) + 2
    packed_t, packed_g, _ = mmu_row(codes, turns, v, seq_len)
    packed = model(torch.tensor([packed_t]), torch.tensor([packed_g])).logits_BLV[0]
    at = start = 3 + len(codes)
    for q, a in turns:
        n = len(q) + len(a) + 2
        alone_t, alone_g, _ = mmu_row(codes, [(q, a)], v, seq_len)
        alone = model(torch.tensor([alone_t]), torch.tensor([alone_g])).logits_BLV[0]
        assert torch.allclose(packed[at:at + n], alone[start:start + n], atol=1e-5)
        at += n


def test_packed_texts_compute_what_each_text_alone_in_a_causal_row_computes(
        cfg, model_and_vocab):
    """LM rows pack several texts, one turn each: every text's logits are those of a row that
    holds it alone in the plain causal layout (each position its own group)."""
    model, v = model_and_vocab
    texts = [[104, 105, 106], [107], [108, 109, 110, 111, 112]]
    (packed_row,), (owner,) = lm_rows(texts, v, cfg.seq_len)
    packed = model(torch.tensor([packed_row[0]]), torch.tensor([packed_row[1]])).logits_BLV[0]
    for i, text in enumerate(texts):
        tokens = [v.sot, *text, v.eot]
        alone = model(torch.tensor([tokens]), torch.tensor([list(range(len(tokens)))]))
        at = [p for p, o in enumerate(owner) if o == i][:len(tokens)]
        assert torch.allclose(packed[at], alone.logits_BLV[0], atol=1e-5)


def test_activation_checkpointing_gives_the_same_losses_and_gradients():
    """Recomputing each block in backward (MoE layers, random routing included) changes
    memory, not numbers."""
    from conftest import micro_config
    from minimoe.build import build_model
    from minimoe.routing import RouterTraining
    grads = []
    for recompute in (False, True):
        # random ids hold no whole image grid, so no grid convolution would get a gradient
        cfg = micro_config(moe="random", num_experts=4, random_routing=True,
                           activation_checkpointing=recompute, image_pos="rotary2d")
        torch.manual_seed(0)
        model, vocab = build_model(cfg)
        model.double().train()
        tokens = torch.randint(0, vocab.size, (3, 20))
        groups = torch.arange(20).repeat(3, 1)
        torch.manual_seed(1)
        out = model(tokens, groups)
        router = RouterTraining(model, cfg)
        loss = out.logits_BLV.logsumexp(-1).mean() + router.weighted(router.losses(out.routing))
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(*grads))


def test_learned_image_slots_mark_each_grid_position_and_keep_the_cache_exact():
    """With --image-pos learned, slots count from the first code in T2I and MMU rows alike,
    one slot's vector reaches the logits, and the KV cache still equals a full forward."""
    from conftest import micro_config
    from minimoe.build import build_model
    from minimoe.model import image_slots
    cfg = micro_config(image_pos="learned")
    torch.manual_seed(0)
    model, v = build_model(cfg)
    model.eval()
    n = cfg.image_tokens
    t2i = t2i_row([104], [v.mask] * n, v, cfg.data.text_len)[0]
    mmu, mmu_groups = mmu_prefix([v.image_offset] * n, [104], v)
    for row, first in ((t2i, cfg.data.text_len + 1), (mmu, 2)):
        slots = image_slots(torch.tensor([row]), v.image_offset)[0]
        assert slots[first:first + n].tolist() == list(range(n))
    groups = torch.tensor([mmu_groups])
    with torch.no_grad():
        model.image_pos.weight.zero_()
        base = model(torch.tensor([mmu]), groups)
        model.image_pos.weight[3].fill_(1.0)  # only the fourth slot moves
        moved = model(torch.tensor([mmu]), groups)
    assert not torch.allclose(base.logits_BLV, moved.logits_BLV)
    test_kv_cache_decoding_equals_full_forward(cfg, (model, v))


def test_grid_positions_give_image_codes_their_row_and_column_and_text_its_position():
    """2-D rotary positions: the code at slot s of a side-4 grid starting at 1-D position p is
    at (p + s // 4, p + s % 4); text before and after the image keeps its 1-D position in both."""
    from minimoe.model import grid_positions
    from minimoe.sequences import positions
    off, side = 100, 4
    tokens = torch.tensor([[1, 2, 3] + [off + 5] * side ** 2 + [4, 5]])
    rows, cols = grid_positions(tokens, positions(tokens, pad=0), off, side)
    slots = torch.arange(side ** 2)
    assert rows[0, 3:3 + side ** 2].tolist() == (3 + slots // side).tolist()
    assert cols[0, 3:3 + side ** 2].tolist() == (3 + slots % side).tolist()
    assert rows[0, :3].tolist() == cols[0, :3].tolist() == [0, 1, 2]
    assert rows[0, -2:].tolist() == cols[0, -2:].tolist() == [19, 20]


def test_2d_rotary_scores_depend_on_row_and_column_offsets_only():
    """q.k after 2-D rotary is the same for any two pairs of codes (dr, dc) apart, and differs
    between the neighbour below and the next code in the flattened order."""
    head = 8
    q, k = torch.randn(head), torch.randn(head)

    def dot(rq, cq, rk, ck):
        c, s = rotary(torch.tensor([[rq, rk]]), head, 10000.0, torch.tensor([[cq, ck]]))
        r = apply_rotary(torch.stack([q, k])[None, None], c, s)[0, 0]
        return r[0] @ r[1]
    assert torch.allclose(dot(3, 5, 1, 2), dot(10, 9, 8, 6), atol=1e-5)
    assert not torch.allclose(dot(1, 0, 0, 0), dot(0, 1, 0, 0), atol=1e-3)
    c1, s1 = rotary(torch.tensor([[0, 7, 9]]), head, 10000.0)  # equal rows and columns: 1-D
    c2, s2 = rotary(torch.tensor([[0, 7, 9]]), head, 10000.0, torch.tensor([[0, 7, 9]]))
    assert torch.equal(c1, c2) and torch.equal(s1, s2)


@pytest.mark.parametrize("image_pos", ["rotary2d", "rotary2d+learned", "rotary2d+conv"])
def test_2d_rotary_model_keeps_the_cache_exact_and_padding_invariant(image_pos):
    """Both 2-D modes rotate by the grid; the combined one also adds a vector per slot."""
    from conftest import micro_config
    from minimoe.build import build_model
    cfg = micro_config(image_pos=image_pos)
    torch.manual_seed(0)
    model, v = build_model(cfg)
    model.eval()
    assert model.grid_side ** 2 == cfg.image_tokens
    assert (model.image_pos is not None) == image_pos.endswith("learned")
    test_kv_cache_decoding_equals_full_forward(cfg, (model, v))
    test_left_padding_does_not_change_a_rows_logits(cfg, (model, v))


def test_codebook_init_gives_alike_codes_alike_embeddings():
    """Codes with equal VQ vectors start with equal input and output rows, codes far apart
    start far apart, and text rows are untouched."""
    from conftest import micro_config
    from minimoe.build import build_model, init_code_embeddings
    from minimoe.model import INIT_STD
    cfg = micro_config(code_init="codebook")
    torch.manual_seed(0)
    model, v = build_model(cfg)
    text_before = model.embed.weight[:v.image_offset].clone()
    codebook = torch.randn(v.codes, cfg.vq.vq_dim)
    codebook[1] = codebook[0]
    codebook[2] = -codebook[0]
    init_code_embeddings(model, v, codebook, seed=0)
    for table in (model.embed.weight, model.head.weight):
        rows = table[v.image_offset:v.image_offset + v.codes]
        assert torch.allclose(rows[0], rows[1])
        assert (rows[0] - rows[2]).norm() > (rows[0] - rows[1]).norm() + 1e-3
        assert 0.5 * INIT_STD < rows.std() < 2 * INIT_STD
    assert torch.equal(model.embed.weight[:v.image_offset], text_before)


def test_the_dense_stage_starts_from_the_codebook_only_when_asked(tmp_path):
    """dense_stage applies --code-init codebook to the fresh model (0 steps: the weights it
    returns are the initial ones) and leaves --code-init random alone."""
    from conftest import micro_config
    from minimoe.build import build_model, init_code_embeddings
    from minimoe.run import RunFiles, dense_stage
    from minimoe.tokenizers import ImageTokenizer
    from minimoe.vq import VQModel
    rows = {}
    for init in ("random", "codebook"):
        cfg = micro_config(code_init=init, dense_steps=0)
        tok = ImageTokenizer(VQModel(cfg.vq), cfg.vq)
        _, vocab = build_model(cfg)
        model = dense_stage(cfg, RunFiles(tmp_path / init), tok, vocab, torch.device("cpu"),
                            None, None, progress=False)
        rows[init] = model.embed.weight[vocab.image_offset:vocab.image_offset + vocab.codes]
        torch.manual_seed(cfg.train.seed)
        expected, _ = build_model(cfg)
        if init == "codebook":
            init_code_embeddings(expected, vocab, tok.vq.codebook_KD, cfg.train.seed)
        assert torch.equal(rows[init], expected.embed.weight[vocab.image_offset:
                                                             vocab.image_offset + vocab.codes])
    assert not torch.equal(rows["random"], rows["codebook"])


FACTORS = dict(code_features="factors", vq_colours=4)  # 16 codes: 4 forms x 4 colours


def _pixels_model(**overrides):
    from conftest import micro_config
    from minimoe.build import build_model
    torch.manual_seed(0)
    model, v = build_model(micro_config(code_features="pixels", **overrides))
    model.code_features_KF.copy_(torch.randn_like(model.code_features_KF).sign())
    return model, v


@pytest.mark.parametrize("features", ["pixels", "factors"])
def test_what_is_learnt_of_a_code_carries_over_to_a_code_that_draws_alike(features):
    """One step towards code A at a position raises the logit of code B, which draws A's
    pixels (or A's form in another colour), far more than it raises the logits of codes that
    share nothing with A (the shared map learnt it); without --code-features B moves like any
    other code."""
    from conftest import micro_config
    from minimoe.build import build_model, code_factors
    from minimoe.vq import VQModel
    outlier = {}
    for kind in (features, "none"):
        if kind == "pixels":
            model, v = _pixels_model()
            model.code_features_KF[1] = model.code_features_KF[0]
        elif kind == "factors":
            torch.manual_seed(0)
            cfg = micro_config(**FACTORS)
            model, v = build_model(cfg)
            model.code_features_KF.copy_(code_factors(VQModel(cfg.vq)))  # 1: A's form, colour 1
        else:
            torch.manual_seed(0)
            model, v = build_model(micro_config(code_features="none"))
        tokens, groups, _ = t2i_row([104, 105], [v.mask] * 16, v, 64)
        tokens, groups = torch.tensor([tokens]), torch.tensor([groups])
        at, codes = 70, slice(v.image_offset, v.image_offset + v.codes)  # an image position

        def code_logits():
            with torch.no_grad():
                return model(tokens, groups).logits_BLV[0, at, codes]
        before = code_logits()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        (-model(tokens, groups).logits_BLV[0, at, codes].log_softmax(-1)[0]).backward()
        opt.step()
        rise = code_logits() - before
        ids = torch.arange(v.codes)
        others = rise[(ids // 4 != 0) & (ids % 4 != 0)]  # neither A's form nor its colour
        outlier[kind] = ((rise[1] - others.mean()) / others.std()).item()
    assert outlier[features] > 3 and abs(outlier["none"]) < 3, outlier


def test_code_factors_add_the_form_s_and_the_colour_s_columns():
    """Code id = form * colours + colour: the rows its shared maps add are the map of a one-hot
    of its form and one of its colour, scaled to unit norm; --code-features factors without
    --vq-colours is refused."""
    from conftest import micro_config
    from minimoe.build import build_model, code_factors, code_feature_count
    from minimoe.vq import VQModel
    cfg = micro_config(**FACTORS)
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    model.code_features_KF.copy_(code_factors(VQModel(cfg.vq)))
    assert code_feature_count(cfg) == 4 + 4
    one_hots = torch.zeros(16, 8)
    for code in range(16):
        one_hots[code, [code // 4, 4 + code % 4]] = 1 / math.sqrt(2)
    for shared in (model.features_in, model.features_out):
        torch.testing.assert_close(model.code_rows(shared), shared(one_hots))
    with pytest.raises(ValueError, match="--vq-colours"):
        micro_config(code_features="factors", vq_colours=0)


def test_a_step_s_gradients_are_the_same_on_every_run():
    """Training is reproducible on CPU: with the form and colour rows on, every gradient of a
    forward and backward on one batch is the same, bit for bit, however often it is repeated
    on 2 threads (a gather by indexing adds up its gradient in a thread-dependent order)."""
    from conftest import micro_config
    from minimoe.batches import Batcher
    from minimoe.build import build_model, code_factors
    from minimoe.data import BuiltinData
    from minimoe.tokenizers import ImageTokenizer
    from minimoe.vq import VQModel
    cfg = micro_config(**FACTORS, batch_t2i=8, batch_mmu=8, text_len=96, text_vocab=256)
    torch.manual_seed(0)
    vq = VQModel(cfg.vq).eval()
    model, vocab = build_model(cfg)
    model.code_features_KF.copy_(code_factors(vq))
    batch = Batcher(cfg, BuiltinData(16, ("shapes",), "train", 0), vocab,
                    ImageTokenizer(vq, cfg.vq))(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(8):
            model.zero_grad()
            model(batch.tokens_BL, batch.groups_BL).logits_BLV.logsumexp(-1).mean().backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None})
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(g[n], grads[0][n]) for g in grads for n in g)


@pytest.mark.parametrize("flags", [dict(code_features="pixels"), FACTORS])
def test_the_dense_stage_fills_code_features_and_conversion_and_loading_keep_them(tmp_path,
                                                                                   flags):
    """With --code-features the fresh dense model takes its code features from the run's
    tokenizer (0 steps: the weights dense_stage returns are the initial ones); the MoE model
    converted from it and a checkpoint loaded back hold the same features and give the same
    logits."""
    from conftest import micro_config
    from minimoe import checkpoint, inference
    from minimoe.batches import Batcher
    from minimoe.build import build_model, code_features
    from minimoe.config import to_dict
    from minimoe.convert import convert_model
    from minimoe.data import BuiltinData
    from minimoe.run import RunFiles, dense_stage
    from minimoe.tokenizers import ImageTokenizer
    from minimoe.vq import VQModel
    cfg = micro_config(dense_steps=0, **flags)
    torch.manual_seed(0)
    tok = ImageTokenizer(VQModel(cfg.vq).eval(), cfg.vq)
    _, vocab = build_model(cfg)
    dense = dense_stage(cfg, RunFiles(tmp_path / "run"), tok, vocab, torch.device("cpu"), None,
                        None, progress=False)
    assert torch.equal(dense.code_features_KF, code_features(cfg.model.code_features, tok.vq))
    assert dense.code_features_KF.abs().sum() > 0
    moe_cfg = micro_config(moe="random", num_experts=4, text_experts=2, **flags)
    batch = Batcher(moe_cfg, BuiltinData(16, ("shapes",), "train", 0), vocab, tok)(0)
    moe = convert_model(dense, moe_cfg, [batch], torch.Generator().manual_seed(0))
    assert torch.equal(moe.code_features_KF, dense.code_features_KF)
    assert torch.equal(moe.features_out.weight, dense.features_out.weight)
    path = tmp_path / "ckpt.pt"
    checkpoint.save({"config": to_dict(cfg), "model": dense.state_dict(), "vq": tok.vq.state_dict(),
                     "step": 0, "merges": []}, path)
    _, session, _ = inference.load(path, "cpu")
    assert torch.equal(session.model.code_features_KF, dense.code_features_KF)
    dense.eval()
    with torch.no_grad():
        assert torch.equal(session.model(batch.tokens_BL, batch.groups_BL).logits_BLV,
                           dense(batch.tokens_BL, batch.groups_BL).logits_BLV)


def test_grid_conv_convolves_each_image_grid_alone_and_leaves_text():
    """GridConv against a per-image reference: each row's image positions, laid out in their
    grid, get a depthwise zero-padded convolution added (one image cannot leak into another,
    nor text into either); text positions come out unchanged, and so does a row whose image
    positions make no whole grid."""
    from minimoe.gridconv import GridConv
    torch.manual_seed(0)
    side, D = 4, 6
    conv = GridConv(D, side)
    x = torch.randn(2, 21, D)
    image = torch.zeros(2, 21, dtype=torch.bool)
    image[0, 3:19] = True  # text, a 4x4 image, text
    image[1, 5:21] = True  # text, then the image at the end
    y = conv(x, image)
    assert torch.equal(y[~image], x[~image])
    for b in range(2):
        grid = x[b, image[b]].view(side, side, D)
        ref = torch.zeros_like(grid)
        for r in range(side):
            for c in range(side):
                for dr in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        if 0 <= r + dr < side and 0 <= c + dc < side:
                            ref[r, c] += conv.weight[:, 0, dr + 1, dc + 1] * grid[r + dr, c + dc]
        assert torch.allclose(y[b, image[b]], (grid + ref).view(-1, D), atol=1e-6)
    assert torch.equal(conv(x, torch.zeros_like(image)), x)  # no image: nothing to do
    partial = image.clone()
    partial[1, 20] = False  # row 1 holds no whole grid (a code decoded one at a time)
    y = conv(x, partial)
    assert torch.equal(y[1], x[1]) and torch.equal(y[0], conv(x, image)[0])
    assert torch.equal(conv(x[:, :5], image[:, :5]), x[:, :5])  # shorter than a grid


def test_grid_conv_traces_as_one_graph():
    """No shape in GridConv depends on which positions are image ones, so torch.compile
    traces it whole (fullgraph raises at a graph break) and computes what eager does."""
    from minimoe.gridconv import GridConv
    torch.manual_seed(0)
    conv = GridConv(6, 4)
    x, image = torch.randn(3, 21, 6), torch.zeros(3, 21, dtype=torch.bool)
    image[0, 3:19], image[2, 5:21] = True, True  # row 1: text only
    traced = torch.compile(conv, fullgraph=True, backend="eager")
    assert torch.equal(traced(x, image), conv(x, image))


def test_conv_image_pos_puts_a_grid_conv_in_every_block_only_when_asked():
    """--image-pos rotary2d+conv: every block convolves the grid (and rotary stays 2-D);
    the other modes build no convolution."""
    from conftest import micro_config
    from minimoe.build import build_model
    for mode, convs in (("rotary2d+conv", True), ("rotary2d", False), ("learned", False)):
        model, _ = build_model(micro_config(image_pos=mode))
        assert all((b.conv is not None) == convs for b in model.blocks)
        assert (model.grid_side > 0) == mode.startswith("rotary2d")
