"""Training: loss goes down, resume continues with identical losses, NaN stops the run and
keeps the last good checkpoint.  Run: pytest -q tests/test_trainer.py"""
import copy
import math
import time
import warnings
from collections import Counter

import pytest
import torch

from minimoe import checkpoint, config, trainer
from minimoe.batches import Batcher
from minimoe.build import build_model
from minimoe.data import BuiltinData, open_source
from minimoe.losses import task_losses, total_loss
from minimoe.run import RunWriter
from minimoe.tokenizers import ImageTokenizer, Vocab
from minimoe.trainer import TrainingError, fit, lr_at, make_optimizer
from minimoe.sequences import IGNORE, LM, MMU, T2I, TASKS, TURN_SHIFT, Batch
from minimoe.vq import VQModel
from conftest import micro_config


def setup(cfg, tmp_path):
    torch.manual_seed(0)
    tok = ImageTokenizer(VQModel(cfg.vq), cfg.vq)  # untrained: codes are still a fixed function
    torch.manual_seed(cfg.train.seed)
    model, vocab = build_model(cfg)
    source = BuiltinData(cfg.data.image_size, ("shapes",), "train", seed=0)
    return model, Batcher(cfg, source, vocab, tok), tok, RunWriter(tmp_path, cfg, tok, vocab)


def test_batches_are_deterministic_per_step_and_hold_every_task(tmp_path):
    cfg = micro_config()
    _, batcher, _, _ = setup(cfg, tmp_path)
    a, b, c = batcher(3), batcher(3), batcher(4)
    assert torch.equal(a.tokens_BL, b.tokens_BL) and torch.equal(a.labels_BL, b.labels_BL)
    assert not torch.equal(a.tokens_BL, c.tokens_BL)
    assert sorted(set(a.task_B.tolist())) == [0, 1, 2]
    assert a.tokens_BL.shape == (4 + 4 + 1, cfg.seq_len), "the two texts share one LM row"


def test_a_steps_texts_share_a_row_and_each_keeps_its_own_samples_domain(tmp_path):
    cfg = micro_config(domains="shapes,glyphs", batch_t2i=2, batch_mmu=2, batch_lm=2)
    torch.manual_seed(0)
    tok = ImageTokenizer(VQModel(cfg.vq), cfg.vq)
    _, vocab = build_model(cfg)
    source = BuiltinData(cfg.data.image_size, ("shapes", "glyphs"), "train", seed=0)
    batcher = Batcher(cfg, source, vocab, tok)
    batch, texts = batcher(0), batcher.samples(0)[-2:]
    assert [s.domain for s in texts] == ["shapes", "glyphs"]
    lm = batch.task_B == LM
    assert int(lm.sum()) == 1
    turn_L = batch.groups_BL[lm][0] >> TURN_SHIFT
    domain_L = batch.domain_BL[lm][0]
    assert set(domain_L[turn_L == 1].tolist()) == {0} and set(domain_L[turn_L == 2].tolist()) == {1}


@pytest.mark.parametrize("domains, sizes, uneven", [
    ("shapes:2,glyphs,patterns", (16, 12, 4), False),  # the tiny preset: whole rounds
    ("shapes:2,glyphs,patterns", (15, 12, 4), False),  # 31 a step: the round starts elsewhere
    ("shapes:2,glyphs,patterns", (8, 6, 2), True),  # MMU and LM rows start mid-round, every step
    ("shapes,glyphs,patterns", (2, 2, 2), True),
])
def test_each_task_reads_the_domains_its_rows_are_dealt_and_an_uneven_deal_warns(
        domains, sizes, uneven):
    """task_mixes counts, per task, the domains of the very samples the batcher deals it over
    the steps until the pattern repeats, and the batcher warns when a task's share of some
    domain is off the mix's."""
    from minimoe import batches
    cfg = micro_config(domains=domains, batch_t2i=sizes[0], batch_mmu=sizes[1],
                       batch_lm=sizes[2])
    source = BuiltinData(cfg.data.image_size, domains, "train", seed=0)
    steps = batches.StepSamples(source, sum(sizes), 0, 0, 1)
    period = len(source.turns) // math.gcd(sum(sizes), len(source.turns))
    dealt = [Counter() for _ in sizes]
    for step in range(period):
        samples = iter(steps(step))
        for mix, size in zip(dealt, sizes):
            mix.update(next(samples).domain for _ in range(size))
    assert batches.task_mixes(source.turns, sizes) == dealt
    tok, vocab = ImageTokenizer(VQModel(cfg.vq), cfg.vq), Vocab(cfg.vq.vq_codes, 256)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Batcher(cfg, source, vocab, tok)
    said = [str(w.message) for w in caught if "deal each step's samples" in str(w.message)]
    assert bool(said) == uneven
    if uneven:
        assert f"make each a multiple of {len(source.turns)}" in said[0]


