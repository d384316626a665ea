"""A small VQ image tokenizer: conv encoder -> nearest-code bottleneck -> conv decoder.

Stage 1 of `train.py`. Images become a grid of discrete codes that the transformer predicts
(`encode`), and predicted codes become images again (`decode`).

    x_B3HW in [0,1] --encoder--> z_BDhw --nearest code--> codes_Bhw --codebook--> q_BDhw
                                                                               --decoder--> recon_B3HW

The codebook is not trained by gradients but as an online k-means (VQ-VAE appendix A.1,
van den Oord et al. 2017): each code follows an exponential moving average (EMA) of the encoder
outputs assigned to it, and a code that nobody picked for `vq_dead_after` steps is restarted
on a random encoder output of the current batch. The encoder learns to commit to its code
(`vq_beta` * commitment loss) and receives the decoder's gradient through the quantiser by the
straight-through estimator.

Shape legend: B images, H/W pixels, h/w code grid (H/f, W/f for downsampling factor f),
C conv channels, D code size, K codebook size, N = B*h*w encoder vectors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .config import VQConfig
from .schedules import warmup_cosine

NORM_GROUPS = 32  # GroupNorm groups (fewer when the width is not a multiple of 32)
MAX_WIDTH_RATIO = 4  # the full-resolution convs are at least vq_channels / 4 wide
EMA_EPS = 1e-5  # keeps the code mean finite while its EMA count is ~0
RESTART_COUNT = 1.0  # EMA count given to a restarted code: small, so it moves fast at first
NEAREST_CHUNK = 4096  # vectors per distance matrix (K=8192 codes x 4096 vectors = 128 MB)
WARMUP_FRACTION = 0.05  # linear LR warmup over this share of the steps
MIN_LR_RATIO = 0.1  # cosine decays to vq_lr * MIN_LR_RATIO
WEIGHT_DECAY = 0.0  # the conv nets are small and underfit: no weight decay
GRAD_CLIP = 1.0  # clip the global gradient norm (early steps see large reconstruction errors)
LOG_EVERY = 10  # steps between log dicts


@dataclass
class VQOutput:
    recon_B3HW: Tensor  # reconstruction in [0,1] (clamped)
    codes_BHW: Tensor  # long codes, [B, H/f, W/f]
    loss: Tensor  # recon_loss + vq_beta * commit_loss: what the optimiser minimises
    recon_loss: Tensor
    commit_loss: Tensor  # mean squared distance of the encoder outputs to their codes
    perplexity: Tensor  # exp(entropy) of this batch's code histogram: effective codes used
    dead_restarts: int = 0  # codes restarted during this forward (training mode only)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(NORM_GROUPS, channels), channels)


class ResBlock(nn.Module):
    """x + conv(silu(norm(conv(silu(norm(x)))))): the pre-norm block of VQGAN/diffusion UNets."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


