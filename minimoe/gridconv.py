"""A depthwise convolution over each image's code grid, for the `conv` part of --image-pos.

A code's shape is a local arrangement of codes: a corner next to an edge next to a corner. A
transformer has to learn from examples which of its 64 image positions are neighbours and
that neighbourhoods look alike everywhere; a convolution is told both. Added in every block
(x + conv(x) at image positions, before attention), it also tells each code where it sits,
since zero padding marks the grid's border: a conditional position encoding (Chu et al.,
"Conditional Positional Encodings for Vision Transformers", 2021), here in every block rather
than one. Text positions are left as they are.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class GridConv(nn.Module):
    def __init__(self, d_model: int, side: int, kernel: int = 3):
        super().__init__()
        self.side = side
        self.weight = nn.Parameter(torch.empty(d_model, 1, kernel, kernel))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x_BLD: torch.Tensor, image_BL: torch.Tensor) -> torch.Tensor:
        """x with conv(x) added at the image positions. Every image in x must be whole (all of
        its side x side codes, [MASK] included, in this call), as in training and sampling."""
        n = int(image_BL.sum())
        if n == 0:
            return x_BLD
        D, cells = x_BLD.shape[-1], self.side * self.side
        if n % cells:
            raise ValueError(f"GridConv: {n} image positions are not whole {self.side}x"
                             f"{self.side} grids; pass every image's codes in one call")
        # positions in row-major order, so each image's codes come out in its grid order
        grid_NDHW = x_BLD[image_BL].view(-1, self.side, self.side, D).permute(0, 3, 1, 2)
        y_NHWD = F.conv2d(grid_NDHW, self.weight.to(x_BLD.dtype), padding="same",
                          groups=D).permute(0, 2, 3, 1)
        delta_BLD = torch.zeros_like(x_BLD)
        delta_BLD[image_BL] = y_NHWD.reshape(-1, D)
        return x_BLD + delta_BLD
