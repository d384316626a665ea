"""Sequence layouts, the omni-attention mask and labels.  Run: pytest -q tests/test_sequences.py"""
import pytest
import torch

from minimoe.sequences import (IGNORE, LM, MAX_TURNS, MMU, PAD_GROUP, T2I, TURN_SHIFT,
                               attention_mask, collate, lm_rows, mask_images, mask_ratio, mmu_row,
                               positions, t2i_row)
from minimoe.tokenizers import Vocab

V = Vocab(16)
TEXT_LEN, N_IMG = 12, 9
SEQ_LEN = TEXT_LEN + N_IMG + 2
CODES = [V.image_offset + i for i in range(N_IMG)]


def allowed(tokens, groups):
    g = torch.tensor([groups])
    return attention_mask(g, g)[0, 0]


def test_t2i_layout_is_left_padded_and_ends_with_the_image_block():
    tokens, groups, labels = t2i_row([104, 105], CODES, V, TEXT_LEN)
    assert len(tokens) == SEQ_LEN
    n_pad = TEXT_LEN - 5
    assert tokens[:n_pad] == [V.pad] * n_pad
    assert tokens[n_pad:TEXT_LEN] == [V.t2i, V.sot, 104, 105, V.eot]
    assert tokens[TEXT_LEN] == V.soi and tokens[-1] == V.eoi and tokens[TEXT_LEN + 1:-1] == CODES
    assert labels == [IGNORE] * SEQ_LEN


def test_t2i_mask_text_causal_image_bidirectional_padding_never_attended():
    tokens, groups, _ = t2i_row([104, 105], CODES, V, TEXT_LEN)
    m = allowed(tokens, groups)
    pad = torch.tensor(tokens) == V.pad
    real = ~pad
    assert not m[real][:, pad].any(), "a real position attends to padding"
    text = torch.arange(SEQ_LEN) < TEXT_LEN
    ti = torch.nonzero(text & real)[:, 0]
    assert torch.equal(m[ti][:, ti], torch.ones(len(ti), len(ti)).tril().bool()), "text not causal"
    img = ~text
    assert m[img][:, img].all(), "image block not bidirectional"
    assert m[img][:, text & real].all(), "image does not see the whole caption"
    assert not m[text & real][:, img].any(), "text sees the image"


def test_mmu_prefix_bidirectional_then_causal_and_labels_on_answer_only():
    q, a = [113, 63, 32], [114, 101, 100]
    tokens, groups, labels = mmu_row(CODES, [(q, a)], V, SEQ_LEN + 4)
    prefix = 3 + N_IMG  # [mmu] [soi] codes [eoi]
    m = allowed(tokens, groups)
    assert m[:prefix, :prefix].all()
    assert not m[:prefix, prefix:].any()
    end = prefix + 1 + len(q) + len(a) + 1
    txt = torch.arange(prefix, end)
    assert torch.equal(m[txt][:, txt], torch.ones(len(txt), len(txt)).tril().bool())
    assert tokens[end:] == [V.pad] * (len(tokens) - end)
    pad = torch.tensor(tokens) == V.pad
    assert not m[~pad][:, pad].any()
    # shifted: the position before each answer token (and before [eot]) predicts it
    targets = {i: l for i, l in enumerate(labels) if l != IGNORE}
    first = prefix + 1 + len(q)
    assert targets == {first - 1 + j: t for j, t in enumerate(a + [V.eot])}


