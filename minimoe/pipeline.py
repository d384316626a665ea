"""The stages that the scripts string together: run folders, the tokenizer stage, model
construction and loading, periodic sample grids and the quick end-of-run check.

Scripts stay recipes; everything here is plain functions over a `Config`.
"""
from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint, config
from .atomic import save_png
from .config import Config
from .data import BuiltinData, load_source
from .dist import rank_world
from .inference import Session
from .metrics import colour_report, mmu_report
from .model import Transformer
from .plots import image_grid
from .tokenizers import ImageTokenizer, Vocab, images_to_tensor, tensor_to_images
from .trainer import RunFiles, TrainingError, log_line, trim_log
from .vq import VQModel, codebook_stats, psnr, train_vq

RUNS_ROOT = Path("out")  # default parent of run folders
EVAL_SEED = 1234  # the held-out draw of the quick check, fixed so runs are comparable
VQ_EVAL_IMAGES = 256  # held-out images for the tokenizer's PSNR and codebook usage
# Fields that fix the tokenizer's architecture and input; a cached vq.pt must agree on them.
VQ_IDENTITY = ("image_size", "vq_downsample", "vq_codes", "vq_dim", "vq_channels")
GRID_PROMPTS = ("a large red circle", "a small blue square left of a large yellow triangle",
                "two green circles and a purple square", "the digit 3 in yellow on blue",
                "narrow red and blue vertical stripes", "")


class UserError(RuntimeError):
    """A mistake in what the user asked for; scripts print it as one line."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose answer to a bad command line is one line, like every other user error
    (argparse itself prints the whole usage block first), with the same exit status 2.
    Abbreviated flags are refused: --fid would otherwise silently mean --fid-n."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def add_debug_flag(parser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")


def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def user_errors(debug: bool):
    """Turn expected failures into `error: ...` on stderr and exit status 2, and warnings
    (a skipped data row, ...) into one `warning: ...` line each; --debug keeps tracebacks
    and the warnings' source lines."""
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _one_line
            yield
    except (UserError, ValueError, checkpoint.CheckpointError, TrainingError) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        sys.exit(130)


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {spec} asked for, but this torch sees no CUDA GPU; "
                        f"use --device cpu")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N")


def run_folder(out: str | None, moe: str | None) -> Path:
    if out:
        return Path(out)
    return RUNS_ROOT / ("dense" if (moe or "none") == "none" else f"moe-{moe}")


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
            trim_log(files, "dense" if files.vq.exists() else "vq", 0)
        return config.from_args(args), 0, None
    if not files.ckpt.exists():
        raise UserError(f"nothing to resume: {files.ckpt} does not exist; drop --resume to "
                        f"start a new run there")
    payload = checkpoint.load(files.ckpt)
    saved = config.from_dict(payload["config"])
    if args.preset and args.preset != saved.preset:
        raise UserError(f"{files.ckpt} was trained with --preset {saved.preset}, not "
                        f"{args.preset}; drop --preset or use another --out")
    overrides = config.explicit_overrides(args)
    saved_flat = config.flat(saved)
    for name, value in overrides.items():
        if config.section_of(name) != "train" and saved_flat[name] != value:
            raise UserError(f"{files.ckpt} was trained with --{name.replace('_', '-')} "
                            f"{saved_flat[name]}, not {value}; drop the flag or use another --out")
    cfg = config.make_config(saved.preset, **{**saved_flat, **overrides})
    if rank_world()[0] == 0 and trim_log(files, payload["stage"], payload["step"]):
        print(f"log.jsonl: dropped the lines after {payload['stage']} step {payload['step']} "
              f"(they will be written again)")
    return cfg, payload["step"], payload


def open_source(cfg: Config, split: str):
    # Folder rows must fit every layout: a caption, or "question answer", in text_len - 4 bytes.
    return load_source(cfg.data.data, cfg.data.image_size, split, seed=cfg.train.seed,
                       domains=tuple(cfg.data.domains.split(",")),
                       max_text_bytes=cfg.data.text_len - 4)


def batch_images(source, first: int, n: int) -> torch.Tensor:
    return images_to_tensor([source[first + i].image for i in range(n)])


