"""The mixed-task batch of a training step: T2I, MMU and LM rows built from a data source.

Every random draw of a step (which samples, caption dropout, mask ratios and positions, which
question) comes from a generator seeded by (seed, step), so a resumed run sees exactly the
batches it would have seen, and a checkpoint needs no RNG state.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass

import torch

from .config import Config
from .loading import Prefetcher
from .metrics import answer_type
from .sequences import LM, MMU, T2I, Batch, collate, concat, lm_rows, mask_images, mmu_row, \
    question_text, t2i_row
from .tokenizers import ImageTokenizer, TextTokenizer, Vocab

STEP_SEED_STRIDE = 1_000_003  # mixes (seed, step) into one generator seed without collisions


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * STEP_SEED_STRIDE + step)


@dataclass
class StepSamples:
    """The samples of a step, in order. Steps consume the samples in order, so the data
    position is a pure function of the step (and a resumed run needs no data state)."""
    source: object
    n: int  # samples a step
    offset: int  # the step whose data step 0 reads
    rank: int
    world: int

    def first(self, step: int) -> int:
        """Index of the step's first sample: rank r of a source shared by all ranks reads batch
        (step + offset) * world + r; a source already split per rank, the rank-local batch."""
        local = step + self.offset
        per_rank = getattr(self.source, "per_rank", False)
        return (local if per_rank else local * self.world + self.rank) * self.n

    def __call__(self, step: int) -> list:
        first = self.first(step)
        return [self.source[first + i] for i in range(self.n)]


def task_mixes(turns: list[str], sizes: tuple[int, ...]) -> list[Counter]:
    """The domains each task's rows read, counted over the steps after which the pattern
    repeats, when every step deals its samples to the tasks in order (T2I first) from a mix
    that repeats `turns` (BuiltinData.turns)."""
    n, r = sum(sizes), len(turns)
    mixes = [Counter() for _ in sizes]
    for step in range(r // math.gcd(n, r) if n else 0):
        first = step * n
        for mix, size in zip(mixes, sizes):
            mix.update(turns[(first + k) % r] for k in range(size))
            first += size
    return mixes


def uneven_mix(turns: list[str], sizes: tuple[int, ...], tolerance: float = 0.1) -> str | None:
    """What some task reads off the mix's shares by more than `tolerance`, or None. A task
    whose rows start and end on round boundaries reads each round whole; so does every task
    when a step's sample count moves the round's start from step to step."""
    off = []
    for task, mix in zip(("T2I", "MMU", "LM"), task_mixes(turns, sizes)):
        total = sum(mix.values())  # 0 for a task without rows
        for domain in dict.fromkeys(turns) if total else ():
            share, want = mix[domain] / total, turns.count(domain) / len(turns)
            if abs(share - want) > tolerance:
                off.append(f"{task} rows {domain} {share:.0%} (the mix {want:.0%})")
    return ", ".join(off) or None


class Batcher:
    """Builds the mixed T2I / MMU / LM batch of a step from a data source."""

    def __init__(self, cfg: Config, source, vocab: Vocab, image_tok: ImageTokenizer,
                 offset: int = 0, rank: int = 0, world: int = 1):
        # offset: the step whose data step 0 reads (the MoE stage continues after the dense).
        # rank / world: under data parallelism rank r reads batch (step + offset) * world + r,
        # a shard disjoint from every other rank's; with one process that is just the step.
        # A source that splits itself (`for_rank`: tar shards, each rank reading its own) is
        # made rank r's part and read at the rank-local position instead.
        if world > 1 and hasattr(source, "for_rank"):
            source = source.for_rank(rank, world)
        self.cfg, self.source, self.vocab, self.image_tok = cfg, source, vocab, image_tok
        self.offset, self.rank, self.world = offset, rank, world
        self.text = TextTokenizer(vocab)
        t = cfg.train
        self.sizes = (t.batch_t2i, t.batch_mmu, t.batch_lm)
        # The step's samples, read and decoded in --workers processes ahead of the step.
        self.samples = Prefetcher(StepSamples(source, sum(self.sizes), offset, rank, world),
                                  cfg.data.workers)
        self.domains = cfg.domain_names
        turns = getattr(source, "turns", None) or []  # the built-in mix's round
        off = uneven_mix(turns, self.sizes)
        if off:
            sizes = "/".join(map(str, self.sizes))
            warnings.warn(f"--batch-t2i/-mmu/-lm {sizes} deal each step's samples to the tasks "
                          f"in order from a mix that repeats every {len(turns)} "
                          f"(--domains {cfg.data.domains}), so {off}; make each a multiple of "
                          f"{len(turns)}")

    def domain_ids(self, samples) -> list[int]:
        """Index of each sample's domain in --domains; any other (folder) domain: the last."""
        return [self.domains.index(s.domain) if s.domain in self.domains
                else len(self.domains) for s in samples]

    def __call__(self, step: int) -> Batch:
        samples = self.samples(step)
        step = (step + self.offset) * self.world + self.rank  # every rank draws its own
        cfg, v, gen = self.cfg, self.vocab, step_generator(self.cfg.train.seed, step)
        n_t2i, n_mmu, _ = self.sizes
        t2i, mmu, lm = samples[:n_t2i], samples[n_t2i:n_t2i + n_mmu], samples[n_t2i + n_mmu:]
        codes = self.image_codes(t2i + mmu) + v.image_offset
        text_len, seq_len = cfg.data.text_len, cfg.seq_len

        drop = torch.rand(len(t2i), generator=gen) < cfg.train.caption_dropout
        rows = [t2i_row([] if d else self.text.encode(s.caption), c.tolist(), v, text_len)
                for s, c, d in zip(t2i, codes, drop)]
        b_t2i = collate(rows, T2I, self.domain_ids(t2i)) if rows else None
        if b_t2i is not None:
            b_t2i.tokens_BL, b_t2i.labels_BL = mask_images(
                b_t2i.tokens_BL, text_len + 1, cfg.image_tokens, v, gen, cfg.train.mask_power)

        rows = []
        # Captioning rows (Show-o trains understanding on captions too) supervise every word
        # of the caption from the image, where a question supervises one answer.
        captioning = torch.rand(len(mmu), generator=gen) < cfg.train.caption_share
        asks = ~captioning | cfg.train.caption_questions  # rows that ask questions
        types = self._type_counts(mmu, asks)
        for s, c, cap, ask in zip(mmu, codes[len(t2i):], captioning, asks):
            turns = [("", s.caption)] if cap else []
            if ask:  # after a caption, the questions that still fit
                turns += self._pick_turns(s, gen, types)
            rows.append(mmu_row(c.tolist(), [(self.text.encode(question_text(q)),
                                              self.text.encode(a)) for q, a in turns],
                                v, seq_len))
        b_mmu = collate(rows, MMU, self.domain_ids(mmu)) if rows else None

        texts = []
        for s in lm:
            q, a = self._pick_qa(s, gen)
            use_caption = torch.rand(1, generator=gen).item() < 0.5
            texts.append(self.text.encode(s.caption if use_caption else question_text(q) + a))
        rows, owners = lm_rows(texts, v, seq_len)
        ids = self.domain_ids(lm)
        b_lm = collate(rows, LM, [[ids[i] for i in owner] for owner in owners]) if rows else None
        return concat([b for b in (b_t2i, b_mmu, b_lm) if b is not None])

    def image_codes(self, samples) -> torch.Tensor:
        """Codes [B, N] of the samples' images: a pre-tokenised sample's own (--data
        codes:DIR), the others encoded by the image tokenizer in one call."""
        if not samples:
            return torch.zeros(0, self.cfg.image_tokens, dtype=torch.long)
        images = [s.image for s in samples if s.codes is None]
        encoded = iter(self.image_tok.encode(images).cpu()) if images else iter(())
        return torch.stack([s.codes.flatten().long() if s.codes is not None else next(encoded)
                            for s in samples])

    def _type_counts(self, mmu, asks) -> Counter | None:
        """With --question-mix balanced, how many of the questions of the step's rows that ask
        have each answer type (None: uniform picks)."""
        if self.cfg.train.question_mix == "uniform":
            return None
        return Counter(answer_type(a) for s, ask in zip(mmu, asks) if ask for _, a in s.qa)

    def _pick_turns(self, sample, gen: torch.Generator,
                    types: Counter | None = None) -> list[tuple[str, str]]:
        """Up to --mmu-turns of the sample's questions, distinct, in random order; with type
        counts, each drawn with weight 1 / (the step's questions of its answer type), so a
        rare type (where two objects lie) is asked as often as its scenes allow, not at its
        share of the data."""
        turns = self.cfg.train.mmu_turns
        if types is not None and sample.qa:
            weights = torch.tensor([1.0 / types[answer_type(a)] for _, a in sample.qa])
            order = torch.multinomial(weights, min(turns, len(weights)), generator=gen)
            return [sample.qa[i] for i in order.tolist()]
        if turns == 1 or not sample.qa:  # one draw, as the LM rows make: one turn's batches
            return [self._pick_qa(sample, gen)]  # are those of a run without turns
        order = torch.randperm(len(sample.qa), generator=gen)[:turns].tolist()
        return [sample.qa[i] for i in order]

    @staticmethod
    def _pick_qa(sample, gen: torch.Generator) -> tuple[str, str]:
        if not sample.qa:  # captioning: the empty question is answered with the caption
            return "", sample.caption
        return sample.qa[int(torch.randint(len(sample.qa), (1,), generator=gen))]
