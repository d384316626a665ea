"""What the scripts share on the command line: one-line errors, the argument parser, the
device choice.

Every mistake a user can make (a bad flag, a missing file, a checkpoint of another run) is
raised as a `UserError` (or a ValueError from the library) and printed by `user_errors` as one
line, `error: ...`, with exit status 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import warnings

import torch

from .config import GUIDANCE_SCHEDULES


class UserError(RuntimeError):
    """A failure the user can fix (a mistake in what was asked, a file that does not fit):
    the scripts print it as one line."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose answer to a bad command line is one line, like every other user error
    (argparse itself prints the whole usage block first), with the same exit status 2.
    Abbreviated flags are refused: --fid would otherwise silently mean --fid-n."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def about(doc: str) -> str:
    """A script's --help description: the first paragraph of its docstring on one line (the
    first line alone often stops mid-sentence)."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def add_debug_flag(parser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")


def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def user_errors(debug: bool):
    """Turn expected failures into `error: ...` on stderr and exit status 2, and warnings
    (a skipped data row, ...) into one `warning: ...` line each; --debug keeps tracebacks
    and the warnings' source lines."""
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _one_line
            yield
    except (UserError, ValueError) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        sys.exit(130)


# MaskGIT has nothing left to reveal after as many steps as a grid has codes; far beyond that a
# value is a typo, not a plan.
MAX_SAMPLE_STEPS = 1024


def add_sampling_flags(parser) -> None:
    """--steps, --guidance, --guidance-schedule, --choice-temperature, --code-temperature:
    MaskGIT settings that default to the run's."""
    parser.add_argument("--steps", type=int, default=None,
                        help="MaskGIT steps (default: the run's --sample-steps)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (default: the run's)")
    parser.add_argument("--guidance-schedule", default=None, choices=GUIDANCE_SCHEDULES,
                        help="the guidance scale over the steps: constant, falling (full at the "
                             "empty grid, fading as codes fill in) or rising (default: the run's)")
    parser.add_argument("--choice-temperature", type=float, default=None,
                        help="MaskGIT confidence noise at the first step, annealed to 0 "
                             "(default: the run's)")
    parser.add_argument("--code-temperature", type=float, default=None,
                        help="softmax temperature of the codes drawn at each step; 0 takes the "
                             "likeliest code (default: the run's)")


def check_sampling(args) -> None:
    """Refuse sampling settings that are not finite or out of range, before any model runs."""
    if args.steps is not None and not 1 <= args.steps <= MAX_SAMPLE_STEPS:
        raise UserError(f"--steps {args.steps}: use 1 to {MAX_SAMPLE_STEPS} MaskGIT steps")
    if args.guidance is not None and not math.isfinite(args.guidance):
        raise UserError(f"--guidance {args.guidance} is not a number; use a finite scale "
                        f"such as 2 (0: no guidance)")
    for flag, t, meaning in (
            ("--code-temperature", args.code_temperature,
             "1: the model's own distribution, 0: always the likeliest code"),
            ("--choice-temperature", args.choice_temperature,
             "0: always keep the most confident codes")):
        if t is not None and not (math.isfinite(t) and t >= 0):
            raise UserError(f"{flag} {t}: use a finite number >= 0 ({meaning})")


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {spec} asked for, but this torch sees no CUDA GPU; "
                        f"use --device cpu")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N")
