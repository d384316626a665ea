"""Using a trained model: open a checkpoint, generate images, answer questions.

`load`: a checkpoint file -> (config, Session, ImageTokenizer).
`Session.text_to_image`: captions -> T2I rows with masked image slots -> MaskGIT with
classifier-free guidance (the unconditional prompt is the empty caption) -> image codes.
`Session.answer`: image codes + questions -> left-padded MMU prompts -> greedy decoding with a
KV cache.
`generate`: captions -> PIL images, in batches of fixed size, so memory does not grow with
the number of images.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint, config
from .build import build_model
from .cli import UserError
from .config import Config
from .model import KVCache, Transformer
from .sampler import greedy, guidance_at, maskgit
from .sequences import PAD_GROUP, mmu_prefix, question_text, t2i_row
from .tokenizers import ImageTokenizer, TextTokenizer, Vocab, tensor_to_images
from .vq import VQModel

MAX_ANSWER_TOKENS = 16  # answers are a few words; stop runaway generations here
GENERATE_BATCH = 16  # captions per MaskGIT call: bounds the memory of any number of images
RUNS_ROOT = Path("out")  # default parent of run folders


class Session:
    """A trained model with its config, vocabulary and text tokenizer, ready to generate."""

    def __init__(self, cfg: Config, model: Transformer, vocab: Vocab):
        self.cfg, self.model, self.vocab = cfg, model.eval(), vocab
        self.text = TextTokenizer(vocab)
        self.text_len = cfg.data.text_len
        self.n_image = cfg.image_tokens
        self.max_caption = self.text_len - 3  # [t2i] [sot] ... [eot]
        self.max_question = self.text_len - 6  # training fits "question answer" in text_len - 4

    @property
    def device(self) -> torch.device:
        return self.model.embed.weight.device

    def caption_ids(self, caption: str) -> list[int]:
        return self.text.encode(caption, max_len=self.max_caption)

    @torch.no_grad()
    def text_to_image(self, captions: list[str], steps: int, guidance: float,
                      generator: torch.Generator, choice_temperature: float,
                      known_codes_BN: torch.Tensor | None = None,
                      guidance_schedule: str = "constant",
                      code_temperature: float = 1.0) -> torch.Tensor:
        """Image codes [B, N] (values in 0..codes-1) for each caption.

        known_codes_BN: optional partly known grid (-1 = unknown) for inpainting/extrapolation.
        guidance_schedule: how the guidance scale moves over the steps (sampler.guidance_at).
        code_temperature: softmax temperature of the codes drawn (sampler.maskgit).
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
            masked_share = (codes_BN == mask_code).sum(1) / unknown_at_start
            g = guidance_at(guidance_schedule, guidance, masked_share)[:, None, None]
            return (1 + g) * cond - g * uncond

        ids = torch.full((B, N), mask_code, device=self.device)
        if known_codes_BN is not None:
            ids = torch.where(known_codes_BN >= 0, known_codes_BN.to(self.device), ids)
        unknown_at_start = (ids == mask_code).sum(1).clamp(min=1)
        return maskgit(logits_fn, ids, mask_code, steps, choice_temperature, generator,
                       code_temperature)

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


def generate_codes(session: Session, captions: list[str], seed: int, steps: int | None = None,
                   guidance: float | None = None, choice_temperature: float | None = None,
                   known_codes_BN: torch.Tensor | None = None, batch: int = GENERATE_BATCH,
                   progress: bool = False, guidance_schedule: str | None = None,
                   code_temperature: float | None = None) -> torch.Tensor:
    """Image codes [len(captions), N] for `captions`, deterministic in `seed`, `batch`
    captions at a time. steps, guidance, choice_temperature, guidance_schedule and
    code_temperature default to the run's (--sample-steps, --guidance, --choice-temperature,
    --guidance-schedule, --code-temperature); known_codes_BN (one row per caption, -1 =
    unknown) keeps part of each grid."""
    gen = torch.Generator(session.device).manual_seed(seed)
    t = session.cfg.train
    steps = steps or t.sample_steps
    guidance = t.guidance if guidance is None else guidance
    choice_temperature = t.choice_temperature if choice_temperature is None \
        else choice_temperature
    guidance_schedule = guidance_schedule or t.guidance_schedule
    code_temperature = t.code_temperature if code_temperature is None else code_temperature
    codes = []
    for i in tqdm(range(0, len(captions), batch), desc="generating", disable=not progress):
        known = None if known_codes_BN is None else known_codes_BN[i:i + batch]
        codes.append(session.text_to_image(captions[i:i + batch], steps, guidance, gen,
                                           choice_temperature, known, guidance_schedule,
                                           code_temperature))
    return torch.cat(codes)


def generate(session: Session, image_tok: ImageTokenizer, captions: list[str], seed: int,
             batch: int = GENERATE_BATCH, **sampler):
    """PIL images for `captions`: `generate_codes` (same arguments), decoded."""
    codes = generate_codes(session, captions, seed, batch=batch, **sampler)
    return [image for i in range(0, len(codes), batch)
            for image in tensor_to_images(image_tok.decode(codes[i:i + batch]))]


def latest_checkpoint(root: Path = RUNS_ROOT) -> Path:
    found = sorted(root.glob("*/ckpt.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no checkpoint under {root}/; train one (python train.py) or pass --ckpt")
    return found[-1]


def load(path: str | Path | None, device) -> tuple[Config, Session, ImageTokenizer]:
    """A checkpoint (default: the newest run's) as a ready Session and ImageTokenizer."""
    path = Path(path) if path else latest_checkpoint()
    payload = checkpoint.load(path)
    if "model" not in payload and "vq" in payload:
        raise checkpoint.CheckpointError(
            f"{path} is the image tokenizer of its run, not a model; pass the run's model "
            f"checkpoint, {path.parent / 'ckpt.pt'} (or dense.pt)")
    cfg = config.from_dict(payload["config"])
    if payload.get("stage") == "dense":  # a MoE run still in (or just past) its dense stage
        cfg = config.dense_version(cfg)
    model, _ = build_model(cfg, device)
    vocab = checkpoint.vocab_of(payload, cfg)
    vq = VQModel(cfg.vq).to(device)
    try:
        model.load_state_dict(payload["model"])
        vq.load_state_dict(payload["vq"])
    except (RuntimeError, KeyError) as e:
        problem = " ".join(str(e).split())[:80]  # torch's message spans lines
        raise checkpoint.CheckpointError(f"{path} does not match its own config ({problem}...); "
                                         f"it was written by other code, retrain") from None
    return cfg, Session(cfg, model, vocab), ImageTokenizer(vq, cfg.vq)
