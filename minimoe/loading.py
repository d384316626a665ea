"""Data loading beside training (`--workers N`): N DataLoader worker processes read and decode
the samples of the steps ahead while the model trains on the current one.

    load = Prefetcher(read, workers=4)    # read(step) -> what that step needs (its samples)
    load(step)                            # == read(step), bit for bit, for any N

Each item is one step's `read(step)`, and the sampler yields step numbers in order from the
step first asked for. Asking for any other step (a resumed run's first, or the MoE stage's
first step after its calibration batches) starts the workers again from there. A worker reads
a copy of the source, and a source's sample i is a pure function of i, so what it reads does
not depend on N; N = 0 calls `read` in the training process.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class _Raised:
    """An error a worker met, carried back to be raised in the training process as itself
    (a DataLoader would raise a new one, its message the worker's whole traceback)."""

    def __init__(self, error: Exception):
        self.error = error


class _Steps(Dataset):
    """Step number -> read(step), in a worker."""

    def __init__(self, read: Callable[[int], object]):
        self.read = read

    def __getitem__(self, step: int):
        try:
            return self.read(step)
        except Exception as e:  # whatever the source raises, the training process raises
            return _Raised(e)


class _From(Sampler):
    """Step numbers start, start + 1, ... without end (training asks for as many as it runs)."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def _as_is(item):
    """The DataLoader's collate: a step's item goes through unchanged."""
    return item


class Prefetcher:
    """`read(step)`, computed `workers` steps ahead in worker processes (0: on call)."""

    def __init__(self, read: Callable[[int], object], workers: int = 0):
        if workers < 0:
            raise ValueError(f"--workers {workers} must be >= 0")
        self.read, self.workers = read, workers
        self.items: Iterator | None = None  # the workers' output, from step `next_step` on
        self.next_step = 0

    def __call__(self, step: int):
        if self.workers == 0:
            return self.read(step)
        if self.items is None or step != self.next_step:
            # Dropping the old iterator stops its workers; new ones start at `step`.
            self.items = iter(DataLoader(
                _Steps(self.read), batch_size=None, sampler=_From(step),
                num_workers=self.workers, collate_fn=_as_is,
                # the workers' seeds, from a generator of their own: drawn from the global one
                # they would move the model-side draws that training seeds before each step
                generator=torch.Generator(),
                # page-locked tensors copy to the GPU faster; anything else passes unchanged
                pin_memory=torch.cuda.is_available()))
        self.next_step = step + 1
        item = next(self.items)
        if isinstance(item, _Raised):
            raise item.error
        return item
