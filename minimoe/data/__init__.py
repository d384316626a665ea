"""Training data: the built-in generated domains and a folder of real images, behind one
`load_source`.

    src = load_source("builtin", image_size=32, split="train")      # or "folder:PATH"
    s = src[0]; s.image, s.caption, s.qa, s.domain

`base.py` holds what every source yields (`Sample`, the split rule, the palette),
`shapes.py` the shapes domain, `builtin.py` the glyphs and patterns domains and the mixed
built-in source, `folder.py` the folder source.
"""
from __future__ import annotations

from ..config import Config
from .base import COLOURS, MAX_TEXT_BYTES, SPLITS, Sample, split_of
from .builtin import DIGITS, DOMAINS, LETTERS, BuiltinData
from .folder import DataWarning, FolderData, fit_image
from .shapes import (NUMBER_WORDS, PLURALS, RELATION_MINOR_RATIO, SHAPES, SHAPES_BACKGROUND, SIZES,
                     random_shape_objects, relation, render_shapes, shapes_caption, shapes_qa)


def load_source(spec: str, image_size: int, split: str, seed: int = 0,
                domains: tuple[str, ...] | str = DOMAINS,
                max_text_bytes: int = MAX_TEXT_BYTES) -> BuiltinData | FolderData:
    """--data: "builtin" (generated domains) or "folder:PATH" (images + captions.jsonl)."""
    if spec == "builtin":
        return BuiltinData(image_size, domains, split, seed)
    if spec.startswith("folder:") and spec[len("folder:"):]:
        return FolderData(spec[len("folder:"):], image_size, split, seed, max_text_bytes)
    raise ValueError(f"data source {spec!r}: use 'builtin' or 'folder:PATH'")


def open_source(cfg: Config, split: str) -> BuiltinData | FolderData:
    """The data source of a run's config (--data, --domains, --image-size, --seed). Folder rows
    must fit every layout: a caption, or "question answer", in text_len - 4 bytes."""
    return load_source(cfg.data.data, cfg.data.image_size, split, seed=cfg.train.seed,
                       domains=tuple(cfg.data.domains.split(",")),
                       max_text_bytes=cfg.data.text_len - 4)


__all__ = ["COLOURS", "DIGITS", "DOMAINS", "LETTERS", "MAX_TEXT_BYTES", "NUMBER_WORDS",
           "PLURALS", "RELATION_MINOR_RATIO", "SHAPES", "SHAPES_BACKGROUND", "SIZES", "SPLITS",
           "BuiltinData", "DataWarning", "FolderData", "Sample", "fit_image", "load_source",
           "open_source", "random_shape_objects", "relation", "render_shapes", "shapes_caption",
           "shapes_qa", "split_of"]
