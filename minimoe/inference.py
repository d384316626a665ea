"""Glue between the model, the tokenizers and the pure decoding loops of `sampler.py`.

`text_to_image`: captions -> T2I rows with masked image slots -> MaskGIT with classifier-free
guidance (the unconditional prompt is the empty caption) -> image codes.
`answer`: image codes + questions -> left-padded MMU prompts -> greedy decoding with a KV cache.
"""
from __future__ import annotations

import torch

from .model import KVCache, Transformer
from .sampler import greedy, maskgit
from .sequences import PAD_GROUP, mmu_prefix, question_text, t2i_row
from .tokenizers import TextTokenizer, Vocab

MAX_ANSWER_TOKENS = 16  # answers are a few words; stop runaway generations here


class Session:
    """A trained model with its vocabulary and text tokenizer, ready to generate."""

    def __init__(self, model: Transformer, vocab: Vocab):
        self.model, self.vocab = model.eval(), vocab
        self.text = TextTokenizer(vocab)
        self.text_len = model.cfg.data.text_len
        self.n_image = model.cfg.image_tokens
        self.max_caption = self.text_len - 3  # [t2i] [sot] ... [eot]
        self.max_question = self.text_len - 6  # training fits "question answer" in text_len - 4

    @property
    def device(self) -> torch.device:
        return self.model.embed.weight.device

    def caption_ids(self, caption: str) -> list[int]:
        return self.text.encode(caption, max_len=self.max_caption)

    @torch.no_grad()
    def text_to_image(self, captions: list[str], steps: int, guidance: float,
                      generator: torch.Generator, choice_temperature: float = 4.5,
                      known_codes_BN: torch.Tensor | None = None) -> torch.Tensor:
        """Image codes [B, N] (values in 0..codes-1) for each caption.

        known_codes_BN: optional partly known grid (-1 = unknown) for inpainting/extrapolation.
        """
        v, N = self.vocab, self.n_image
        mask_code = v.codes  # the sampler's mask value in code space
        rows = [t2i_row(self.caption_ids(c), [v.mask] * N, v, self.text_len) for c in captions]
        if guidance:
            rows += [t2i_row([], [v.mask] * N, v, self.text_len)] * len(captions)
        tokens = torch.tensor([r[0] for r in rows], device=self.device)
        groups = torch.tensor([r[1] for r in rows], device=self.device)
        start = self.text_len + 1  # first image position
        B = len(captions)

        def logits_fn(codes_BN: torch.Tensor) -> torch.Tensor:
            joint = torch.where(codes_BN == mask_code, v.mask, codes_BN + v.image_offset)
            t = tokens.clone()
            t[:, start:start + N] = joint.repeat(t.shape[0] // B, 1)
            logits = self.model(t, groups).logits_BLV[:, start:start + N,
                                                      v.image_offset:v.image_offset + v.codes]
            if not guidance:
                return logits.float()
            cond, uncond = logits[:B].float(), logits[B:].float()
            return (1 + guidance) * cond - guidance * uncond

        ids = torch.full((B, N), mask_code, device=self.device)
        if known_codes_BN is not None:
            ids = torch.where(known_codes_BN >= 0, known_codes_BN.to(self.device), ids)
        return maskgit(logits_fn, ids, mask_code, steps, choice_temperature, generator)

    @torch.no_grad()
    def answer(self, codes_BN: torch.Tensor, questions: list[str],
               max_new: int = MAX_ANSWER_TOKENS) -> list[str]:
        """Greedy answers to one question per image (codes in 0..codes-1)."""
        v = self.vocab
        for q in questions:
            self.text.encode(q, self.max_question)  # a clear error for an over-long question
        prompts = [mmu_prefix((c + v.image_offset).tolist(), self.text.encode(question_text(q)), v)
                   for c, q in zip(codes_BN, questions)]
        longest = max(len(p[0]) for p in prompts)
        # Left padding lines every prompt up at its last position; pads are never attended and
        # positions skip them, so each row computes what it would alone.
        tokens = torch.tensor([[v.pad] * (longest - len(t)) + t for t, _ in prompts],
                              device=self.device)
        groups = torch.tensor([[PAD_GROUP] * (longest - len(g)) + g for _, g in prompts],
                              device=self.device)
        cache = KVCache(len(self.model.blocks))
        first = self.model(tokens, groups, cache).logits_BLV[:, -1]
        next_group = longest  # a new token's group is above every earlier position

        def next_logits(ids_B: torch.Tensor) -> torch.Tensor:
            nonlocal next_group
            g = torch.full((ids_B.shape[0], 1), next_group, device=self.device)
            next_group += 1
            return self.model(ids_B[:, None], g, cache).logits_BLV[:, -1]

        out = greedy(next_logits, first, max_new, v.eot)
        return [self.text.decode(ids).strip() for ids in out]