def test_task_losses_average_each_tasks_labelled_positions():
    logits = torch.randn(3, 5, 7)
    labels = torch.full((3, 5), IGNORE)
    labels[0, 1], labels[1, 2], labels[1, 3], labels[2, 0] = 1, 2, 3, 4
    zeros = torch.zeros(3, dtype=torch.long)
    batch = Batch(labels.clamp(min=0), labels.clamp(min=0), labels, torch.tensor([0, 1, 2]), zeros)
    out = task_losses(logits, batch)
    ce = lambda r, c: torch.nn.functional.cross_entropy(logits[r, c][None], labels[r, c][None])
    assert set(out) == {"t2i", "mmu", "lm"}
    assert torch.allclose(out["t2i"], ce(0, 1))
    assert torch.allclose(out["mmu"], (ce(1, 2) + ce(1, 3)) / 2)
    assert torch.allclose(out["lm"], ce(2, 0))
    batch.task_B = torch.tensor([1, 1, 1])
    assert set(task_losses(logits, batch)) == {"mmu"}, "absent tasks have no entry"


def test_focal_t2i_loss_weighs_each_code_by_how_far_off_it_is_and_leaves_other_tasks():
    """--t2i-focal g: each image code's cross-entropy times (1 - p) ** g, p the probability
    the model gave the true code (Lin et al. 2017); MMU and LM stay plain cross-entropy."""
    logits = torch.randn(3, 5, 7)
    labels = torch.full((3, 5), IGNORE)
    labels[0, 1], labels[0, 2], labels[1, 3], labels[2, 0] = 1, 2, 3, 4
    zeros = torch.zeros(3, dtype=torch.long)
    batch = Batch(labels.clamp(min=0), labels.clamp(min=0), labels, torch.tensor([0, 1, 2]), zeros)
    plain, focal = task_losses(logits, batch), task_losses(logits, batch, focal=2.0)
    p = torch.softmax(logits, -1)
    ref = [-(1 - p[0, c, labels[0, c]]) ** 2 * torch.log(p[0, c, labels[0, c]]) for c in (1, 2)]
    assert torch.allclose(focal["t2i"], sum(ref) / 2)
    assert focal["t2i"] < plain["t2i"]
    assert torch.equal(focal["mmu"], plain["mmu"]) and torch.equal(focal["lm"], plain["lm"])
    assert task_losses(logits, batch, focal=0.0)["t2i"] == plain["t2i"]