def tokenizer_stage(cfg: Config, files: RunFiles, device, progress: bool = True,
                    init_vq: dict | None = None):
    """Stage 1: train the VQ tokenizer, or reuse the run folder's vq.pt, or take `init_vq`
    (the tokenizer of an --init dense checkpoint, which that model's codes belong to).
    Returns (ImageTokenizer, report with held-out PSNR and codebook usage)."""
    vq = VQModel(cfg.vq).to(device)
    if init_vq is not None:
        vq.load_state_dict(init_vq)
        print("image tokenizer taken from --init")
        return ImageTokenizer(vq, cfg.vq), _keep_tokenizer(vq, cfg, files, device)
    if files.vq.exists():
        payload = checkpoint.load(files.vq)
        saved = config.flat(config.from_dict(payload["config"]))
        wanted = config.flat(cfg)
        for name in VQ_IDENTITY:
            if saved[name] != wanted[name]:
                raise UserError(f"{files.vq} holds a tokenizer with {name}={saved[name]}, but "
                                f"this run asks for {wanted[name]}; use another --out")
        vq.load_state_dict(payload["vq"])
        print(f"reusing the image tokenizer in {files.vq}: {payload['report']}")
        return ImageTokenizer(vq, cfg.vq), payload["report"]
    if cfg.vq.vq_steps == 0:
        raise UserError(f"--vq-steps 0 but {files.vq} does not exist; train a tokenizer first")
    torch.manual_seed(cfg.train.seed)
    source = open_source(cfg, "train")
    B = cfg.vq.vq_batch
    train_vq(vq, lambda step: batch_images(source, step * B, B), cfg.vq, device=device,
             progress=progress, log=lambda rec: log_line(files, {"stage": "vq", **rec}))
    return ImageTokenizer(vq, cfg.vq), _keep_tokenizer(vq, cfg, files, device)


def _keep_tokenizer(vq: VQModel, cfg: Config, files: RunFiles, device) -> dict:
    """Evaluate the tokenizer on held-out images and save it with its report as vq.pt."""
    report = evaluate_tokenizer(vq, open_source(cfg, "heldout"), device)
    checkpoint.save({"config": config.to_dict(cfg), "vq": vq.state_dict(), "report": report},
                    files.vq)
    print(f"image tokenizer: held-out PSNR {report['psnr']:.2f} dB, codebook perplexity "
          f"{report['perplexity']:.1f} of {cfg.vq.vq_codes}, {report['used_fraction']:.0%} used")
    return report


@torch.no_grad()
def evaluate_tokenizer(vq: VQModel, source, device, n: int = VQ_EVAL_IMAGES) -> dict:
    vq.eval()
    x = batch_images(source, 0, n).to(device)
    codes = vq.encode(x)
    recon = vq.decode(codes)
    return {"psnr": round(psnr(recon, x), 3), "images": n,
            **{k: round(float(v), 4) for k, v in codebook_stats(codes, vq.cfg.vq_codes).items()}}


def build_model(cfg: Config, device) -> tuple[Transformer, Vocab]:
    vocab = Vocab(cfg.vq.vq_codes)
    return Transformer(cfg, vocab.size, vocab.pad).to(device), vocab


