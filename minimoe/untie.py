"""Modality-untied weights (Mixture-of-Transformers, Liang et al. 2024): a text copy and an
image copy of a position-wise module, such as an attention projection or a norm.

    y[p] = text_copy(x[p])   if position p holds text
           image_copy(x[p])  if it holds an image code

Attention itself stays global: the untied projections make every position's queries, keys and
values, and then every position attends to every other one under the same omni-attention mask.
A copy made from one module starts as that module, so an untied model made from a dense one
computes exactly what the dense model computes until training moves the copies apart.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class PerModality(nn.Module):
    """`module` for text positions and a copy of it for image positions."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.text, self.image = module, copy.deepcopy(module)

    def forward(self, x_BL_: torch.Tensor, image_BL: torch.Tensor) -> torch.Tensor:
        """x [B, L, ...] with one position per (b, l); image_BL (bool) says which copy."""
        text_N_, image_N_ = self.text(x_BL_[~image_BL]), self.image(x_BL_[image_BL])
        y = text_N_.new_empty(*image_BL.shape, *text_N_.shape[1:])
        y[~image_BL], y[image_BL] = text_N_, image_N_
        return y


def per_position(module: nn.Module, x_BL_: torch.Tensor, image_BL: torch.Tensor) -> torch.Tensor:
    """module(x), each position through its own modality's copy when the module is untied."""
    return module(x_BL_, image_BL) if isinstance(module, PerModality) else module(x_BL_)


def tied_name(name: str) -> str:
    """The parameter of a tied model that an untied parameter starts from:
    'blocks.0.attn.qkv.image.weight' -> 'blocks.0.attn.qkv.weight'."""
    parts = name.split(".")
    return ".".join(p for i, p in enumerate(parts)
                    if not (p in ("text", "image") and 0 < i < len(parts) - 1))