def test_t2i_label_smoothing_spreads_the_target_over_the_codes_only():
    """--t2i-smoothing e: an image position's target is 1 - e on its code plus e spread
    evenly over the code ids (here 2..5 of 7), none on the other ids; the loss is the
    cross-entropy against that target, a minimum where the prediction equals it; MMU and LM
    stay plain."""
    logits = torch.randn(3, 5, 7)
    labels = torch.full((3, 5), IGNORE)
    labels[0, 1], labels[0, 2], labels[1, 3], labels[2, 0] = 3, 5, 3, 4
    zeros = torch.zeros(3, dtype=torch.long)
    batch = Batch(labels.clamp(min=0), labels.clamp(min=0), labels, torch.tensor([0, 1, 2]), zeros)
    codes = (2, 4)
    plain = task_losses(logits, batch)
    smooth = task_losses(logits, batch, smoothing=0.2, codes=codes)

    def target(label):
        t = torch.zeros(7)
        t[2:6] = 0.2 / 4
        t[label] += 0.8
        return t
    logp = torch.log_softmax(logits, -1)
    ref = [-(target(labels[0, c]) * logp[0, c]).sum() for c in (1, 2)]
    assert torch.allclose(smooth["t2i"], sum(ref) / 2)
    assert torch.equal(smooth["mmu"], plain["mmu"]) and torch.equal(smooth["lm"], plain["lm"])
    assert task_losses(logits, batch, smoothing=0.0, codes=codes)["t2i"] == plain["t2i"]
    # the smoothed target itself scores lower than a one-hot prediction of the true code
    at_target = torch.full((3, 5, 7), -30.0)
    at_target[0, 1] = torch.log(target(3).clamp(min=1e-13))
    at_target[0, 2] = torch.log(target(5).clamp(min=1e-13))
    one_hot = torch.full((3, 5, 7), -30.0)
    one_hot[0, 1, 3] = one_hot[0, 2, 5] = 0.0
    assert task_losses(at_target, batch, smoothing=0.2, codes=codes)["t2i"] < \
        task_losses(one_hot, batch, smoothing=0.2, codes=codes)["t2i"]

def test_training_weighs_its_t2i_loss_with_t2i_focal(tmp_path):
    """The trainer passes --t2i-focal to the loss: the same first step logs a smaller T2I
    loss under it (every factor is below 1) and the same MMU loss."""
    first = {}
    for focal in (0.0, 2.0):
        cfg = micro_config(dense_steps=1, ckpt_every=100, t2i_focal=focal)
        model, batcher, _, files = setup(cfg, tmp_path / str(focal))
        (tmp_path / str(focal)).mkdir()
        first[focal] = fit(model, cfg, files, "dense", 1, batcher, torch.device("cpu"),
                           progress=False)[0]
    assert first[2.0]["t2i"] < first[0.0]["t2i"]
    assert first[2.0]["mmu"] == pytest.approx(first[0.0]["mmu"])


def test_lr_warms_up_then_decays_to_the_floor():
    cfg = micro_config(lr=1.0, warmup=4, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg, 20) for s in range(21)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[20] == pytest.approx(0.1)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_few_steps_lower_the_loss(tmp_path, optimizer):
    cfg = micro_config(dense_steps=40, ckpt_every=100, optimizer=optimizer)
    model, batcher, tok, files = setup(cfg, tmp_path)
    rec = fit(model, cfg, files, "dense", 40, batcher, torch.device("cpu"), progress=False)
    first, last = rec[0], rec[-1]
    assert last["loss"] < 0.75 * first["loss"], (first, last)
    for task in TASKS:
        assert last[task] < first[task]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_from_checkpoint_gives_identical_losses(tmp_path, optimizer):
    cfg = micro_config(dense_steps=16, ckpt_every=8, optimizer=optimizer)
    cpu = torch.device("cpu")
    model, batcher, tok, files = setup(cfg, tmp_path / "a")
    (tmp_path / "a").mkdir()
    straight = fit(model, cfg, files, "dense", 16, batcher, cpu, progress=False)

    (tmp_path / "b").mkdir()
    model, batcher, tok, files = setup(cfg, tmp_path / "b")
    # Train to step 8 only: a run that stopped after writing the step-8 checkpoint.
    try:
        fit(model, cfg, files, "dense", 16, _StopAfter(batcher, 8), cpu, progress=False)
    except _Stop:
        pass
    payload = checkpoint.load(files.ckpt)
    assert payload["step"] == 8
    model2, _, _, _ = setup(cfg, tmp_path / "b")
    model2.load_state_dict(payload["model"])
    opt = make_optimizer(model2, cfg)
    opt.load_state_dict(payload["optimizer"])
    resumed = fit(model2, cfg, files, "dense", 16, batcher, cpu, start_step=8,
                  optimizer=opt, progress=False)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight[8:]]


