"""FID: the Fréchet distance between Gaussians fitted to image features, computed in float64.

    FD = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2)

The features come from `FeatureNet`, a small classifier trained on the built-in domains
(domain, main colour, shape, glyph and pattern labels), trained once per run folder and cached
with its held-out accuracy; or from the standard Inception network when the user has its
weights as a local TorchScript file (`load_inception`; nothing is downloaded).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint
from .data import COLOURS, DIGITS, DOMAINS, LETTERS, SHAPES, BuiltinData
from .sequences import IGNORE
from .tokenizers import images_to_tensor

GLYPHS = (DIGITS + LETTERS).lower()
PATTERNS = ("stripes horizontal", "stripes vertical", "stripes diagonal", "checkerboard")
HEADS = {"domain": len(DOMAINS), "colour": len(COLOURS), "shape": len(SHAPES),
         "glyph": len(GLYPHS), "pattern": len(PATTERNS)}
FEATURES = 128  # width of the feature vector the distance is computed on
TRAIN_STEPS, BATCH, LR = 600, 64, 3e-3


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray
                     ) -> float:
    """The Fréchet distance of N(mu1, cov1) and N(mu2, cov2), in float64. The matrix square
    root goes through symmetric eigendecompositions: sqrt(S1) S2 sqrt(S1) is symmetric PSD and
    has the eigenvalues of S1 S2, so tr((S1 S2)^1/2) = sum of the roots of its eigenvalues."""
    mu1, mu2, cov1, cov2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, cov1, cov2))
    w, v = np.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ cov2 @ root1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2)
                 - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))


def stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of features [n, F], float64."""
    f = np.asarray(features, dtype=np.float64)
    if len(f) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(f)}")
    return f.mean(0), np.cov(f, rowvar=False)


def labels(sample) -> dict[str, int]:
    """The classifier's targets for one sample (IGNORE where a head does not apply)."""
    o = sample.objects[0] if sample.objects else {}
    out = {h: IGNORE for h in HEADS}
    if sample.domain not in DOMAINS:
        return out
    out["domain"] = DOMAINS.index(sample.domain)
    colour = o.get("colour") or (o.get("colours") or [None])[0]
    if colour in COLOURS:
        out["colour"] = list(COLOURS).index(colour)
    if sample.domain == "shapes":
        out["shape"] = SHAPES.index(o["shape"])
    elif sample.domain == "glyphs":
        out["glyph"] = GLYPHS.index(o["glyph"].lower())
    else:
        kind = o["pattern"] if o["pattern"] == "checkerboard" else f"stripes {o['direction']}"
        out["pattern"] = PATTERNS.index(kind)
    return out


class FeatureNet(nn.Module):
    """Three conv stages and global average pooling to a FEATURES vector, one linear head per
    label; any image size."""

    def __init__(self):
        super().__init__()
        widths = (3, 32, 64, FEATURES)
        layers = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.GroupNorm(8, b), nn.GELU(),
                       nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({h: nn.Linear(FEATURES, n) for h, n in HEADS.items()})

    def features(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.body(x_BCHW).mean((2, 3))

    def forward(self, x_BCHW: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x_BCHW)
        return {h: head(f) for h, head in self.heads.items()}


def _batch(data, first: int, n: int):
    samples = [data[first + i] for i in range(n)]
    y = {h: torch.tensor([labels(s)[h] for s in samples]) for h in HEADS}
    return images_to_tensor([s.image for s in samples]), y


def train_feature_net(image_size: int, seed: int = 0, progress: bool = True,
                      steps: int | None = None) -> tuple[FeatureNet, dict]:
    """Train on the built-in training split; returns the net and its held-out accuracy per
    head (on 512 held-out samples)."""
    torch.manual_seed(seed)
    net = FeatureNet()
    opt = torch.optim.AdamW(net.parameters(), lr=LR)
    data = BuiltinData(image_size, DOMAINS, "train", seed=seed)
    for step in tqdm(range(steps or TRAIN_STEPS), desc="feature net", disable=not progress):
        x, y = _batch(data, step * BATCH, BATCH)
        out = net(x)
        loss = sum(F.cross_entropy(out[h], y[h], ignore_index=IGNORE) for h in HEADS
                   if (y[h] != IGNORE).any())
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    x, y = _batch(BuiltinData(image_size, DOMAINS, "heldout", seed=seed), 0, 512)
    with torch.no_grad():
        out = net(x)
    accuracy = {h: round(float((out[h].argmax(1) == y[h])[y[h] != IGNORE].float().mean()), 4)
                for h in HEADS}
    return net, accuracy


def cached_feature_net(path: Path, image_size: int, progress: bool = True,
                       steps: int | None = None) -> tuple[FeatureNet, dict]:
    """The feature net at `path`, trained and saved there first if it does not exist."""
    if path.exists():
        payload = checkpoint.load(path)
        if payload.get("image_size") == image_size:
            net = FeatureNet()
            net.load_state_dict(payload["model"])
            return net.eval(), payload["accuracy"]
    net, accuracy = train_feature_net(image_size, progress=progress, steps=steps)
    checkpoint.save({"model": net.state_dict(), "accuracy": accuracy,
                     "image_size": image_size}, path)
    return net, accuracy


@torch.no_grad()
def features(net: FeatureNet, images: list, batch: int = 256) -> np.ndarray:
    return np.concatenate([net.features(images_to_tensor(images[i:i + batch])).numpy()
                           for i in range(0, len(images), batch)])


def fid(featurize, images_a: list, images_b: list) -> float:
    """FID of two image lists; featurize(images) -> features [n, F] (e.g. FeatureNet's)."""
    return frechet_distance(*stats(featurize(images_a)), *stats(featurize(images_b)))


INCEPTION_FEATURES = 2048  # the pool3 width of the standard FID Inception network


def load_inception(path: Path):
    """The standard FID Inception network from a local TorchScript file (the
    `inception-2015-12-05.pt` of the StyleGAN2-ADA metrics: uint8 NCHW images in, pool3
    features out with return_features=True). Returns featurize(images) -> [n, 2048]."""
    try:
        with warnings.catch_warnings():  # the published file is TorchScript; no choice there
            warnings.filterwarnings("ignore", message=".*jit.load.* is deprecated")
            net = torch.jit.load(str(path), map_location="cpu").eval()
        with torch.no_grad():
            probe = net(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), return_features=True)
    except Exception as e:  # any unreadable or foreign file lands here
        raise ValueError(f"--inception {path}: not the FID Inception TorchScript "
                         f"({type(e).__name__}); pass inception-2015-12-05.pt") from None
    if tuple(probe.shape) != (2, INCEPTION_FEATURES):
        raise ValueError(f"--inception {path}: gives features of shape {tuple(probe.shape)[1:]}"
                         f", not ({INCEPTION_FEATURES},); pass inception-2015-12-05.pt")

    @torch.no_grad()
    def featurize(images: list, batch: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.stack([np.asarray(im.convert("RGB"))
                                           for im in images[i:i + batch]])).permute(0, 3, 1, 2)
            out.append(net(x.contiguous(), return_features=True).double().numpy())
        return np.concatenate(out)
    return featurize
