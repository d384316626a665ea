"""Stage 2 (and later stages): mixed-task batches, losses, schedule and the training loop.

Every random draw of a step (which samples, caption dropout, mask ratios and positions) comes
from a generator seeded by (seed, step), so a resumed run sees exactly the batches it would
have seen, and the checkpoint needs no RNG state.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint, faults
from .config import Config, to_dict
from .schedules import warmup_cosine
from .sequences import (IGNORE, LM, MMU, T2I, TASKS, Batch, collate, concat, lm_row,
                        mask_images, mmu_row, question_text, t2i_row)
from .tokenizers import ImageTokenizer, TextTokenizer, Vocab

STEP_SEED_STRIDE = 1_000_003  # mixes (seed, step) into one generator seed without collisions


class TrainingError(RuntimeError):
    pass


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * STEP_SEED_STRIDE + step)


class Batcher:
    """Builds the mixed T2I / MMU / LM batch of a step from a data source."""

    def __init__(self, cfg: Config, source, vocab: Vocab, image_tok: ImageTokenizer,
                 offset: int = 0, rank: int = 0, world: int = 1):
        # offset: the step whose data step 0 reads (the MoE stage continues after the dense).
        # rank / world: under data parallelism rank r reads batch (step + offset) * world + r,
        # a shard disjoint from every other rank's; with one process that is just the step.
        self.cfg, self.source, self.vocab, self.image_tok = cfg, source, vocab, image_tok
        self.offset, self.rank, self.world = offset, rank, world
        self.text = TextTokenizer(vocab)
        t = cfg.train
        self.sizes = (t.batch_t2i, t.batch_mmu, t.batch_lm)
        self.domains = cfg.domain_names

    def domain_ids(self, samples) -> list[int]:
        """Index of each sample's domain in --domains; any other (folder) domain: the last."""
        return [self.domains.index(s.domain) if s.domain in self.domains
                else len(self.domains) for s in samples]

    def __call__(self, step: int) -> Batch:
        step = (step + self.offset) * self.world + self.rank
        cfg, v, gen = self.cfg, self.vocab, step_generator(self.cfg.train.seed, step)
        first = step * sum(self.sizes)  # samples are consumed in order: data position = step
        samples = [self.source[first + i] for i in range(sum(self.sizes))]
        n_t2i, n_mmu, _ = self.sizes
        t2i, mmu, lm = samples[:n_t2i], samples[n_t2i:n_t2i + n_mmu], samples[n_t2i + n_mmu:]
        codes = self.image_tok.encode([s.image for s in t2i + mmu]).cpu() + v.image_offset
        text_len, seq_len = cfg.data.text_len, cfg.seq_len

        drop = torch.rand(len(t2i), generator=gen) < cfg.train.caption_dropout
        rows = [t2i_row([] if d else self.text.encode(s.caption), c.tolist(), v, text_len)
                for s, c, d in zip(t2i, codes, drop)]
        b_t2i = collate(rows, T2I, self.domain_ids(t2i)) if rows else None
        if b_t2i is not None:
            b_t2i.tokens_BL, b_t2i.labels_BL = mask_images(
                b_t2i.tokens_BL, text_len + 1, cfg.image_tokens, v, gen)

        rows = []
        for s, c in zip(mmu, codes[len(t2i):]):
            q, a = self._pick_qa(s, gen)
            rows.append(mmu_row(c.tolist(), self.text.encode(question_text(q)),
                                self.text.encode(a), v, seq_len))
        b_mmu = collate(rows, MMU, self.domain_ids(mmu)) if rows else None

        rows = []
        for s in lm:
            q, a = self._pick_qa(s, gen)
            use_caption = torch.rand(1, generator=gen).item() < 0.5
            text = s.caption if use_caption else question_text(q) + a
            rows.append(lm_row(self.text.encode(text), v, seq_len))
        b_lm = collate(rows, LM, self.domain_ids(lm)) if rows else None
        return concat([b for b in (b_t2i, b_mmu, b_lm) if b is not None])

    @staticmethod
    def _pick_qa(sample, gen: torch.Generator) -> tuple[str, str]:
        if not sample.qa:  # captioning: the empty question is answered with the caption
            return "", sample.caption
        return sample.qa[int(torch.randint(len(sample.qa), (1,), generator=gen))]