def test_heldout_checks_are_logged_at_their_steps_and_leave_training_unchanged(tmp_path):
    """A held-out check runs the model in eval mode on other data between steps; training
    must go on exactly as without it, and time_s must leave the check's own time out."""
    from minimoe.evaluation import HeldoutCheck
    cfg = micro_config(dense_steps=6, ckpt_every=100, heldout_every=4, log_every=1)
    cpu = torch.device("cpu")
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    model, batcher, tok, files = setup(cfg, tmp_path / "a")
    plain = fit(model, cfg, files, "dense", 6, batcher, cpu, progress=False)
    model, batcher, tok, files = setup(cfg, tmp_path / "b")
    slow_check = HeldoutCheck(model, cfg, Vocab(cfg.vq.vq_codes, cfg.data.text_vocab), tok, cpu)

    def check():
        time.sleep(1.0)
        return slow_check()
    checked = fit(model, cfg, files, "dense", 6, batcher, cpu, on_heldout=check,
                  progress=False)
    held = [r for r in checked if "heldout" in r]
    assert [r["step"] for r in held] == [4, 6], "every --heldout-every steps and at the end"
    assert set(held[0]["heldout"]) == set(TASKS)
    steps = [r for r in checked if "loss" in r]
    assert [r["loss"] for r in steps] == [r["loss"] for r in plain]
    assert steps[-1]["time_s"] < plain[-1]["time_s"] + 1.0, "the checks' time is not training"


class _Stop(Exception):
    pass


class _StopAfter:
    """A batcher that dies when asked for step `n` (after step n's checkpoint was written)."""

    def __init__(self, batcher, n):
        self.batcher, self.n = batcher, n

    def __call__(self, step):
        if step >= self.n:
            raise _Stop
        return self.batcher(step)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = micro_config(dense_steps=12, ckpt_every=4)
    model, batcher, tok, files = setup(cfg, tmp_path)
    forward = model.forward

    def poisoned(tokens, groups, cache=None, domain_BL=None, at_BL=None):
        out = forward(tokens, groups, cache, domain_BL, at_BL)
        if poisoned.calls == 6:
            out.logits_NV = out.logits_NV * float("nan")
        poisoned.calls += 1
        return out
    poisoned.calls = 0
    model.forward = poisoned
    with pytest.raises(TrainingError, match="step 7: .*last good checkpoint"):
        fit(model, cfg, files, "dense", 12, batcher, torch.device("cpu"), progress=False)
    assert checkpoint.load(files.ckpt)["step"] == 4


def test_training_asks_for_logits_only_at_the_labelled_positions(tmp_path):
    """The vocabulary projection runs where a loss is taken, not at every position (its
    step equals one on the full head's logits: test_gradient_accumulation_equals_...)."""
    cfg = micro_config(dense_steps=3, ckpt_every=100)
    model, batcher, tok, files = setup(cfg, tmp_path)
    forward, asked = model.forward, []

    def recording(tokens, groups, cache=None, domain_BL=None, at_BL=None):
        asked.append(at_BL)
        return forward(tokens, groups, cache, domain_BL, at_BL)
    model.forward = recording
    fit(model, cfg, files, "dense", 3, batcher, torch.device("cpu"), progress=False)
    assert len(asked) == 3
    for step, at_BL in enumerate(asked):
        labelled = batcher(step).labelled_BL
        assert torch.equal(at_BL, labelled) and 0 < labelled.sum() < labelled.numel()


def test_samples_without_questions_train_captioning_at_full_caption_length(tmp_path):
    """A folder row with no QA pairs becomes an MMU row whose answer is its caption, and the
    longest caption the folder loader accepts still fits the row."""
    import json
    from PIL import Image
    from minimoe.sequences import MMU
    cfg = micro_config(data=f"folder:{tmp_path}", batch_t2i=0, batch_mmu=4, batch_lm=0)
    caption = "x" * (cfg.data.text_len - 4)  # the longest caption open_source admits
    rows = []
    for i in range(40):
        Image.new("RGB", (20, 20), "red").save(tmp_path / f"{i}.png")
        rows.append(json.dumps({"file": f"{i}.png", "caption": caption}))
    (tmp_path / "captions.jsonl").write_text("\n".join(rows))
    source = open_source(cfg, "train", ())
    _, _, tok, _ = setup(cfg, tmp_path)
    batch = Batcher(cfg, source, Vocab(cfg.vq.vq_codes), tok)(0)
    assert batch.task_B.tolist() == [MMU] * 4
    labels = batch.labels_BL[0][batch.labels_BL[0] != IGNORE].tolist()
    assert bytes(labels[:-1]).decode() == caption and labels[-1] == Vocab(16).eot


