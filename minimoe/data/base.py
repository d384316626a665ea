"""What every data source yields: a `Sample`, the rule that splits samples into train and
held-out, the text budgets of the built-in data and of a folder row (`TextLimit`), and the
palette the built-in domains share.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    import torch

SPLITS: tuple[str, ...] = ("train", "heldout")
# Text budget of the built-in data: a caption or "question answer" fits 64 text slots as bytes
# (the specials [t2i]/[mmu], [sot], [eot] take a few), so the data reads the same under
# either text tokenizer (BPE needs far fewer slots: about 13 tokens at most).
MAX_TEXT_BYTES = 60
HELDOUT_FRACTION = 0.1  # share of keys (captions) that only ever appear in the held-out split

# Six saturated colours, pairwise far apart in RGB (the closest pair, orange/yellow, is ~100
# apart) so that a colour survives VQ reconstruction and can be read back from pixels.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 25, 35),
    "orange": (255, 130, 0),
    "yellow": (240, 230, 40),
    "green": (30, 170, 50),
    "blue": (40, 90, 235),
    "purple": (150, 60, 210),
}


@dataclass
class Sample:
    image: Image.Image | None  # RGB, image_size x image_size; None for pre-tokenised samples
    caption: str
    qa: list[tuple[str, str]]  # (question, answer); answers short, lower-case, exact-match
    domain: str  # "shapes" | "glyphs" | "patterns" | a folder row's domain
    objects: list[dict] = field(default_factory=list)  # ground truth (empty for folder rows)
    # Identity that decides the split: f"{domain}|{caption}" (folder rows: f"folder|{file}").
    key: str = ""
    # The image's VQ grid [h, w] (long) when the sample was pre-tokenised (--data codes:DIR):
    # batches take it instead of encoding an image.
    codes: torch.Tensor | None = None


def sample_key(domain: str, name: str) -> str:
    """A sample's identity, which decides its split: the domain and the caption (built-in
    domains), the image file (folders) or the tar key (shards)."""
    return f"{domain}|{name}"


def split_of(key: str, heldout_fraction: float = HELDOUT_FRACTION) -> str:
    """"train" or "heldout" for a key, by a stable hash (Python's hash() is salted per run)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    unit = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
    return "heldout" if unit < heldout_fraction else "train"


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def fits(text: str, max_bytes: int = MAX_TEXT_BYTES) -> bool:
    return utf8_len(text) <= max_bytes


@dataclass(frozen=True)
class TextLimit:
    """The most text one caption or "question answer" of a row may hold, counted the way the
    run's text tokenizer counts it: UTF-8 bytes, or tokens once BPE merges are learnt."""
    most: int = MAX_TEXT_BYTES
    length: Callable[[str], int] = utf8_len
    unit: str = "bytes"

    def over(self, text: str) -> str | None:
        """None if `text` fits, else what is wrong ("70 bytes, over the 60 that fit")."""
        n = self.length(text)
        return f"{n} {self.unit}, over the {self.most} that fit" if n > self.most else None


NO_TEXT_LIMIT = TextLimit(most=1 << 62)  # for readers of images only, or of every text


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use one of {', '.join(SPLITS)}")
