"""A depthwise convolution over each image's code grid, for the `conv` part of --image-pos.

An object's shape is a local arrangement of codes: a corner next to an edge next to a corner. A
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
        """x with conv(x) added at the image positions of every row that holds one whole
        image in this call (all side x side codes, [MASK] included, as training and both
        samplers pass them). Other rows are left as they are: a code id decoded one at a time
        as text, or ids that make no grid, have no neighbours to convolve."""
        cells = self.side * self.side
        grid_BL = image_BL & (image_BL.sum(1, keepdim=True) == cells)
        if not bool(grid_BL.any()):
            return x_BLD
        D = x_BLD.shape[-1]
        # positions in row-major order, so each image's codes come out in its grid order;
        # contiguous, so that the weight's gradient keeps the weight's layout (DDP buckets)
        grid_NDHW = x_BLD[grid_BL].view(-1, self.side, self.side, D).permute(0, 3, 1, 2)
        y_NHWD = F.conv2d(grid_NDHW.contiguous(), self.weight.to(x_BLD.dtype), padding="same",
                          groups=D).permute(0, 2, 3, 1)
        delta_BLD = torch.zeros_like(x_BLD)
        delta_BLD[grid_BL] = y_NHWD.reshape(-1, D).to(x_BLD.dtype)  # autocast computes in bf16
        return x_BLD + delta_BLD