def test_folder_rows_are_limited_in_the_units_of_the_run_s_text_tokenizer(tmp_path):
    """With BPE merges, --text-len counts tokens for folder data too: a caption far over
    text_len bytes but within it in tokens is kept, trains, and round-trips through the
    batch; one that is over in tokens is skipped with a warning naming tokens. Without merges
    the same folder is limited in bytes."""
    import json
    from PIL import Image
    from minimoe.data import DataWarning
    from minimoe.run import learn_vocab
    from minimoe.sequences import MMU
    from minimoe.tokenizers import TextTokenizer
    words = ["red circle", "blue square", "green cross", "small yellow triangle"]
    rows = []
    for i in range(60):
        Image.new("RGB", (20, 20), "red").save(tmp_path / f"{i}.png")
        caption = " and ".join(words[(i + k) % 4] for k in range(3))  # about 45 bytes
        rows.append({"file": f"{i}.png", "caption": caption})
    for i in range(5):  # the same words, but about 25 of them
        rows[i]["caption"] = " and ".join(words * 2)
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = micro_config(data=f"folder:{tmp_path}", text_len=20, text_vocab=400, batch_t2i=0,
                       batch_mmu=4, batch_lm=0)
    with pytest.warns(DataWarning, match=r"caption is 2\d tokens, over the 16 that fit"):
        vocab = learn_vocab(cfg)
        source = open_source(cfg, "train", vocab.merges)
    kept = {r.file for r in source.rows}
    assert not kept & {f"{i}.png" for i in range(5)} and len(kept) >= 40
    text = TextTokenizer(vocab)
    assert all(len(r.caption.encode()) > cfg.data.text_len for r in source.rows)
    _, _, tok, _ = setup(cfg, tmp_path)
    batch = Batcher(cfg, source, vocab, tok)(0)
    assert batch.task_B.tolist() == [MMU] * 4
    labels = batch.labels_BL[0][batch.labels_BL[0] != IGNORE].tolist()
    assert text.decode(labels[:-1]) in {r.caption for r in source.rows}
    with pytest.warns(DataWarning, match="bytes, over the 16 that fit"):
        with pytest.raises(ValueError, match="no usable rows"):
            open_source(cfg, "train", ())  # bytes: not one caption fits in 16


def test_gradient_accumulation_equals_one_step_on_the_combined_batch(tmp_path):
    """--grad-accum 2: two micro-batches per optimizer step give the parameters one step on
    both batches together gives (losses normalised by the step's total label count)."""
    from minimoe.sequences import concat
    cfg = micro_config(dense_steps=1, grad_accum=2, ckpt_every=100)
    model, batcher, tok, files = setup(cfg, tmp_path)
    model.double()
    reference = copy.deepcopy(model)
    fit(model, cfg, files, "dense", 1, batcher, torch.device("cpu"), progress=False)
    optimizer = make_optimizer(reference, cfg)
    for g in optimizer.param_groups:
        g["lr"] = lr_at(0, cfg, 1)
    both = concat([batcher(0), batcher(1)])
    out = reference(both.tokens_BL, both.groups_BL)
    total_loss(task_losses(out.logits_BLV.double(), both), cfg).backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), cfg.train.grad_clip)
    optimizer.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-10)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.skipif(not trainer.release_freed_memory(), reason="no glibc malloc_trim here")
def test_released_memory_leaves_the_process():
    """Blocks freed in the middle of the heap stay resident until released: the fragmented
    heap a MoE stage's varying shapes leave behind."""
    import numpy as np
    blocks = [np.ones(8192) for _ in range(4000)]  # 64 KB each: heap, not mmap
    kept = blocks[::200]  # pins the heap's top, so malloc cannot trim it by itself
    del blocks
    before = _rss_mb()
    assert trainer.release_freed_memory()
    assert _rss_mb() < before - 100, (before, _rss_mb())
    assert len(kept) == 20


