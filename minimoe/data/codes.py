"""Pre-tokenised image codes (`--data codes:DIR`): a dataset that a trained image tokenizer
encoded once (`python -m minimoe.pretokenize`), so that training reads each image's grid of
codes instead of decoding the image and running the VQ encoder on it every step.

    DIR/manifest.json          what made the codes, and the shards of each split
    DIR/vq.pt                  the tokenizer that made them (a run with --data codes:DIR uses it)
    DIR/train/000000.pt ...    shards of up to --shard-size samples, in the source's order
    DIR/heldout/000000.pt ...

A shard is a torch file, read with `weights_only=True`:

    {"codes": int16 tensor [n, h, w]   (int32 for codebooks over 32768 codes)
     "rows":  JSON text of n objects {"caption", "qa": [[q, a], ...], "domain", "key", "objects"}}

The manifest (JSON):

    {"format": "minimoe-codes", "version": 1,
     "source": the --data spec that was encoded, "seed": its seed, "domains": its --domains,
     "tokenizer": {"image_size", "vq_downsample", "vq_codes", "vq_colours", "vq_dim", "vq_channels",
                   "vq_encoder", "text_vocab", "vq_sha256": hash of the VQ weights},
     "grid": [h, w],
     "splits": {"train": [{"file": "train/000000.pt", "samples": n, "sha256": "..."}, ...],
                "heldout": [...]}}

Sample i of a split is stored sample i modulo their number: the order the source gave (the
built-in mix; a folder's seeded shuffle), so a run from codes reads the samples a run from the
source would have read. A sample carries `codes` (long [h, w]) and no image. A shard that is
missing, damaged (its sha256 is not the manifest's) or malformed is reported once, one line,
and its samples are skipped; so are rows whose texts are over the run's text limit.
"""
from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import json
import os
import warnings
from collections import OrderedDict

import torch

from ..atomic import replace, write_text
from .base import SPLITS, Sample, TextLimit, check_split
from .folder import DataWarning

PREFIX = "codes:"  # --data codes:DIR
FORMAT = "minimoe-codes"  # marks our manifests, so that a stray manifest.json is refused
VERSION = 1  # the manifest and shard layout this code reads and writes
MANIFEST = "manifest.json"
MANIFEST_KEYS = ("source", "seed", "domains", "tokenizer", "grid", "splits")
TOKENIZER_FILE = "vq.pt"
SHARD_SAMPLES = 4096  # samples a shard holds by default: 0.5 MB of codes at the tiny preset
INT16_CODES = 1 << 15  # codebooks up to this size store their codes as int16
SHARD_CACHE = 4  # shards kept loaded per source: reading in order needs one or two at a time
MAKE = "make it with python -m minimoe.pretokenize --ckpt RUN/vq.pt --data SPEC --out {}"


def _report(message: str) -> None:
    warnings.warn(message, DataWarning, stacklevel=3)


def vq_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a VQ model's state dict (names, dtypes, shapes and bytes): the identity of
    the tokenizer that codes belong to."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(state[name].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def codes_dtype(n_codes: int) -> torch.dtype:
    return torch.int16 if n_codes <= INT16_CODES else torch.int32


def read_manifest(path: str) -> dict:
    """DIR/manifest.json, checked to be ours; ValueError with one line otherwise."""
    where = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise ValueError(f"codes folder {path!r} does not exist; {MAKE.format(path)}")
    if not os.path.isfile(where):  # pretokenize writes it last: an unfinished folder has none
        raise ValueError(f"codes folder {path!r} has no {MANIFEST}; {MAKE.format(path)}")
    try:
        with open(where, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where} is not valid JSON ({type(e).__name__}); "
                         f"{MAKE.format(path)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{where} is not a minimoe codes manifest; {MAKE.format(path)}")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{where} has codes format version {manifest.get('version')}, this "
                         f"code reads version {VERSION}; pretokenize again")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing or "vq_sha256" not in manifest["tokenizer"]:
        raise ValueError(f"{where} lacks {(missing or ['tokenizer.vq_sha256'])[0]!r}; "
                         f"pretokenize again")
    return manifest


def check_tokenizer(path: str, manifest: dict, vq_state: dict, what: str) -> None:
    """Refuse a tokenizer (`what` names where it came from) that did not make DIR's codes."""
    made, given = manifest["tokenizer"]["vq_sha256"], vq_fingerprint(vq_state)
    if made != given:
        raise ValueError(f"{what} is not the tokenizer that made the codes in {path} (VQ "
                         f"weights hash {given[:12]}, the codes' {made[:12]}); pretokenize "
                         f"again with this tokenizer, or start a new --out")


