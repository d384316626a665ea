"""A training run: its folder, its log, what its checkpoints hold, and the three stages that
`train.py` strings together.

    stage 1  tokenizer_stage   the VQ image tokenizer (trained once per folder, then reused)
    stage 2  dense_stage       the dense transformer (trained, resumed, or taken from --init)
    stage 3  convert_stage     dense FFNs -> experts, with the held-out loss before and after
             moe_stage         MoE training, then routing_report

A run folder holds vq.pt, ckpt.pt (the latest checkpoint of the stage in progress), log.jsonl,
samples/, summary.json, curves.png (the log drawn at the end of each stage and on resume), for
a MoE run dense.pt (the model it converted) and routing.json / routing.png, and with
--tensorboard true TensorBoard event files that mirror the log. Every file but the log and the
event files is written atomically; a resumed run cuts its log back to the checkpoint's step, so
no step is logged twice.
"""
from __future__ import annotations

import functools
import json
import resource
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import bpe, checkpoint, config
from .bpe import BYTES
from .atomic import save_png, write_text
from .batches import Batcher
from .build import build_model, code_features, init_code_embeddings
from .cli import UserError
from .config import Config
from .convert import convert_model
from .cost import format_cost
from .curves import write_curves
from .data import open_source
from .data.builtin import parse_domains
from .data.codes import PREFIX as CODES_PREFIX
from .data.codes import TOKENIZER_FILE, check_tokenizer, read_manifest
from .dist import (data_parallel, fsdp_, full_model_state, full_optimizer_state, is_fsdp,
                   load_fsdp_optimizer_state, parallelize_experts_, rank_world,
                   shard_optimizer_state)
from .evaluation import (HeldoutCheck, collect_routing, format_report, heldout_losses,
                         tokenizer_ceiling)
from .events import TENSORBOARD_MISSING, EventWriter
from .inference import RUNS_ROOT, Session, generate
from .loading import Prefetcher
from .plots import image_grid, routing_heatmaps
from .routing import RouterTraining, apply_schedule, describe_schedule, schedule
from .sequences import question_text
from .tokenizers import ImageTokenizer, TextTokenizer, Vocab, images_to_tensor
from .trainer import TrainingError, fit, make_optimizer
from .vq import VQModel, codebook_stats, psnr, train_vq

STAGES = ("vq", "dense", "convert", "moe")  # in the order a run goes through them
VQ_EVAL_IMAGES = 256  # held-out images for the tokenizer's PSNR and codebook usage
CEILING_PROMPTS = 20  # evaluation prompts per GenEval category behind the tokenizer's ceiling
# Fields that fix the tokenizers' architecture and input; a cached vq.pt must agree on them.
VQ_IDENTITY = ("image_size", "vq_downsample", "vq_codes", "vq_colours", "vq_dim", "vq_channels",
               "vq_encoder", "text_vocab")
TEXT_SAMPLES = 3000  # training samples whose texts the BPE merges are learnt from
# What a dense checkpoint must share with this run to be converted by it.
DENSE_IDENTITY = ("d_model", "n_layers", "n_heads", "d_ffn", "text_len",
                  "image_pos", "code_features") + VQ_IDENTITY
GRID_PROMPTS = ("a large red circle", "a small blue square left of a large yellow triangle",
                "two green circles and a purple square", "the digit 3 in yellow on blue",
                "narrow red and blue vertical stripes", "")


# --- the folder and its log -----------------------------------------------------------------

