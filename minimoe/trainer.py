"""The training loop of stages 2 and 3: optimizer, learning-rate schedule, gradient
accumulation, data parallelism, non-finite steps, logging and periodic checkpoints.

`fit` writes through a `Writer` (run.py's `RunWriter` writes into a run folder), so the loop
knows nothing of folders or checkpoint payloads. Every step's model-side randomness (random
routing, dropout) is seeded by (seed, step, rank), and the batches by (seed, step) in
`batches.py`, so a resumed run continues exactly.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import time
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import faults
from .batches import STEP_SEED_STRIDE, Batcher
from .cli import UserError
from .config import Config
from .dist import clip_grad_norm_, sync_expert_grads_
from .losses import label_counts, labelled_losses, total_loss
from .optim import MuonAdamW, uses_muon
from .schedules import warmup_cosine
from .tokenizers import Vocab


# Steps between returns of freed heap memory to the system. A MoE step allocates blocks of a
# different size every step (each expert's share of the tokens), and glibc's malloc keeps what
# they free in a fragmented heap: the tiny preset's MoE stage grew by about 8 MB a step, and
# the main job peaked at 5.3 GB without this, 2.1 GB with it (see docs/reliability.md).
RELEASE_EVERY = 50


def _libc_trim():
    """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _libc_trim()


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the system; False where that is not possible."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class TrainingError(UserError):
    """A run that cannot go on (a non-finite loss or weights), with what to do about it."""


class Writer(Protocol):
    """Where `fit` logs and saves (run.RunWriter writes into a run folder)."""
    ckpt: Path  # the checkpoint file, named in messages

    def log_line(self, record: dict) -> None: ...

    def save(self, model, optimizer, stage: str, step: int, ep=None, skipped: int = 0) -> None:
        ...


def lr_at(step: int, cfg: Config, total: int, peak: float | None = None) -> float:
    """Linear warmup to the peak (default --lr), then cosine decay to peak * min_lr_ratio at
    `total`."""
    t = cfg.train
    return (t.lr if peak is None else peak) * warmup_cosine(step, total, t.warmup, t.min_lr_ratio)


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    # AdamW decays matrices and embeddings, never norms (nanoGPT's split); with --optimizer
    # muon the blocks' matrices go to Muon, in a group of their own ahead of those two.
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon = cfg.train.optimizer == "muon"
    decay = cfg.train.weight_decay
    rest = [p for n, p in named if not (muon and uses_muon(n, p))]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    if not muon:
        return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.95))
    matrices = [p for n, p in named if uses_muon(n, p)]
    return MuonAdamW([{"params": matrices, "weight_decay": decay, "muon": True}] + groups,
                     lr=cfg.train.lr)


def warn(writer: Writer, main: bool, bar, record: dict) -> None:
    """A warning line on the console (above the progress bar) and in the log (rank 0 only)."""
    if main:
        bar.write(f"warning: {record['warning']}")
        writer.log_line(record)


def all_finite(loss: torch.Tensor, grad_norm: torch.Tensor, data_parallel: bool) -> bool:
    """Whether the step's loss and gradient norm are finite on every rank (all ranks must
    agree on skipping or stopping, or the next collective would hang)."""
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    bad = (~torch.isfinite(loss) | ~torch.isfinite(grad_norm)).float()
    if data_parallel:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return not bool(bad)


def uses_bf16(autocast: str, device: torch.device) -> bool:
    """--autocast: bf16 and off force it; auto is bf16 on CUDA and CPU. On the CPU a bf16 step
    takes about 0.8-0.9x a float32 one, dense or MoE, and under Muon trains as well at equal
    steps (docs/EXPERIMENTS.md, "bf16 and compiled dense steps" and "... MoE steps")."""
    if autocast == "auto":
        return device.type in ("cuda", "cpu")
    return autocast == "bf16"


# Steps still to run from which compiling a CPU stage pays: ~40 s to compile against ~0.04 s
# saved a dense bf16 step, ~25 s against ~0.07 s a MoE one (bench/RESULTS.md).
COMPILE_PAYS_AFTER = {"dense": 1000, "moe": 400}


