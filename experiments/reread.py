"""Can the model pick out its own good drawings? Best of K by the model's own reading.

    python experiments/reread.py --ckpt out/moe-taylor/dense.pt [--ckpt NAME=PATH ...]  # minutes
    python experiments/reread.py --smoke                      # an untrained micro model (CI)

Each prompt of the validation draw (PROMPTS a category) is drawn K times with the run's own
sampler settings, and the GenEval-style checker judges every sample. The same model then
reads each drawing back through a captioning row (the image, the empty question, the prompt
as the answer, as in training) and scores it two ways:

- likelihood: log p(prompt | drawing);
- contrast: for each shape word of the prompt, log p(prompt | drawing) minus the log-sum-exp
  over the prompt with that word replaced by every shape (itself included), summed over the
  shape words: how surely the drawing shows the asked-for shapes rather than others, whatever
  the prompt's other words cost.

The table gives, for K = 1, 2, 4, ... up to --k, the share of prompts that pass with a sample
drawn at random (the mean over the candidates), with the likelihood's pick, with the
contrast's pick, and with some sample (an oracle that knows the checker). The oracle shows
what a perfect judge of the model's own drawings could pick; the picks show what the model's
reading finds. Writes docs/experiments/reread.{md,json}.
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from common import measured_models, measuring_parser, table, write_measured

from minimoe import cli, evaluation, geneval, inference
from minimoe.data.shapes import PLURALS
from minimoe.inference import Session
from minimoe.sequences import IGNORE, mmu_row
from minimoe.tokenizers import ImageTokenizer, tensor_to_images

PROMPTS = 20  # validation prompts a GenEval category
K = 16  # samples a prompt
READ_BATCH = 256  # captioning rows a forward call


def shape_swaps(caption: str) -> list[list[str]]:
    """For each shape word of the caption (singular or plural), the caption with that word
    replaced by every shape of the same number, the caption itself included."""
    words = caption.split(" ")
    forms = [list(PLURALS), list(PLURALS.values())]
    swaps = []
    for i, word in enumerate(words):
        for form in forms:
            if word in form:
                swaps.append([" ".join(words[:i] + [other] + words[i + 1:]) for other in form])
    return swaps


def caption_logliks(session: Session, codes_RN: torch.Tensor, captions: list[str]
                    ) -> torch.Tensor:
    """log p(caption | image) for each (codes, caption) pair: the summed log-probabilities of
    the caption's ids and its [eot] in a captioning row, teacher-forced."""
    v, seq_len = session.vocab, session.cfg.seq_len
    out = []
    for i in range(0, len(captions), READ_BATCH):
        rows = [mmu_row((c + v.image_offset).tolist(), [([], session.text.encode(cap))], v,
                        seq_len)
                for c, cap in zip(codes_RN[i:i + READ_BATCH], captions[i:i + READ_BATCH])]
        tokens, groups, labels = (torch.tensor([r[j] for r in rows]) for j in range(3))
        with torch.no_grad():
            logits = session.model(tokens, groups).logits_BLV.float()
        nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE,
                              reduction="none")
        out.append(-nll.sum(1))
    return torch.cat(out)


def scores(session: Session, codes_KPN: torch.Tensor, captions: list[str]
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(likelihood, contrast), each [P, K]: how the model reads each sample as its caption."""
    K_ = codes_KPN.shape[0]
    asked, spans = [], []  # every (prompt, caption) pair read; per prompt, where its reads lie
    for p, cap in enumerate(captions):
        own, swaps = len(asked), []
        asked.append((p, cap))
        for swap in shape_swaps(cap):
            swaps.append(slice(len(asked), len(asked) + len(swap)))
            asked += [(p, c) for c in swap]
        spans.append((own, swaps))
    ll = caption_logliks(session, codes_KPN[:, [p for p, _ in asked]].flatten(0, 1),
                         [c for _, c in asked] * K_).view(K_, len(asked))
    likelihood = torch.stack([ll[:, own] for own, _ in spans])
    contrast = torch.stack([sum((ll[:, own] - ll[:, s].logsumexp(1) for s in swaps),
                                torch.zeros(K_)) for own, swaps in spans])
    return likelihood, contrast


def measure(session: Session, tok: ImageTokenizer, per_category: int, k: int) -> dict:
    prompts = geneval.prompt_set(session.cfg.data.image_size, per_category,
                                 evaluation.VALIDATION_SEED)
    captions = [p.caption for p in prompts]
    codes = inference.generate_codes(session, captions * k, seed=0)
    codes_KPN = codes.view(k, len(prompts), -1)
    images = tensor_to_images(tok.decode(codes))
    per_prompt = [[images[c * len(prompts) + p] for c in range(k)] for p in range(len(prompts))]
    passed = torch.tensor(geneval.score(prompts, per_prompt)["verdicts"])  # [P, K]
    likelihood, contrast = scores(session, codes_KPN, captions)
    rows = {}
    for n in sorted({2 ** i for i in range(k.bit_length()) if 2 ** i <= k} | {k}):
        def picked(score):
            return passed[torch.arange(len(prompts)), score[:, :n].argmax(1)].float().mean()
        rows[n] = {"random": passed[:, :n].float().mean().item(),
                   "likelihood": picked(likelihood).item(), "contrast": picked(contrast).item(),
                   "oracle": passed[:, :n].any(1).float().mean().item()}
    return {"prompts": len(prompts), "by_k": rows}


def markdown(results: dict) -> str:
    header = ["run", "K", "a random sample %", "likelihood's pick %", "contrast's pick %",
              "some sample passes %"]
    rows = [[run, str(n), *(f"{100 * r[key]:.1f}" for key in
                            ("random", "likelihood", "contrast", "oracle"))]
            for run, found in results.items() for n, r in found["by_k"].items()]
    n = next(iter(results.values()))["prompts"]
    return ("## Best of K by the model's own reading (validation draw, "
            f"{n} prompts, the checker's pass rate over all categories)\n\n" + table(header, rows))


def main() -> None:
    p = measuring_parser(__doc__, "an untrained micro model, 1 prompt a category, K = 2")
    p.add_argument("--k", type=int, default=K, help="samples a prompt")
    p.add_argument("--prompts", type=int, default=PROMPTS, help="validation prompts a category")
    args = p.parse_args()
    if args.k < 1 or args.prompts < 1:
        p.error(f"--k {args.k} and --prompts {args.prompts}: each needs at least 1")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    results = {}
    with cli.user_errors(args.debug):  # a missing or corrupt checkpoint: one line, exit 2
        # two- and three-object byte captions fit the micro model's text block
        for name, micro, _, session, tok in measured_models(p, args, text_len=64):
            k = 2 if micro else args.k
            results[name] = measure(session, tok, 1 if micro else args.prompts, k)
            print(f"{name}: {results[name]['by_k'][k]}", flush=True)
    write_measured(Path(args.docs), "reread", markdown(results), results)


if __name__ == "__main__":
    main()