class ShardWriter:
    """Writes one split's shards into DIR/SPLIT/ and lists them for the manifest."""

    def __init__(self, root: str, split: str, shard_samples: int, n_codes: int):
        check_split(split)
        self.root, self.split, self.size = root, split, shard_samples
        self.dtype = codes_dtype(n_codes)
        self.codes: list[torch.Tensor] = []
        self.rows: list[dict] = []
        self.shards: list[dict] = []

    def add(self, codes_BHW: torch.Tensor, samples: list[Sample]) -> None:
        for c, s in zip(codes_BHW.to(self.dtype).cpu(), samples):
            self.codes.append(c)
            self.rows.append({"caption": s.caption, "qa": [list(p) for p in s.qa],
                              "domain": s.domain, "key": s.key, "objects": s.objects})
            if len(self.rows) == self.size:
                self._flush()

    def close(self) -> list[dict]:
        if self.rows:
            self._flush()
        return self.shards

    def _flush(self) -> None:
        name = f"{self.split}/{len(self.shards):06d}.pt"
        buffer = io.BytesIO()
        # Rows as JSON text: plain to read back under weights_only (objects hold numpy floats).
        torch.save({"codes": torch.stack(self.codes),
                    "rows": json.dumps(self.rows, default=lambda x: x.item())}, buffer)
        raw = buffer.getvalue()
        with replace(os.path.join(self.root, name)) as f:
            f.write(raw)
        self.shards.append({"file": name, "samples": len(self.rows),
                            "sha256": hashlib.sha256(raw).hexdigest()})
        self.codes, self.rows = [], []


def write_manifest(root: str, manifest: dict) -> None:
    write_text(os.path.join(root, MANIFEST), json.dumps({"format": FORMAT, "version": VERSION,
                                                         **manifest}, indent=1))


class CodesData:
    """One split of a codes folder. Indexable by any i >= 0 (it wraps around, like a folder);
    shards are loaded when first read, a few kept in memory."""

    def __init__(self, path: str, image_size: int | None = None, split: str = "train",
                 limit: TextLimit = TextLimit()):
        check_split(split)
        self.path, self.split, self.limit = path, split, limit
        self.manifest = read_manifest(path)
        tok = self.manifest["tokenizer"]
        if image_size is not None and tok["image_size"] != image_size:
            raise ValueError(f"codes folder {path!r} holds codes of {tok['image_size']} px "
                             f"images, but this run asks for --image-size {image_size}; drop "
                             f"the flag")
        self.grid = tuple(self.manifest["grid"])
        self.n_codes = tok["vq_codes"]
        self.shards = self.manifest["splits"].get(split, [])
        counts = [int(s["samples"]) for s in self.shards]
        self.starts = [0, *itertools.accumulate(counts)][:-1]  # each shard's first position
        self.n = sum(counts)
        if not self.n:
            raise ValueError(f"codes folder {path!r} holds no {split} samples; pretokenize "
                             f"a source with both splits ({', '.join(SPLITS)})")
        self.bad_shards: set[int] = set()
        self.over_limit: dict[int, set[int]] = {}  # per shard read: rows whose texts do not fit
        self._cache: OrderedDict[int, tuple[torch.Tensor, list[dict]]] = OrderedDict()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        if i < 0:
            raise IndexError(f"index {i} must be >= 0")
        for step in range(self.n):  # a bad shard or row hands over to the next sample
            pos = (i + step) % self.n
            k = bisect.bisect_right(self.starts, pos) - 1
            shard = self._shard(k)
            j = pos - self.starts[k]
            if shard is None or j in self.over_limit[k]:
                continue
            codes, rows = shard
            r = rows[j]
            return Sample(None, r["caption"], [tuple(p) for p in r["qa"]], r["domain"],
                          r["objects"], r["key"], codes=codes[j].long())
        raise ValueError(f"no usable shard or row in codes folder {self.path!r} split "
                         f"{self.split!r}; pretokenize again")

    def _shard(self, k: int) -> tuple[torch.Tensor, list[dict]] | None:
        if k in self.bad_shards:
            return None
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        entry = self.shards[k]
        file = os.path.join(self.path, entry["file"])
        try:
            loaded = self._load(file, entry)
        except Exception as e:  # torch and json raise many types for damaged files
            self.bad_shards.add(k)
            why = e if isinstance(e, ValueError) else type(e).__name__
            _report(f"{file}: unusable shard ({why}); its {entry['samples']} samples are "
                    f"skipped")
            return None
        if k not in self.over_limit:
            self.over_limit[k] = self._check_texts(file, loaded[1])
        self._cache[k] = loaded
        if len(self._cache) > SHARD_CACHE:
            self._cache.popitem(last=False)
        return loaded

    def _load(self, file: str, entry: dict) -> tuple[torch.Tensor, list[dict]]:
        if not os.path.isfile(file):
            raise ValueError("file not found")
        with open(file, "rb") as f:
            raw = f.read()
        if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
            raise ValueError("its sha256 is not the manifest's: changed or damaged")
        shard = torch.load(io.BytesIO(raw), weights_only=True)
        codes, rows = shard["codes"], json.loads(shard["rows"])
        n = int(entry["samples"])
        if tuple(codes.shape) != (n, *self.grid) or len(rows) != n:
            raise ValueError(f"codes {tuple(codes.shape)} and {len(rows)} rows, not the "
                             f"manifest's {n} of grid {self.grid}")
        if codes.numel() and not (0 <= int(codes.min()) and int(codes.max()) < self.n_codes):
            raise ValueError(f"codes outside [0, {self.n_codes})")
        return codes, rows

    def _check_texts(self, file: str, rows: list[dict]) -> set[int]:
        """Rows whose caption or "question answer" is over the run's limit, reported once."""
        bad = set()
        for j, r in enumerate(rows):
            texts = [("caption", r["caption"])] + [(f"qa {q!r} {a!r}", f"{q} {a}")
                                                   for q, a in r["qa"]]
            why = next(((name, w) for name, t in texts if (w := self.limit.over(t))), None)
            if why:
                bad.add(j)
                _report(f"{file} row {j} ({r['key']}): {why[0]} is {why[1]}; skipped")
        return bad