def task_losses(logits_BLV: torch.Tensor, batch: Batch, counts: torch.Tensor | None = None,
                scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Mean cross-entropy over the labelled positions of each task present in the batch.

    With `counts` (labels per task of a larger batch this one is part of: see label_counts)
    each task's loss is scale x (this batch's sum) / count instead, so that the losses of the
    parts add up, and DDP's gradient average (scale = W) comes out exactly as the gradient of
    the mean over everything (a plain per-part mean would weigh a part's few labels like many).
    """
    sel = batch.labels_BL != IGNORE
    ce = F.cross_entropy(logits_BLV[sel].float(), batch.labels_BL[sel], reduction="none")
    task = batch.task_B[:, None].expand_as(batch.labels_BL)[sel]
    if counts is None:
        return {name: ce[task == i].mean() for i, name in enumerate(TASKS) if (task == i).any()}
    return {name: scale * ce[task == i].sum() / counts[i] for i, name in enumerate(TASKS)
            if counts[i] > 0}


def label_counts(batches: list[Batch], data_parallel: bool) -> torch.Tensor:
    """Labelled positions per task over `batches` (micro-batches of one step) and, under data
    parallelism, over every rank's."""
    counts = sum(torch.stack([((b.labels_BL != IGNORE) & (b.task_B[:, None] == i)).sum()
                              for i in range(len(TASKS))]).float() for b in batches)
    if data_parallel:
        dist.all_reduce(counts)
    return counts


def total_loss(losses: dict[str, torch.Tensor], cfg: Config) -> torch.Tensor:
    weights = {"t2i": cfg.train.w_t2i, "mmu": cfg.train.w_mmu, "lm": cfg.train.w_lm}
    return sum(weights[k] * v for k, v in losses.items())


def lr_at(step: int, cfg: Config, total: int, peak: float | None = None) -> float:
    """Linear warmup to the peak (default --lr), then cosine decay to peak * min_lr_ratio at
    `total`."""
    t = cfg.train
    return (t.lr if peak is None else peak) * warmup_cosine(step, total, t.warmup, t.min_lr_ratio)


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.AdamW:
    # Decay matrices and embeddings; never norms (nanoGPT's split).
    params = [p for p in model.parameters() if p.requires_grad]
    decay = cfg.train.weight_decay
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.95))


@dataclass
class RunFiles:
    """Paths inside a run folder."""
    root: Path

    @property
    def ckpt(self) -> Path:
        return self.root / "ckpt.pt"

    @property
    def vq(self) -> Path:
        return self.root / "vq.pt"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def dense(self) -> Path:
        """A MoE run's trained dense model: the input of the conversion, kept for reuse."""
        return self.root / "dense.pt"

    @property
    def routing(self) -> Path:
        """Routing statistics of the final MoE model (routing.json, and routing.png beside)."""
        return self.root / "routing.json"


def log_line(files: RunFiles, record: dict) -> None:
    with open(files.log, "a") as f:
        f.write(json.dumps(record) + "\n")


STAGES = ("vq", "dense", "convert", "moe")  # in the order a run goes through them


def trim_log(files: RunFiles, stage: str, step: int) -> int:
    """Drop the log lines that a run resuming from (stage, step) will write again: a crash
    can log steps past its last checkpoint, and half a line. Returns how many were dropped."""
    if not files.log.exists():
        return 0
    lines = files.log.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # the line a crash cut short
            continue
        order = STAGES.index(rec["stage"]) if rec.get("stage") in STAGES else -1
        if order < STAGES.index(stage) or (rec["stage"] == stage and rec.get("step", 0) <= step):
            keep.append(line)
    if len(keep) < len(lines):
        tmp = files.log.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(files.log)
    return len(lines) - len(keep)


def warn(files: RunFiles, main: bool, bar, record: dict) -> None:
    """A warning line on the console (above the progress bar) and in the log (rank 0 only)."""
    if main:
        bar.write(f"warning: {record['warning']}")
        log_line(files, record)


def all_finite(loss: torch.Tensor, grad_norm: torch.Tensor, data_parallel: bool) -> bool:
    """Whether the step's loss and gradient norm are finite on every rank (all ranks must
    agree on skipping or stopping, or the next collective would hang)."""
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    bad = (~torch.isfinite(loss) | ~torch.isfinite(grad_norm)).float()
    if data_parallel:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return not bool(bad)


