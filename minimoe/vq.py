"""A small VQ image tokenizer: conv encoder -> nearest-code bottleneck -> conv decoder.

Stage 1 of `train.py`. Images become a grid of discrete codes that the transformer predicts
(`encode`), and predicted codes become images again (`decode`).

    x_B3HW in [0,1] --encoder--> z_BDhw --nearest code--> codes_Bhw --codebook--> q_BDhw
                                                                     --decoder--> recon_B3HW

The codebook is not trained by gradients but as an online k-means (`codebook.Codebook`). The
encoder learns to commit to its code (`vq_beta` * commitment loss) and receives the decoder's
gradient through the quantiser by the straight-through estimator.

With `vq_colours` > 0 a code is a pair: a form (which pixels of the patch carry the ink) and a
colour (the ink's and the ground's), each from its own encoder and codebook, and the code id
is form * vq_colours + colour. What the transformer learns of a form then serves every colour,
where a single codebook gives each colour its own copy of every edge and corner.

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

from .codebook import Codebook
from .config import VQConfig
from .schedules import warmup_cosine

NORM_GROUPS = 32  # GroupNorm groups (fewer when the width is not a multiple of 32)
MAX_WIDTH_RATIO = 4  # the full-resolution convs are at least vq_channels / 4 wide
FLAT = 0.15  # a patch whose pixels all lie this close (RGB distance / sqrt 3) to its darkest
# pixel is one flat colour, its form empty (the built-in palette's closest pair is 0.25 apart)
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


def _encoder(cfg: VQConfig, channels: int) -> nn.Sequential:
    if cfg.vq_encoder == "patch":
        return _patch_encoder(cfg, channels)
    w = _widths(cfg)
    layers: list[nn.Module] = [nn.Conv2d(channels, w[0], 3, padding=1)]
    for i in range(len(w) - 1):
        layers += [ResBlock(w[i]), nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1)]
    layers += [ResBlock(w[-1]), _norm(w[-1]), nn.SiLU(), nn.Conv2d(w[-1], cfg.vq_dim, 1)]
    return nn.Sequential(*layers)


def _patch_encoder(cfg: VQConfig, channels: int) -> nn.Sequential:
    """Each code sees its own f x f patch and nothing else: a patch embedding (a conv with
    kernel = stride = f) and an MLP per cell. Equal patches then get equal codes wherever they
    are, so one meaning is one code, where a conv encoder's wide receptive field also writes
    the neighbourhood into a code (a black patch beside a red edge and one in open background
    become different codes). The decoder still reads the neighbours to draw the edges. No
    GroupNorm here: its statistics run over the whole grid and would leak the neighbours back."""
    C = cfg.vq_channels
    return nn.Sequential(
        nn.Conv2d(channels, C, cfg.vq_downsample, stride=cfg.vq_downsample), nn.SiLU(),
        nn.Conv2d(C, C, 1), nn.SiLU(), nn.Conv2d(C, C, 1), nn.SiLU(),
        nn.Conv2d(C, cfg.vq_dim, 1))


def _colour_encoder(cfg: VQConfig) -> nn.Sequential:
    """An MLP per cell on the cell's ink and ground colours (`split_patches`): it never sees
    where in the patch the ink lies, so a colour code cannot carry the form."""
    C = cfg.vq_channels
    return nn.Sequential(nn.Conv2d(6, C, 1), nn.SiLU(), nn.Conv2d(C, C, 1), nn.SiLU(),
                         nn.Conv2d(C, cfg.vq_dim, 1))


def split_patches(x_B3HW: Tensor, f: int) -> tuple[Tensor, Tensor]:
    """Each f x f patch as a form and two colours: (form [B,1,H,W] in [0,1], colours [B,6,h,w]).

    The form of a pixel is its RGB distance to the patch's darkest pixel, divided by the
    largest such distance in the patch (or by FLAT, if that is larger): 1 where the ink is,
    0 on the ground, a fraction where an edge crosses the pixel, and 0 everywhere in a flat
    patch. It is the same for a red and a blue square. The colours are the form-weighted mean
    of the pixels (the ink) and the (1 - form)-weighted mean (the ground), so together they
    describe the patch, and neither alone does."""
    B, _, H, W = x_B3HW.shape
    h, w = H // f, W // f
    px_BhwP3 = (x_B3HW.reshape(B, 3, h, f, w, f).permute(0, 2, 4, 3, 5, 1)
                .reshape(B, h, w, f * f, 3))
    darkest_Bhw1 = px_BhwP3.sum(-1).argmin(-1, keepdim=True)
    ground_Bhw13 = px_BhwP3.gather(3, darkest_Bhw1[..., None].expand(-1, -1, -1, -1, 3))
    dist_BhwP = (px_BhwP3 - ground_Bhw13).norm(dim=-1) / math.sqrt(3)
    form_BhwP = dist_BhwP / dist_BhwP.amax(-1, keepdim=True).clamp(min=FLAT)
    ink_Bhw3 = ((form_BhwP[..., None] * px_BhwP3).sum(3)
                / form_BhwP.sum(3, keepdim=True).clamp(min=1e-6))  # 0 in a flat patch
    ground_Bhw3 = (((1 - form_BhwP)[..., None] * px_BhwP3).sum(3)
                   / (1 - form_BhwP).sum(3, keepdim=True))  # >= 1: the darkest pixel is ground
    form_B1HW = form_BhwP.reshape(B, h, w, f, f).permute(0, 1, 3, 2, 4).reshape(B, 1, H, W)
    return form_B1HW, torch.cat([ink_Bhw3, ground_Bhw3], -1).permute(0, 3, 1, 2)


def _decoder(cfg: VQConfig, code_size: int) -> nn.Sequential:
    """The conv encoder mirrored (for either encoder); nearest upsampling + conv instead of
    transposed convs (no checkerboard artefacts)."""
    w = _widths(cfg)
    layers: list[nn.Module] = [nn.Conv2d(code_size, w[-1], 3, padding=1), ResBlock(w[-1])]
    for i in reversed(range(len(w) - 1)):
        layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                   nn.Conv2d(w[i + 1], w[i], 3, padding=1), ResBlock(w[i])]
    layers += [_norm(w[0]), nn.SiLU(), nn.Conv2d(w[0], 3, 3, padding=1)]
    return nn.Sequential(*layers)


class VQModel(nn.Module):
    """Encoder, EMA codebook and decoder (and, with vq_colours, a colour encoder and codebook).
    `forward` in training mode also updates the codebooks."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        colours, D = cfg.vq_colours, cfg.vq_dim
        self.encoder = _encoder(cfg, 1 if colours else 3)
        self.decoder = _decoder(cfg, 2 * D if colours else D)
        self.codebook = Codebook(cfg.vq_codes // max(colours, 1), D, cfg.vq_decay,
                                 cfg.vq_dead_after)
        self.colour_encoder = _colour_encoder(cfg) if colours else None
        self.colour_codebook = (Codebook(colours, D, cfg.vq_decay, cfg.vq_dead_after)
                                if colours else None)
        self._register_load_state_dict_pre_hook(_codebook_keys)

    # -- the three public directions -------------------------------------------------------

    @torch.no_grad()  # codes are discrete: no gradient can pass them anyway
    def encode(self, x_B3HW: Tensor) -> Tensor:
        """Images in [0,1] -> long codes [B, H/f, W/f]."""
        _, _, codes_N, _, grid = self._bottleneck(x_B3HW, train=False)
        return codes_N.view(grid)

    def decode(self, codes_BHW: Tensor) -> Tensor:
        """Codes [B, h, w] -> images [B, 3, h*f, w*f] in [0,1]."""
        return self._decode_raw(self.code_vectors(codes_BHW).permute(0, 3, 1, 2)).clamp(0, 1)

    def forward(self, x_B3HW: Tensor) -> VQOutput:
        z_ND, q_ND, codes_N, restarts, (B, h, w) = self._bottleneck(x_B3HW, self.training)
        # The codebook is moved by the EMA only, so the commitment term pulls the encoder alone.
        commit_loss = F.mse_loss(z_ND, q_ND)
        # Straight-through: the decoder sees the code, the encoder gets the decoder's gradient.
        # Written q + (z - z) rather than z + (q - z) because z - z is exactly 0 in floating
        # point, so the forward value is bit-for-bit the code, as in `decode`.
        q_ND = q_ND + (z_ND - z_ND.detach())
        raw_B3HW = self._decode_raw(q_ND.view(B, h, w, -1).permute(0, 3, 1, 2))
        # The loss sees the unclamped output so that overshooting pixels still get a gradient.
        recon_loss = reconstruction_loss(raw_B3HW, x_B3HW, self.cfg.vq_edge_weight)
        return VQOutput(
            recon_B3HW=raw_B3HW.clamp(0, 1), codes_BHW=codes_N.view(B, h, w),
            loss=recon_loss + self.cfg.vq_beta * commit_loss, recon_loss=recon_loss,
            commit_loss=commit_loss, perplexity=_perplexity(codes_N, self.cfg.vq_codes),
            dead_restarts=restarts)

    def code_vectors(self, codes: Tensor) -> Tensor:
        """What the decoder reads for each code: codes [...] -> [..., code size]."""
        if self.colour_codebook is None:
            return self.codebook.codebook_KD[codes]
        colours = self.cfg.vq_colours
        return torch.cat([self.codebook.codebook_KD[codes // colours],
                          self.colour_codebook.codebook_KD[codes % colours]], -1)

    @property
    def codebook_KD(self) -> Tensor:
        """Every code's vector, [vq_codes, code size]."""
        return self.code_vectors(torch.arange(self.cfg.vq_codes,
                                              device=self.codebook.codebook_KD.device))

    # -- pieces -----------------------------------------------------------------------------

    def _bottleneck(self, x_B3HW: Tensor, train: bool):
        """Encoder outputs z_ND (with gradient), their code vectors q_ND, the codes, how many
        dead codes were restarted, and the grid (B, h, w). Training moves the codebooks."""
        if self.colour_codebook is None:
            z_BDhw = self.encoder(x_B3HW * 2 - 1)  # the nets work on zero-centred pixels
            z_ND = _flatten(z_BDhw).float()
            codes_N, q_ND, restarts = _quantize(self.codebook, z_ND, train)
            return z_ND, q_ND, codes_N, restarts, (len(z_BDhw), *z_BDhw.shape[2:])
        form_B1HW, colours_B6hw = split_patches(x_B3HW, self.cfg.vq_downsample)
        form_BDhw = self.encoder(form_B1HW * 2 - 1)
        form_ND = _flatten(form_BDhw).float()
        colour_ND = _flatten(self.colour_encoder(colours_B6hw * 2 - 1)).float()
        forms_N, form_q_ND, form_restarts = _quantize(self.codebook, form_ND, train)
        colours_N, colour_q_ND, colour_restarts = _quantize(self.colour_codebook, colour_ND, train)
        return (torch.cat([form_ND, colour_ND], 1), torch.cat([form_q_ND, colour_q_ND], 1),
                forms_N * self.cfg.vq_colours + colours_N, form_restarts + colour_restarts,
                (len(form_BDhw), *form_BDhw.shape[2:]))

    def _decode_raw(self, q_BDhw: Tensor) -> Tensor:
        return self.decoder(q_BDhw).float() * 0.5 + 0.5


def _quantize(codebook: Codebook, z_ND: Tensor, train: bool):
    """codebook.quantize in float32 even under autocast: bf16 distances pick the wrong code
    whenever two codes lie within its rounding of each other."""
    with torch.autocast(z_ND.device.type, enabled=False):
        return codebook.quantize(z_ND.detach(), train)


def _codebook_keys(state_dict, prefix, *_):
    """Accept a state dict with the codebook's buffers at its top level, as in the vq.pt
    files of earlier runs."""
    for name in ("codebook_KD", "ema_count_K", "ema_sum_KD", "unused_steps_K", "initialized"):
        if prefix + name in state_dict:
            state_dict[prefix + "codebook." + name] = state_dict.pop(prefix + name)


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
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                              enabled=cfg.vq_autocast == "bf16")
    for step in bar:
        x_B3HW = next_batch(step).to(device)
        with autocast:
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