def test_fit_releases_freed_memory_every_few_steps(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer, "RELEASE_EVERY", 3)
    monkeypatch.setattr(trainer, "release_freed_memory", lambda: calls.append(1) or True)
    cfg = micro_config(dense_steps=7, ckpt_every=100)
    model, batcher, _, files = setup(cfg, tmp_path)
    fit(model, cfg, files, "dense", 7, batcher, torch.device("cpu"), progress=False)
    assert len(calls) == 2  # after steps 3 and 6


def test_caption_share_turns_that_share_of_mmu_rows_into_captioning(tmp_path):
    """--caption-share 1: every MMU row answers the empty question with its sample's caption;
    0: every row answers one of the sample's questions; 0.5: some of each."""
    from minimoe.sequences import MMU
    from minimoe.tokenizers import TextTokenizer
    answers = {}
    for share in (0.0, 0.5, 1.0):
        cfg = micro_config(batch_t2i=0, batch_mmu=16, batch_lm=0, caption_share=share)
        _, batcher, _, _ = setup(cfg, tmp_path)
        text = TextTokenizer(batcher.vocab)
        batch = batcher(0)
        assert batch.task_B.tolist() == [MMU] * 16
        captions = [batcher.source[i].caption for i in range(16)]  # step 0 reads samples 0-15
        is_caption = []
        for row, caption in zip(batch.labels_BL, captions):
            labels = row[row != IGNORE].tolist()[:-1]  # without [eot]
            is_caption.append(text.decode(labels) == caption)
        answers[share] = is_caption
    assert not any(answers[0.0]) and all(answers[1.0])
    assert 0 < sum(answers[0.5]) < 16


def test_caption_questions_ask_what_fits_after_each_caption(tmp_path):
    """--caption-questions true: a captioning row's first turn is its caption (the empty
    question), and the room left holds some of the sample's own questions, none twice."""
    from minimoe.tokenizers import TextTokenizer
    cfg = micro_config(batch_t2i=0, batch_mmu=16, batch_lm=0, caption_share=1.0,
                       caption_questions=True, mmu_turns=3, text_len=96)
    _, batcher, _, _ = setup(cfg, tmp_path)
    text, v = TextTokenizer(batcher.vocab), batcher.vocab
    extra = 0
    for k, row in enumerate(batcher(0).tokens_BL.tolist()):
        sample = batcher.source[k]
        starts = [j for j, t in enumerate(row) if t == v.sot]
        turns = [text.decode(row[a + 1:row.index(v.eot, a)]) for a in starts]
        assert turns[0] == sample.caption
        asked = [next(qa for qa in sample.qa if t == f"{qa[0]} {qa[1]}") for t in turns[1:]]
        assert len(set(asked)) == len(asked)
        extra += len(asked)
    assert extra > 0


def test_mmu_turns_ask_several_distinct_questions_of_one_image(tmp_path):
    """--mmu-turns 3: question rows answer up to three of their sample's questions, no
    question twice, each answer one the sample gives; 1: one question a row."""
    from minimoe.tokenizers import TextTokenizer
    counts = {}
    for turns in (1, 3):
        cfg = micro_config(batch_t2i=0, batch_mmu=16, batch_lm=0, caption_share=0.0,
                           mmu_turns=turns, text_len=128)
        _, batcher, _, _ = setup(cfg, tmp_path)
        text = TextTokenizer(batcher.vocab)
        batch = batcher(0)
        counts[turns] = []
        for row, i in zip(batch.tokens_BL, range(16)):
            sample = batcher.source[i]
            ids, v = row.tolist(), batcher.vocab
            starts = [j for j, t in enumerate(ids) if t == v.sot]  # each turn: [sot] q a [eot]
            pairs = [text.decode(ids[a + 1:ids.index(v.eot, a)]) for a in starts]
            # each turn is "question answer": one of the sample's pairs, none repeated
            asked = [next(qa for qa in sample.qa if p == f"{qa[0]} {qa[1]}") for p in pairs]
            assert len(set(asked)) == len(asked)
            counts[turns].append(len(asked))
    assert set(counts[1]) == {1}
    assert max(counts[3]) > 1 and set(counts[3]) <= {1, 2, 3}


