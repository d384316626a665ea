"""A folder of real images with captions (`--data folder:PATH`).

    PATH/captions.jsonl, one JSON object per line:
    {"file": "a.png", "caption": "a cat", "qa": [["what animal?", "cat"]], "domain": "pets"}

Rows are checked when the folder is opened; images are decoded on access. Bad rows and
undecodable images are reported one line each (a `DataWarning`) and skipped, never fatal.
The checks of a row's texts (`parse_object`, `row_texts`), of a name inside the dataset
(`inside`) and the image decoding (`decode_image`) serve the tar shard source too (shards.py).
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from .base import Sample, TextLimit, check_split, sample_key, split_of

CAPTIONS_FILE = "captions.jsonl"
FOLDER_ROW_FORMAT = ('{"file": "a.png", "caption": "...", "qa": [["question", "answer"], ...], '
                     '"domain": "..."} (qa and domain optional)')
FOLDER_DOMAIN = "folder"  # domain label of folder rows that do not name one
NEED = (f"it must hold the images and {CAPTIONS_FILE}, one JSON object per line: "
        f"{FOLDER_ROW_FORMAT}")  # what a data folder holds, for the errors about one


class DataWarning(UserWarning):
    """A bad row or file in a data folder, reported and skipped."""


def _report(message: str) -> None:
    warnings.warn(message, DataWarning, stacklevel=3)


@dataclass
class _Row:
    file: str
    caption: str
    qa: list[tuple[str, str]]
    domain: str


def _parse_qa(value: object) -> list[tuple[str, str]]:
    """[["q", "a"], ...] or [{"question": "q", "answer": "a"}, ...] -> [("q", "a"), ...]."""
    if not isinstance(value, list):
        raise ValueError("'qa' must be a list")
    pairs = []
    for item in value:
        if isinstance(item, dict):
            item = [item.get("question"), item.get("answer")]
        is_pair = isinstance(item, list) and len(item) == 2
        if not (is_pair and all(isinstance(t, str) for t in item)):
            raise ValueError(f"qa item {item!r} is not [question, answer] strings")
        pairs.append((item[0], item[1]))
    return pairs


def inside(name: str) -> bool:
    """Whether `name` is a path under the dataset's root (a folder, a tar shard): relative and
    never climbing out with '..'. (os.path.join would follow an absolute path or '../..'
    anywhere on disk.)"""
    parts = name.replace("\\", "/").split("/")
    # A leading separator (POSIX absolute) or a drive ("C:", Windows) both leave the folder.
    return not (name.startswith(("/", "\\")) or os.path.splitdrive(name)[0] or ".." in parts)


def parse_object(raw: bytes) -> dict:
    """A JSON object from UTF-8 bytes; ValueError says what is wrong with them."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    return row


def row_texts(row: dict, limit: TextLimit, name: str,
              default_domain: str) -> tuple[str, list[tuple[str, str]], str]:
    """The caption, question/answer pairs and domain of a row ({"caption", "qa", "domain"},
    the last two optional), each text within `limit`; ValueError starting with `name` says
    what is wrong."""
    caption = row.get("caption")
    if not isinstance(caption, str):
        raise ValueError(f"{name}: 'caption' missing or not a string")
    if why := limit.over(caption):
        raise ValueError(f"{name}: caption is {why}")
    try:
        qa = _parse_qa(row.get("qa", []))
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    for q, a in qa:
        if why := limit.over(f"{q} {a}"):
            raise ValueError(f"{name}: qa {q!r} {a!r} is {why}")
    domain = row.get("domain", default_domain)
    if not isinstance(domain, str) or not domain:
        raise ValueError(f"{name}: 'domain' is not a non-empty string")
    return caption, qa, domain


