"""Deliberate faults, so that the reliability tests can crash a real run at a chosen moment.

    MINIMOE_FAULT=kill-step:5 python train.py ...   # SIGKILL right after step 5's update
    MINIMOE_FAULT=kill-save:6 python train.py ...   # SIGKILL half-way through writing the
                                                    # checkpoint of step 6
    MINIMOE_FAULT=nan-loss:3,nan-grad:7 ...         # poison step 3's loss, step 7's gradients

Steps are the 1-based step counts that the log and the checkpoints use (a MoE run counts its
MoE stage from 1 again: the fault fires in every stage that reaches that step). Unset, which is
always the case outside the tests, every function here does nothing.
"""
from __future__ import annotations

import os
import signal

ENV = "MINIMOE_FAULT"
KINDS = ("kill-step", "kill-save", "nan-loss", "nan-grad")


def planned() -> dict[str, set[int]]:
    """The faults asked for in MINIMOE_FAULT, by kind."""
    plan: dict[str, set[int]] = {}
    for item in filter(None, os.environ.get(ENV, "").split(",")):
        kind, _, step = item.partition(":")
        if kind not in KINDS or not step.isdigit():
            raise ValueError(f"{ENV}={os.environ[ENV]!r}: use kind:step items with kind one of "
                             f"{', '.join(KINDS)}")
        plan.setdefault(kind, set()).add(int(step))
    return plan


def fires(kind: str, step: int) -> bool:
    return step in planned().get(kind, ())


def kill() -> None:
    """Die the way an out-of-memory killer or a pulled plug ends a run: no cleanup at all."""
    os.kill(os.getpid(), signal.SIGKILL)
