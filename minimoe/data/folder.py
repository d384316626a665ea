"""A folder of real images with captions (`--data folder:PATH`).

    PATH/captions.jsonl, one JSON object per line:
    {"file": "a.png", "caption": "a cat", "qa": [["what animal?", "cat"]], "domain": "pets"}

Rows are checked when the folder is opened; images are decoded on access. Bad rows and
undecodable images are reported one line each (a `DataWarning`) and skipped, never fatal.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from .base import Sample, TextLimit, check_split, split_of

CAPTIONS_FILE = "captions.jsonl"
FOLDER_ROW_FORMAT = ('{"file": "a.png", "caption": "...", "qa": [["question", "answer"], ...], '
                     '"domain": "..."} (qa and domain optional)')
FOLDER_DOMAIN = "folder"  # domain label of folder rows that do not name one


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


def _inside(file: str) -> bool:
    """Whether `file` names a path under the dataset's folder: relative and never climbing
    out with '..'. (os.path.join would follow an absolute path or '../..' anywhere on disk.)"""
    parts = file.replace("\\", "/").split("/")
    # A leading separator (POSIX absolute) or a drive ("C:", Windows) both leave the folder.
    return not (file.startswith(("/", "\\")) or os.path.splitdrive(file)[0] or ".." in parts)


def _parse_row(raw: bytes, folder: str, limit: TextLimit) -> _Row:
    """One line of captions.jsonl; ValueError says what is wrong with it."""
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
    file, caption = row.get("file"), row.get("caption")
    if not isinstance(file, str) or not file:
        raise ValueError("'file' missing or not a string")
    if not isinstance(caption, str):
        raise ValueError(f"{file}: 'caption' missing or not a string")
    if not _inside(file):
        raise ValueError(f"{file}: 'file' must be a path inside the data folder (relative, "
                         f"without '..')")
    if not os.path.isfile(os.path.join(folder, file)):
        raise ValueError(f"{file}: file not found")
    if why := limit.over(caption):
        raise ValueError(f"{file}: caption is {why}")
    try:
        qa = _parse_qa(row.get("qa", []))
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None
    for q, a in qa:
        if why := limit.over(f"{q} {a}"):
            raise ValueError(f"{file}: qa {q!r} {a!r} is {why}")
    domain = row.get("domain", FOLDER_DOMAIN)
    if not isinstance(domain, str) or not domain:
        raise ValueError(f"{file}: 'domain' is not a non-empty string")
    return _Row(file, caption, qa, domain)


def fit_image(image: Image.Image, image_size: int) -> Image.Image:
    """RGB, shorter side scaled to image_size, centre crop: how any outside image enters."""
    return ImageOps.fit(image.convert("RGB"), (image_size, image_size), Image.Resampling.BICUBIC)


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
        captions = os.path.join(path, CAPTIONS_FILE)
        need = (f"it must hold the images and {CAPTIONS_FILE}, one JSON object per line: "
                f"{FOLDER_ROW_FORMAT}")
        if not os.path.isdir(path):
            raise ValueError(f"data folder {path!r} does not exist; {need}")
        if not os.path.isfile(captions):
            raise ValueError(f"data folder {path!r} has no {CAPTIONS_FILE}; {need}")
        self.rows: list[_Row] = []
        n_good = 0
        with open(captions, "rb") as f:  # bytes, so one non-UTF-8 line costs only that line
            for line_no, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    row = _parse_row(raw.strip(), path, limit)
                except ValueError as e:
                    _report(f"{captions} line {line_no}: {e}; skipped")
                    continue
                n_good += 1
                if split_of(f"{FOLDER_DOMAIN}|{row.file}") == split:
                    self.rows.append(row)
        if not self.rows:
            raise ValueError(f"{captions}: no usable rows in split {split!r} "
                             f"({n_good} usable rows in all splits); {need}")
        self.order = np.random.default_rng(seed).permutation(len(self.rows))
        self.bad: set[int] = set()  # rows whose image failed to decode (reported once)

    def __len__(self) -> int:
        return len(self.rows)

    def _load(self, row: _Row) -> Image.Image:
        with Image.open(os.path.join(self.path, row.file)) as im:
            im.draft("RGB", (self.image_size, self.image_size))  # JPEG: decode at reduced scale
            return fit_image(ImageOps.exif_transpose(im), self.image_size)

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
                          f"{FOLDER_DOMAIN}|{row.file}")
        raise ValueError(f"no image in {self.path!r} split {self.split!r} could be decoded")
