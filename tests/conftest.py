"""Shared fixtures: tiny configs and models small enough for a CPU test in milliseconds."""
import pytest
import torch

from minimoe.build import build_model
from minimoe.config import make_config

torch.set_num_threads(2)


def micro_config(**overrides):
    """A config that trains in seconds: 16x16 images, 16 codes (4 forms x 4 colours). Its steps
    run in float32, so losses compared to fixed values do not depend on the CPU's bf16 kernels."""
    base = dict(image_size=16, text_len=64, text_vocab=256, vq_downsample=4, vq_codes=16,
                vq_colours=4, vq_dim=8, vq_channels=16, vq_steps=30, vq_batch=16, d_model=32,
                n_layers=2, n_heads=2, d_ffn=64, dense_steps=20, batch_t2i=4, batch_mmu=4,
                batch_lm=2, warmup=2, log_every=1, ckpt_every=10, sample_every=0, sample_steps=4,
                domains="shapes", autocast="off")
    base.update(overrides)
    return make_config("tiny", **base)


@pytest.fixture
def cfg():
    return micro_config()


@pytest.fixture
def model_and_vocab(cfg):
    torch.manual_seed(0)
    model, vocab = build_model(cfg)
    return model.eval(), vocab
