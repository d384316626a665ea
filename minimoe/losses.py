"""The task losses of a batch (docs/design.md, "Sequences"), shared by training, the Taylor
scores of the conversion and the held-out evaluation.

T2I: cross-entropy at the masked image positions; MMU: shifted cross-entropy on the answer;
LM: shifted cross-entropy on the text. `total_loss` weighs them with --w-t2i / --w-mmu / --w-lm.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .config import Config
from .sequences import T2I, TASKS, Batch


def task_losses(logits: torch.Tensor, batch: Batch, counts: torch.Tensor | None = None,
                scale: float = 1.0, focal: float = 0.0, smoothing: float = 0.0,
                codes: tuple[int, int] = (0, 0)) -> dict[str, torch.Tensor]:
    """Mean cross-entropy over the labelled positions of each task present in the batch.
    logits: [B, L, V] at every position, or [N, V] at the labelled ones only (the model's
    output for at_BL=batch.labelled_BL).

    With `counts` (labels per task of a larger batch this one is part of: see label_counts)
    each task's loss is scale x (this batch's sum) / count instead, so that the losses of the
    parts add up, and DDP's gradient average (scale = W) comes out exactly as the gradient of
    the mean over everything (a plain per-part mean would weigh a part's few labels like many).

    `focal` > 0 turns T2I into a focal loss (Lin et al. 2017): a code predicted with
    probability p counts (1 - p) ** focal times, so that the codes a model already gets right
    (mostly plain background) give way to those it does not.

    `smoothing` > 0 smooths the T2I targets as MaskGIT does: the true code keeps 1 - smoothing
    of the target and the rest is spread evenly over the `codes` = (first id, count) only, so
    no target mass lands on text ids an image position can never hold.
    """
    sel = batch.labelled_BL
    logits_NV = logits[sel] if logits.dim() == 3 else logits
    ce = F.cross_entropy(logits_NV.float(), batch.labels_BL[sel], reduction="none")
    task = batch.task_B[:, None].expand_as(batch.labels_BL)[sel]
    if focal:
        ce = torch.where(task == T2I, ce * (1 - torch.exp(-ce)) ** focal, ce)
    if smoothing:
        first, n = codes
        uniform = -torch.log_softmax(logits_NV.float(), -1)[:, first:first + n].mean(-1)
        ce = torch.where(task == T2I, (1 - smoothing) * ce + smoothing * uniform, ce)
    if counts is None:
        return {name: ce[task == i].mean() for i, name in enumerate(TASKS) if (task == i).any()}
    return {name: scale * ce[task == i].sum() / counts[i] for i, name in enumerate(TASKS)
            if counts[i] > 0}


def labelled_losses(forward, batch: Batch, counts: torch.Tensor | None = None,
                    scale: float = 1.0, focal: float = 0.0, smoothing: float = 0.0,
                    codes: tuple[int, int] = (0, 0)):
    """(model output, task losses) of `batch`, the head run at its labelled positions only:
    `forward` is the model or its compiled or DDP wrapper."""
    out = forward(batch.tokens_BL, batch.groups_BL, domain_BL=batch.domain_BL,
                  at_BL=batch.labelled_BL)
    return out, task_losses(out.logits_NV, batch, counts, scale, focal, smoothing, codes)


def label_counts(batches: list[Batch], data_parallel: bool) -> torch.Tensor:
    """Labelled positions per task over `batches` (micro-batches of one step) and, under data
    parallelism, over every rank's."""
    counts = sum(torch.stack([(b.labelled_BL & (b.task_B[:, None] == i)).sum()
                              for i in range(len(TASKS))]).float() for b in batches)
    if data_parallel:
        dist.all_reduce(counts)
    return counts


def total_loss(losses: dict[str, torch.Tensor], cfg: Config) -> torch.Tensor:
    weights = {"t2i": cfg.train.w_t2i, "mmu": cfg.train.w_mmu, "lm": cfg.train.w_lm}
    return sum(weights[k] * v for k, v in losses.items())
