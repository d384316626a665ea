"""From a run's whole config to the objects it describes: the transformer, with its MoE layers
and their backend, and the joint vocabulary. `model.py` and `moe.py` take only their own sizes;
this is the one place that reads them off a `Config`.
"""
from __future__ import annotations

import math

import torch

from .config import Config, expert_hidden, moe_layer_ids
from .model import INIT_STD, Transformer
from .moe import MoESpec
from .ops import backend
from .tokenizers import Vocab


def moe_spec(cfg: Config) -> MoESpec | None:
    """The MoE layer of `cfg` (None for --moe none)."""
    m = cfg.moe
    if m.moe == "none":
        return None
    prior_groups = {"none": 0, "modality": 2, "domain": len(cfg.domain_names) + 1}
    routing_groups = ((m.text_experts, m.num_experts - m.text_experts)
                      if m.router_groups == "modality" else ())
    return MoESpec(cfg.model.d_model, expert_hidden(cfg), m.num_experts, m.top_k, m.num_shared,
                   m.router_bias, m.router_prior, prior_groups[m.router_prior],
                   m.capacity_factor, m.random_routing, m.router_sample, routing_groups)


def build_model(cfg: Config, device: torch.device | str = "cpu") -> tuple[Transformer, Vocab]:
    """The (freshly initialised) transformer of `cfg` on `device`, and the ids of its
    vocabulary (without BPE merges: those are learnt in the tokenizer stage and change how
    text is cut, not any id or shape)."""
    vocab = Vocab(cfg.vq.vq_codes, cfg.data.text_vocab)
    spec = moe_spec(cfg)
    layers = tuple(moe_layer_ids(cfg.moe.moe_layers, cfg.model.n_layers)) if spec else ()
    model = Transformer(cfg.model, vocab.size, vocab.pad, vocab.image_offset, cfg.image_tokens,
                        spec, layers, backend(cfg.moe.moe_backend),
                        cfg.train.activation_checkpointing,
                        untie=spec is not None and cfg.moe.untie_attention == "modality",
                        code_features=code_feature_count(cfg))
    return model.to(device), vocab


def code_feature_count(cfg: Config) -> int:
    """How many numbers describe an image code under --code-features: pixels, its patch's RGB
    values and each pixel's brightest channel; factors, a one-hot of its form and one of its
    colour (a tokenizer with --vq-colours); none, 0."""
    v = cfg.vq
    return {"none": 0, "pixels": 4 * v.vq_downsample ** 2,
            "factors": v.vq_codes // max(v.vq_colours, 1) + v.vq_colours}[cfg.model.code_features]


def code_features(kind: str, vq) -> torch.Tensor:
    """[codes, F]: the fixed description of every image code of `vq` under --code-features."""
    return code_pixels(vq) if kind == "pixels" else code_factors(vq)


def code_factors(vq) -> torch.Tensor:
    """[codes, 2] long: each code's form and colour as column ids of a map over one-hots of
    both (the forms first, then the colours)."""
    colours, K = vq.cfg.vq_colours, vq.cfg.vq_codes
    ids = torch.arange(K, device=vq.codebook.codebook_KD.device)
    return torch.stack([ids // colours, K // colours + ids % colours], 1)


@torch.no_grad()
def code_pixels(vq) -> torch.Tensor:
    """[codes, F]: the patch each code draws when it fills a 3x3 grid (the centre patch, so
    that the decoder's reach beyond a patch sees the same code all round), as RGB and as the
    brightest channel of each pixel, mapped to [-1, 1] and divided by sqrt(F).

    The division gives a code's vector a norm of about 1, so that an AdamW step moves the
    pixel map's share of a code's embedding about as far as it moves the code's own row;
    undivided, the map's gradient was the largest in the model and the global clip shrank
    every other update."""
    K, f = vq.cfg.vq_codes, vq.cfg.vq_downsample
    codes = torch.arange(K, device=vq.codebook.codebook_KD.device)[:, None, None].expand(K, 3, 3)
    patch = vq.decode(codes)[:, :, f:2 * f, f:2 * f]
    x = torch.cat([patch, patch.amax(1, keepdim=True)], 1).flatten(1) * 2 - 1
    return (x / math.sqrt(x.shape[1])).float()


@torch.no_grad()
def init_code_embeddings(model: Transformer, vocab: Vocab, codebook_KD: torch.Tensor,
                         seed: int) -> None:
    """Start each image code's input embedding and output row as a fixed random projection of
    its VQ vector (standardised per dimension, scaled to the usual init std).

    A random projection keeps distances (Johnson-Lindenstrauss), so codes that look alike
    start alike: the model begins knowing which of the many codes are, say, red edges,
    instead of learning each code's meaning from its own few occurrences."""
    K, D = codebook_KD.shape
    e_KD = codebook_KD.float().cpu()
    e_KD = (e_KD - e_KD.mean(0)) / e_KD.std(0).clamp_min(1e-6)
    width = model.embed.weight.shape[1]
    proj_DW = torch.randn(D, width, generator=torch.Generator().manual_seed(seed)) / math.sqrt(D)
    rows = slice(vocab.image_offset, vocab.image_offset + K)
    for table in (model.embed.weight, model.head.weight):
        table[rows] = (e_KD @ proj_DW * INIT_STD).to(table)
