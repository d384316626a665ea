"""Sequence layouts, the omni-attention mask and the labels of each task
(docs/design.md, "Sequences").

    T2I: [pad]... [t2i] [sot] caption [eot] [soi] image codes [eoi]        (text block left-padded)
    MMU: [mmu] [soi] image codes [eoi] [sot] question answer [eot] [pad]... (right-padded)
    LM:  [sot] text [eot] [sot] text [eot] ... [pad]...          (texts packed as turns)

The T2I text block is padded on the left (as Show-o does) so that the caption always ends right
before [soi]; every row of every task has the same length `seq_len`, so one batch can mix them.

Attention is described by one integer *group* per position: position i may attend to position j
iff group[j] <= group[i]. Causal text gets its own position index as group; a bidirectional
block (the T2I image block, the MMU prefix up to [eoi]) shares one group; padding gets
PAD_GROUP, larger than every real group, so no real position ever attends to it (pad rows
attend to everything, which keeps softmax finite and is never read).

A training MMU row may pack several questions about its image (--mmu-turns). Each *turn*,
[sot] question answer [eot], must see the image and itself but no other turn: a later turn
that read an earlier answer ("what colour is the circle? red") could answer from the text
("what shape is the red object?"). So a group's bits from TURN_SHIFT up number its turn
(0: seen by every turn), and i may attend to j iff j's order (the low bits) is at most i's
and j's turn is 0 or i's. Every turn's rotary positions start where the first one's do, so
each turn is the row inference builds for its question alone (`sequences.positions`). Text-only
(LM) rows pack their texts the same way, one turn each with nothing seen by all: a text is a
tenth of a row, and a row of one text would spend nine tenths of its compute on padding.

Labels are aligned with the inputs: labels[i] is what the output at position i must predict,
IGNORE where there is no loss. T2I: the true code at masked image positions (not shifted). MMU
and LM: the next token (shifted), on the answer (MMU) or the whole text (LM), [eot] included.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .tokenizers import Vocab

IGNORE = -100  # label of positions without a loss (torch's cross_entropy ignore_index)
TURN_SHIFT = 20  # a group's bits from here up number its turn (see the docstring)
PAD_GROUP = 1 << 30  # attention group of padding: its turn (1024) is no real row's
MAX_TURNS = (PAD_GROUP >> TURN_SHIFT) - 1  # turns a row may pack
T2I, MMU, LM = 0, 1, 2  # task ids of batch rows
TASKS = ("t2i", "mmu", "lm")


@dataclass
class Batch:
    tokens_BL: torch.Tensor  # long: joint-vocabulary ids (image positions masked for T2I)
    groups_BL: torch.Tensor  # long: attention groups (see module docstring)
    labels_BL: torch.Tensor  # long: targets, IGNORE where no loss
    task_B: torch.Tensor  # long: T2I / MMU / LM per row
    domain_BL: torch.Tensor  # long: data-domain index per position (routing priors, statistics)

    def to(self, device) -> "Batch":
        return Batch(*(getattr(self, f).to(device) for f in BATCH_FIELDS))

    @property
    def labelled_BL(self) -> torch.Tensor:
        """Where a loss is taken: the positions whose logits training needs."""
        return self.labels_BL != IGNORE


BATCH_FIELDS = ("tokens_BL", "groups_BL", "labels_BL", "task_B", "domain_BL")


def attention_mask(groups_q: torch.Tensor, groups_k: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, Lq, Lk] mask (True = may attend) from query and key groups."""
    low = (1 << TURN_SHIFT) - 1
    q, k = groups_q[:, None, :, None], groups_k[:, None, None, :]
    turn_q, turn_k = q >> TURN_SHIFT, k >> TURN_SHIFT
    return ((k & low) <= (q & low)) & ((turn_k == 0) | (turn_k == turn_q))


