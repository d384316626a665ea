"""The unified transformer (docs/design.md, "Model"): one decoder over the joint vocabulary.

    tokens -> embedding -> n_layers x [x + attn(norm(x)); x + ffn(norm(x))] -> norm -> head

Pre-norm blocks with RMSNorm, rotary position embeddings, QK-norm and PyTorch's
`scaled_dot_product_attention` under the omni-attention mask of `sequences.py`. The FFN sits
behind one seam, `make_ffn`: it returns a module mapping (x [B, L, D], TokenInfo) to
(y [B, L, D], routing), where routing is None for the dense FFN and a `moe.Routing` for a MoE
layer (what the balance losses and routing statistics read).

With `untie=True` every block's attention projections and norms get a text and an image copy
(`untie.py`, Mixture-of-Transformers); a position goes through its own modality's copies.

The model knows only its sizes (`ModelConfig`) and, for MoE layers, one `moe.MoESpec` with the
blocks it applies to; `build.py` makes both from a run's whole config. Single device;
parallelism wraps this model from the outside (`dist.py`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .gridconv import GridConv
from .moe import TORCH, Backend, MoE, MoESpec, Routing, TokenInfo
from .sequences import attention_mask, positions
from .untie import PerModality, per_position, tied_name

INIT_STD = 0.02  # GPT-2 style initialisation of embeddings and matrices


@dataclass
class ModelOutput:
    logits_BLV: torch.Tensor | None  # every position's (None when forward's at_BL picked some)
    routing: list[Routing | None] = field(default_factory=list)  # per layer (None: dense FFN)
    logits_NV: torch.Tensor | None = None  # at the positions at_BL picked, row by row


class KVCache:
    """Keys and values of every layer, plus the tokens and groups they came from."""

    def __init__(self, n_layers: int):
        self.kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers
        self.tokens_BL: torch.Tensor | None = None
        self.groups_BL: torch.Tensor | None = None

    def extend(self, tokens_BL: torch.Tensor, groups_BL: torch.Tensor):
        """Append new positions; returns (all tokens, all groups) including them."""
        if self.tokens_BL is None:
            self.tokens_BL, self.groups_BL = tokens_BL, groups_BL
        else:
            self.tokens_BL = torch.cat([self.tokens_BL, tokens_BL], 1)
            self.groups_BL = torch.cat([self.groups_BL, groups_BL], 1)
        return self.tokens_BL, self.groups_BL


def image_slots(tokens_BL: torch.Tensor, image_offset: int) -> torch.Tensor:
    """Index of each position in its row's image grid (0 at the first code; [MASK] counts as a
    code); meaningless at non-image positions. A row holds at most one image."""
    return (tokens_BL >= image_offset).long().cumsum(1) - 1


def grid_positions(tokens_BL: torch.Tensor, positions_BL: torch.Tensor, image_offset: int,
                   side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary positions (rows, columns) for 2-D rotary embeddings of an image grid.

    A text position keeps its 1-D position in both. The image code in grid row r, column c
    of an image whose first code sits at 1-D position p gets (p + r, p + c), so two codes
    are (dr, dc) apart however the grid is flattened: the neighbour below is one row away,
    not `side` positions, and the end of one row is not next to the start of the next.
    """
    image = tokens_BL >= image_offset
    slot = image_slots(tokens_BL, image_offset)
    first = positions_BL - slot  # the 1-D position of the image's first code
    rows = torch.where(image, first + torch.div(slot, side, rounding_mode="floor"), positions_BL)
    cols = torch.where(image, first + slot % side, positions_BL)
    return rows, cols