def _widths(cfg: VQConfig) -> list[int]:
    """Conv width after i halvings, for i = 0..log2(f): vq_channels at the code grid, half as
    many per doubling of resolution, but at least a quarter (like VQGAN's channel multipliers
    1..4). Full-resolution convs dominate the cost, so they get the fewest channels."""
    C, halvings = cfg.vq_channels, int(math.log2(cfg.vq_downsample))
    return [max(C >> (halvings - i), C // MAX_WIDTH_RATIO) for i in range(halvings + 1)]


def _encoder(cfg: VQConfig) -> nn.Sequential:
    if cfg.vq_encoder == "patch":
        return _patch_encoder(cfg)
    w = _widths(cfg)
    layers: list[nn.Module] = [nn.Conv2d(3, w[0], 3, padding=1)]
    for i in range(len(w) - 1):
        layers += [ResBlock(w[i]), nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1)]
    layers += [ResBlock(w[-1]), _norm(w[-1]), nn.SiLU(), nn.Conv2d(w[-1], cfg.vq_dim, 1)]
    return nn.Sequential(*layers)


def _patch_encoder(cfg: VQConfig) -> nn.Sequential:
    """Each code sees its own f x f patch and nothing else: a patch embedding (a conv with
    kernel = stride = f) and an MLP per cell. Equal patches then get equal codes wherever they
    are, so one meaning is one code, where a conv encoder's wide receptive field also writes
    the neighbourhood into a code (a black patch beside a red edge and one in open background
    become different codes). The decoder still reads the neighbours to draw the edges. No
    GroupNorm here: its statistics run over the whole grid and would leak the neighbours back."""
    C = cfg.vq_channels
    return nn.Sequential(
        nn.Conv2d(3, C, cfg.vq_downsample, stride=cfg.vq_downsample), nn.SiLU(),
        nn.Conv2d(C, C, 1), nn.SiLU(), nn.Conv2d(C, C, 1), nn.SiLU(),
        nn.Conv2d(C, cfg.vq_dim, 1))


def _decoder(cfg: VQConfig) -> nn.Sequential:
    """The conv encoder mirrored (for either encoder); nearest upsampling + conv instead of
    transposed convs (no checkerboard artefacts)."""
    w = _widths(cfg)
    layers: list[nn.Module] = [nn.Conv2d(cfg.vq_dim, w[-1], 3, padding=1), ResBlock(w[-1])]
    for i in reversed(range(len(w) - 1)):
        layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                   nn.Conv2d(w[i + 1], w[i], 3, padding=1), ResBlock(w[i])]
    layers += [_norm(w[0]), nn.SiLU(), nn.Conv2d(w[0], 3, 3, padding=1)]
    return nn.Sequential(*layers)