def _parse_row(raw: bytes, folder: str, limit: TextLimit) -> _Row:
    """One line of captions.jsonl; ValueError says what is wrong with it."""
    row = parse_object(raw)
    file = row.get("file")
    if not isinstance(file, str) or not file:
        raise ValueError("'file' missing or not a string")
    if not inside(file):
        raise ValueError(f"{file}: 'file' must be a path inside the data folder (relative, "
                         f"without '..')")
    if not os.path.isfile(os.path.join(folder, file)):
        raise ValueError(f"{file}: file not found")
    return _Row(file, *row_texts(row, limit, file, FOLDER_DOMAIN))


def fit_image(image: Image.Image, image_size: int) -> Image.Image:
    """RGB, shorter side scaled to image_size, centre crop: how any outside image enters."""
    return ImageOps.fit(image.convert("RGB"), (image_size, image_size), Image.Resampling.BICUBIC)


def decode_image(file, image_size: int) -> Image.Image:
    """An image file (a path or a file object) as a training image: turned upright by its
    EXIF orientation, then fit_image. Raises whatever PIL raises for bytes it cannot read."""
    with Image.open(file) as im:
        im.draft("RGB", (image_size, image_size))  # JPEG: decode at reduced scale
        return fit_image(ImageOps.exif_transpose(im), image_size)


def read_rows(path: str, limit: TextLimit) -> list[_Row]:
    """The usable rows of PATH/captions.jsonl in file order, of every split; each bad row is
    reported (a DataWarning line) and left out."""
    captions = os.path.join(path, CAPTIONS_FILE)
    if not os.path.isdir(path):
        raise ValueError(f"data folder {path!r} does not exist; {NEED}")
    if not os.path.isfile(captions):
        raise ValueError(f"data folder {path!r} has no {CAPTIONS_FILE}; {NEED}")
    rows = []
    with open(captions, "rb") as f:  # bytes, so one non-UTF-8 line costs only that line
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rows.append(_parse_row(raw.strip(), path, limit))
            except ValueError as e:
                _report(f"{captions} line {line_no}: {e}; skipped")
    return rows


class FolderData:
    """Images plus captions.jsonl. Rows are checked at init (their texts against `limit`);
    images are decoded on access.

    Sample i is row order[i % len] where order is a fixed shuffle by seed (so that a file list
    sorted by class does not turn into single-class batches). A row's split is
    split_of(f"folder|{file}"), so the split never depends on the caption text.
    """

    def __init__(self, path: str, image_size: int = 32, split: str = "train", seed: int = 0,
                 limit: TextLimit = TextLimit()):
        check_split(split)
        self.path, self.image_size, self.split = path, image_size, split
        rows = read_rows(path, limit)
        self.rows = [row for row in rows if split_of(sample_key(FOLDER_DOMAIN, row.file)) == split]
        if not self.rows:
            raise ValueError(f"{os.path.join(path, CAPTIONS_FILE)}: no usable rows in split "
                             f"{split!r} ({len(rows)} usable rows in all splits); {NEED}")
        self.order = np.random.default_rng(seed).permutation(len(self.rows))
        self.bad: set[int] = set()  # rows whose image failed to decode (reported once)

    def __len__(self) -> int:
        return len(self.rows)

    def _load(self, row: _Row) -> Image.Image:
        return decode_image(os.path.join(self.path, row.file), self.image_size)

    def __getitem__(self, i: int) -> Sample:
        if i < 0:
            raise IndexError(f"index {i} must be >= 0")
        n = len(self.rows)
        for step in range(n):  # a bad image hands over to the next row, never crashes a run
            index = int(self.order[(i + step) % n])
            if index in self.bad:
                continue
            row = self.rows[index]
            try:
                image = self._load(row)
            except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
                self.bad.add(index)
                _report(f"{os.path.join(self.path, row.file)}: cannot decode image "
                        f"({type(e).__name__}: {e}); skipped")
                continue
            return Sample(image, row.caption, list(row.qa), row.domain, [],
                          sample_key(FOLDER_DOMAIN, row.file))
        raise ValueError(f"no image in {self.path!r} split {self.split!r} could be decoded")