def rotary(positions_BL: torch.Tensor, head_dim: int, base: float,
           columns_BL: torch.Tensor | None = None):
    """cos, sin [B, 1, L, head_dim/2] for rotating channel pairs (i, i + head_dim/2).

    With columns_BL (2-D rotary, as Qwen2-VL's M-RoPE), every other frequency turns with the
    column instead of positions_BL (then the row), so both axes span every wavelength; where
    the two agree (text) this is plain 1-D rotary."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions_BL.device) / head_dim)
    pos = positions_BL[:, None, :, None].float().expand(-1, 1, -1, len(inv_freq))
    if columns_BL is not None:
        odd = torch.arange(len(inv_freq), device=positions_BL.device) % 2 == 1
        pos = torch.where(odd, columns_BL[:, None, :, None].float(), pos)
    angles = pos * inv_freq
    return angles.cos(), angles.sin()


def apply_rotary(x_BHLK: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x_BHLK.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).type_as(x_BHLK)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        # QK-norm keeps attention logits bounded, which matters for mixed-modality training.
        self.q_norm = nn.RMSNorm(self.head_dim)
        self.k_norm = nn.RMSNorm(self.head_dim)

    def untie_(self) -> None:
        for name in ("qkv", "proj", "q_norm", "k_norm"):
            setattr(self, name, PerModality(getattr(self, name)))

    def forward(self, x_BLD, cos, sin, mask_B1LS, cache: KVCache | None, layer: int,
                image_BL: torch.Tensor):
        B, L, D = x_BLD.shape
        qkv = per_position(self.qkv, x_BLD, image_BL).view(B, L, 3, self.n_heads, self.head_dim)
        if qkv.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # Under CPU bf16 autocast only the projections gain: its bf16 attention backward
            # measured 3x slower than float32's, so norms, rotary and attention stay float32.
            qkv = qkv.float()
        q, k, v = qkv.unbind(2)  # [B, L, heads, head_dim]
        q = apply_rotary(per_position(self.q_norm, q, image_BL).transpose(1, 2), cos, sin)
        k = apply_rotary(per_position(self.k_norm, k, image_BL).transpose(1, 2), cos, sin)
        v = v.transpose(1, 2)
        if cache is not None:
            if cache.kv[layer] is not None:
                k = torch.cat([cache.kv[layer][0], k], 2)
                v = torch.cat([cache.kv[layer][1], v], 2)
            cache.kv[layer] = (k, v)
        with torch.autocast("cpu", enabled=False):  # CUDA's autocast, if on, still applies
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_B1LS)
        return per_position(self.proj, y.transpose(1, 2).reshape(B, L, D), image_BL)


class FFN(nn.Module):
    """Dense FFN: y = W2 gelu(W1 x). Hidden neuron j is row j of W1 and column j of W2 — the
    unit that the dense-to-MoE conversion moves into an expert. No biases, so that experts
    built from disjoint neurons sum exactly to this layer."""

    def __init__(self, d_model: int, d_ffn: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ffn, bias=False)
        self.w2 = nn.Linear(d_ffn, d_model, bias=False)

    def forward(self, x_BLD: torch.Tensor, info: TokenInfo | None = None
                ) -> tuple[torch.Tensor, None]:
        return self.w2(F.gelu(self.w1(x_BLD))), None


def make_ffn(cfg: ModelConfig, moe: MoESpec | None, backend: Backend) -> nn.Module:
    """The FFN of one block: the seam where a MoE layer replaces the dense FFN. The sizes alone
    fix every shape, so a MoE checkpoint loads into a model built from its config."""
    if moe is None:
        return FFN(cfg.d_model, cfg.d_ffn)
    return MoE(moe, backend, shared_ffn=FFN)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, moe: MoESpec | None, backend: Backend,
                 untie: bool = False, grid_side: int = 0):
        super().__init__()
        self.conv = GridConv(cfg.d_model, grid_side) if grid_side else None
        self.attn_norm = nn.RMSNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.d_model)
        self.ffn = make_ffn(cfg, moe, backend)
        self.dropout = nn.Dropout(cfg.dropout)
        if untie:
            self.attn.untie_()
            self.attn_norm, self.ffn_norm = PerModality(self.attn_norm), PerModality(self.ffn_norm)

    def forward(self, x_BLD, cos, sin, mask_B1LS, cache, layer, info: TokenInfo):
        image_BL = info.image_T.view(x_BLD.shape[:2])
        if self.conv is not None:
            x_BLD = self.conv(x_BLD, image_BL)
        h_BLD = per_position(self.attn_norm, x_BLD, image_BL)
        x_BLD = x_BLD + self.dropout(self.attn(h_BLD, cos, sin, mask_B1LS, cache, layer,
                                               image_BL))
        y_BLD, routing = self.ffn(per_position(self.ffn_norm, x_BLD, image_BL), info)
        return x_BLD + self.dropout(y_BLD), routing


class Transformer(nn.Module):
    """The decoder.

    Args:
        cfg: sizes (width, depth, heads, FFN width, rotary base, dropout).
        vocab_size, pad_id, image_offset: the joint vocabulary (`tokenizers.Vocab`): padding is
            never attended to nor counted in positions; ids from image_offset on are image codes.
        moe, moe_layers: the MoE layer's spec and the blocks whose FFN it replaces (none: dense).
        backend: who runs the MoE layers' permute / grouped matmul / unpermute.
        activation_checkpointing: keep only each block's input in training and recompute the
            block in backward (less memory, one more forward).
        untie: a text and an image copy of every block's attention projections and norms.
        code_features: with cfg.code_features other than "none", how many numbers describe
            each image code (`code_features_KF`, filled from the tokenizer by build.py).
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_id: int,
                 image_offset: int, image_tokens: int = 0, moe: MoESpec | None = None,
                 moe_layers: tuple[int, ...] = (), backend: Backend = TORCH,
                 activation_checkpointing: bool = False, untie: bool = False,
                 code_features: int = 0):
        super().__init__()
        self.cfg, self.pad_id, self.image_offset = cfg, pad_id, image_offset
        self.activation_checkpointing = activation_checkpointing
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.image_pos = (nn.Embedding(image_tokens, cfg.d_model)
                          if "learned" in cfg.image_pos and image_tokens else None)
        # 2-D rotary needs the grid's side; 0 keeps every position 1-D
        self.grid_side = math.isqrt(image_tokens) if "rotary2d" in cfg.image_pos else 0
        conv_side = math.isqrt(image_tokens) if "conv" in cfg.image_pos else 0
        self.blocks = nn.ModuleList(
            Block(cfg, moe if i in moe_layers else None, backend, untie, conv_side)
            for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.features_in = self.features_out = None
        if code_features:
            # Image codes are atomic ids, and most of them are one edge or corner in one
            # colour: learnt row by row, what the model knows of a stroke stays with that one
            # id. A map of a fixed description of each code (the pixels it draws, or its form
            # and colour), shared by all codes, adds to every code's embedding and output row,
            # so what is learnt about a stroke carries over to every code that draws it.
            codes = vocab_size - 1 - image_offset  # [MASK] is the last id, after the codes
            # factors: each code's form and colour as column ids of the maps, F = 2
            self.register_buffer("code_features_KF", torch.zeros(codes, 2, dtype=torch.long)
                                 if cfg.code_features == "factors"
                                 else torch.zeros(codes, code_features))
            self.features_in = nn.Linear(code_features, cfg.d_model, bias=False)
            self.features_out = nn.Linear(code_features, cfg.d_model, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            name = tied_name(name)  # an untied copy follows its weight's rule
            if name.endswith("w1_EDH"):  # fresh experts start like a fresh dense FFN
                nn.init.normal_(p, std=INIT_STD)
            # Scale the projections that write into the residual stream by depth (GPT-2).
            if name.endswith(("proj.weight", "w2.weight", "w2_EHD")):
                nn.init.normal_(p, std=INIT_STD / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(module: nn.Module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=INIT_STD)

    def forward(self, tokens_BL: torch.Tensor, groups_BL: torch.Tensor,
                cache: KVCache | None = None, domain_BL: torch.Tensor | None = None,
                at_BL: torch.Tensor | None = None) -> ModelOutput:
        """Logits for every position, or with at_BL (bool) only for the positions it picks:
        training needs them only where there is a label, a quarter of a tiny batch's
        positions, and the vocabulary projection is the largest matmul of a tiny model. With a
        cache, the new positions also attend to (and are appended to) everything cached before
        them. domain_BL (the data domain of each position) only matters to a router with a
        domain prior."""
        all_tokens, all_groups = (tokens_BL, groups_BL) if cache is None else \
            cache.extend(tokens_BL, groups_BL)
        L = tokens_BL.shape[1]
        pos_BL, cols_BL = positions(all_tokens, self.pad_id, all_groups), None
        if self.grid_side:
            pos_BL, cols_BL = grid_positions(all_tokens, pos_BL, self.image_offset,
                                             self.grid_side)
            cols_BL = cols_BL[:, -L:]
        cos, sin = rotary(pos_BL[:, -L:], self.cfg.d_model // self.cfg.n_heads,
                          self.cfg.rope_base, cols_BL)
        mask_B1LS = attention_mask(groups_BL, all_groups)
        info = TokenInfo((tokens_BL >= self.image_offset).flatten(),
                         (tokens_BL != self.pad_id).flatten(),
                         None if domain_BL is None else domain_BL.flatten())
        x_BLD = self.embed(tokens_BL)
        if self.features_in is not None:
            K, codes_BL = len(self.code_features_KF), tokens_BL - self.image_offset
            is_code_BL = (codes_BL >= 0) & (codes_BL < K)  # not text, not [MASK]
            # F.embedding, not indexing: its CPU backward adds up in a fixed order
            features_BLD = F.embedding(codes_BL.clamp(0, K - 1), self.code_rows(self.features_in))
            x_BLD = x_BLD + torch.where(is_code_BL[..., None], features_BLD, 0.0)
        if self.image_pos is not None:
            slots_BL = image_slots(all_tokens, self.image_offset)[:, -L:]
            slot_BLD = self.image_pos(slots_BL.clamp(0, self.image_pos.num_embeddings - 1))
            x_BLD = x_BLD + torch.where(info.image_T.view(-1, L, 1), slot_BLD, 0.0)
        routing = []
        recompute = self.activation_checkpointing and self.training and cache is None
        for i, block in enumerate(self.blocks):
            if recompute:  # keep only each block's input; rerun the block in backward
                x_BLD, layer_routing = checkpoint(block, x_BLD, cos, sin, mask_B1LS, None, i,
                                                  info, use_reentrant=False)
            else:
                x_BLD, layer_routing = block(x_BLD, cos, sin, mask_B1LS, cache, i, info)
            routing.append(layer_routing)
        if at_BL is None:
            return ModelOutput(F.linear(self.norm(x_BLD), self.output_rows()), routing)
        return ModelOutput(None, routing, F.linear(self.norm(x_BLD[at_BL]), self.output_rows()))

    def output_rows(self) -> torch.Tensor:
        """The output projection [vocab, d_model]: the head, plus each image code's features."""
        if self.features_out is None:
            return self.head.weight
        w = self.head.weight
        start, end = self.image_offset, self.image_offset + len(self.code_features_KF)
        return torch.cat([w[:start], w[start:end] + self.code_rows(self.features_out), w[end:]])

    def code_rows(self, shared: nn.Linear) -> torch.Tensor:
        """What a shared map adds to each code's row, [codes, d_model]: the map of the code's
        pixels, or the sum of its form's and its colour's columns over sqrt(2), which is the
        map of a one-hot of each scaled to unit norm, looked up instead of multiplied."""
        if self.code_features_KF.dtype == torch.long:
            # F.embedding, not weight.T[ids]: indexing's backward adds up in a thread-dependent
            # order on CPU, which would make training irreproducible
            return F.embedding(self.code_features_KF, shared.weight.T).sum(1) / math.sqrt(2)
        return shared(self.code_features_KF)

    def moe_layers(self) -> list[tuple[int, MoE]]:
        return [(i, b.ffn) for i, b in enumerate(self.blocks) if isinstance(b.ffn, MoE)]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
