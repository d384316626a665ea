"""The mixed-task batch of a training step: T2I, MMU and LM rows built from a data source.

Every random draw of a step (which samples, caption dropout, mask ratios and positions, which
question) comes from a generator seeded by (seed, step), so a resumed run sees exactly the
batches it would have seen, and a checkpoint needs no RNG state.
"""
from __future__ import annotations

import torch

from .config import Config
from .sequences import LM, MMU, T2I, Batch, collate, concat, lm_row, mask_images, mmu_row, \
    question_text, t2i_row
from .tokenizers import ImageTokenizer, TextTokenizer, Vocab

STEP_SEED_STRIDE = 1_000_003  # mixes (seed, step) into one generator seed without collisions


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * STEP_SEED_STRIDE + step)


class Batcher:
    """Builds the mixed T2I / MMU / LM batch of a step from a data source."""

    def __init__(self, cfg: Config, source, vocab: Vocab, image_tok: ImageTokenizer,
                 offset: int = 0, rank: int = 0, world: int = 1):
        # offset: the step whose data step 0 reads (the MoE stage continues after the dense).
        # rank / world: under data parallelism rank r reads batch (step + offset) * world + r,
        # a shard disjoint from every other rank's; with one process that is just the step.
        self.cfg, self.source, self.vocab, self.image_tok = cfg, source, vocab, image_tok
        self.offset, self.rank, self.world = offset, rank, world
        self.text = TextTokenizer(vocab)
        t = cfg.train
        self.sizes = (t.batch_t2i, t.batch_mmu, t.batch_lm)
        self.domains = cfg.domain_names

    def domain_ids(self, samples) -> list[int]:
        """Index of each sample's domain in --domains; any other (folder) domain: the last."""
        return [self.domains.index(s.domain) if s.domain in self.domains
                else len(self.domains) for s in samples]

    def __call__(self, step: int) -> Batch:
        step = (step + self.offset) * self.world + self.rank
        cfg, v, gen = self.cfg, self.vocab, step_generator(self.cfg.train.seed, step)
        first = step * sum(self.sizes)  # samples are consumed in order: data position = step
        samples = [self.source[first + i] for i in range(sum(self.sizes))]
        n_t2i, n_mmu, _ = self.sizes
        t2i, mmu, lm = samples[:n_t2i], samples[n_t2i:n_t2i + n_mmu], samples[n_t2i + n_mmu:]
        codes = self.image_tok.encode([s.image for s in t2i + mmu]).cpu() + v.image_offset
        text_len, seq_len = cfg.data.text_len, cfg.seq_len

        drop = torch.rand(len(t2i), generator=gen) < cfg.train.caption_dropout
        rows = [t2i_row([] if d else self.text.encode(s.caption), c.tolist(), v, text_len)
                for s, c, d in zip(t2i, codes, drop)]
        b_t2i = collate(rows, T2I, self.domain_ids(t2i)) if rows else None
        if b_t2i is not None:
            b_t2i.tokens_BL, b_t2i.labels_BL = mask_images(
                b_t2i.tokens_BL, text_len + 1, cfg.image_tokens, v, gen)

        rows = []
        # Captioning rows (Show-o trains understanding on captions too) supervise every word
        # of the caption from the image, where a question supervises one answer.
        captioning = torch.rand(len(mmu), generator=gen) < cfg.train.caption_share
        for s, c, cap in zip(mmu, codes[len(t2i):], captioning):
            q, a = ("", s.caption) if cap else self._pick_qa(s, gen)
            rows.append(mmu_row(c.tolist(), self.text.encode(question_text(q)),
                                self.text.encode(a), v, seq_len))
        b_mmu = collate(rows, MMU, self.domain_ids(mmu)) if rows else None

        rows = []
        for s in lm:
            q, a = self._pick_qa(s, gen)
            use_caption = torch.rand(1, generator=gen).item() < 0.5
            text = s.caption if use_caption else question_text(q) + a
            rows.append(lm_row(self.text.encode(text), v, seq_len))
        b_lm = collate(rows, LM, self.domain_ids(lm)) if rows else None
        return concat([b for b in (b_t2i, b_mmu, b_lm) if b is not None])

    @staticmethod
    def _pick_qa(sample, gen: torch.Generator) -> tuple[str, str]:
        if not sample.qa:  # captioning: the empty question is answered with the caption
            return "", sample.caption
        return sample.qa[int(torch.randint(len(sample.qa), (1,), generator=gen))]
