"""Tests of the VQ image tokenizer (`minimoe/vq.py`). CPU only, about 15 s on 2 cores.

    python -m pytest -q tests/test_vq.py

The images are made here (flat shapes, glyphs, stripes) so the tests do not depend on
`minimoe/data.py`.
"""
from __future__ import annotations

import math
import random

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from minimoe.config import VQConfig
from minimoe.vq import VQModel, codebook_stats, image_gradients, psnr, reconstruction_loss, train_vq

PALETTE = [(230, 40, 40), (40, 200, 60), (50, 90, 230), (240, 220, 40), (230, 120, 30),
           (170, 60, 210)]  # red, green, blue, yellow, orange, purple
GLYPHS = "0123456789ABCDEFGHKMNPRSTXYZ"


def _shape_image(rng: random.Random, size: int) -> Image.Image:
    """1-3 flat-coloured circles/squares/triangles on black."""
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 3)):
        r = rng.randint(size // 8, size // 3)
        cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
        colour, kind = rng.choice(PALETTE), rng.choice(["circle", "square", "triangle"])
        if kind == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif kind == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img


def _glyph_image(rng: random.Random, size: int) -> Image.Image:
    """A digit or letter in one palette colour on another."""
    fg, bg = rng.sample(PALETTE, 2)
    img = Image.new("RGB", (size, size), bg)
    font = ImageFont.load_default(size=int(size * 0.8))
    ImageDraw.Draw(img).text((size / 2, size / 2), rng.choice(GLYPHS), fill=fg, font=font,
                             anchor="mm")
    return img


def _pattern_image(rng: random.Random, size: int) -> Image.Image:
    """Two-colour stripes (horizontal or vertical) or a checkerboard."""
    a, b = rng.sample(PALETTE + [(0, 0, 0)], 2)
    period, kind = rng.choice([4, 8]), rng.choice(["h", "v", "check"])
    img = Image.new("RGB", (size, size), a)
    draw = ImageDraw.Draw(img)
    for i in range(0, size, period):
        for j in range(0, size, period):
            cell = {"h": i // period, "v": j // period, "check": i // period + j // period}[kind]
            if cell % 2:
                draw.rectangle([j, i, j + period - 1, i + period - 1], fill=b)
    return img


def synthetic_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """n images [n,3,size,size] in [0,1]: half shapes, a quarter glyphs, a quarter patterns."""
    rng = random.Random(seed)
    makers = [_shape_image, _shape_image, _glyph_image, _pattern_image]
    imgs = [makers[i % 4](rng, size) for i in range(n)]
    data = torch.tensor([list(im.tobytes()) for im in imgs], dtype=torch.uint8)
    return data.view(n, size, size, 3).permute(0, 3, 1, 2).float() / 255


def small_cfg(**overrides) -> VQConfig:
    """A tokenizer that runs in milliseconds: widths 4/8/16, one codebook of 32 codes of size 8."""
    base = dict(vq_downsample=4, vq_codes=32, vq_colours=0, vq_dim=8, vq_channels=16, vq_steps=20,
                vq_batch=8, vq_dead_after=50)
    base.update(overrides)
    return VQConfig(**base)


def initialized_model(cfg: VQConfig, size: int = 16, n: int = 16) -> VQModel:
    """A model whose codebook was seeded by one training forward (as train_vq's first step)."""
    torch.manual_seed(0)
    model = VQModel(cfg).train()
    with torch.no_grad():
        model(synthetic_images(n, size, seed=100))
    return model


def encoder_vectors(model: VQModel, x: torch.Tensor) -> torch.Tensor:
    """The continuous encoder outputs [N, D] in the order of the flattened codes."""
    with torch.no_grad():
        return model._bottleneck(x, train=False)[0]


@pytest.mark.parametrize("downsample,batch,height,width", [(2, 1, 16, 16), (4, 3, 16, 16),
                                                            (4, 5, 32, 16), (2, 2, 8, 24)])
def test_shapes_and_dtypes(downsample, batch, height, width):
    """encode: long codes [B, H/f, W/f] within [0, K); decode: float [B,3,H,W] in [0,1];
    any batch size and non-square images (the nets are fully convolutional)."""
    cfg = small_cfg(vq_downsample=downsample)
    model = initialized_model(cfg).eval()
    x = torch.rand(batch, 3, height, width)
    codes = model.encode(x)
    assert codes.dtype == torch.long
    assert codes.shape == (batch, height // downsample, width // downsample)
    assert 0 <= codes.min() and codes.max() < cfg.vq_codes
    recon = model.decode(codes)
    assert recon.dtype == torch.float32 and recon.shape == (batch, 3, height, width)
    assert 0 <= recon.min() and recon.max() <= 1


@pytest.mark.parametrize("encoder", ["conv", "patch"])
def test_a_patch_encoder_codes_a_patch_alone_and_a_conv_encoder_reads_its_neighbours(encoder):
    """The same 4x4 patch pasted into two different images: the patch encoder gives it the same
    vector (so the same code) in both, whatever surrounds it; the conv encoder does not."""
    model = initialized_model(small_cfg(vq_encoder=encoder)).eval()
    x = torch.rand(2, 3, 16, 16)
    patch = torch.rand(3, 4, 4)
    x[0, :, 4:8, 8:12] = patch  # grid cell (1, 2) of image 0 ...
    x[1, :, 12:16, 0:4] = patch  # ... and cell (3, 0) of image 1
    z = encoder_vectors(model, x).view(2, 4, 4, -1)
    same = torch.allclose(z[0, 1, 2], z[1, 3, 0], atol=1e-6)
    assert same == (encoder == "patch")
    if encoder == "patch":
        codes = model.encode(x)
        assert codes[0, 1, 2] == codes[1, 3, 0]


def test_eval_forward_is_decode_of_encode_and_leaves_codebook_alone():
    """In eval mode forward's recon/codes are exactly decode(encode(x)), and no buffer moves."""
    model = initialized_model(small_cfg()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = synthetic_images(6, 16, seed=1)
    out = model(x)
    with torch.no_grad():
        codes = model.encode(x)
        assert torch.equal(out.codes_BHW, codes)
        assert torch.equal(out.recon_B3HW, model.decode(codes))
    assert out.dead_restarts == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_codebook_gets_no_gradient_and_encoder_gets_straight_through_gradient():
    """The codebook is a buffer (EMA only); the reconstruction loss alone reaches the encoder
    through the straight-through estimator."""
    model = initialized_model(small_cfg())
    assert not any("codebook" in name for name, _ in model.named_parameters())
    out = model(synthetic_images(4, 16, seed=2))
    out.recon_loss.backward()
    assert not model.codebook_KD.requires_grad
    first_conv = model.encoder[0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def test_ema_moves_used_codes_toward_their_vectors_and_leaves_unused_alone():
    """One training step with a single image: each used code becomes the EMA-weighted mean of
    its old statistics and its assigned vectors (so it moves toward their mean); unused codes
    do not move."""
    cfg = small_cfg(vq_codes=64, vq_decay=0.9)
    model = initialized_model(cfg)
    x = synthetic_images(1, 16, seed=3)  # 16 vectors: most of the 64 codes stay unused
    z_ND = encoder_vectors(model, x)
    codes_N = model.codebook.nearest(z_ND)
    old_KD, old_sum_KD = model.codebook_KD.clone(), model.codebook.ema_sum_KD.clone()
    old_count_K = model.codebook.ema_count_K.clone()
    with torch.no_grad():
        model(x)
    new_KD = model.codebook_KD
    used = codes_N.unique()
    unused = torch.ones(cfg.vq_codes, dtype=torch.bool)
    unused[used] = False
    assert unused.sum() > 0
    assert torch.equal(new_KD[unused], old_KD[unused])
    d = cfg.vq_decay
    for k in used.tolist():
        mine = z_ND[codes_N == k]
        expected = ((d * old_sum_KD[k] + (1 - d) * mine.sum(0))
                    / (d * old_count_K[k] + (1 - d) * len(mine)))
        torch.testing.assert_close(new_KD[k], expected)
        target = mine.mean(0)
        moved = (new_KD[k] - target).norm() < (old_KD[k] - target).norm()
        assert moved or torch.allclose(old_KD[k], target, atol=1e-6)


def test_dead_codes_are_restarted_from_batch_vectors():
    """With vq_dead_after=3, feeding one image over and over leaves most codes unused; on the
    third step they are reset to encoder outputs of that batch and their counters cleared
    (at most one code per batch vector: any others wait for the next step)."""
    cfg = small_cfg(vq_codes=32, vq_dead_after=3)
    model = initialized_model(cfg)
    x = synthetic_images(1, 16, seed=4)
    restarts = []
    for _ in range(3):
        z_ND = encoder_vectors(model, x)
        used = torch.zeros(cfg.vq_codes, dtype=torch.bool)
        used[model.codebook.nearest(z_ND)] = True
        old_KD = model.codebook_KD.clone()
        with torch.no_grad():
            restarts.append(model(x).dead_restarts)
    assert restarts[:2] == [0, 0] and restarts[2] > 0
    # used codes moved by the EMA; the unused ones that changed are the restarted ones
    restarted = (model.codebook_KD != old_KD).any(1) & ~used
    assert restarted.sum() == restarts[2]
    # every restarted code is one of this batch's encoder vectors
    assert torch.cdist(model.codebook_KD[restarted], z_ND).min(1).values.max() < 1e-5
    assert (model.codebook.unused_steps_K[restarted] == 0).all()


def test_codebook_stats_on_known_histograms():
    """Uniform over n codes -> perplexity n; one code -> 1; half the codes uniformly -> n/2."""
    n = 16
    uniform = codebook_stats(torch.arange(n).repeat(3), n)
    assert uniform["perplexity"] == pytest.approx(n) and uniform["used_fraction"] == 1.0
    single = codebook_stats(torch.full((5, 4), 7), n)
    assert single["perplexity"] == pytest.approx(1.0) and single["used_fraction"] == 1 / n
    half = codebook_stats(torch.arange(n // 2), n)
    assert half["perplexity"] == pytest.approx(n / 2) and half["used_fraction"] == 0.5


def test_psnr_known_values():
    """Identical images -> inf; an error of exactly +-0.1 everywhere (MSE 0.01) -> 20 dB."""
    x = torch.full((2, 3, 8, 8), 0.5)
    assert psnr(x, x) == math.inf
    signs = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert psnr(x, x + 0.1 * signs) == pytest.approx(20.0, abs=1e-4)
    assert psnr(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)) == pytest.approx(0.0)


def test_state_dict_round_trip_encodes_identically():
    """The codebook and its EMA statistics are buffers, so a reloaded model is the same."""
    cfg = small_cfg()
    model = initialized_model(cfg).eval()
    clone = VQModel(cfg).eval()
    clone.load_state_dict(model.state_dict())
    x = synthetic_images(4, 16, seed=5)
    assert torch.equal(clone.encode(x), model.encode(x))


# A tokenizer for 16x16 images (8x8 codes) that trains in under ten seconds; it reaches about
# baseline + 10 dB on the held-out images below, an untrained one is below the baseline.
BOUND_CFG = dict(vq_downsample=2, vq_codes=64, vq_dim=16, vq_channels=64, vq_batch=32,
                 vq_lr=3e-3, vq_dead_after=20)
BOUND_STEPS = 300
# Required gain over predicting each image's mean colour: a tokenizer that only keeps the
# colours and blurs the shapes away stays near the baseline.
BOUND_MARGIN_DB = 6.0


def train_small(steps: int, seed: int = 0, colours: int = 0,
                autocast: str = "off") -> tuple[VQModel, list[dict]]:
    cfg = VQConfig(vq_steps=steps, vq_colours=colours, vq_autocast=autocast, **BOUND_CFG)
    torch.manual_seed(seed)
    model = VQModel(cfg)
    history = train_vq(model, lambda step: synthetic_images(cfg.vq_batch, 16, seed=step), cfg,
                       progress=False)
    return model, history


# one codebook; 8 forms x 8 colours; the same with the nets under bf16 autocast
@pytest.mark.parametrize("colours,autocast", [(0, "off"), (8, "off"), (8, "bf16")])
def test_training_beats_mean_colour_baseline(colours, autocast):
    """Held-out PSNR after a short training clearly beats predicting each image's mean colour,
    which the untrained model does not; the codebook stays in use."""
    test = synthetic_images(128, 16, seed=10_000)
    baseline = psnr(test.mean((2, 3), keepdim=True).expand_as(test), test)
    untrained = VQModel(VQConfig(vq_colours=colours, **BOUND_CFG)).eval()
    assert psnr(untrained.decode(untrained.encode(test)), test) < baseline + BOUND_MARGIN_DB

    model, history = train_small(BOUND_STEPS, colours=colours, autocast=autocast)
    assert not model.training
    with torch.no_grad():
        codes = model.encode(test)
        achieved = psnr(model.decode(codes), test)
    assert achieved >= baseline + BOUND_MARGIN_DB, (achieved, baseline)
    assert codebook_stats(codes, model.cfg.vq_codes)["used_fraction"] > 0.5
    assert history[-1]["step"] == BOUND_STEPS - 1
    assert set(history[0]) == {"step", "loss", "recon", "psnr", "perplexity", "dead_restarts"}


@pytest.mark.parametrize("colours", [0, 4])
def test_under_bf16_autocast_the_nets_round_but_codes_are_chosen_in_float32(colours):
    """Under CPU bf16 autocast the encoder and decoder run in bf16, but what the codebooks and
    the loss read is float32, and each code is the float32 nearest of its encoder output."""
    cfg = small_cfg(vq_codes=32, vq_colours=colours)
    model = initialized_model(cfg).eval()
    x = synthetic_images(8, 16, seed=3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        z_ND, q_ND, codes_N, _, _ = model._bottleneck(x, train=False)
        recon = model(x).recon_B3HW
    assert z_ND.dtype == q_ND.dtype == recon.dtype == torch.float32
    assert model.codebook.codebook_KD.dtype == torch.float32
    if colours:
        D = cfg.vq_dim
        want = (model.codebook.nearest(z_ND[:, :D]) * colours
                + model.colour_codebook.nearest(z_ND[:, D:]))
    else:
        want = model.codebook.nearest(z_ND)
    assert torch.equal(codes_N, want)
    assert not torch.equal(z_ND, encoder_vectors(model, x))  # the encoder did run in bf16


def test_training_is_deterministic():
    """Same seed and batches -> identical losses (k-means++ seeding and dead-code restarts
    draw from the seeded torch RNG)."""
    _, first = train_small(40)
    _, second = train_small(40)
    assert [h["loss"] for h in first] == [h["loss"] for h in second]


def test_edge_term_prices_a_blurred_edge_and_not_a_uniform_shift():
    """The image-gradient term is zero for a perfect reconstruction, adds nothing for an error
    that is the same at every pixel (its gradients match), and makes a blurred square cost more
    than MSE alone says: the property that keeps corners and thin arms."""
    x = torch.zeros(1, 3, 16, 16)
    x[..., 4:12, 4:12] = 1.0
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert reconstruction_loss(x, x, 1.0) == 0
    shifted = x + 0.1
    assert torch.allclose(reconstruction_loss(shifted, x, 1.0),
                          reconstruction_loss(shifted, x, 0.0))
    mse = reconstruction_loss(blurred, x, 0.0)
    assert reconstruction_loss(blurred, x, 1.0) > mse * 1.2
    dx, dy = image_gradients(x)
    assert dx.shape == (1, 3, 16, 15) and dy.shape == (1, 3, 15, 16)
    assert dx.abs().sum() == dy.abs().sum() == 2 * 3 * 8  # the square's two sides, 3 channels


def _square(colour, size: int = 16, box=(3, 5, 10, 12)) -> torch.Tensor:
    img = Image.new("RGB", (size, size))
    ImageDraw.Draw(img).rectangle(box, fill=colour)
    return torch.tensor(list(img.tobytes()), dtype=torch.float32).view(1, size, size, 3
                                                                       ).permute(0, 3, 1, 2) / 255


def test_split_patches_gives_one_form_for_every_colour_and_the_colours_apart():
    """A red and a blue square have the same form (1 on the square, 0 on the black ground);
    a patch's ink is its square's colour and its ground black; a flat patch has no form and
    its colour as ground."""
    from minimoe.vq import split_patches
    red, blue = _square((230, 40, 40)), _square((50, 90, 230))
    (form_red, colours_red), (form_blue, colours_blue) = (split_patches(x, 4) for x in (red, blue))
    torch.testing.assert_close(form_red, form_blue)
    # cell (1, 1) is cut by the square's edge (rows 5-7 of rows 4-7 lit); (2, 1) lies inside
    lit = (red.amax(1, keepdim=True) > 0).float()
    torch.testing.assert_close(form_red[..., 4:8, 4:8], lit[..., 4:8, 4:8])
    assert lit[..., 4:8, 4:8].sum() == 12
    torch.testing.assert_close(colours_red[0, :3, 1, 1], torch.tensor([230, 40, 40]) / 255)
    torch.testing.assert_close(colours_red[0, 3:, 1, 1], torch.zeros(3))
    torch.testing.assert_close(form_red[0, 0, 8:12, 4:8], torch.zeros(4, 4))
    torch.testing.assert_close(colours_red[0, 3:, 2, 1], torch.tensor([230, 40, 40]) / 255)


def test_factored_codes_pair_a_form_with_a_colour():
    """With vq_colours, code = form * colours + colour: the same square in two colours gets the
    same forms and other colours; training moves both codebooks; decode reads both; a state
    dict round trip encodes alike."""
    cfg = small_cfg(vq_codes=32, vq_colours=4)
    model = initialized_model(cfg)
    assert len(model.codebook) == 8 and len(model.colour_codebook) == 4
    assert model.codebook.initialized and model.colour_codebook.initialized
    model.eval()
    red, blue = (model.encode(_square(c)) for c in ((230, 40, 40), (50, 90, 230)))
    assert torch.equal(red // 4, blue // 4)
    assert not torch.equal(red % 4, blue % 4)
    assert model.codebook_KD.shape == (32, 2 * cfg.vq_dim)
    torch.testing.assert_close(model.codebook_KD[4 * 3 + 1],
                               torch.cat([model.codebook.codebook_KD[3],
                                          model.colour_codebook.codebook_KD[1]]))
    out = model(_square((230, 40, 40)))
    assert torch.equal(out.codes_BHW, red) and torch.equal(out.recon_B3HW, model.decode(red))
    clone = VQModel(cfg).eval()
    clone.load_state_dict(model.state_dict())
    x = synthetic_images(4, 16, seed=5)
    assert torch.equal(clone.encode(x), model.encode(x))


def test_a_tokenizer_saved_with_its_codebook_at_the_top_loads():
    """Older vq.pt files hold the codebook's buffers at the top of the state dict."""
    cfg = small_cfg()
    model = initialized_model(cfg).eval()
    old = {k.removeprefix("codebook."): v for k, v in model.state_dict().items()}
    clone = VQModel(cfg).eval()
    clone.load_state_dict(old)
    x = synthetic_images(4, 16, seed=5)
    assert torch.equal(clone.encode(x), model.encode(x))