def test_mmu_turns_supervise_every_answer_and_pack_only_what_fits():
    """Each answer (and the [eot] closing it) is predicted from the position before it, the
    questions are not; a turn that would not fit is left out, never cut."""
    turns = [([113, 63], [114, 101]), ([104, 63], [120]), ([105, 106, 63], [121, 122])]
    prefix = 3 + N_IMG  # [mmu] [soi] codes [eoi]
    one = [V.sot, 113, 63, 114, 101, V.eot]
    two = one + [V.sot, 104, 63, 120, V.eot]
    for room, text in ((len(one), one), (len(two), two), (len(two) + 6, two),
                       (len(two) + 7, two + [V.sot, 105, 106, 63, 121, 122, V.eot])):
        tokens, groups, labels = mmu_row(CODES, turns, V, prefix + room)
        assert tokens[prefix:prefix + len(text)] == text
        assert set(tokens[prefix + len(text):]) <= {V.pad}
        answers = [t for q, a in turns[:text.count(V.eot)] for t in a + [V.eot]]
        assert [l for l in labels if l != IGNORE] == answers
        for i, l in enumerate(labels):
            assert l == IGNORE or l == tokens[i + 1]
    with pytest.raises(ValueError, match="at most"):
        mmu_row(CODES, turns, V, prefix + len(one) - 1)


def test_mmu_turns_see_the_image_and_themselves_only():
    """A later turn must not read an earlier answer: each turn attends to the image block and
    causally to itself, and its rotary positions are those of its question asked alone."""
    turns = [([113, 63], [114, 101]), ([104, 63], [120]), ([105, 106, 63], [121, 122])]
    tokens, groups, _ = mmu_row(CODES, turns, V, SEQ_LEN + 20)
    prefix = 3 + N_IMG
    m = allowed(tokens, groups)
    pos = positions(torch.tensor([tokens]), V.pad, torch.tensor([groups]))[0]
    spans, at = [], prefix
    for q, a in turns:
        spans.append(torch.arange(at, at + len(q) + len(a) + 2))
        at += len(q) + len(a) + 2
    for i, span in enumerate(spans):
        assert m[span][:, :prefix].all(), "a turn does not see the image"
        assert torch.equal(m[span][:, span], torch.ones(len(span), len(span)).tril().bool())
        assert not m[:prefix, span].any(), "the image sees a turn"
        for j, other in enumerate(spans):
            assert j == i or not m[span][:, other].any(), f"turn {i} sees turn {j}"
        assert pos[span].tolist() == list(range(prefix, prefix + len(span)))
    pad = torch.tensor(tokens) == V.pad
    assert not m[~pad][:, pad].any()


def test_an_lm_row_is_causal_and_predicts_every_next_token():
    (row,), owners = lm_rows([[1, 2, 3]], V, 8)
    tokens, groups, labels = row
    assert tokens == [V.sot, 1, 2, 3, V.eot, V.pad, V.pad, V.pad]
    assert labels == [1, 2, 3, V.eot, IGNORE, IGNORE, IGNORE, IGNORE]
    m = allowed(tokens, groups)
    assert torch.equal(m[:5, :5], torch.ones(5, 5).tril().bool())
    assert groups[5:] == [PAD_GROUP] * 3 and owners == [[0] * 8]


def test_lm_texts_pack_in_order_as_turns_that_see_only_themselves_from_position_zero():
    texts = [[1, 2, 3], [4], [5, 6, 7, 8], [9, 10]]
    rows, owners = lm_rows(texts, V, 10)  # turns of 5, 3, 6 and 4 tokens
    assert [r[0] for r in rows] == [[V.sot, 1, 2, 3, V.eot, V.sot, 4, V.eot, V.pad, V.pad],
                                    [V.sot, 5, 6, 7, 8, V.eot, V.sot, 9, 10, V.eot]]
    assert owners == [[0] * 5 + [1] * 5, [2] * 6 + [3] * 4]  # padding: the row's last text
    for (tokens, groups, labels), owner in zip(rows, owners):
        g = torch.tensor([groups])
        m, pos = attention_mask(g, g)[0, 0], positions(torch.tensor([tokens]), V.pad, g)[0]
        for i in set(owner):
            span = [p for p, (o, t) in enumerate(zip(owner, tokens)) if o == i and t != V.pad]
            assert m[span][:, span].equal(torch.ones(len(span), len(span)).tril().bool())
            others = [p for p in range(len(tokens)) if p not in span]
            assert not m[span][:, others].any(), f"text {i} sees another text or padding"
            assert pos[span].tolist() == list(range(len(span)))
            assert [labels[p] for p in span] == [tokens[p] for p in span[1:]] + [IGNORE]


