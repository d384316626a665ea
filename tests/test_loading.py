"""Loading beside training (`--workers N`, minimoe/loading.py): worker processes give the
batches of the training process bit for bit, from any step on and across jumps, and their
errors arrive as themselves.  Run: pytest -q tests/test_loading.py"""
import functools

import pytest
import torch

from minimoe.batches import Batcher
from minimoe.data import load_source
from minimoe.loading import Prefetcher
from minimoe.run import vq_images
from minimoe.sequences import BATCH_FIELDS
from minimoe.tokenizers import ImageTokenizer, Vocab
from minimoe.vq import VQModel
from conftest import micro_config
from test_shards import generated_folder

# Steps in the order training and its checks ask: on, then a jump ahead (a resumed run), back
# (the MoE stage's first step after its calibration batches), and on again.
STEPS = (0, 1, 2, 7, 8, 3, 4)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The data specs of every source kind that reads images: built-in, folder, shards."""
    from minimoe.data.pack import pack
    root = tmp_path_factory.mktemp("data")
    folder = generated_folder(root / "folder")
    return {"builtin": "builtin", "folder": f"folder:{folder}",
            "shards": f"wds:{pack(str(folder), str(root / 'shards'), 7)}"}


@pytest.mark.parametrize("kind", ["builtin", "folder", "shards"])
def test_two_workers_give_the_batches_of_none(sources, kind):
    """Same step -> same batch tensors, in-process and with 2 workers, whatever the order the
    steps are asked in."""
    batches = {}
    for workers in (0, 2):
        cfg = micro_config(data=sources[kind], workers=workers)
        torch.manual_seed(0)
        tok = ImageTokenizer(VQModel(cfg.vq), cfg.vq)  # untrained: codes are a fixed function
        source = load_source(cfg.data.data, cfg.data.image_size, "train", domains="shapes")
        batcher = Batcher(cfg, source, Vocab(cfg.vq.vq_codes), tok)
        batches[workers] = [batcher(step) for step in STEPS]
    for step, a, b in zip(STEPS, batches[0], batches[2]):
        for name in BATCH_FIELDS:
            assert torch.equal(getattr(a, name), getattr(b, name)), (kind, step, name)


def test_the_tokenizer_stage_reads_the_same_images_with_workers():
    source = load_source("builtin", 16, "train")
    read = functools.partial(vq_images, source, 8)
    alone, ahead = Prefetcher(read, 0), Prefetcher(read, 2)
    for step in (0, 1, 5, 2):
        assert torch.equal(alone(step), ahead(step))


def _fails_at_three(step: int) -> int:
    if step == 3:
        raise ValueError("no image could be decoded")
    return step


def test_a_workers_error_is_raised_as_itself_and_loading_goes_on():
    """A source's error in a worker reaches the caller as the same exception type and message
    (so it prints as the one-line error it is), and later steps still load."""
    load = Prefetcher(_fails_at_three, 2)
    assert [load(s) for s in (0, 1, 2)] == [0, 1, 2]
    with pytest.raises(ValueError, match="^no image could be decoded$"):
        load(3)
    assert load(4) == 4
    with pytest.raises(ValueError, match="--workers -1 must be >= 0"):
        Prefetcher(_fails_at_three, -1)


def test_starting_the_workers_leaves_the_global_random_state_alone():
    """Training seeds the model-side draws of a step before asking for its batch: a jump that
    starts the workers again must not draw from the generator those draws come from."""
    load = Prefetcher(_fails_at_three, 2)
    torch.manual_seed(0)
    load(5)
    after_a_start = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(after_a_start, torch.rand(4))
