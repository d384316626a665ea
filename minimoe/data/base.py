"""What every data source yields: a `Sample`, the rule that splits samples into train and
held-out, the text budget of the built-in data, and the palette its domains share.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from PIL import Image

SPLITS: tuple[str, ...] = ("train", "heldout")
# Text budget: the tiny preset has 64 text slots, of which the specials ([t2i]/[mmu], [sot],
# [eot]) take a few; captions and "question answer" are byte-tokenized, so count UTF-8 bytes.
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
    image: Image.Image  # RGB, image_size x image_size
    caption: str
    qa: list[tuple[str, str]]  # (question, answer); answers short, lower-case, exact-match
    domain: str  # "shapes" | "glyphs" | "patterns" | a folder row's domain
    objects: list[dict] = field(default_factory=list)  # ground truth (empty for folder rows)
    # Identity that decides the split: f"{domain}|{caption}" (folder rows: f"folder|{file}").
    key: str = ""


def split_of(key: str, heldout_fraction: float = HELDOUT_FRACTION) -> str:
    """"train" or "heldout" for a key, by a stable hash (Python's hash() is salted per run)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    unit = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
    return "heldout" if unit < heldout_fraction else "train"


def fits(text: str, max_bytes: int = MAX_TEXT_BYTES) -> bool:
    return len(text.encode("utf-8")) <= max_bytes


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use one of {', '.join(SPLITS)}")
