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
        as text, or ids that make no grid, have no neighbours to convolve.

        Every shape here follows from x's shape alone, never from which positions are image
        ones, so torch.compile traces the block as one graph."""
        cells = self.side * self.side
        B, L, D = x_BLD.shape
        if L < cells:  # too short to hold a grid: one token decoded at a time
            return x_BLD
        # each row's image positions first, in order: a whole grid's codes in row-major order
        pos_L = torch.arange(L, device=x_BLD.device)
        order_BL = torch.where(image_BL, pos_L, pos_L + L).argsort(1)
        index_BCD = order_BL[:, :cells, None].expand(-1, -1, D)
        grid_BDHW = x_BLD.gather(1, index_BCD).view(B, self.side, self.side, D).permute(0, 3, 1, 2)
        # contiguous, so that the weight's gradient keeps the weight's layout (DDP buckets)
        y_BHWD = F.conv2d(grid_BDHW.contiguous(), self.weight.to(x_BLD.dtype), padding="same",
                          groups=D).permute(0, 2, 3, 1)
        whole_B11 = (image_BL.sum(1) == cells)[:, None, None]
        # a row without a whole grid adds zeros (at whichever positions it was given)
        y_BCD = torch.where(whole_B11, y_BHWD.reshape(B, cells, D), 0.0)
        return x_BLD.scatter_add(1, index_BCD, y_BCD.to(x_BLD.dtype))  # autocast: bf16 conv
