"""An EMA codebook: the k-means half of a VQ bottleneck (VQ-VAE appendix A.1, van den Oord et
al. 2017).

No gradient moves the codes. Each code follows an exponential moving average (EMA) of the
encoder outputs assigned to it, which is exactly the online k-means centroid update, and a code
that nobody picked for `dead_after` steps is restarted on a random encoder output of the
current batch. The first training batch seeds the codes by k-means++.

Codes are plain Euclidean vectors, not L2-normalised: they keep their magnitude for the decoder.
Codebook usage, the usual reason to normalise, is kept up by the restarts and the seeding.

Shape legend: K codes, D code size, N vectors.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

EMA_EPS = 1e-5  # keeps the code mean finite while its EMA count is ~0
RESTART_COUNT = 1.0  # EMA count given to a restarted code: small, so it moves fast at first
NEAREST_CHUNK = 4096  # vectors per distance matrix (K=8192 codes x 4096 vectors = 128 MB)


class Codebook(nn.Module):
    def __init__(self, codes: int, dim: int, decay: float, dead_after: int):
        super().__init__()
        self.decay, self.dead_after = decay, dead_after
        # Buffers, not parameters: no gradient reaches them, and they travel in the state_dict.
        self.register_buffer("codebook_KD", torch.randn(codes, dim))
        self.register_buffer("ema_count_K", torch.ones(codes))  # EMA of vectors assigned per step
        self.register_buffer("ema_sum_KD", self.codebook_KD.clone())  # EMA of their sum
        self.register_buffer("unused_steps_K", torch.zeros(codes, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(False))  # set by the first training batch

    def __len__(self) -> int:
        return len(self.codebook_KD)

    @torch.no_grad()
    def nearest(self, z_ND: Tensor) -> Tensor:
        """Index of the closest code (Euclidean) for every vector, in chunks to bound memory."""
        e_KD = self.codebook_KD
        e_sq_K = (e_KD * e_KD).sum(1)
        # |z - e|^2 = |z|^2 - 2 z.e + |e|^2; |z|^2 is the same for every code, so it is dropped.
        return torch.cat([(e_sq_K - 2 * z @ e_KD.T).argmin(1) for z in z_ND.split(NEAREST_CHUNK)])

    @torch.no_grad()
    def quantize(self, z_ND: Tensor, train: bool) -> tuple[Tensor, Tensor, int]:
        """The nearest code of every vector: (codes [N], code vectors [N, D], how many dead
        codes were restarted). In training the codes then move (seeded on the first call); the
        vectors returned are the codes as they were when chosen."""
        if train and not self.initialized:
            self._seed(z_ND)
        codes_N = self.nearest(z_ND)
        q_ND = self.codebook_KD[codes_N]
        return codes_N, q_ND, self._ema_update(z_ND, codes_N) if train else 0

    @torch.no_grad()
    def _seed(self, z_ND: Tensor) -> None:
        """k-means++: each next code is an encoder output drawn with probability proportional
        to its squared distance to the nearest code so far. Spread-out codes all win some
        vectors, so training starts with every code alive."""
        picks = [int(torch.randint(len(z_ND), ()))]
        dist_N = ((z_ND - z_ND[picks[0]]) ** 2).sum(1)
        for _ in range(len(self) - 1):
            # + tiny: a batch with fewer distinct vectors than codes still draws (duplicates)
            picks.append(int(torch.multinomial(dist_N + 1e-12, 1)))
            dist_N = torch.minimum(dist_N, ((z_ND - z_ND[picks[-1]]) ** 2).sum(1))
        self.codebook_KD.copy_(z_ND[picks])
        self.ema_sum_KD.copy_(self.codebook_KD)
        self.ema_count_K.fill_(1.0)
        self.unused_steps_K.zero_()
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, z_ND: Tensor, codes_N: Tensor) -> int:
        """Move each used code to the EMA mean of its assigned vectors; restart dead codes."""
        count_K = torch.bincount(codes_N, minlength=len(self)).to(z_ND.dtype)
        sum_KD = torch.zeros_like(self.ema_sum_KD).index_add_(0, codes_N, z_ND)
        self.ema_count_K.mul_(self.decay).add_(count_K, alpha=1 - self.decay)
        self.ema_sum_KD.mul_(self.decay).add_(sum_KD, alpha=1 - self.decay)
        # An unused code's sum and count decay alike, so its mean would not move: only used
        # codes are rewritten, which also keeps long-unused ones away from the EMA_EPS clamp.
        used_K = count_K > 0
        mean_KD = self.ema_sum_KD / self.ema_count_K.clamp(min=EMA_EPS)[:, None]
        self.codebook_KD[used_K] = mean_KD[used_K]

        self.unused_steps_K.add_(1).masked_fill_(used_K, 0)
        if self.dead_after <= 0:  # restarts switched off
            return 0
        dead = (self.unused_steps_K >= self.dead_after).nonzero().squeeze(1)
        if len(dead) == 0:
            return 0
        # Distinct random encoder outputs from this batch (global RNG: seeded by the caller).
        picks = torch.randperm(len(z_ND), device=z_ND.device)[:len(dead)]
        dead = dead[:len(picks)]  # more dead codes than vectors: the rest wait for next step
        self.codebook_KD[dead] = z_ND[picks]
        self.ema_sum_KD[dead] = z_ND[picks] * RESTART_COUNT
        self.ema_count_K[dead] = RESTART_COUNT
        self.unused_steps_K[dead] = 0
        return len(dead)
