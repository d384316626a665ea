"""Generate images from a caption, or answer a question about an image, with a trained run.

    python sample.py --prompt "a red circle left of a blue square"        # PNG grid, 8 samples
    python sample.py --prompt "a large green square" --n 4 --steps 12 --guidance 3
    python sample.py --prompt "a blue circle" --init-image in.png --keep left   # extrapolate
    python sample.py --image in.png --question "what colour is the circle?"    # prints the answer

--ckpt defaults to the newest out/*/ckpt.pt.
"""
import re
import sys
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from minimoe import cli, inference
from minimoe.atomic import save_png
from minimoe.data import fit_image
from minimoe.plots import image_grid

KEEP_CHOICES = ("left", "right", "top", "bottom")
MAX_SAMPLES = 1024  # beyond this a request is a typo, not a plan (1024 images: 16 MB of PNG)


def main(argv=None):
    p = cli.ArgumentParser(description=cli.about(__doc__))
    p.add_argument("--ckpt", default=None, help="checkpoint (default: newest out/*/ckpt.pt)")
    p.add_argument("--prompt", default=None, help="caption to draw")
    p.add_argument("--image", default=None, help="image to ask --question about")
    p.add_argument("--question", default=None, help="question about --image")
    p.add_argument("--init-image", default=None, help="keep part of this image (see --keep)")
    p.add_argument("--keep", default="left", choices=KEEP_CHOICES,
                   help="half of --init-image kept; the rest is generated (default left)")
    p.add_argument("--out", default=None, help="PNG path (default: RUN/generated/<prompt>.png)")
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    cli.add_sampling_flags(p)
    p.add_argument("--device", default="auto")
    cli.add_debug_flag(p)
    args = p.parse_args(argv)
    with cli.user_errors(args.debug):
        return run(args)


def load_image(path: str, size: int) -> Image.Image:
    try:
        with Image.open(path) as im:
            return fit_image(im.convert("RGB"), size)
    except FileNotFoundError:
        raise cli.UserError(f"image {path} does not exist; check the path")
    except (UnidentifiedImageError, OSError) as e:
        raise cli.UserError(f"{path} is not an image that PIL can read "
                            f"({e.__class__.__name__}); pass a PNG or JPEG file")


def check_text(session, flag: str, text: str, max_len: int) -> None:
    """An over-long or non-UTF-8 --prompt / --question, named before the model runs."""
    try:
        session.text.encode(text, max_len=max_len)
    except ValueError as e:
        raise cli.UserError(f"{flag}: {e}") from None


def check_args(args) -> None:
    if (args.prompt is None) == (args.image is None):
        raise cli.UserError("pass either --prompt \"...\" (generate) or --image PATH "
                            "--question \"...\" (answer)")
    if args.image is not None and not (args.question or "").strip():
        raise cli.UserError("--image needs a non-empty --question \"...\"")
    if args.prompt is not None and not args.prompt.strip():
        raise cli.UserError("--prompt is empty; describe the image, e.g. --prompt "
                            "\"a red circle\"")
    if not 1 <= args.n <= MAX_SAMPLES:
        raise cli.UserError(f"--n {args.n}: draw 1 to {MAX_SAMPLES} samples per call")
    cli.check_sampling(args)


def run(args):
    check_args(args)
    device = cli.pick_device(args.device)
    cfg, session, image_tok = inference.load(args.ckpt, device)
    if args.image is not None:
        check_text(session, "--question", args.question.strip(), session.max_question)
        codes = image_tok.encode([load_image(args.image, cfg.data.image_size)])
        answer = session.answer(codes, [args.question.strip()])[0]
        print(answer)
        return answer

    check_text(session, "--prompt", args.prompt, session.max_caption)
    known = None
    if args.init_image:
        known = keep_half(image_tok.encode([load_image(args.init_image, cfg.data.image_size)]),
                          args.keep).repeat(args.n, 1)
    images = inference.generate(session, image_tok, [args.prompt] * args.n, args.seed,
                                steps=args.steps, guidance=args.guidance,
                                choice_temperature=args.choice_temperature, known_codes_BN=known,
                                progress=args.n > inference.GENERATE_BATCH,
                                guidance_schedule=args.guidance_schedule,
                                code_temperature=args.code_temperature)
    out = Path(args.out) if args.out else default_out(args.ckpt, args.prompt)
    save_png(image_grid(images, None, cols=min(args.n, 8)), out)
    print(f"wrote {len(images)} samples of {args.prompt!r} to {out}")
    return out


def keep_half(codes_BN: torch.Tensor, keep: str) -> torch.Tensor:
    """-1 (unknown) everywhere but the kept half of the code grid."""
    side = int(round(codes_BN.shape[1] ** 0.5))
    grid = codes_BN.view(-1, side, side).clone()
    half = side // 2
    region = {"left": (slice(None), slice(half, None)), "right": (slice(None), slice(None, half)),
              "top": (slice(half, None), slice(None)), "bottom": (slice(None, half), slice(None))}
    grid[(slice(None),) + region[keep]] = -1
    return grid.flatten(1)


def default_out(ckpt, prompt: str) -> Path:
    run_dir = Path(ckpt).parent if ckpt else inference.latest_checkpoint().parent
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "sample"
    return run_dir / "generated" / f"{slug}.png"


if __name__ == "__main__":
    main(sys.argv[1:])
