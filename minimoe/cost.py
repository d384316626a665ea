"""What a model costs: parameters a token uses, training FLOPs a token takes, and what a run's
log measured (seconds a step, tokens a second).

Per token, with d = d_model, L = seq_len (every row is that long), V the joint vocabulary,
E routed experts of hidden size h, k chosen per token, S shared experts:

    attention, per block     4 d^2 (q, k, v, out projections)  +  2 L d (scores, mix)
    dense FFN, per block     2 d d_ffn
    MoE layer                d E (router)  +  2 d h (k + S)
    head                     d V

are the multiply-adds of one forward (a multiply-add is 2 FLOPs); the backward costs two
forwards (the gradients of the inputs and of the weights), so

    training FLOPs / token = 3 * 2 * (sum of the multiply-adds above)

Norms, activations, rotary, softmax, the grid convolution of `--image-pos rotary2d+conv` (9 d
an image code a block) and the optimizer are left out: they scale with d, not d^2, and are a
few per cent at these widths. The attention term counts the full L x L score
matrix that the masked attention kernel computes, not only the unmasked part. A padding
position costs what any other position costs, except in a MoE layer, which routes padding to
no expert. Text-only rows pack several texts, so the tokens of a step (rows x L) vary: the
trainer counts them, and a stage's FLOPs are its counted tokens x FLOPs a token. The head is
counted at every token, as sampling pays it, though training runs it only where a loss is
taken (a quarter of a tiny batch's positions), so a tiny training count is about a sixth too
high, alike for every method.
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import Config, dense_version, expert_hidden, moe_layer_ids
from .tokenizers import Vocab


def multiply_adds_per_token(cfg: Config) -> dict[str, int]:
    """One forward's multiply-adds a (non-padding) token costs, by part."""
    d, L, m = cfg.model.d_model, cfg.seq_len, cfg.moe
    n = cfg.model.n_layers
    moe_ids = set(moe_layer_ids(m.moe_layers, n)) if m.moe != "none" else set()
    ffn = 2 * d * cfg.model.d_ffn
    moe = d * m.num_experts + 2 * d * expert_hidden(cfg) * (m.top_k + m.num_shared)
    return {"attention": n * (4 * d * d + 2 * L * d),
            "ffn": sum(moe if i in moe_ids else ffn for i in range(n)),
            "head": d * Vocab(cfg.vq.vq_codes, cfg.data.text_vocab).size}


def train_flops_per_token(cfg: Config) -> int:
    return 6 * sum(multiply_adds_per_token(cfg).values())


def active_params(model, cfg: Config) -> int:
    """Parameters one token's forward reads: all of them except the routed experts a token is
    not sent to (E - k per MoE layer), the other modality's copy of untied weights and the
    embedding rows of other ids (V - 1)."""
    m, d = cfg.moe, cfg.model.d_model
    idle = sum(p.numel() for name, p in model.named_parameters() if ".image." in name)
    if m.moe != "none":
        per_expert = 2 * d * expert_hidden(cfg)
        idle += len(moe_layer_ids(m.moe_layers, cfg.model.n_layers)) * (
            m.num_experts - m.top_k) * per_expert
    embed = model.embed.weight
    return model.num_params() - idle - (embed.shape[0] - 1) * embed.shape[1]


def stage_costs(log_records: list[dict], cfg: Config) -> dict[str, dict]:
    """Per training stage of a run's log: steps, wall seconds, seconds a step, tokens a second
    and the training FLOPs spent (tokens x FLOPs a token of that stage's model)."""
    out = {}
    for stage, flops in (("dense", train_flops_per_token(dense_version(cfg))),
                         ("moe", train_flops_per_token(cfg))):
        # training records only: a held-out record has a time_s but measures no throughput
        rows = [r for r in log_records if r.get("stage") == stage and "tok_per_s" in r]
        if not rows:
            continue
        last = rows[-1]
        # time_s restarts on --resume: add up the last record of every uninterrupted stretch
        ends = [a for a, b in zip(rows, rows[1:] + [None])
                if b is None or b["time_s"] < a["time_s"]]
        seconds = sum(r["time_s"] for r in ends)
        steps = last["step"]
        tokens = sum(r["tokens"] for r in ends) if all("tokens" in r for r in ends) \
            else steps * cfg.seq_len * _rows_per_step(cfg)  # a log that did not count them
        out[stage] = {"steps": steps, "time_s": round(seconds, 2),
                      "tokens_per_step": round(tokens / max(1, steps), 1),
                      "s_per_step": round(seconds / max(1, steps), 4),
                      "tok_per_s": last.get("tok_per_s"), "train_flops": float(tokens * flops),
                      "train_flops_per_token": flops}
    return out


def _rows_per_step(cfg: Config) -> int:
    """Rows a step of a log that did not count its tokens (texts then had a row each)."""
    t = cfg.train
    return (t.batch_t2i + t.batch_mmu + t.batch_lm) * t.grad_accum


def run_cost(model, cfg: Config, log: Path) -> dict:
    """What summary.json records of a run's cost: parameters, active parameters and training
    FLOPs a token of the final model, and per stage what its log measured (stage_costs)."""
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return {"params": model.num_params(), "active_params": active_params(model, cfg),
            "train_flops_per_token": train_flops_per_token(cfg),
            "stages": stage_costs(records, cfg)}


def format_cost(c: dict) -> str:
    stages = "; ".join(f"{name} {s['steps']} steps at {s['s_per_step']:.3f} s a step, "
                       f"{s['tok_per_s']} tokens/s, {s['train_flops'] / 1e12:.3g} TFLOPs"
                       for name, s in c["stages"].items())
    return (f"cost       {c['active_params'] / 1e6:.2f}M of {c['params'] / 1e6:.2f}M parameters "
            f"active, {c['train_flops_per_token'] / 1e6:.2f} MFLOPs a training token"
            + (f"; {stages}" if stages else ""))
