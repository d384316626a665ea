"""From a run's whole config to the objects it describes: the transformer, with its MoE layers
and their backend, and the joint vocabulary. `model.py` and `moe.py` take only their own sizes;
this is the one place that reads them off a `Config`.
"""
from __future__ import annotations

import torch

from .config import Config, expert_hidden, moe_layer_ids
from .model import Transformer
from .moe import MoESpec
from .ops import backend
from .tokenizers import Vocab


def moe_spec(cfg: Config) -> MoESpec | None:
    """The MoE layer of `cfg` (None for --moe none)."""
    m = cfg.moe
    if m.moe == "none":
        return None
    groups = {"none": 0, "modality": 2, "domain": len(cfg.domain_names) + 1}
    return MoESpec(cfg.model.d_model, expert_hidden(cfg), m.num_experts, m.top_k, m.num_shared,
                   m.router_bias, m.router_prior, groups[m.router_prior], m.capacity_factor,
                   m.random_routing, m.router_sample)


def build_model(cfg: Config, device: torch.device | str = "cpu") -> tuple[Transformer, Vocab]:
    """The (freshly initialised) transformer of `cfg` on `device`, and the ids of its
    vocabulary (without BPE merges: those are learnt in the tokenizer stage and change how
    text is cut, not any id or shape)."""
    vocab = Vocab(cfg.vq.vq_codes, cfg.data.text_vocab)
    spec = moe_spec(cfg)
    layers = tuple(moe_layer_ids(cfg.moe.moe_layers, cfg.model.n_layers)) if spec else ()
    model = Transformer(cfg.model, vocab.size, vocab.pad, vocab.image_offset, spec, layers,
                        backend(cfg.moe.moe_backend), cfg.train.activation_checkpointing)
    return model.to(device), vocab
