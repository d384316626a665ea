"""Tar shards of images with captions (`--data wds:PATTERN`): the WebDataset format that real
image-caption datasets (CC3M, LAION; what img2dataset writes) ship in.

    --data wds:shards/cc-{000000..000127}.tar        (brace expansion; local files)

A sample is the members of a shard that share a key (`000123.jpg`, `000123.json`), next to
each other in the tar (a key holds no dot: webdataset splits a name at the first dot of its
last part): an image (jpg, jpeg, png or webp) and a caption, from `json` (a folder row without
"file": {"caption", "qa", "domain"}, the last two optional, other keys ignored) or else `txt`.
`python -m minimoe.data.pack FOLDER OUT` writes such shards from a data folder.

minimoe reads sources by index (`batches.Batcher` reads sample first + i of a step, in order),
and a tar is a stream, so the source is an endless stream of epochs with an index over it:

    epoch e    the shards shuffled by (seed, e); this rank reads shuffled[rank::world]
               -> their samples in tar order, of this split only (split_of(f"wds|{key}")),
                  bad ones reported and left out
               -> a shuffle buffer of SHUFFLE_BUFFER samples seeded by (seed, e, rank)
    index i    the i-th sample of epoch 0, then of epoch 1, ...

Sample i is a pure function of the shards, the seed, the split, the rank's place among the
ranks, the text limit and i. So a resumed run reads on from where an uninterrupted one would
be, and a checkpoint needs nothing beyond its step. The source keeps its open stream and
position: reading on costs one sample; an index behind the position restarts that index's
epoch and skips forward over tar bytes (captions checked, no image decoded). A fresh process
(a resumed run, a DataLoader worker) starts at the beginning of the stream, so its first read
far into it re-reads the shards up to there.

Bad samples (a bad JSON or txt, text over the run's limit, no image or no caption, a key that
is absolute or climbs out with '..') are reported once, one DataWarning line each, and left
out, as the folder source leaves out bad rows (it shares their checks). Which samples count is
decided without decoding any image; an image that then fails to decode hands over to the next
sample, as in a folder, so no other sample moves.
"""
from __future__ import annotations

import bisect
import io
import os
import random
import tarfile
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .base import Sample, TextLimit, check_split, sample_key, split_of
from .folder import DataWarning, decode_image, inside, parse_object, row_texts

PREFIX = "wds:"  # --data wds:PATTERN
SHARD_DOMAIN = "wds"  # split keys are f"wds|{key}"; also the domain of samples naming none
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SHUFFLE_BUFFER = 1000  # samples mixed across shards (as raw bytes); webdataset's usual size
SHUFFLE_INITIAL = 100  # samples buffered before the first comes out: a source opens quickly
LOOKBEHIND = 64  # recent samples kept: the one after an undecodable image is read twice
MAX_BAD_IMAGES = 1000  # undecodable images in a row that mean the data is broken, not a file
INSTALL = 'pip install -e ".[data]"'
PACK = "python -m minimoe.data.pack FOLDER OUT writes shards from a data folder"


def webdataset():
    """The webdataset package, or a one-line error saying how to install it."""
    try:
        import webdataset as wds  # an optional extra (setup.py "data"), 1 s to import
    except ImportError:
        raise ValueError(f"--data {PREFIX}PATTERN reads tar shards with the webdataset "
                         f"package, which is not installed; {INSTALL}") from None
    return wds


def expand(pattern: str) -> list[str]:
    """The shard files a brace pattern names ("cc-{000000..000127}.tar"; "::" joins patterns);
    ValueError if it names none, or a file that does not exist."""
    if not pattern.strip():
        raise ValueError(f"--data {PREFIX} names no shards; give a pattern such as "
                         f"{PREFIX}shards/cc-{{000000..000127}}.tar")
    shards = webdataset().shardlists.expand_urls(pattern)
    missing = [s for s in shards if not os.path.isfile(s)]
    if len(missing) == len(shards):
        raise ValueError(f"--data {PREFIX}{pattern}: no shard file matches (the first name it "
                         f"gives is {shards[0]!r}); {PACK}")
    if missing:
        raise ValueError(f"--data {PREFIX}{pattern}: {len(missing)} of its {len(shards)} "
                         f"shards do not exist, the first {missing[0]!r}")
    return shards