def latest_checkpoint(root: Path = RUNS_ROOT) -> Path:
    found = sorted(root.glob("*/ckpt.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no checkpoint under {root}/; train one (python train.py) or pass --ckpt")
    return found[-1]


def load_run(path: str | Path | None, device) -> tuple[Config, Session, ImageTokenizer]:
    """A checkpoint (default: the newest run's) as a ready Session and ImageTokenizer."""
    path = Path(path) if path else latest_checkpoint()
    payload = checkpoint.load(path)
    cfg = config.from_dict(payload["config"])
    if payload.get("stage") == "dense":  # a MoE run still in (or just past) its dense stage
        cfg = config.dense_version(cfg)
    model, vocab = build_model(cfg, device)
    vq = VQModel(cfg.vq).to(device)
    try:
        model.load_state_dict(payload["model"])
        vq.load_state_dict(payload["vq"])
    except (RuntimeError, KeyError) as e:
        problem = " ".join(str(e).split())[:80]  # torch's message spans lines
        raise checkpoint.CheckpointError(f"{path} does not match its own config ({problem}...); "
                                         f"it was written by other code, retrain") from None
    return cfg, Session(model, vocab), ImageTokenizer(vq, cfg.vq)


class GridWriter:
    """Writes samples/step_NNNNNN.png: two samples for each of GRID_PROMPTS."""

    def __init__(self, model, vocab, image_tok, folder: Path, cfg: Config):
        self.session, self.image_tok, self.folder, self.cfg = Session(model, vocab), image_tok, \
            folder, cfg

    def __call__(self, step: int) -> Path:
        prompts = [p for p in GRID_PROMPTS if len(p.encode()) <= self.session.max_caption] * 2
        images = generate(self.session, self.image_tok, prompts, self.cfg, seed=step)
        path = self.folder / f"step_{step:06d}.png"
        save_png(image_grid(images, [p or "(empty caption)" for p in prompts],
                            cols=len(prompts) // 2), path)
        return path


def generate(session: Session, image_tok: ImageTokenizer, captions: list[str], cfg: Config,
             seed: int, steps: int | None = None, guidance: float | None = None,
             batch: int = 16, progress: bool = False):
    """PIL images for `captions`, deterministic in `seed`."""
    gen = torch.Generator(session.device).manual_seed(seed)
    steps = steps or cfg.train.sample_steps
    guidance = cfg.train.guidance if guidance is None else guidance
    images = []
    for i in tqdm(range(0, len(captions), batch), desc="generating", disable=not progress):
        codes = session.text_to_image(captions[i:i + batch], steps, guidance, gen)
        images += tensor_to_images(image_tok.decode(codes))
    return images


def heldout_shapes(cfg: Config, n: int) -> list:
    """The first n held-out shapes samples of the fixed evaluation draw."""
    data = BuiltinData(cfg.data.image_size, ("shapes",), "heldout", seed=EVAL_SEED)
    return [data[i] for i in range(n)]


@torch.no_grad()
def mmu_eval(session: Session, image_tok, samples: list, progress: bool = True) -> dict:
    """Exact-match answers to every question of `samples` (metrics.mmu_report)."""
    codes = image_tok.encode([s.image for s in samples])
    questions, answers, rows = [], [], []
    for i, s in enumerate(samples):
        for q, a in s.qa:
            questions.append(q), answers.append(a), rows.append(i)
    predictions = []
    for i in tqdm(range(0, len(questions), 64), desc="answering", disable=not progress):
        predictions += session.answer(codes[rows[i:i + 64]], questions[i:i + 64])
    return mmu_report(predictions, answers)


@torch.no_grad()
def quick_eval(model, vocab, image_tok, cfg: Config, n: int, progress: bool = True) -> dict:
    """MMU exact-match accuracy and caption-colour agreement of generated images, both on
    held-out built-in shapes, each beside its chance level."""
    session = Session(model, vocab)
    samples = heldout_shapes(cfg, n)
    images = generate(session, image_tok, [s.caption for s in samples], cfg, EVAL_SEED,
                      progress=progress)
    return {"mmu": mmu_eval(session, image_tok, samples, progress),
            "colours": colour_report(images, [s.objects for s in samples]),
            "colours_real": colour_report([s.image for s in samples],
                                          [s.objects for s in samples])["matched"]}


def peak_memory_mb() -> float:
    mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    if torch.cuda.is_available():
        mb = max(mb, torch.cuda.max_memory_allocated() / 2**20)
    return round(mb, 1)


def format_report(s: dict) -> str:
    """The MMU and colour lines of a quick_eval result."""
    m, c = s["mmu"], s["colours"]
    lines = [f"MMU        exact match {m['accuracy']:.1%} on {m['n']} held-out questions "
             f"(blind majority baseline {m['majority_baseline']:.1%})"]
    lines += [f"  {t:<9} {r['accuracy']:.1%} (baseline {r['majority_baseline']:.1%}, n={r['n']})"
              for t, r in m["per_type"].items()]
    lines += [f"colours    generated images show all caption colours {c['matched']['all']:.1%}, "
              f"exactly {c['matched']['exact']:.1%} (shifted captions: {c['chance']['all']:.1%},"
              f" {c['chance']['exact']:.1%}; real images: {s['colours_real']['all']:.1%})"]
    return "\n".join(lines)


def format_summary(s: dict) -> str:
    """format_report plus the tokenizer, wall-time and memory lines of a training run."""
    return "\n".join([f"tokenizer  PSNR {s['vq']['psnr']:.2f} dB, perplexity "
                      f"{s['vq']['perplexity']:.1f}"] + ([format_report(s)] if "mmu" in s else [])
                     + [f"wall time  {s['wall_s']:.0f} s, peak memory {s['peak_rss_mb']:.0f} MB"])