def test_a_balanced_question_mix_asks_rare_answer_types_more_often(tmp_path):
    """--question-mix balanced: position questions (asked of two-object scenes only) and shape
    questions take a larger share of the turns than uniform picks give them, count questions
    (several in every scene) a smaller one; every turn is still one of its sample's pairs,
    none twice, and the batches stay a function of the step."""
    from minimoe.metrics import answer_type
    from minimoe.tokenizers import TextTokenizer
    shares = {}
    for mix in ("uniform", "balanced"):
        cfg = micro_config(batch_t2i=0, batch_mmu=16, batch_lm=0, caption_share=0.0,
                           mmu_turns=2, text_len=128, question_mix=mix)
        _, batcher, _, _ = setup(cfg, tmp_path)
        text, v = TextTokenizer(batcher.vocab), batcher.vocab
        types = Counter()
        for step in range(8):
            batch = batcher(step)
            assert torch.equal(batch.tokens_BL, batcher(step).tokens_BL)
            for k, row in enumerate(batch.tokens_BL.tolist()):
                sample = batcher.source[step * 16 + k]
                starts = [j for j, t in enumerate(row) if t == v.sot]
                pairs = [text.decode(row[a + 1:row.index(v.eot, a)]) for a in starts]
                asked = [next(qa for qa in sample.qa if p == f"{qa[0]} {qa[1]}") for p in pairs]
                assert len(set(asked)) == len(asked)
                types.update(answer_type(a) for _, a in asked)
        shares[mix] = {t: n / sum(types.values()) for t, n in types.items()}
    uniform, balanced = shares["uniform"], shares["balanced"]
    assert balanced["position"] > 1.5 * uniform["position"]
    assert balanced["shape"] > uniform["shape"] and balanced["count"] < uniform["count"]


def test_heldout_rows_ask_one_question_whatever_the_training_packs(tmp_path):
    """Held-out losses compare runs: packing turns into training rows (--mmu-turns) or
    another masking schedule (--mask-power) must not change the held-out rows they are
    measured on."""
    from minimoe.evaluation import heldout_batches
    batches = {}
    for turns in (1, 3):
        cfg = micro_config(batch_mmu=16, caption_share=0.0, mmu_turns=turns, text_len=128,
                           mask_power=1.0 if turns == 1 else 0.5)
        _, batcher, tok, _ = setup(cfg, tmp_path)
        batches[turns] = heldout_batches(cfg, batcher.vocab, tok, 2)
        packed = batcher(0)  # the training rows do pack several
        sot_per_row = (packed.tokens_BL == batcher.vocab.sot)[packed.task_B == MMU].sum(1)
        assert (sot_per_row.max() > 1) == (turns > 1)
    for one, three in zip(batches[1], batches[3]):
        assert (one.task_B == T2I).any(), "the held-out rows must mask some images"
        assert torch.equal(one.tokens_BL, three.tokens_BL)
        assert torch.equal(one.labels_BL, three.labels_BL)


def test_autocast_auto_is_bf16_on_cuda_and_cpu_in_every_stage_and_the_flag_forces_it():
    cpu, cuda, other = torch.device("cpu"), torch.device("cuda"), torch.device("meta")
    assert trainer.uses_bf16("auto", cpu) and trainer.uses_bf16("auto", cuda)
    assert not trainer.uses_bf16("auto", other)  # measured on CPU and CUDA only
    assert trainer.uses_bf16("bf16", other) and not trainer.uses_bf16("off", cuda)


def test_compile_auto_compiles_only_a_cpu_stage_that_pays_and_the_flag_forces_it():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for stage, long in trainer.COMPILE_PAYS_AFTER.items():
        assert trainer.compiles("auto", cpu, stage, long)
        assert not trainer.compiles("auto", cpu, stage, long - 1)  # a short run: eager
        assert not trainer.compiles("auto", cuda, stage, long)
    assert trainer.COMPILE_PAYS_AFTER["moe"] < trainer.COMPILE_PAYS_AFTER["dense"]
    assert trainer.compiles("true", cuda, "moe", 1) and not trainer.compiles("false", cpu,
                                                                            "dense", 10_000)