@dataclass
class RunFiles:
    """Paths inside a run folder, and its log."""
    root: Path
    # rank 0 of a --tensorboard run: every log record also goes to TensorBoard (open_events)
    events: EventWriter | None = field(default=None, kw_only=True)

    @property
    def ckpt(self) -> Path:
        return self.root / "ckpt.pt"

    @property
    def vq(self) -> Path:
        return self.root / "vq.pt"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def dense(self) -> Path:
        """A MoE run's trained dense model: the input of the conversion, kept for reuse."""
        return self.root / "dense.pt"

    @property
    def routing(self) -> Path:
        """Routing statistics of the final MoE model (routing.json, and routing.png beside)."""
        return self.root / "routing.json"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    def log_line(self, record: dict) -> None:
        """Append `record` to log.jsonl (and to the TensorBoard events, if open): the one
        place where a run's records go."""
        with open(self.log, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.events is not None:
            self.events.add(record)

    def draw_curves(self) -> None:
        """curves.png from the log as it stands (rank 0): the end of each stage and a resume
        draw it."""
        if rank_world()[0] == 0 and self.log.exists():
            write_curves(self.log, self.curves, self.root.name)

    def trim_log(self, stage: str, step: int) -> int:
        """Drop the log lines that a run resuming from (stage, step) will write again: a crash
        can log steps past its last checkpoint, and half a line. Returns how many were
        dropped."""
        if not self.log.exists():
            return 0
        lines = self.log.read_text().splitlines()
        keep = []
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # the line a crash cut short
                continue
            order = STAGES.index(rec["stage"]) if rec.get("stage") in STAGES else -1
            if order < STAGES.index(stage) or (rec["stage"] == stage
                                               and rec.get("step", 0) <= step):
                keep.append(line)
        if len(keep) < len(lines):
            tmp = self.log.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            tmp.replace(self.log)
        return len(lines) - len(keep)


def open_events(files: RunFiles, wanted: bool) -> None:
    """With `wanted` (--tensorboard true), send `files`' log records to TensorBoard too. Every
    rank checks that the package is there, so that all stop at once before training when it is
    not; rank 0 alone writes."""
    if not wanted:
        return
    try:
        import torch.utils.tensorboard  # noqa: F401  # optional extra: checked before training
    except ImportError:
        raise UserError(TENSORBOARD_MISSING) from None
    if rank_world()[0] == 0:
        files.events = EventWriter(files.root, files.log)


def read_losses(log: Path) -> dict[tuple[str, int], dict]:
    """(stage, step) -> the training record of every logged dense and MoE step. Raises
    ValueError if a step is logged twice (a resume must never repeat one)."""
    seen = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("stage") in ("dense", "moe") and "loss" in rec:
            key = (rec["stage"], rec["step"])
            if key in seen:
                raise ValueError(f"{log} holds {key} twice")
            seen[key] = rec
    return seen


def run_folder(out: str | None, moe: str | None) -> Path:
    if out:
        return Path(out)
    return RUNS_ROOT / ("dense" if (moe or "none") == "none" else f"moe-{moe}")


# --- what a checkpoint holds ----------------------------------------------------------------

def mismatch(saved: dict, wanted: dict, names) -> tuple[str, object, object] | None:
    """The first of the config fields `names` on which a saved config and the wanted one
    differ (both by flat field name), as (name, saved value, wanted value), or None."""
    return next(((n, saved[n], wanted[n]) for n in names if saved[n] != wanted[n]), None)


def saved_mismatch(payload: dict, cfg: Config, names) -> tuple[str, object, object] | None:
    """`mismatch` between the config saved in a checkpoint's `payload` and the run's `cfg`."""
    return mismatch(config.flat(config.from_dict(payload["config"])), config.flat(cfg), names)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def save_checkpoint(files: RunFiles, cfg: Config, model, optimizer, stage: str, step: int,
                    image_tok: ImageTokenizer, vocab: Vocab, path: Path | None = None, ep=None,
                    skipped: int = 0) -> None:
    """The run's ckpt.pt (or `path`): config, stage, step, model, optimizer, both tokenizers
    and the count of skipped non-finite steps. Weights that are not all finite are never
    written.

    Under expert parallelism (`ep`) or FSDP every rank must call this: the shards are gathered
    so that the checkpoint holds the whole model; rank 0 writes it."""
    if ep is not None or is_fsdp(model):
        model_state = full_model_state(model, ep)
        optimizer_state = full_optimizer_state(model, optimizer, ep)
    else:
        model_state, optimizer_state = model.state_dict(), optimizer.state_dict()
    if rank_world()[0] != 0:
        return
    poisoned = [k for k, v in model_state.items()
                if v.is_floating_point() and not torch.isfinite(v).all()]
    if poisoned:
        raise TrainingError(f"{stage} step {step}: weights {poisoned[0]} are not finite, so "
                            f"no checkpoint was written (the last good one, {files.ckpt}, was "
                            f"kept); lower --lr and resume with --resume")
    checkpoint.save({"config": config.to_dict(cfg), "stage": stage, "step": step,
                     "model": model_state, "optimizer": optimizer_state,
                     "vq": image_tok.vq.state_dict(), "merges": [list(m) for m in vocab.merges],
                     "skipped": skipped}, path or files.ckpt)


@dataclass
class RunWriter(RunFiles):
    """The run folder as trainer.fit writes into it: its log, and checkpoints of `cfg`'s model
    with the run's tokenizers."""
    cfg: Config
    image_tok: ImageTokenizer
    vocab: Vocab

    def save(self, model, optimizer, stage: str, step: int, ep=None, skipped: int = 0) -> None:
        save_checkpoint(self, self.cfg, model, optimizer, stage, step, self.image_tok,
                        self.vocab, ep=ep, skipped=skipped)


def prepare_run(files: RunFiles, args, resume: bool) -> tuple[Config, int, dict | None]:
    """The run's config, first step and checkpoint payload (None for a fresh run).

    A resumed run takes its config from the checkpoint; flags may change training fields
    (e.g. --dense-steps) but a flag that contradicts the saved architecture or data is refused.
    """
    if not resume:
        if files.ckpt.exists():
            raise UserError(f"{files.ckpt} already exists; pass --resume to continue that run, "
                            f"or --out NEW_FOLDER to start another")
        files.root.mkdir(parents=True, exist_ok=True)
        # A run that crashed before its first checkpoint starts over: keep only the log of the
        # tokenizer it left behind (if it finished one).
        if rank_world()[0] == 0:
            files.trim_log("dense" if files.vq.exists() else "vq", 0)
        return fresh_config(args), 0, None
    if not files.ckpt.exists():
        raise UserError(f"nothing to resume: {files.ckpt} does not exist; drop --resume to "
                        f"start a new run there")
    payload = checkpoint.load(files.ckpt)
    saved = config.from_dict(payload["config"])
    if args.preset and args.preset != saved.preset:
        raise UserError(f"{files.ckpt} was trained with --preset {saved.preset}, not "
                        f"{args.preset}; drop --preset or use another --out")
    overrides = config.explicit_overrides(args)
    fixed = [name for name in overrides if (config.section_of(name) != "train"
                                            and name not in config.FREE_ON_RESUME)
             or name in config.FIXED_ON_RESUME]
    differs = mismatch(config.flat(saved), overrides, fixed)
    if differs:
        name, was, now = differs
        raise UserError(f"{files.ckpt} was trained with {flag(name)} {was}, not {now}; drop the "
                        f"flag or use another --out")
    cfg = config.make_config(saved.preset, **{**config.flat(saved), **overrides})
    if rank_world()[0] == 0 and files.trim_log(payload["stage"], payload["step"]):
        print(f"log.jsonl: dropped the lines after {payload['stage']} step {payload['step']} "
              f"(they will be written again)")
    files.draw_curves()  # the curves of the run so far, before it goes on
    return cfg, payload["step"], payload


def fresh_config(args) -> Config:
    """A new run's config from its flags. With --data codes:DIR the tokenizer's fields (and for
    built-in codes --domains) are the codes' own, from DIR's manifest; a flag that contradicts
    them is refused."""
    overrides = config.explicit_overrides(args)
    spec = overrides.get("data", "")
    if spec.startswith(CODES_PREFIX):
        manifest = read_manifest(spec[len(CODES_PREFIX):])
        saved = {**config.flat(config.Config()), **manifest["tokenizer"]}  # older: defaults
        fixed = {name: saved[name] for name in VQ_IDENTITY}
        if manifest["source"] == "builtin":  # the mix is in the codes
            fixed["domains"] = manifest["domains"]
        differs = mismatch(fixed, overrides, [name for name in fixed if name in overrides])
        if differs:
            name, was, now = differs
            raise UserError(f"--data {spec} holds codes made with {flag(name)} {was}; drop "
                            f"{flag(name)} {now}")
        overrides.update(fixed)
    return config.make_config(args.preset or "tiny", **overrides)


# --- stage 1: the image tokenizer -----------------------------------------------------------

def batch_images(source, first: int, n: int) -> torch.Tensor:
    return images_to_tensor([source[first + i].image for i in range(n)])


def vq_images(source, n: int, step: int) -> torch.Tensor:
    """Stage 1's images of `step`: the next n training images."""
    return batch_images(source, step * n, n)


def sample_texts(sample) -> list[str]:
    """Every text a batch encodes for one sample (batches.Batcher): the caption, and each
    question as the prompt before its answer, the answer, and both as one text."""
    texts = [sample.caption]
    for q, a in sample.qa or [("", sample.caption)]:
        texts += [question_text(q), a, question_text(q) + a]
    return texts


def learn_vocab(cfg: Config) -> Vocab:
    """The run's joint vocabulary: with --text-vocab above 256, BPE merges learnt from the
    texts of the first TEXT_SAMPLES training samples."""
    vocab = Vocab(cfg.vq.vq_codes, cfg.data.text_vocab)
    if cfg.data.text_vocab == BYTES:
        return vocab
    source = open_source(cfg, "train", None)
    texts = [t for i in range(TEXT_SAMPLES) for t in sample_texts(source[i])]
    vocab = Vocab(vocab.codes, vocab.text, tuple(bpe.train(texts, cfg.data.text_vocab)))
    text = TextTokenizer(vocab)
    longest = max(len(text.encode(t)) for t in texts)
    # Built-in texts cannot be skipped, so they must fit; folder rows that do not are skipped
    # with a warning each when the batches open the folder with these merges.
    if cfg.data.data == "builtin" and longest > cfg.data.text_len - 4:
        raise UserError(f"--text-len {cfg.data.text_len}: the training texts need up to "
                        f"{longest} tokens plus 4 slots for the specials; raise --text-len")
    print(f"text tokenizer: {len(vocab.merges)} BPE merges, texts of up to {longest} tokens")
    return vocab


def tokenizer_stage(cfg: Config, files: RunFiles, device, progress: bool = True,
                    init: dict | None = None):
    """Stage 1: learn the text merges and train the VQ tokenizer, or reuse the run folder's
    vq.pt, or take the tokenizers of `init` (an --init dense checkpoint, whose codes and text
    ids belong to them). Returns (ImageTokenizer, Vocab, report with held-out PSNR, codebook
    usage and the GenEval ceiling)."""
    if cfg.data.data.startswith(CODES_PREFIX):
        return codes_tokenizer(cfg, files, device, init)
    torch.manual_seed(cfg.train.seed)  # the VQ's initial weights: a process starts unseeded
    vq = VQModel(cfg.vq).to(device)
    if init is not None:
        vq.load_state_dict(init["vq"])
        vocab = checkpoint.vocab_of(init, cfg)
        print("tokenizers taken from --init")
        return ImageTokenizer(vq, cfg.vq), vocab, _keep_tokenizer(vq, vocab, cfg, files, device)
    if files.vq.exists():
        payload = checkpoint.load(files.vq)
        check_same_tokenizer(payload, cfg, files.vq)
        vq.load_state_dict(payload["vq"])
        print(f"reusing the tokenizers in {files.vq}: {describe_tokenizer(payload['report'])}")
        return ImageTokenizer(vq, cfg.vq), checkpoint.vocab_of(payload, cfg), payload["report"]
    if cfg.vq.vq_steps == 0:
        raise UserError(f"--vq-steps 0 but {files.vq} does not exist; train a tokenizer first")
    vocab = learn_vocab(cfg)
    images = Prefetcher(functools.partial(vq_images, tokenizer_source(cfg), cfg.vq.vq_batch),
                        cfg.data.workers)
    train_vq(vq, images, cfg.vq, device=device,
             progress=progress, log=lambda rec: files.log_line({"stage": "vq", **rec}))
    return ImageTokenizer(vq, cfg.vq), vocab, _keep_tokenizer(vq, vocab, cfg, files, device)


def tokenizer_source(cfg: Config):
    """The images stage 1 trains on: the built-in mix of --vq-domains (the run's own mix when it
    is empty, and always for other data)."""
    if cfg.data.data == "builtin" and cfg.vq.vq_domains:
        parse_domains(cfg.vq.vq_domains, "--vq-domains")  # its own name in the error
        cfg = replace(cfg, data=replace(cfg.data, domains=cfg.vq.vq_domains))
    return open_source(cfg, "train", None)


def check_same_tokenizer(payload: dict, cfg: Config, path) -> None:
    """UserError unless the tokenizer saved in `payload` (from `path`) has the run's settings."""
    differs = saved_mismatch(payload, cfg, VQ_IDENTITY)
    if differs:
        name, was, now = differs
        raise UserError(f"{path} holds a tokenizer with {name}={was}, but this run asks for "
                        f"{now}; use another --out")


def _keep_tokenizer(vq: VQModel, vocab: Vocab, cfg: Config, files: RunFiles, device) -> dict:
    """Evaluate the image tokenizer on held-out images and save both tokenizers with the
    report as vq.pt."""
    report = evaluate_tokenizer(vq, cfg, device)
    if rank_world()[0] == 0:
        files.log_line({"stage": "vq", "report": report})
        files.draw_curves()
    checkpoint.save({"config": config.to_dict(cfg), "vq": vq.state_dict(), "report": report,
                     "merges": [list(m) for m in vocab.merges]}, files.vq)
    print(f"image tokenizer: {describe_tokenizer(report)}")
    return report


def codes_tokenizer(cfg: Config, files: RunFiles, device, init: dict | None = None):
    """Stage 1 of a run on pre-tokenised codes (--data codes:DIR): the tokenizers that made
    them, DIR/vq.pt, copied into the run folder on first use. The run folder's vq.pt and the
    tokenizer of --init must be that one. Nothing is trained or measured here: the report is
    the one the tokenizer was saved with, since the codes hold no images to measure it on."""
    folder = cfg.data.data[len(CODES_PREFIX):]
    manifest = read_manifest(folder)
    source = files.vq if files.vq.exists() else Path(folder) / TOKENIZER_FILE
    payload = checkpoint.load(source)
    check_tokenizer(folder, manifest, payload["vq"], str(source))
    if init is not None:
        check_tokenizer(folder, manifest, init["vq"], "the --init checkpoint's tokenizer")
    check_same_tokenizer(payload, cfg, source)
    if source != files.vq and rank_world()[0] == 0:
        checkpoint.save({k: payload[k] for k in ("config", "vq", "report", "merges")}, files.vq)
        files.log_line({"stage": "vq", "report": payload["report"]})
    vq = VQModel(cfg.vq).to(device)
    vq.load_state_dict(payload["vq"])
    print(f"tokenizers of the codes in {folder}: {describe_tokenizer(payload['report'])}")
    vocab = checkpoint.vocab_of(init if init is not None else payload, cfg)
    return ImageTokenizer(vq, cfg.vq), vocab, payload["report"]


@torch.no_grad()
def evaluate_tokenizer(vq: VQModel, cfg: Config, device, n: int = VQ_EVAL_IMAGES) -> dict:
    """Held-out PSNR and codebook usage on `n` images, and the GenEval-style ceiling: the
    checker on reconstructions of the evaluation prompts' real images."""
    vq.eval()
    x = batch_images(open_source(cfg, "heldout", None), 0, n).to(device)
    codes = vq.encode(x)
    recon = vq.decode(codes)
    ceiling = tokenizer_ceiling(ImageTokenizer(vq, cfg.vq), cfg.data.image_size, CEILING_PROMPTS)
    return {"psnr": round(psnr(recon, x), 3), "images": n,
            **{k: round(float(v), 4) for k, v in codebook_stats(codes, vq.cfg.vq_codes).items()},
            "ceiling": round(ceiling["overall"], 4),
            "ceiling_per_category": {k: round(v, 4) for k, v in ceiling["per_category"].items()}}


def describe_tokenizer(report: dict) -> str:
    line = (f"held-out PSNR {report['psnr']:.2f} dB, codebook perplexity "
            f"{report['perplexity']:.1f}, {report['used_fraction']:.0%} of codes used")
    if "ceiling" in report:  # tokenizers saved before the ceiling was measured lack it
        worst = min(report["ceiling_per_category"].items(), key=lambda kv: kv[1])
        line += (f"; GenEval ceiling {report['ceiling']:.1%} (lowest: {worst[0]} "
                 f"{worst[1]:.0%})")
    return line


# --- stage 2: the dense model ---------------------------------------------------------------

def grid_prompts(session: Session) -> list[str]:
    """The GRID_PROMPTS that fit the run's text block, counted in its text units (BPE tokens
    or bytes)."""
    return [p for p in GRID_PROMPTS if len(session.text.encode(p)) <= session.max_caption]


class GridWriter:
    """Writes samples/STAGE_NNNNNN.png (the stage in the name, since a MoE run's two stages
    share the folder and their step counts): two samples for each of GRID_PROMPTS."""

    def __init__(self, stage: str, model, vocab, image_tok, folder: Path, cfg: Config):
        self.session, self.image_tok = Session(cfg, model, vocab), image_tok
        self.stage, self.folder = stage, folder

    def __call__(self, step: int) -> Path:
        prompts = grid_prompts(self.session) * 2
        images = generate(self.session, self.image_tok, prompts, seed=step)
        path = self.folder / f"{self.stage}_{step:06d}.png"
        save_png(image_grid(images, [p or "(empty caption)" for p in prompts],
                            cols=len(prompts) // 2), path)
        return path


def load_dense(path: Path, cfg: Config) -> dict:
    """A dense checkpoint (a dense run's ckpt.pt or a MoE run's dense.pt) that fits `cfg`."""
    payload = checkpoint.load(path)
    if payload.get("stage") != "dense":
        raise UserError(f"{path} holds a {payload.get('stage')} model, not a dense one; pass a "
                        f"dense run's ckpt.pt or a MoE run's dense.pt to --init")
    differs = saved_mismatch(payload, cfg, DENSE_IDENTITY)
    if differs:
        name, was, now = differs
        raise UserError(f"{path} has {name}={was} but this run asks for {now}; pass "
                        f"{flag(name)} {was} or another --init")
    return payload


def dense_stage(cfg: Config, files: RunFiles, image_tok, vocab: Vocab, device,
                payload: dict | None, init: str | None, progress: bool):
    """The trained dense model, from (first that applies): --init, the run folder's dense.pt,
    or training (resumed from `payload` if it is a dense-stage checkpoint). A MoE run keeps
    the result as dense.pt."""
    torch.manual_seed(cfg.train.seed)
    model, _ = build_model(config.dense_version(cfg), device)
    if cfg.model.code_init == "codebook":  # loaded weights below replace it where they exist
        init_code_embeddings(model, vocab, image_tok.vq.codebook_KD, cfg.train.seed)
    if model.features_in is not None:  # a fixed description of the tokenizer's codes
        model.code_features_KF.copy_(code_features(cfg.model.code_features, image_tok.vq))
    source = Path(init) if init else files.dense if files.dense.exists() and payload is None \
        else None
    if source is not None:
        reused = load_dense(source, cfg)
        model.load_state_dict(reused["model"])
        if source != files.dense and rank_world()[0] == 0:
            checkpoint.save(reused, files.dense)
        print(f"reusing the dense model in {source} (step {reused['step']})")
        return model
    start = 0
    if payload is not None:
        model.load_state_dict(payload["model"])
        start = payload["step"]
        print(f"resuming dense at step {start}")
    optimizer = shard_for_training(model, cfg, payload)
    print(f"dense model: {model.num_params() / 1e6:.2f}M parameters, {cfg.seq_len} tokens a row")
    rank, world = rank_world()
    fit(data_parallel(model), cfg, RunWriter(files.root, cfg, image_tok, vocab,
                                             events=files.events), "dense",
        cfg.train.dense_steps,
        Batcher(cfg, open_source(cfg, "train", vocab.merges), vocab, image_tok, rank=rank,
                world=world),
        device, start_step=start, optimizer=optimizer,
        on_sample=GridWriter("dense", model, vocab, image_tok, files.samples, cfg),
        on_heldout=HeldoutCheck(model, cfg, vocab, image_tok, device), progress=progress,
        skipped=payload.get("skipped", 0) if payload else 0)
    files.draw_curves()
    if cfg.moe.moe != "none" and rank == 0:  # fit's last save is the finished dense model
        checkpoint.save(checkpoint.load(files.ckpt), files.dense)
    return unshard(model, config.dense_version(cfg), device)


# --- stage 3: conversion and MoE training ---------------------------------------------------

def convert_stage(dense, cfg: Config, files: RunFiles, vocab, image_tok, device,
                  moe_batcher: Batcher):
    """The MoE built from `dense` (calibrated on the first MoE batches), and the held-out
    task losses right before and right after the conversion (router at its step-0 schedule)."""
    before = heldout_losses(dense, cfg, vocab, image_tok, device)
    calibration = [moe_batcher(i).to(device) for i in range(cfg.moe.taylor_batches)]
    dense.train()  # Taylor scores need gradients of the training-mode loss
    torch.manual_seed(cfg.train.seed)  # the routers' random start: same in every pipeline
    generator = torch.Generator().manual_seed(cfg.train.seed)
    model = convert_model(dense, cfg, calibration, generator)
    apply_schedule(model, schedule(cfg, 0))
    after = heldout_losses(model, cfg, vocab, image_tok, device)
    router = sum(p.numel() for n, p in model.named_parameters()
                 if ".router." in n or "prior_GE" in n)
    report = {"before": before, "after": after, "method": cfg.moe.moe,
              "moe_params": model.num_params(), "router_params": router,
              "dense_params": dense.num_params()}
    if rank_world()[0] == 0:
        files.log_line({"stage": "convert", **report})
    print(f"conversion ({cfg.moe.moe}): held-out losses "
          + ", ".join(f"{k} {before[k]:.3f} -> {after[k]:.3f}" for k in before)
          + f"; parameters {report['dense_params'] / 1e6:.2f}M -> "
            f"{report['moe_params'] / 1e6:.2f}M")
    return model, report


def moe_stage(model, cfg: Config, files: RunFiles, vocab, image_tok, device, batcher: Batcher,
              start_step: int, optimizer, progress: bool, ep=None, skipped: int = 0) -> None:
    """Train the MoE from `start_step` (`skipped`: non-finite steps skipped before it); with
    --moe-steps 0 just save the converted model (as step 0)."""
    print(describe_schedule(cfg))
    if cfg.train.moe_steps == 0:
        RunWriter(files.root, cfg, image_tok, vocab).save(model, make_optimizer(model, cfg),
                                                          "moe", 0, ep=ep)
        return
    fit(data_parallel(model), cfg, RunWriter(files.root, cfg, image_tok, vocab,
                                             events=files.events), "moe",
        cfg.train.moe_steps,
        batcher, device, start_step=start_step, optimizer=optimizer,
        on_sample=GridWriter("moe", model, vocab, image_tok, files.samples, cfg),
        on_heldout=HeldoutCheck(model, cfg, vocab, image_tok, device), progress=progress,
        router=RouterTraining(model, cfg), peak_lr=cfg.train.moe_lr, ep=ep, skipped=skipped)
    files.draw_curves()


def shard_for_training(model, cfg: Config, payload: dict | None = None, ep=None):
    """Shard `model` in place for this run's parallelism (--ep: expert shards; fsdp under
    torchrun: FSDP2) and make its optimizer, restored from `payload` (which holds the whole
    model's state) when resuming."""
    use_fsdp = cfg.train.fsdp and rank_world()[1] > 1
    if ep is not None:
        parallelize_experts_(model, ep)
    if use_fsdp:  # with --ep: the non-expert weights
        fsdp_(model)
    optimizer = make_optimizer(model, cfg)
    if payload is not None:
        state = payload["optimizer"]
        if ep is not None:
            state = shard_optimizer_state(state, model, optimizer, ep)
        if use_fsdp:
            load_fsdp_optimizer_state(optimizer, state)
        else:
            optimizer.load_state_dict(state)
    return optimizer


def resume_moe(cfg: Config, payload: dict, device, ep=None):
    """The MoE and its optimizer from a checkpoint, sharded as this run shards."""
    model, _ = build_model(cfg, device)
    model.load_state_dict(payload["model"])
    print(f"resuming moe at step {payload['step']}")
    return model, shard_for_training(model, cfg, payload, ep)


def unshard(model, cfg: Config, device, ep=None):
    """The whole model on every rank, gathered from its shards (a collective), or `model`
    itself when it is not sharded."""
    if ep is None and not is_fsdp(model):
        return model
    state = full_model_state(model, ep)
    whole, _ = build_model(cfg, device)
    whole.load_state_dict(state)
    return whole


def routing_report(model, cfg: Config, files: RunFiles, vocab, image_tok, device) -> dict:
    """evaluation.collect_routing, written to the run folder as routing.json and routing.png."""
    summary = collect_routing(model, cfg, vocab, image_tok, device)
    write_text(files.routing, json.dumps(summary, indent=2))
    save_png(routing_heatmaps(summary, f"{files.root.name}: share of each group's routed slots "
                              f"per expert (%), held-out"), files.routing.with_suffix(".png"))
    return summary


# --- the end of a run -----------------------------------------------------------------------

def peak_memory_mb() -> float:
    mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    if torch.cuda.is_available():
        mb = max(mb, torch.cuda.max_memory_allocated() / 2**20)
    return round(mb, 1)


def format_summary(s: dict) -> str:
    """evaluation.format_report plus the tokenizer, wall-time and memory lines of a run."""
    return "\n".join([f"tokenizer  {describe_tokenizer(s['vq'])}"]
                     + ([format_report(s)] if "mmu" in s else [])
                     + ([format_cost(s["cost"])] if "cost" in s else [])
                     + [f"wall time  {s['wall_s']:.0f} s, peak memory {s['peak_rss_mb']:.0f} MB"])
