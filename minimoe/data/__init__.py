"""Training data: the built-in generated domains and a folder of real images, behind one
`load_source`.

    src = load_source("builtin", image_size=32, split="train")      # or "folder:PATH"
    s = src[0]; s.image, s.caption, s.qa, s.domain

`base.py` holds what every source yields (`Sample`, the split rule, the palette),
`shapes.py` the shapes domain, `builtin.py` the glyphs and patterns domains and the mixed
built-in source, `folder.py` the folder source, `codes.py` pre-tokenised codes
(`codes:DIR`, written by `python -m minimoe.pretokenize`), `shards.py` tar shards
(`wds:PATTERN`, written by `python -m minimoe.data.pack`).
"""
from __future__ import annotations

from ..bpe import BPE
from ..config import Config
from .base import COLOURS, MAX_TEXT_BYTES, NO_TEXT_LIMIT, SPLITS, Sample, TextLimit, sample_key, \
    split_of
from .builtin import DIGITS, DOMAINS, LETTERS, BuiltinData
from .codes import PREFIX as CODES_PREFIX
from .codes import CodesData
from .folder import DataWarning, FolderData, fit_image
from .shards import PREFIX as SHARDS_PREFIX
from .shards import ShardData
from .shapes import (NUMBER_WORDS, PLURALS, RELATION_MINOR_RATIO, SHAPES, SHAPES_BACKGROUND, SIZES,
                     random_shape_objects, relation, render_shapes, shapes_caption, shapes_qa)


def load_source(spec: str, image_size: int, split: str, seed: int = 0,
                domains: tuple[str, ...] | str = DOMAINS,
                limit: TextLimit = TextLimit()) -> BuiltinData | FolderData:
    """--data: "builtin" (generated domains), "folder:PATH" (images + captions.jsonl),
    "wds:PATTERN" (tar shards) or "codes:DIR" (pre-tokenised codes)."""
    if spec == "builtin":
        return BuiltinData(image_size, domains, split, seed)
    if spec.startswith("folder:") and spec[len("folder:"):]:
        return FolderData(spec[len("folder:"):], image_size, split, seed, limit)
    if spec.startswith(CODES_PREFIX) and spec[len(CODES_PREFIX):]:
        return CodesData(spec[len(CODES_PREFIX):], image_size, split, limit)
    if spec.startswith(SHARDS_PREFIX):  # an empty pattern gets its own message there
        return ShardData(spec[len(SHARDS_PREFIX):], image_size, split, seed, limit)
    raise ValueError(f"data source {spec!r}: use 'builtin' or 'folder:PATH' (or "
                     f"'wds:PATTERN' for tar shards, 'codes:DIR' for pre-tokenised codes)")


def open_source(cfg: Config, split: str, merges) -> BuiltinData | FolderData:
    """The data source of a run's config (--data, --domains, --image-size, --seed).

    `merges` are the run's BPE merges (`Vocab.merges`; () for bytes): folder rows whose
    caption, or "question answer", is over text_len - 4 units as they count them are skipped,
    so every kept row fits every layout. None reads the rows whatever their texts, for readers
    of images only and for learning the merges themselves."""
    limit = NO_TEXT_LIMIT if merges is None else text_limit(cfg.data.text_len - 4, merges)
    return load_source(cfg.data.data, cfg.data.image_size, split, seed=cfg.train.seed,
                       domains=cfg.data.domains, limit=limit)


def text_limit(most: int, merges) -> TextLimit:
    """`most` UTF-8 bytes, or with BPE merges `most` tokens."""
    if not merges:
        return TextLimit(most)
    bpe = BPE(merges)
    return TextLimit(most, lambda text: len(bpe.encode(text)), "tokens")


__all__ = ["COLOURS", "DIGITS", "DOMAINS", "LETTERS", "MAX_TEXT_BYTES", "NO_TEXT_LIMIT",
           "NUMBER_WORDS", "PLURALS", "RELATION_MINOR_RATIO", "SHAPES", "SHAPES_BACKGROUND",
           "SIZES", "SPLITS", "BuiltinData", "CodesData", "DataWarning", "FolderData", "Sample",
           "ShardData", "TextLimit",
           "fit_image", "load_source", "open_source", "random_shape_objects", "relation",
           "render_shapes", "shapes_caption", "shapes_qa", "sample_key", "split_of", "text_limit"]
