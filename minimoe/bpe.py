"""Byte-level BPE for text, trained on a run's own captions and questions, so that a word of
the built-in data is one token instead of 3 to 9 bytes.

    merges = train(texts, vocab_size=512)      # [(a, b), ...]: tokens a and b -> token 256 + i
    bpe = BPE(merges)
    ids = bpe.encode("a red circle")            # [97, 300, 301]: "a", " red", " circle"
    bpe.decode(ids) == "a red circle"

Ids 0..255 are the bytes themselves, so every string round-trips: a word the merges never saw
falls back to its bytes. Text is first split into pre-tokens (a word with its leading space,
a number, a run of other characters, a run of white space) and merges never cross them, as in
GPT-2; training counts each distinct pre-token once with its frequency, so it takes
milliseconds on the built-in data's few hundred words.
"""
from __future__ import annotations

import functools
import re
from collections import Counter

BYTES = 256  # ids below this are single bytes
# Covers every character: letters, digits, other non-space characters, and white space.
PRETOKEN = re.compile(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+")
MIN_PAIR_COUNT = 2  # a pair seen once is not worth a token


def pretokens(text: str) -> list[bytes]:
    return [p.encode("utf-8") for p in PRETOKEN.findall(text)]


def _merge(word: tuple[int, ...], pair: tuple[int, int], new: int) -> tuple[int, ...]:
    """`word` with every non-overlapping occurrence of `pair` (left to right) replaced."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def train(texts, vocab_size: int) -> list[tuple[int, int]]:
    """Merges learnt from `texts`, at most vocab_size - 256 of them: each step merges the most
    frequent adjacent pair (ties: the smallest ids), until no pair occurs MIN_PAIR_COUNT
    times. Deterministic in the texts."""
    if vocab_size < BYTES:
        raise ValueError(f"a byte-level vocabulary needs at least {BYTES} ids, got {vocab_size}")
    words = Counter(tuple(p) for t in texts for p in pretokens(t))
    merges: list[tuple[int, int]] = []
    while BYTES + len(merges) < vocab_size:
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < MIN_PAIR_COUNT:
            break
        merges.append(best)
        words = Counter({_merge(w, best, BYTES + len(merges) - 1): c for w, c in words.items()})
    return merges


class BPE:
    """Encoding and decoding with a list of merges (as `train` returns them)."""

    def __init__(self, merges: list[tuple[int, int]]):
        self.merges = [tuple(m) for m in merges]
        self.rank = {pair: i for i, pair in enumerate(self.merges)}
        self.bytes = [bytes([b]) for b in range(BYTES)]
        for a, b in self.merges:
            self.bytes.append(self.bytes[a] + self.bytes[b])
        self._encode_word = functools.lru_cache(maxsize=1 << 16)(self._word)

    @property
    def size(self) -> int:
        return BYTES + len(self.merges)

    def _word(self, word: bytes) -> tuple[int, ...]:
        """Apply the merges to one pre-token, earliest-learnt pair first (as in training)."""
        ids = tuple(word)
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: self.rank.get(p, len(self.rank)))
            if pair not in self.rank:
                break
            ids = _merge(ids, pair, BYTES + self.rank[pair])
        return ids

    def encode(self, text: str) -> list[int]:
        return [i for p in pretokens(text) for i in self._encode_word(p)]

    def decode_bytes(self, ids) -> bytes:
        return b"".join(self.bytes[i] for i in ids)