class VQModel(nn.Module):
    """Encoder, EMA codebook and decoder. `forward` in training mode also updates the codebook.

    Codes are plain Euclidean vectors, not L2-normalised: the EMA mean of the assigned encoder
    outputs is then exactly the k-means centroid update, and code vectors keep their magnitude
    for the decoder. Codebook usage, the usual reason to normalise, is kept up by the dead-code
    restarts and the k-means++ initialisation instead.
    """

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = _encoder(cfg)
        self.decoder = _decoder(cfg)
        K, D = cfg.vq_codes, cfg.vq_dim
        # Buffers, not parameters: no gradient reaches them, and they travel in the state_dict.
        self.register_buffer("codebook_KD", torch.randn(K, D))
        self.register_buffer("ema_count_K", torch.ones(K))  # EMA of vectors assigned per step
        self.register_buffer("ema_sum_KD", self.codebook_KD.clone())  # EMA of their sum
        self.register_buffer("unused_steps_K", torch.zeros(K, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(False))  # set by the first training batch

    # -- the three public directions -------------------------------------------------------

    @torch.no_grad()  # codes are discrete: no gradient can pass them anyway
    def encode(self, x_B3HW: Tensor) -> Tensor:
        """Images in [0,1] -> long codes [B, H/f, W/f]."""
        z_BDhw = self._encode_continuous(x_B3HW)
        return self._nearest(_flatten(z_BDhw)).view(z_BDhw.shape[0], *z_BDhw.shape[2:])

    def decode(self, codes_BHW: Tensor) -> Tensor:
        """Codes [B, h, w] -> images [B, 3, h*f, w*f] in [0,1]."""
        q_BhwD = self.codebook_KD[codes_BHW]
        return self._decode_raw(q_BhwD.permute(0, 3, 1, 2)).clamp(0, 1)

    def forward(self, x_B3HW: Tensor) -> VQOutput:
        z_BDhw = self._encode_continuous(x_B3HW)
        z_ND = _flatten(z_BDhw)
        if self.training and not self.initialized:
            self._init_codebook(z_ND.detach())
        codes_N = self._nearest(z_ND)
        q_ND = self.codebook_KD[codes_N]
        restarts = self._ema_update(z_ND.detach(), codes_N) if self.training else 0

        # The codebook is moved by the EMA only, so the commitment term pulls the encoder alone.
        commit_loss = F.mse_loss(z_ND, q_ND)
        # Straight-through: the decoder sees the code, the encoder gets the decoder's gradient.
        # Written q + (z - z) rather than z + (q - z) because z - z is exactly 0 in floating
        # point, so the forward value is bit-for-bit the code, as in `decode`.
        q_ND = q_ND + (z_ND - z_ND.detach())
        B, D, h, w = z_BDhw.shape
        raw_B3HW = self._decode_raw(q_ND.view(B, h, w, D).permute(0, 3, 1, 2))
        # The loss sees the unclamped output so that overshooting pixels still get a gradient.
        recon_loss = reconstruction_loss(raw_B3HW, x_B3HW, self.cfg.vq_edge_weight)
        codes_Bhw = codes_N.view(B, h, w)
        return VQOutput(
            recon_B3HW=raw_B3HW.clamp(0, 1), codes_BHW=codes_Bhw,
            loss=recon_loss + self.cfg.vq_beta * commit_loss, recon_loss=recon_loss,
            commit_loss=commit_loss, perplexity=_perplexity(codes_N, self.cfg.vq_codes),
            dead_restarts=restarts)

    # -- pieces -----------------------------------------------------------------------------

    def _encode_continuous(self, x_B3HW: Tensor) -> Tensor:
        return self.encoder(x_B3HW * 2 - 1)  # the nets work on zero-centred pixels in [-1,1]

    def _decode_raw(self, q_BDhw: Tensor) -> Tensor:
        return self.decoder(q_BDhw) * 0.5 + 0.5

    @torch.no_grad()
    def _nearest(self, z_ND: Tensor) -> Tensor:
        """Index of the closest code (Euclidean) for every vector, in chunks to bound memory."""
        e_KD = self.codebook_KD
        e_sq_K = (e_KD * e_KD).sum(1)
        # |z - e|^2 = |z|^2 - 2 z.e + |e|^2; |z|^2 is the same for every code, so it is dropped.
        return torch.cat([(e_sq_K - 2 * z @ e_KD.T).argmin(1) for z in z_ND.split(NEAREST_CHUNK)])

    @torch.no_grad()
    def _init_codebook(self, z_ND: Tensor) -> None:
        """k-means++ seeding on the first batch: each next code is an encoder output drawn with
        probability proportional to its squared distance to the nearest code so far. Spread-out
        codes all win some vectors, so training starts with every code alive."""
        K = self.cfg.vq_codes
        picks = [int(torch.randint(len(z_ND), ()))]
        dist_N = ((z_ND - z_ND[picks[0]]) ** 2).sum(1)
        for _ in range(K - 1):
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
        """Move each used code to the EMA mean of its assigned vectors; restart dead codes.

        Returns how many codes were restarted."""
        K, decay = self.cfg.vq_codes, self.cfg.vq_decay
        count_K = torch.bincount(codes_N, minlength=K).to(z_ND.dtype)
        sum_KD = torch.zeros_like(self.ema_sum_KD).index_add_(0, codes_N, z_ND)
        self.ema_count_K.mul_(decay).add_(count_K, alpha=1 - decay)
        self.ema_sum_KD.mul_(decay).add_(sum_KD, alpha=1 - decay)
        # An unused code's sum and count decay alike, so its mean would not move: only used
        # codes are rewritten, which also keeps long-unused ones away from the EMA_EPS clamp.
        used_K = count_K > 0
        mean_KD = self.ema_sum_KD / self.ema_count_K.clamp(min=EMA_EPS)[:, None]
        self.codebook_KD[used_K] = mean_KD[used_K]

        self.unused_steps_K.add_(1).masked_fill_(used_K, 0)
        if self.cfg.vq_dead_after <= 0:  # restarts switched off
            return 0
        dead = (self.unused_steps_K >= self.cfg.vq_dead_after).nonzero().squeeze(1)
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


def image_gradients(x_B3HW: Tensor) -> tuple[Tensor, Tensor]:
    """Differences between horizontally and between vertically adjacent pixels."""
    return x_B3HW[..., :, 1:] - x_B3HW[..., :, :-1], x_B3HW[..., 1:, :] - x_B3HW[..., :-1, :]


def reconstruction_loss(recon_B3HW: Tensor, x_B3HW: Tensor, edge_weight: float) -> Tensor:
    """MSE of the pixels plus `edge_weight` times the MSE of their horizontal and vertical
    differences. MSE alone is minimised by a blurred edge when the codes leave its exact place
    open; the edge term prices the blur, which is what turns a reconstructed square's corners
    round and a cross's arms into a blob."""
    loss = F.mse_loss(recon_B3HW, x_B3HW)
    if edge_weight:
        for a, b in zip(image_gradients(recon_B3HW), image_gradients(x_B3HW)):
            loss = loss + edge_weight * F.mse_loss(a, b)
    return loss


def _flatten(z_BDhw: Tensor) -> Tensor:
    """[B, D, h, w] -> [B*h*w, D], row-major over (B, h, w) so codes reshape to [B, h, w]."""
    return z_BDhw.permute(0, 2, 3, 1).reshape(-1, z_BDhw.shape[1])


def _perplexity(codes: Tensor, n_codes: int) -> Tensor:
    p_K = torch.bincount(codes.flatten(), minlength=n_codes).float() / codes.numel()
    return torch.exp(-(p_K * torch.log(p_K.clamp(min=1e-12))).sum())


def codebook_stats(codes: Tensor, n_codes: int) -> dict:
    """{"perplexity": exp(entropy of the code histogram), "used_fraction": share of codes used}.

    Perplexity is the number of equally likely codes with the same entropy: n_codes for a
    uniform histogram, 1 when a single code is used."""
    used = torch.bincount(codes.flatten(), minlength=n_codes) > 0
    return {"perplexity": float(_perplexity(codes, n_codes)),
            "used_fraction": float(used.float().mean())}


def psnr(x: Tensor, y: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0,1], from the MSE over all pixels
    (inf for identical images)."""
    mse = float(F.mse_loss(x.detach().float(), y.detach().float()))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def train_vq(model: VQModel, next_batch: Callable[[int], Tensor], cfg: VQConfig,
             steps: int | None = None, device: str | torch.device = "cpu",
             log: Callable[[dict], None] | None = None, progress: bool = True) -> list[dict]:
    """Train `model` (encoder/decoder by AdamW, codebook by EMA) and return the log dicts.

    `next_batch(step)` returns images [B,3,H,W] in [0,1]. Deterministic given the global torch
    seed and a deterministic `next_batch`: the only random draws (k-means++ seeding, dead-code
    restarts) use the global torch RNG. Leaves the model in eval mode.
    """
    steps = cfg.vq_steps if steps is None else steps
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.vq_lr, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(
        s, steps, max(1, int(WARMUP_FRACTION * steps)), MIN_LR_RATIO))
    history, restarts = [], 0
    bar = tqdm(range(steps), desc="vq", disable=not progress)
    for step in bar:
        x_B3HW = next_batch(step).to(device)
        out = model(x_B3HW)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        sched.step()
        restarts += out.dead_restarts
        if step % LOG_EVERY == 0 or step == steps - 1:
            # dead_restarts counts the codes restarted since the previous log dict
            entry = dict(step=step, loss=out.loss.item(), recon=out.recon_loss.item(),
                         psnr=psnr(out.recon_B3HW.detach(), x_B3HW),
                         perplexity=out.perplexity.item(), dead_restarts=restarts)
            restarts = 0
            history.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", psnr=f"{entry['psnr']:.1f}",
                            ppl=f"{entry['perplexity']:.0f}")
            if log is not None:
                log(entry)
    model.eval()
    return history


__all__ = ["VQModel", "VQOutput", "train_vq", "psnr", "codebook_stats"]
