"""Tokenizers and the joint vocabulary (docs/design.md, sections 5-6).

Joint vocabulary, in id order, for T text ids (--text-vocab, 256 or more):

    0..255                    UTF-8 bytes (every string round-trips)
    256..T-1                  BPE merges learnt from the run's training texts (bpe.py), if T > 256
    T..T+6                    special tokens (SPECIALS below)
    T+7..T+7+codes-1          image codes (the VQ codebook, offset by `image_offset`)
    T+7+codes                 [MASK], always the last id

Over-long text is *rejected* with a ValueError that gives both lengths, never truncated: a cut
could split a multi-byte character, and silently shortening a prompt changes what it asks for.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .bpe import BPE, BYTES
from .config import VQConfig
from .vq import VQModel

SPECIALS = ("[pad]", "[t2i]", "[mmu]", "[sot]", "[eot]", "[soi]", "[eoi]")


@dataclass(frozen=True)
class Vocab:
    """Ids of the joint vocabulary: `text` text ids (bytes, then the BPE `merges`), the
    specials, `codes` image codes and [MASK]. Every id depends on the sizes alone, so a
    model's shapes follow from its config; the merges only change how text is cut."""
    codes: int
    text: int = BYTES
    merges: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        if self.text < BYTES + len(self.merges):
            raise ValueError(f"{len(self.merges)} BPE merges do not fit in {self.text} text ids")

    @property
    def pad(self) -> int:
        return self.text + SPECIALS.index("[pad]")

    @property
    def t2i(self) -> int:
        return self.text + SPECIALS.index("[t2i]")

    @property
    def mmu(self) -> int:
        return self.text + SPECIALS.index("[mmu]")

    @property
    def sot(self) -> int:
        return self.text + SPECIALS.index("[sot]")

    @property
    def eot(self) -> int:
        return self.text + SPECIALS.index("[eot]")

    @property
    def soi(self) -> int:
        return self.text + SPECIALS.index("[soi]")

    @property
    def eoi(self) -> int:
        return self.text + SPECIALS.index("[eoi]")

    @property
    def image_offset(self) -> int:
        return self.text + len(SPECIALS)

    @property
    def mask(self) -> int:
        return self.image_offset + self.codes

    @property
    def size(self) -> int:
        return self.mask + 1


class TextTokenizer:
    """UTF-8 text <-> ids: bytes, merged by the vocabulary's BPE merges when it has any.
    Special tokens are never produced by `encode`."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.bpe = BPE(vocab.merges) if vocab.merges else None
        self.unit = "tokens" if self.bpe else "UTF-8 bytes"

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: what Python makes of non-UTF-8 argv bytes
            raise ValueError("text is not valid UTF-8; pass UTF-8 encoded text") from None
        ids = self.bpe.encode(text) if self.bpe else list(raw)
        if max_len is not None and len(ids) > max_len:
            raise ValueError(f"text is {len(ids)} {self.unit} long but at most {max_len} fit; "
                             f"shorten it")
        return ids

    def decode(self, ids) -> str:
        """Text back from ids; special/image ids are dropped, invalid UTF-8 becomes U+FFFD."""
        text_ids = [int(i) for i in ids if 0 <= int(i) < BYTES + len(self.vocab.merges)]
        raw = self.bpe.decode_bytes(text_ids) if self.bpe else bytes(text_ids)
        return raw.decode("utf-8", errors="replace")


def images_to_tensor(images) -> torch.Tensor:
    """PIL images, a uint8 array/tensor [B,H,W,3] or floats [B,3,H,W] -> floats [B,3,H,W] in
    [0, 1]."""
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        return images
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(im.convert("RGB")) for im in images])
    x = torch.as_tensor(np.asarray(images))
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [B,H,W,3], got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float() / 255.0


def tensor_to_images(x_B3HW: torch.Tensor) -> list[Image.Image]:
    arr = (x_B3HW.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


class ImageTokenizer:
    """Images <-> flat image-code ids in [0, codes), through a trained `VQModel`."""

    def __init__(self, vq: VQModel, cfg: VQConfig):
        self.vq, self.cfg = vq.eval(), cfg

    @property
    def device(self) -> torch.device:
        return next(self.vq.parameters()).device

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Images (see `images_to_tensor`) -> codes [B, N] (long, row-major over the grid)."""
        x = images_to_tensor(images).to(self.device)
        return self.vq.encode(x).flatten(1)

    @torch.no_grad()
    def decode(self, codes_BN: torch.Tensor) -> torch.Tensor:
        """Codes [B, N] -> images float [B,3,H,W] in [0,1]."""
        side = int(round(codes_BN.shape[1] ** 0.5))
        if side * side != codes_BN.shape[1]:
            raise ValueError(f"{codes_BN.shape[1]} codes do not form a square grid")
        return self.vq.decode(codes_BN.view(-1, side, side).to(self.device))
