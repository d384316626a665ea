"""The masked-token objective, measured on drawing alone: which rows the T2I loss sees (the
masking schedule) and which codes it weighs (a focal loss).

    python experiments/masking.py --seeds 1,2 --jobs 2   # tiny preset, CPU: about 70 min
    python experiments/masking.py --smoke                # a micro run of everything (CI)

Training masks a cos(pi t / 2) ** p share of an image's codes, t uniform (`--mask-power p`).
p = 1 is MaskGIT's cosine schedule (the default); p < 1 masks more of every row, p > 1 less.
`--t2i-focal g` weighs a code the model predicts with probability p by (1 - p) ** g, so that
the codes it already gets right (mostly plain background) give way to the object's.
The arms are experiments/drawing.py's default arm (shapes' text-to-image rows alone, forms x
colours with shared rows; the very run, not a copy) and the same run with one flag more
(ARMS), starting from a copy of its tokenizer, so that they differ in that flag alone. Each is
measured as drawing.py measures: eval.py and words.py on the validation draw. The held-out
T2I loss is plain cross-entropy on cosine-masked rows whatever the arm trains on, so it
compares. Writes docs/experiments/masking.{md,json}.
"""
import torch
from common import Run, parse
from drawing import DRAWS, EVAL_PROMPTS, runs_of, slug, train_and_table
from steps import _copy_tokenizer

DEFAULT = "forms x colours, shared rows"  # drawing.py's arm: the preset's image codes
ARMS = {"p = 0.5": ["--mask-power", "0.5"], "p = 2": ["--mask-power", "2"],
        "focal, g = 2": ["--t2i-focal", "2"]}  # each set against the default run


def masking_runs(s, seed: int) -> dict[str, Run]:
    """{arm: its run}: drawing.py's default arm, then one run an arm of ARMS."""
    drawing = runs_of(s, seed)
    base, tokenizer = drawing[DEFAULT], drawing["forms x colours"]
    runs = {"p = 1 (cosine, default)": base}
    for name, flags in ARMS.items():
        folder = s.work / "masking" / f"seed{seed}" / slug(name)
        flags = base.cmd[:-2] + flags  # base.cmd ends in --out FOLDER
        runs[name] = Run(folder, flags + ["--out", str(folder)],
                         s.docs / "runs" / "masking" / f"seed{seed}" / slug(name),
                         _copy_tokenizer(tokenizer.folder, folder), [tokenizer])
    return runs


def main() -> None:
    s = parse(__doc__)
    torch.set_num_threads(2)
    train_and_table(s, "masking", {seed: masking_runs(s, seed) for seed in s.seeds},
                    f"The masked-token objective on drawing alone (mean ± sd over seeds "
                    f"{', '.join(map(str, s.seeds))}, validation draw, {EVAL_PROMPTS} prompts "
                    f"a category; one-object captions: each of the 48 drawn {DRAWS} times)")


if __name__ == "__main__":
    main()