def test_lm_rows_refuse_a_text_that_fits_no_row_and_cap_the_turns_a_row_numbers():
    with pytest.raises(ValueError, match="at most 6 fit"):
        lm_rows([[1] * 7], V, 8)
    rows, _ = lm_rows([[]] * (MAX_TURNS + 1), V, 2 * (MAX_TURNS + 1))
    assert len(rows) == 2, "a turn number must stay below padding's"
    assert max(g for g in rows[0][1] if g != PAD_GROUP) >> TURN_SHIFT == MAX_TURNS


def test_positions_skip_padding():
    tokens = torch.tensor([[V.pad, V.pad, 1, 2], [1, 2, V.pad, V.pad]])
    groups = torch.tensor([[PAD_GROUP, PAD_GROUP, 2, 3], [0, 1, PAD_GROUP, PAD_GROUP]])
    assert positions(tokens, V.pad, groups).tolist() == [[0, 0, 0, 1], [0, 1, 1, 1]]


def test_mask_images_masks_at_least_one_and_labels_exactly_the_masked():
    rows = [t2i_row([104], CODES, V, TEXT_LEN) for _ in range(64)]
    b = collate(rows, T2I)
    gen = torch.Generator().manual_seed(0)
    masked, labels = mask_images(b.tokens_BL, TEXT_LEN + 1, N_IMG, V, gen)
    is_mask = masked == V.mask
    assert (is_mask.sum(1) >= 1).all()
    assert torch.equal(is_mask, labels != IGNORE), "labels must sit exactly on masked slots"
    assert torch.equal(labels[is_mask], b.tokens_BL[is_mask]), "labels must be the true codes"
    assert torch.equal(masked[~is_mask], b.tokens_BL[~is_mask])
    assert is_mask[:, :TEXT_LEN + 1].sum() == 0 and is_mask[:, -1].sum() == 0
    # the cosine schedule masks more than half on average (E[cos(pi t/2)] = 2/pi)
    frac = is_mask.float().sum(1).mean() / N_IMG
    assert 0.5 < frac < 0.8


def test_mask_power_below_one_masks_more_of_each_image_and_above_one_less():
    """cos(pi t / 2) ** p: p = 1 is the cosine schedule; a smaller power raises every ratio
    (t fixed), so the same draws mask at least as many codes, and on average more."""
    rows = [t2i_row([104], CODES, V, TEXT_LEN) for _ in range(256)]
    b = collate(rows, T2I)
    counts = {}
    for power in (0.5, 1.0, 2.0):
        masked, _ = mask_images(b.tokens_BL, TEXT_LEN + 1, N_IMG, V,
                                torch.Generator().manual_seed(0), power)
        counts[power] = (masked == V.mask).sum(1)
        assert (counts[power] >= 1).all()
    assert (counts[0.5] >= counts[1.0]).all() and (counts[1.0] >= counts[2.0]).all()
    assert counts[0.5].float().mean() > counts[1.0].float().mean() > counts[2.0].float().mean()
    t = torch.linspace(0, 1, 11)
    assert torch.allclose(mask_ratio(t, 2.0), mask_ratio(t) ** 2)


def test_collate_marks_tasks_and_gives_each_position_its_rows_or_its_own_domain():
    (row,), _ = lm_rows([[1]], V, 6)
    b = collate([row, row], LM, [2, [0, 1, 1, 3, 3, 3]])
    assert b.task_B.tolist() == [LM, LM] and b.tokens_BL.shape == (2, 6)
    assert b.domain_BL.tolist() == [[2] * 6, [0, 1, 1, 3, 3, 3]]
    assert MMU != LM != T2I