def compile_step(model, stage: str):
    """torch.compile(model) as a callable whose failure to build the step (no C++ compiler,
    say) ends the run in one line that says how to go on; the last checkpoint stays."""
    step = torch.compile(model)
    # Inductor's C++ build looks for a CUDA toolkit even for CPU code and, where one is
    # installed without a GPU, warns about it; nothing in that concerns the run.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

    def forward(*args, **kwargs):
        try:
            return step(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as e:
            cause = str(getattr(e, "inner_exception", e)).strip().splitlines() or ["?"]
            raise TrainingError(f"torch.compile could not build the {stage} step "
                                f"({cause[0][:160]}); rerun with --compile false") from e
    return forward


def compiles(flag: str, device: torch.device, stage: str, steps: int) -> bool:
    """--compile: true and false force it; auto compiles a CPU stage with enough `steps` still
    to run to pay for the compilation (measured on CPU only, so CUDA stays eager unless
    asked)."""
    if flag == "auto":
        return device.type == "cpu" and steps >= COMPILE_PAYS_AFTER[stage]
    return flag == "true"


def due(every: int, done: int, steps: int) -> bool:
    """Whether a periodic action (every `every` steps, 0: never) runs after step `done`; it
    also runs after the last step."""
    return every > 0 and (done % every == 0 or done == steps)


def fit(model, cfg: Config, writer: Writer, stage: str, steps: int, batcher: Batcher,
        device: torch.device, start_step: int = 0, optimizer=None, on_sample=None,
        on_heldout=None, progress: bool = True, router=None, peak_lr: float | None = None, ep=None,
        skipped: int = 0) -> list[dict]:
    """Train `model` for steps [start_step, steps), logging and saving through `writer`.
    Returns the logged records of this call.

    `ep` (dist.ExpertParallel): the MoE layers' experts are sharded over ranks (--ep).
    `router` (a routing.RouterTraining, MoE stage only) sets the router schedules before each
    step, adds the balance and z losses, updates aux-loss-free biases after the step and adds
    its statistics to the log. Every step's model-side randomness (random routing, dropout) is
    seeded by (seed, step) too.

    A step whose loss or gradient norm is not finite never reaches the weights: with
    --on-nonfinite stop the run ends with TrainingError (the last checkpoint on disk stays the
    last good one), with skip its update is dropped and counted (`skipped`: the count so far,
    saved in checkpoints) until more than --max-skips were dropped.

    Every --heldout-every steps rank 0 logs `on_heldout()` (held-out task losses) as a record
    of its own. The time it and `on_sample` take is left out of time_s and tok_per_s, which
    measure training alone.
    """
    t = cfg.train
    optimizer = optimizer or make_optimizer(model, cfg)
    data_parallel = dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if data_parallel else (0, 1)
    main = rank == 0  # only rank 0 logs, saves and samples
    module = getattr(model, "module", model)  # the model inside a DDP wrapper
    # Sharded weights (--ep or FSDP): checkpoints gather from every rank, and only all ranks
    # together can run the model (so no periodic sample grids).
    sharded = ep is not None or getattr(module, "fsdp", False)
    bf16 = uses_bf16(t.autocast, device)
    compiled = compiles(t.compile, device, stage, steps - start_step)  # a resumed run: what is left
    if main:
        print(f"{stage} steps: {'bf16' if bf16 else 'float32'} matmuls, "
              f"{'compiled (the first steps wait for it)' if compiled else 'eager'}")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    # The compiled forward shares the module's weights, so checkpoints and the optimizer are
    # unchanged; only the training step runs through it.
    forward = compile_step(model, stage) if compiled else model
    vocab = Vocab(cfg.vq.vq_codes, cfg.data.text_vocab)
    codes = (vocab.image_offset, vocab.codes)  # the ids --t2i-smoothing spreads over
    records, seen_tokens, t0 = [], 0, time.time()
    bar = tqdm(range(start_step, steps), desc=stage, disable=not (progress and main),
               dynamic_ncols=True, initial=start_step, total=steps)
    model.train()
    for step in bar:
        done = step + 1  # steps are counted from 1 in the log, the checkpoints and messages
        lr = lr_at(step, cfg, steps, peak_lr)
        for g in optimizer.param_groups:
            g["lr"] = lr
        # model-side randomness (random routing, dropout) per (seed, step, rank)
        torch.manual_seed((t.seed * STEP_SEED_STRIDE + step) * world + rank)
        if router:
            router.before_step(step)
        micro = [batcher(step * t.grad_accum + i).to(device) for i in range(t.grad_accum)]
        counts = label_counts(micro, data_parallel)
        optimizer.zero_grad(set_to_none=True)
        losses, loss = {}, 0.0
        for i, batch in enumerate(micro):  # gradients of all micro-batches add up
            last = i == len(micro) - 1
            sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") \
                else model.no_sync()
            with sync, autocast:
                out, part = labelled_losses(forward, batch, counts, world, t.t2i_focal,
                                            t.t2i_smoothing, codes)
                micro_loss = total_loss(part, cfg)
                if router:
                    aux = {k: v / len(micro) for k, v in router.losses(out.routing).items()}
                    micro_loss = micro_loss + router.weighted(aux)
                    part.update(aux)
                if faults.fires("nan-loss", done):
                    micro_loss = micro_loss * float("nan")
                micro_loss.backward()
            loss = loss + micro_loss.detach()
            losses = {k: losses.get(k, 0) + v.detach() for k, v in part.items()}
            if router and not last:
                router.observe(out.routing)
        if faults.fires("nan-grad", done):
            next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("nan"))
        if ep is None:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        else:  # expert shards: their own gradient sum and a norm over the whole model
            sync_expert_grads_(module, ep)
            grad_norm = clip_grad_norm_(module, t.grad_clip, ep)
        if all_finite(loss, grad_norm, data_parallel):
            optimizer.step()
            if router:
                for warning in router.after_step(out.routing, done):
                    warn(writer, main, bar, {"stage": stage, "step": done, "warning": warning})
        else:  # the update is dropped (or the run stops) before any weight sees the NaN
            skipped += 1
            what = (f"{stage} step {done}: the loss ({loss.item():.4g}) or the gradient norm "
                    f"({grad_norm.item():.4g}) is not finite")
            if t.on_nonfinite == "stop" or skipped > t.max_skips:
                reason = "" if t.on_nonfinite == "stop" else \
                    f"; {skipped} steps skipped, over --max-skips {t.max_skips}"
                raise TrainingError(
                    f"{what}{reason}. The last good checkpoint ({writer.ckpt}) was kept; lower "
                    f"--lr or --grad-clip (or pass --on-nonfinite skip) and resume with --resume")
            warn(writer, main, bar, {"stage": stage, "step": done, "skipped": skipped,
                                    "warning": f"{what}; update skipped ({skipped} of at most "
                                               f"--max-skips {t.max_skips})"})
        seen_tokens += sum(b.tokens_BL.numel() for b in micro)
        if done % t.log_every == 0 or done == steps:
            rec = {"stage": stage, "step": done, "loss": round(loss.item(), 5), "lr": lr,
                   "grad_norm": round(grad_norm.item(), 4),
                   **{k: round(v.item(), 5) for k, v in losses.items()},
                   "tok_per_s": round(seen_tokens / (time.time() - t0)), "tokens": seen_tokens,
                   "time_s": round(time.time() - t0, 2), **(router.record() if router else {}),
                   **({"skipped": skipped} if skipped else {})}
            records.append(rec)
            if main:
                writer.log_line(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", t2i=rec.get("t2i"), mmu=rec.get("mmu"),
                            tok_s=rec["tok_per_s"])
        if (main or sharded) and (done % t.ckpt_every == 0 or done == steps):
            writer.save(module, optimizer, stage, done, ep=ep, skipped=skipped)
        if done % RELEASE_EVERY == 0:
            release_freed_memory()
        if faults.fires("kill-step", done):
            faults.kill()
        paused = time.time()
        if main and on_sample and not sharded and due(t.sample_every, done, steps):
            on_sample(done)
        if main and on_heldout and not sharded and due(t.heldout_every, done, steps):
            rec = {"stage": stage, "step": done, "time_s": round(paused - t0, 2),
                   "heldout": {k: round(v, 5) for k, v in on_heldout().items()}}
            records.append(rec)
            writer.log_line(rec)
        model.train()
        t0 += time.time() - paused
    return records