def save_checkpoint(files: RunFiles, cfg: Config, model, optimizer, stage: str, step: int,
                    image_tok: ImageTokenizer, path: Path | None = None, ep=None,
                    skipped: int = 0) -> None:
    """The run's ckpt.pt (or `path`): config, stage, step, model, optimizer, tokenizer and the
    count of skipped non-finite steps. Weights that are not all finite are never written.

    Under expert parallelism (`ep`) every rank must call this: the expert shards are gathered
    so that the checkpoint holds the whole model; rank 0 writes it."""
    if ep is not None or getattr(model, "fsdp", False):
        from .dist import full_model_state, full_optimizer_state
        model_state = full_model_state(model, ep)
        optimizer_state = full_optimizer_state(model, optimizer, ep)
    else:
        model_state, optimizer_state = model.state_dict(), optimizer.state_dict()
    if not dist.is_initialized() or dist.get_rank() == 0:
        poisoned = [k for k, v in model_state.items()
                    if v.is_floating_point() and not torch.isfinite(v).all()]
        if poisoned:
            raise TrainingError(f"{stage} step {step}: weights {poisoned[0]} are not finite, so "
                                f"no checkpoint was written (the last good one, {files.ckpt}, was "
                                f"kept); lower --lr and resume with --resume")
        checkpoint.save({"config": to_dict(cfg), "stage": stage, "step": step,
                         "model": model_state, "optimizer": optimizer_state,
                         "vq": image_tok.vq.state_dict(), "skipped": skipped},
                        path or files.ckpt)


def fit(model, cfg: Config, files: RunFiles, stage: str, steps: int, batcher: Batcher,
        image_tok: ImageTokenizer, device: torch.device, start_step: int = 0,
        optimizer=None, on_sample=None, progress: bool = True, router=None,
        peak_lr: float | None = None, ep=None, skipped: int = 0) -> list[dict]:
    """Train `model` for steps [start_step, steps). Returns the logged records of this call.

    `ep` (dist.ExpertParallel): the MoE layers' experts are sharded over ranks (--ep).
    `router` (a routing.RouterTraining, MoE stage only) sets the router schedules before each
    step, adds the balance and z losses, updates aux-loss-free biases after the step and adds
    its statistics to the log. Every step's model-side randomness (random routing, dropout) is
    seeded by (seed, step) too.

    A step whose loss or gradient norm is not finite never reaches the weights: with
    --on-nonfinite stop the run ends with TrainingError (the last checkpoint on disk stays the
    last good one), with skip its update is dropped and counted (`skipped`: the count so far,
    saved in checkpoints) until more than --max-skips were dropped.
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
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
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
                out = model(batch.tokens_BL, batch.groups_BL, domain_B=batch.domain_B)
                part = task_losses(out.logits_BLV, batch, counts, world)
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
            from .dist import clip_grad_norm_, sync_expert_grads_
            sync_expert_grads_(module, ep)
            grad_norm = clip_grad_norm_(module, t.grad_clip, ep)
        if all_finite(loss, grad_norm, data_parallel):
            optimizer.step()
            if router:
                for warning in router.after_step(out.routing, done):
                    warn(files, main, bar, {"stage": stage, "step": done, "warning": warning})
        else:  # the update is dropped (or the run stops) before any weight sees the NaN
            skipped += 1
            what = (f"{stage} step {done}: the loss ({loss.item():.4g}) or the gradient norm "
                    f"({grad_norm.item():.4g}) is not finite")
            if t.on_nonfinite == "stop" or skipped > t.max_skips:
                reason = "" if t.on_nonfinite == "stop" else \
                    f"; {skipped} steps skipped, over --max-skips {t.max_skips}"
                raise TrainingError(
                    f"{what}{reason}. The last good checkpoint ({files.ckpt}) was kept; lower "
                    f"--lr or --grad-clip (or pass --on-nonfinite skip) and resume with --resume")
            warn(files, main, bar, {"stage": stage, "step": done, "skipped": skipped,
                                    "warning": f"{what}; update skipped ({skipped} of at most "
                                               f"--max-skips {t.max_skips})"})
        seen_tokens += sum(b.tokens_BL.numel() for b in micro)
        if done % t.log_every == 0 or done == steps:
            rec = {"stage": stage, "step": done, "loss": round(loss.item(), 5), "lr": lr,
                   "grad_norm": round(grad_norm.item(), 4),
                   **{k: round(v.item(), 5) for k, v in losses.items()},
                   "tok_per_s": round(seen_tokens / (time.time() - t0)),
                   "time_s": round(time.time() - t0, 2), **(router.record() if router else {}),
                   **({"skipped": skipped} if skipped else {})}
            records.append(rec)
            if main:
                log_line(files, rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", t2i=rec.get("t2i"), mmu=rec.get("mmu"),
                            tok_s=rec["tok_per_s"])
        if (main or sharded) and (done % t.ckpt_every == 0 or done == steps):
            save_checkpoint(files, cfg, module, optimizer, stage, done, image_tok, ep=ep,
                            skipped=skipped)
        if faults.fires("kill-step", done):
            faults.kill()
        if main and on_sample and not sharded and t.sample_every and \
                (done % t.sample_every == 0 or done == steps):
            on_sample(done)
            model.train()
    return records