def positions(tokens_BL: torch.Tensor, pad: int, groups_BL: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Rotary positions that ignore padding: the k-th real token of a row is at position k,
    except that every turn (told by `groups_BL`) starts where the row's first turn starts."""
    real = tokens_BL != pad
    pos_BL = (real.long().cumsum(1) - 1).clamp(min=0)
    if groups_BL is None:
        return pos_BL
    turn_BL = torch.where(real, groups_BL >> TURN_SHIFT, 0)
    in_turn = (turn_BL > 0).long()
    before_BL = in_turn.cumsum(1) - in_turn  # real turn tokens left of each position
    starts = (turn_BL > 0) & (turn_BL != F.pad(turn_BL, (1, 0))[:, :-1])
    # turns are contiguous and in order, so the latest start's count is the own turn's
    offset_BL = torch.where(starts, before_BL, 0).cummax(1).values
    return pos_BL - torch.where(turn_BL > 0, offset_BL, 0)


def t2i_row(caption: list[int], codes: list[int], vocab: Vocab, text_len: int):
    """(tokens, groups, labels) of one T2I row; `codes` are joint ids (or [MASK]).

    The image codes start at position `text_len + 1`; labels are all IGNORE until
    `mask_images` picks the positions to predict.
    """
    text = [vocab.t2i, vocab.sot, *caption, vocab.eot]
    if len(text) > text_len:
        raise ValueError(f"caption is {len(caption)} text ids; at most {text_len - 3} fit")
    n_pad = text_len - len(text)
    tokens = [vocab.pad] * n_pad + text + [vocab.soi, *codes, vocab.eoi]
    image_group = len(tokens)  # above every text position: the image block sees all the text
    groups = [PAD_GROUP] * n_pad + list(range(n_pad, text_len)) + [image_group] * (len(codes) + 2)
    return tokens, groups, [IGNORE] * len(tokens)


def question_text(question: str) -> str:
    """How a question is written before its answer: "what colour is it? red". The empty
    question (samples that bring no question/answer pairs) asks for the caption."""
    return f"{question} " if question else ""


def mmu_image(codes: list[int], vocab: Vocab) -> list[int]:
    """The image block that opens every MMU row: [mmu] [soi] codes [eoi]."""
    return [vocab.mmu, vocab.soi, *codes, vocab.eoi]


def mmu_prefix(codes: list[int], question: list[int], vocab: Vocab):
    """(tokens, groups) of an MMU prompt up to and including the question bytes."""
    prefix = mmu_image(codes, vocab)
    tokens = prefix + [vocab.sot, *question]
    groups = [0] * len(prefix) + list(range(len(prefix), len(tokens)))
    return tokens, groups


def mmu_row(codes: list[int], turns: list[tuple[list[int], list[int]]], vocab: Vocab,
            seq_len: int):
    """(tokens, groups, labels) of one training MMU row: the image, then (question, answer)
    turns, each [sot] question answer [eot] with the answer and [eot] supervised. The first
    turn must fit; the others are packed in order while the row has room, so that the image
    block is paid once for several answers. Each turn sees the image and itself only."""
    tokens = mmu_image(codes, vocab)  # each turn then opens its own [sot]
    groups, supervised = [0] * len(tokens), [False] * len(tokens)
    start = len(tokens)  # every turn's first order, as in the row of its question alone
    for i, (q, a) in enumerate(turns, start=1):
        turn = [vocab.sot, *q, *a, vocab.eot]
        if len(tokens) + len(turn) > seq_len:
            if i == 1:
                raise ValueError(f"question + answer are {len(q) + len(a)} "
                                 f"bytes; at most {seq_len - start - 2} fit")
            break
        groups += [(i << TURN_SHIFT) | order for order in range(start, start + len(turn))]
        tokens += turn
        supervised += [False] * (1 + len(q)) + [True] * (len(a) + 1)
    # shifted: the position before each answer token (and before its [eot]) predicts it
    labels = [t if s else IGNORE for t, s in zip(tokens[1:], supervised[1:])] + [IGNORE]
    return _pad_right(tokens, groups, labels, vocab, seq_len)


def lm_rows(texts: list[list[int]], vocab: Vocab, seq_len: int
            ) -> tuple[list[tuple], list[list[int]]]:
    """Text-only rows: each text a turn [sot] text [eot], packed in order while a row has room.
    Returns the rows (tokens, groups, labels) and, per row, the index in `texts` of the text at
    each position (the row's last text on its padding). A turn sees itself only, causally, from
    rotary position 0, so it computes exactly what the text alone in a row computes."""
    rows, owners, turns = [], [], 0  # only the last row is still open
    for i, text in enumerate(texts):
        turn = [vocab.sot, *text, vocab.eot]
        if len(turn) > seq_len:
            raise ValueError(f"text is {len(text)} ids; at most {seq_len - 2} fit")
        if not rows or len(rows[-1][0]) + len(turn) > seq_len or turns == MAX_TURNS:
            rows.append(([], [], []))
            owners.append([])
            turns = 0
        turns += 1
        tokens, groups, labels = rows[-1]
        groups += [(turns << TURN_SHIFT) | order for order in range(len(turn))]
        labels += turn[1:] + [IGNORE]  # the next token; none after [eot]
        tokens += turn
        owners[-1] += [i] * len(turn)
    for owner in owners:
        owner += owner[-1:] * (seq_len - len(owner))
    return [_pad_right(*row, vocab, seq_len) for row in rows], owners


def _pad_right(tokens, groups, labels, vocab: Vocab, seq_len: int):
    n = seq_len - len(tokens)
    return (tokens + [vocab.pad] * n, groups + [PAD_GROUP] * n, labels + [IGNORE] * n)


def mask_ratio(t: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """Masked fraction for diffusion time t in [0, 1]: cos(pi t / 2) (MaskGIT's cosine
    schedule), raised to `power`. A power below 1 spends more rows near the fully masked grid
    that sampling starts from; above 1, more on the last few codes."""
    return torch.cos(math.pi * t / 2) ** power


def mask_images(tokens_BL: torch.Tensor, image_start: int, n_image: int, vocab: Vocab,
                gen: torch.Generator, power: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask a mask_ratio fraction (at least one) of each row's image codes.

    Returns (masked tokens, labels): labels hold the true code at masked positions only.
    """
    B = tokens_BL.shape[0]
    t = torch.rand(B, generator=gen)
    n_mask = (mask_ratio(t, power) * n_image).floor().long().clamp(1, n_image)
    # The n_mask lowest of a random score per position: a uniform random subset of that size.
    scores = torch.rand(B, n_image, generator=gen)
    rank = scores.argsort(1).argsort(1)
    masked = rank < n_mask[:, None]
    image = tokens_BL[:, image_start:image_start + n_image]
    out, labels = tokens_BL.clone(), torch.full_like(tokens_BL, IGNORE)
    out[:, image_start:image_start + n_image] = torch.where(masked, vocab.mask, image)
    labels[:, image_start:image_start + n_image] = torch.where(masked, image, IGNORE)
    return out, labels


def collate(rows: list[tuple], task: int, domains: list | None = None) -> Batch:
    """Stack (tokens, groups, labels) rows of one task into a Batch. `domains`: per row its
    domain index, or a list of one per position (packed rows); all 0 unless given."""
    tokens, groups, labels = (torch.tensor([r[i] for r in rows], dtype=torch.long)
                              for i in range(3))
    L = tokens.shape[1] if rows else 0
    domain_BL = torch.tensor([d if isinstance(d, list) else [d] * L
                              for d in domains or [0] * len(rows)], dtype=torch.long)
    return Batch(tokens, groups, labels, torch.full((len(rows),), task, dtype=torch.long),
                 domain_BL.view(len(rows), L))


def concat(batches: list[Batch]) -> Batch:
    batches = [b for b in batches if b.tokens_BL.shape[0]]
    return Batch(*(torch.cat([getattr(b, f) for b in batches]) for f in BATCH_FIELDS))