def test_compile_auto_counts_the_steps_a_resumed_stage_has_left(tmp_path, capsys):
    """A stage resumed near its end (or continued for a few more steps) runs eager under auto:
    the compilation pays for itself over the steps still to run, not the stage's length."""
    cfg = micro_config(dense_steps=trainer.COMPILE_PAYS_AFTER["dense"], ckpt_every=10_000,
                       compile="auto", log_every=1)
    model, batcher, tok, files = setup(cfg, tmp_path / "run")
    (tmp_path / "run").mkdir()
    fit(model, cfg, files, "dense", cfg.train.dense_steps, batcher, torch.device("cpu"),
        start_step=cfg.train.dense_steps - 2, progress=False)
    assert "dense steps: float32 matmuls, eager" in capsys.readouterr().out


def test_a_switch_saved_as_a_boolean_loads_as_its_word():
    """Checkpoints whose config holds --compile as true / false booleans still resume."""
    saved = config.to_dict(micro_config())
    saved["train"]["compile"] = False
    cfg = config.from_dict(saved)
    assert cfg.train.compile == "false"
    config.validate(cfg)


def test_bf16_autocast_trains_close_to_fp32_and_keeps_fp32_weights(tmp_path):
    """bf16 rounds the matmuls (about 3 significant digits), so its losses differ from fp32
    but stay close; the weights and optimizer state stay fp32. auto trains a CPU dense stage
    as bf16 does."""
    losses = {}
    for mode in ("off", "bf16", "auto"):
        cfg = micro_config(dense_steps=6, ckpt_every=100, autocast=mode)
        model, batcher, tok, files = setup(cfg, tmp_path / mode)
        (tmp_path / mode).mkdir()
        rec = fit(model, cfg, files, "dense", 6, batcher, torch.device("cpu"), progress=False)
        losses[mode] = [r["loss"] for r in rec]
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses["off"] != losses["bf16"]  # autocast did act on CPU
    assert losses["bf16"] == pytest.approx(losses["off"], rel=0.03)
    assert losses["auto"] == losses["bf16"]


def test_a_step_that_cannot_compile_ends_the_run_with_what_to_do(tmp_path, monkeypatch):
    """Without a working C++ compiler inductor cannot build a CPU step: the run stops with a
    TrainingError naming --compile false, not a compiler traceback."""
    import torch._inductor.config as inductor
    monkeypatch.setattr(inductor.cpp, "cxx", (None, str(tmp_path / "no-such-compiler")))
    monkeypatch.setattr(inductor, "fx_graph_cache", False)  # a cached build would hide it
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    cfg = micro_config(dense_steps=2, ckpt_every=100, compile="true")
    model, batcher, tok, files = setup(cfg, tmp_path / "run")
    (tmp_path / "run").mkdir()
    torch._dynamo.reset()
    with pytest.raises(TrainingError, match="--compile false"):
        fit(model, cfg, files, "dense", 2, batcher, torch.device("cpu"), progress=False)
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_training_matches_eager_for_dense_and_moe(tmp_path):
    """torch.compile changes how the step runs, not what it computes: the same losses to
    float tolerance, for the dense model and for a MoE (router statistics included)."""
    for moe in ("none", "scratch"):
        records = {}
        for compiled in ("false", "true"):
            cfg = micro_config(dense_steps=4, ckpt_every=100, compile=compiled, moe=moe,
                               num_experts=4)
            folder = tmp_path / f"{moe}-{compiled}"
            model, batcher, tok, files = setup(cfg, folder)
            folder.mkdir()
            router = None
            if moe != "none":
                from minimoe.routing import RouterTraining
                router = RouterTraining(model, cfg)
            rec = fit(model, cfg, files, "moe" if router else "dense", 4, batcher,
                      torch.device("cpu"), progress=False, router=router)
            records[compiled] = [r["loss"] for r in rec]
        assert records["true"] == pytest.approx(records["false"], rel=1e-3), moe
