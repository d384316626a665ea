"""TensorBoard event files that mirror a run's log.jsonl (`--tensorboard true`; the optional
`tensorboard` extra): each number of a logged record becomes a scalar at its step.
"""
from __future__ import annotations

from pathlib import Path

from .curves import read_log

EVENT_FILES = "events.out.tfevents.*"  # the names SummaryWriter gives its event files
TENSORBOARD_MISSING = ('--tensorboard true needs the tensorboard package: '
                       'pip install --no-build-isolation -e ".[tensorboard]"')


class EventWriter:
    """TensorBoard event files in the run folder, mirroring log.jsonl: each number of a record
    with a step becomes a scalar tagged STAGE/KEY at that step, nested keys joined by "/"
    (dense/t2i, dense/heldout/mmu, moe/routing/layer0/modality_nmi). Lists (per-expert shares)
    and records without a step (the tokenizer's report, the conversion's) are left out.

    Opening one replaces the folder's event files by the log so far, which a resumed run has cut
    back to its checkpoint: TensorBoard never shows a step twice, and a resumed run that turns
    the flag on still shows its whole history."""

    def __init__(self, folder: Path, log: Path):
        from torch.utils.tensorboard import SummaryWriter  # optional extra: only if asked for
        for old in folder.glob(EVENT_FILES):
            old.unlink()
        self.writer = SummaryWriter(str(folder))
        for record in read_log(log) if log.exists() else []:
            self._add(record)
        self.writer.flush()

    def add(self, record: dict) -> None:
        """Write `record`'s scalars and flush them, so a crashed run's events are on disk."""
        self._add(record)
        self.writer.flush()

    def _add(self, record: dict) -> None:
        if "step" in record:
            for tag, value in _scalars(record, record.get("stage", "run")):
                self.writer.add_scalar(tag, value, record["step"])


# Record keys that are no scalar of their own: TensorBoard keeps each point's wall time itself,
# and a held-out record's time_s would repeat its step's.
NOT_SCALARS = ("stage", "step", "time_s")


def _scalars(record: dict, prefix: str):
    """(tag, number) for every number in `record` (nested dicts included) but NOT_SCALARS."""
    for key, value in record.items():
        if key in NOT_SCALARS:
            continue
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}/{key}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}/{key}", value