@dataclass
class _Record:
    """A checked sample, its image still encoded."""
    where: str  # "SHARD sample KEY", for messages; unique where keys repeat across shards
    key: str  # the split key, f"wds|{key}"
    image: bytes
    caption: str
    qa: list[tuple[str, str]]
    domain: str


class ShardData:
    """One split of a set of tar shards, read as an indexed stream (the module docstring).

    With world > 1 it is rank `rank`'s own part (`per_rank`): `batches.Batcher` makes it with
    `for_rank` and indexes it by the rank-local position.
    """

    def __init__(self, pattern: str, image_size: int = 32, split: str = "train", seed: int = 0,
                 limit: TextLimit = TextLimit(), rank: int = 0, world: int = 1):
        check_split(split)
        self.pattern, self.image_size, self.split, self.seed = pattern, image_size, split, seed
        self.limit, self.rank, self.world = limit, rank, world
        self.shards = expand(pattern)
        if len(self.shards) < world:
            raise ValueError(f"--data {PREFIX}{pattern}: {len(self.shards)} shards for {world} "
                             f"ranks, and each rank reads shards of its own; pack the data "
                             f"into at least {world} (a smaller --shard-size)")
        self.per_rank = world > 1
        self.reported: set[str] = set()  # messages given (a bad sample comes every epoch)
        self.bad_images: set[str] = set()  # records (`where`) whose image failed to decode
        self.epoch_starts = [0]  # index of the first sample of every epoch reached so far
        self.recent: OrderedDict[int, _Record] = OrderedDict()
        self.stream: Iterator[_Record] | None = None
        self.stream_pid = os.getpid()  # the process that opened the stream
        self.epoch = self.position = 0  # the stream's epoch, the index of its next record
        self._record(0)  # an empty split fails here, not in the middle of a run

    def for_rank(self, rank: int, world: int) -> ShardData:
        """The same data split over `world` ranks: this rank's shards of every epoch."""
        return ShardData(self.pattern, self.image_size, self.split, self.seed, self.limit,
                         rank, world)

    def __getstate__(self) -> dict:
        # An open tar stream does not pickle (a DataLoader worker that is spawned, not
        # forked): the copy reopens it where it first reads.
        return {**self.__dict__, "stream": None}

    # --- the stream ----------------------------------------------------------------------------

    def _report(self, message: str) -> None:
        if message not in self.reported:
            self.reported.add(message)
            warnings.warn(message, DataWarning, stacklevel=3)

    def _members(self, paths: list[str]) -> Iterator[dict]:
        """The files in the shards, in order, as webdataset's grouping into samples takes them
        (local files only: webdataset's own opener would run a 'pipe:' name as a command). A
        shard that cannot be read to its end is reported and the rest of it skipped."""
        for path in paths:
            try:
                with tarfile.open(path, "r|*") as tar:
                    for info in tar:
                        if info.isreg():
                            yield {"fname": info.name, "data": tar.extractfile(info).read(),
                                   "__url__": path}
                        tar.members = []  # a streamed tar would keep every header
            except (OSError, EOFError, tarfile.TarError) as e:
                self._report(f"{path}: unreadable tar data ({type(e).__name__}: {e}); the rest "
                             f"of it skipped")
            yield {}  # a shard ends here: no sample joins members of two shards

    def _bad_member(self, error: Exception) -> bool:
        """webdataset's error handler while grouping members (a name twice in one sample)."""
        self._report(f"--data {PREFIX}{self.pattern}: {error.args[0]}; skipped")
        return True

    def epoch_shards(self, epoch: int) -> list[str]:
        """This rank's shards in `epoch`, in reading order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        return [self.shards[k] for k in order[self.rank::self.world]]

    def _epoch_stream(self, epoch: int) -> Iterator[_Record]:
        wds = webdataset()
        samples = wds.tariterators.group_by_keys(self._members(self.epoch_shards(epoch)),
                                                 handler=self._bad_member)
        records = filter(None, map(self._check, samples))
        rng = random.Random(f"{self.seed}:{epoch}:{self.rank}")
        return wds.filters.shuffle(SHUFFLE_BUFFER, SHUFFLE_INITIAL, rng=rng)(records)

    def _check(self, sample: dict) -> _Record | None:
        """The record of a webdataset sample of this split; None for the other split and for
        a bad sample (reported)."""
        name = sample["__key__"]
        key = sample_key(SHARD_DOMAIN, name)
        if split_of(key) != self.split:
            return None
        where = f"{sample['__url__']} sample {name}"
        try:
            if not inside(name):
                raise ValueError(f"{where}: member names must be paths inside the shard "
                                 f"(relative, without '..')")
            image = next((sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample), None)
            if image is None:
                raise ValueError(f"{where}: no image ({', '.join(IMAGE_EXTENSIONS)})")
            if "json" not in sample and "txt" not in sample:
                raise ValueError(f"{where}: no caption (json or txt)")
            row = {}
            if "json" in sample:
                try:
                    row = parse_object(sample["json"])
                except ValueError as e:
                    raise ValueError(f"{where}: json {e}") from None
            if not isinstance(row.get("caption"), str) and "txt" in sample:
                try:
                    row = {**row, "caption": sample["txt"].decode("utf-8")}
                except UnicodeDecodeError as e:
                    raise ValueError(f"{where}: txt not valid UTF-8 ({e.reason} at byte "
                                     f"{e.start})") from None
            caption, qa, domain = row_texts(row, self.limit, where, SHARD_DOMAIN)
        except ValueError as e:
            self._report(f"{e}; skipped")
            return None
        return _Record(where, key, image, caption, qa, domain)

    def _restart(self, epoch: int) -> None:
        self.stream, self.stream_pid = self._epoch_stream(epoch), os.getpid()
        self.epoch, self.position = epoch, self.epoch_starts[epoch]

    def _record(self, i: int) -> _Record:
        """Record i of the stream: kept, next, or read on to."""
        if i in self.recent:
            return self.recent[i]
        # A forked copy (a DataLoader worker) shares its parent's file offsets: it must open
        # its own files rather than read on in the parent's.
        if self.stream is None or self.stream_pid != os.getpid() or i < self.position:
            self._restart(bisect.bisect_right(self.epoch_starts, i) - 1)
        while True:
            record = next(self.stream, None)
            if record is None:  # the epoch is over
                if self.position == self.epoch_starts[self.epoch]:
                    where = f" for rank {self.rank} of {self.world}" if self.per_rank else ""
                    raise ValueError(f"--data {PREFIX}{self.pattern}: no usable sample in "
                                     f"split {self.split!r}{where} (epoch {self.epoch}); {PACK}")
                if len(self.epoch_starts) == self.epoch + 1:
                    self.epoch_starts.append(self.position)
                self._restart(self.epoch + 1)
                continue
            self.recent[self.position] = record
            if len(self.recent) > LOOKBEHIND:
                self.recent.popitem(last=False)
            self.position += 1
            if self.position > i:
                return record

    # --- samples -------------------------------------------------------------------------------

    def __getitem__(self, i: int) -> Sample:
        if i < 0:
            raise IndexError(f"index {i} must be >= 0")
        for j in range(i, i + MAX_BAD_IMAGES):  # a bad image hands over to the next sample
            record = self._record(j)
            if record.where in self.bad_images:
                continue
            data = io.BytesIO(record.image)
            try:
                image = decode_image(data, self.image_size)
            except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
                self.bad_images.add(record.where)
                reason = str(e).replace(repr(data), "<image bytes>")  # not an object's address
                self._report(f"{record.where}: cannot decode image ({type(e).__name__}: "
                             f"{reason}); skipped")
                continue
            return Sample(image, record.caption, list(record.qa), record.domain, [], record.key)
        raise ValueError(f"--data {PREFIX}{self.pattern}: {MAX_BAD_IMAGES} images in a row of "
                         f"split {self.split!r} could not be decoded")
