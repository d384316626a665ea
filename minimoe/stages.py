"""Stages 2 and 3 of `train.py`: the dense model (trained, resumed or reused), its conversion
into a MoE (with the loss right before and right after), MoE training and the final routing
report. Stage 1, the tokenizer, and the shared run plumbing are in `pipeline.py`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import checkpoint, config
from .atomic import save_png, write_text
from .config import Config
from .convert import convert_model
from .dist import (data_parallel, fsdp_, full_model_state, is_fsdp,
                   load_fsdp_optimizer_state, rank_world, shard_experts_, shard_optimizer_state)
from .pipeline import (VQ_IDENTITY, GridWriter, UserError, build_model, open_source)
from .plots import routing_heatmaps
from .routing import RouterTraining, RoutingStats, apply_schedule, describe_schedule, schedule
from .trainer import (Batcher, RunFiles, fit, log_line, make_optimizer, save_checkpoint,
                      task_losses)

CONVERSION_BATCHES = 4  # held-out batches that measure the loss jump at conversion
ROUTING_BATCHES = 8  # held-out batches behind routing.json / routing.png
# What a dense checkpoint must share with this run to be converted by it.
DENSE_IDENTITY = ("d_model", "n_layers", "n_heads", "d_ffn", "text_len") + VQ_IDENTITY


def load_dense(path: Path, cfg: Config) -> dict:
    """A dense checkpoint (a dense run's ckpt.pt or a MoE run's dense.pt) that fits `cfg`."""
    payload = checkpoint.load(path)
    if payload.get("stage") != "dense":
        raise UserError(f"{path} holds a {payload.get('stage')} model, not a dense one; pass a "
                        f"dense run's ckpt.pt or a MoE run's dense.pt to --init")
    saved, wanted = config.flat(config.from_dict(payload["config"])), config.flat(cfg)
    for name in DENSE_IDENTITY:
        if saved[name] != wanted[name]:
            raise UserError(f"{path} has {name}={saved[name]} but this run asks for "
                            f"{wanted[name]}; pass --{name.replace('_', '-')} {saved[name]} or "
                            f"another --init")
    return payload


def dense_stage(cfg: Config, files: RunFiles, image_tok, device, payload: dict | None,
                init: str | None, progress: bool):
    """The trained dense model, from (first that applies): --init, the run folder's dense.pt,
    or training (resumed from `payload` if it is a dense-stage checkpoint). A MoE run keeps
    the result as dense.pt."""
    torch.manual_seed(cfg.train.seed)
    model, vocab = build_model(config.dense_version(cfg), device)
    source = Path(init) if init else files.dense if files.dense.exists() and payload is None \
        else None
    if source is not None:
        reused = load_dense(source, cfg)
        model.load_state_dict(reused["model"])
        if source != files.dense and rank_world()[0] == 0:
            checkpoint.save(reused, files.dense)
        print(f"reusing the dense model in {source} (step {reused['step']})")
        return model, vocab
    start = 0
    if payload is not None:
        model.load_state_dict(payload["model"])
        start = payload["step"]
        print(f"resuming dense at step {start}")
    optimizer = shard_for_training(model, cfg, payload)
    print(f"dense model: {model.num_params() / 1e6:.2f}M parameters, {cfg.seq_len} tokens a row")
    rank, world = rank_world()
    fit(data_parallel(model), cfg, files, "dense", cfg.train.dense_steps,
        Batcher(cfg, open_source(cfg, "train"), vocab, image_tok, rank=rank, world=world),
        image_tok, device, start_step=start, optimizer=optimizer,
        on_sample=GridWriter(model, vocab, image_tok, files.samples, cfg), progress=progress,
        skipped=payload.get("skipped", 0) if payload else 0)
    if cfg.moe.moe != "none" and rank == 0:  # fit's last save is the finished dense model
        checkpoint.save(checkpoint.load(files.ckpt), files.dense)
    return unshard(model, config.dense_version(cfg), device), vocab


def heldout_batches(cfg: Config, vocab, image_tok, n: int) -> list:
    batcher = Batcher(cfg, open_source(cfg, "heldout"), vocab, image_tok)
    return [batcher(i) for i in range(n)]


@torch.no_grad()
def mean_losses(model, batches, device) -> dict[str, float]:
    """Task losses averaged over `batches`, in eval mode."""
    model.eval()
    sums: dict[str, float] = {}
    for b in batches:
        b = b.to(device)
        out = model(b.tokens_BL, b.groups_BL, domain_B=b.domain_B)
        for k, v in task_losses(out.logits_BLV, b).items():
            sums[k] = sums.get(k, 0.0) + v.item() / len(batches)
    return {k: round(v, 4) for k, v in sums.items()}


def heldout_losses(model, cfg: Config, vocab, image_tok, device) -> dict[str, float]:
    """Task losses on the fixed held-out batches that also measure the conversion."""
    return mean_losses(model, heldout_batches(cfg, vocab, image_tok, CONVERSION_BATCHES), device)


def convert_stage(dense, cfg: Config, files: RunFiles, vocab, image_tok, device,
                  moe_batcher: Batcher):
    """The MoE built from `dense` (calibrated on the first MoE batches), and the held-out
    task losses right before and right after the conversion (router at its step-0 schedule)."""
    before = heldout_losses(dense, cfg, vocab, image_tok, device)
    calibration = [moe_batcher(i).to(device) for i in range(cfg.moe.taylor_batches)]
    dense.train()  # Taylor scores need gradients of the training-mode loss
    torch.manual_seed(cfg.train.seed)  # the routers' random start: same in every pipeline
    generator = torch.Generator().manual_seed(cfg.train.seed)
    model = convert_model(dense, cfg, calibration, generator)
    apply_schedule(model, schedule(cfg, 0))
    after = heldout_losses(model, cfg, vocab, image_tok, device)
    router = sum(p.numel() for n, p in model.named_parameters()
                 if ".router." in n or "prior_GE" in n)
    report = {"before": before, "after": after, "method": cfg.moe.moe,
              "moe_params": model.num_params(), "router_params": router,
              "dense_params": dense.num_params()}
    if rank_world()[0] == 0:
        log_line(files, {"stage": "convert", **report})
    print(f"conversion ({cfg.moe.moe}): held-out losses "
          + ", ".join(f"{k} {before[k]:.3f} -> {after[k]:.3f}" for k in before)
          + f"; parameters {report['dense_params'] / 1e6:.2f}M -> "
            f"{report['moe_params'] / 1e6:.2f}M")
    return model, report


def moe_stage(model, cfg: Config, files: RunFiles, vocab, image_tok, device, batcher: Batcher,
              start_step: int, optimizer, progress: bool, ep=None, skipped: int = 0) -> None:
    """Train the MoE from `start_step` (`skipped`: non-finite steps skipped before it); with
    --moe-steps 0 just save the converted model (as step 0)."""
    print(describe_schedule(cfg))
    if cfg.train.moe_steps == 0:
        save_checkpoint(files, cfg, model, make_optimizer(model, cfg), "moe", 0, image_tok,
                        ep=ep)
        return
    fit(data_parallel(model), cfg, files, "moe", cfg.train.moe_steps, batcher, image_tok, device,
        start_step=start_step, optimizer=optimizer,
        on_sample=GridWriter(model, vocab, image_tok, files.samples, cfg), progress=progress,
        router=RouterTraining(model, cfg), peak_lr=cfg.train.moe_lr, ep=ep, skipped=skipped)


def shard_for_training(model, cfg: Config, payload: dict | None = None, ep=None):
    """Shard `model` in place for this run's parallelism (--ep: expert shards; fsdp under
    torchrun: FSDP2) and make its optimizer, restored from `payload` (which holds the whole
    model's state) when resuming."""
    use_fsdp = cfg.train.fsdp and rank_world()[1] > 1
    if ep is not None:
        shard_experts_(model, ep)
    if use_fsdp:  # with --ep: the non-expert weights
        fsdp_(model)
    optimizer = make_optimizer(model, cfg)
    if payload is not None:
        state = payload["optimizer"]
        if ep is not None:
            state = shard_optimizer_state(state, model, optimizer, ep)
        if use_fsdp:
            load_fsdp_optimizer_state(optimizer, state)
        else:
            optimizer.load_state_dict(state)
    return optimizer


def resume_moe(cfg: Config, payload: dict, device, ep=None):
    """The MoE and its optimizer from a checkpoint, sharded as this run shards."""
    model, vocab = build_model(cfg, device)
    model.load_state_dict(payload["model"])
    print(f"resuming moe at step {payload['step']}")
    return model, vocab, shard_for_training(model, cfg, payload, ep)


def unshard(model, cfg: Config, device, ep=None):
    """The whole model on every rank, gathered from its shards (a collective), or `model`
    itself when it is not sharded."""
    if ep is None and not is_fsdp(model):
        return model
    state = full_model_state(model, ep)
    whole, _ = build_model(cfg, device)
    whole.load_state_dict(state)
    return whole


@torch.no_grad()
def collect_routing(model, cfg: Config, vocab, image_tok, device,
                    n_batches: int = ROUTING_BATCHES) -> dict:
    """Routing statistics (routing.RoutingStats.summary) of a MoE on held-out batches; for
    taylor also the share of text slots in text experts and of image slots in image experts."""
    stats = RoutingStats([i for i, _ in model.moe_layers()], cfg.moe.num_experts,
                         cfg.domain_names)
    model.eval()
    for b in heldout_batches(cfg, vocab, image_tok, n_batches):
        b = b.to(device)
        stats.add(model(b.tokens_BL, b.groups_BL, domain_B=b.domain_B).routing)
    summary = stats.summary()
    if cfg.moe.moe == "taylor":
        n = cfg.moe.text_experts
        for layer in summary.values():
            layer["text_to_text_experts"] = round(sum(layer["text"][:n]), 4)
            layer["image_to_image_experts"] = round(sum(layer["image"][n:]), 4)
    return summary


def routing_report(model, cfg: Config, files: RunFiles, vocab, image_tok, device) -> dict:
    """collect_routing, written to the run folder as routing.json and routing.png."""
    summary = collect_routing(model, cfg, vocab, image_tok, device)
    write_text(files.routing, json.dumps(summary, indent=2))
    save_png(routing_heatmaps(summary, f"{files.root.name}: share of each group's routed slots "
                              f"per expert (%), held-out"), files.routing.with_suffix(".png"))
    return summary


def format_routing(summary: dict) -> str:
    lines = []
    for name, s in summary.items():
        extra = (f", text->text experts {s['text_to_text_experts']:.0%}, image->image experts "
                 f"{s['image_to_image_experts']:.0%}" if "text_to_text_experts" in s else "")
        lines.append(f"routing    {name}: modality NMI {s['modality_nmi']:.3f}, domain NMI "
                     f"{s['domain_nmi'] if s['domain_nmi'] is not None else '-'}, max load "
                     f"+{s['max_violation']:.0%}{extra}")
    return "\n".join(lines)
