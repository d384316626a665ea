"""Tokenizers and the joint vocabulary (docs/design.md, sections 5-6).

Joint vocabulary, in id order:

    0..255                    UTF-8 bytes (text is byte-level: every string round-trips)
    256..262                  special tokens (SPECIALS below)
    263..263+codes-1          image codes (the VQ codebook, offset by IMAGE_OFFSET)
    263+codes                 [MASK], always the last id

Over-long text is *rejected* with a ValueError that gives both lengths, never truncated: a cut
could split a multi-byte character, and silently shortening a prompt changes what it asks for.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .config import VQConfig
from .vq import VQModel

BYTES = 256  # byte-level text: ids 0..255 are the byte values
SPECIALS = ("[pad]", "[t2i]", "[mmu]", "[sot]", "[eot]", "[soi]", "[eoi]")
IMAGE_OFFSET = BYTES + len(SPECIALS)  # first image code id in the joint vocabulary


@dataclass(frozen=True)
class Vocab:
    """Ids of the joint vocabulary for a codebook of `codes` image codes."""
    codes: int
    pad: int = BYTES + 0
    t2i: int = BYTES + 1
    mmu: int = BYTES + 2
    sot: int = BYTES + 3
    eot: int = BYTES + 4
    soi: int = BYTES + 5
    eoi: int = BYTES + 6
    image_offset: int = IMAGE_OFFSET

    @property
    def mask(self) -> int:
        return IMAGE_OFFSET + self.codes

    @property
    def size(self) -> int:
        return self.mask + 1


class TextTokenizer:
    """Byte-level UTF-8 text <-> ids. Special tokens are never produced by `encode`."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        try:
            ids = list(text.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates: what Python makes of non-UTF-8 argv bytes
            raise ValueError("text is not valid UTF-8; pass UTF-8 encoded text") from None
        if max_len is not None and len(ids) > max_len:
            raise ValueError(f"text is {len(ids)} UTF-8 bytes long but at most {max_len} fit; "
                             f"shorten it")
        return ids

    def decode(self, ids) -> str:
        """Bytes back to text; special/image ids are dropped, invalid UTF-8 becomes U+FFFD."""
        raw = bytes(int(i) for i in ids if 0 <= int(i) < BYTES)
        return raw.decode("utf-8", errors="replace")


def images_to_tensor(images) -> torch.Tensor:
    """PIL images, a uint8 array/tensor [B,H,W,3], or floats [B,3,H,W] -> float [B,3,H,W] in [0,1]."""
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
