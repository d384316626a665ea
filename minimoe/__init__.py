"""minimoe: a readable Show-o-style unified multimodal transformer with Mixture-of-Experts.

Modules, each importing only modules listed before it:

    leaves      config, cli, atomic, faults, schedules, sampler, moe (the MoE layer)
    data        data/ (base, shapes, builtin, folder, codes, shards, pack: the built-in
                domains, a folder source, pre-tokenised codes, tar shards and their packer),
                loading (a step's samples read ahead in DataLoader workers)
    pieces      ops (the C++/CUDA extension), codebook, vq, tokenizers, sequences, checkpoint,
                geneval, metrics, plots, fid
    model       model (the transformer), build (a Config -> the model), losses, batches
    training    routing (router schedules and losses), convert (dense -> MoE), dist
                (parallelism), trainer (the loop)
    using it    inference (checkpoints -> images and answers), evaluation
    the run     run (the run folder and stages 1-3 that train.py strings together),
                pretokenize (a dataset encoded once into codes, for --data codes:DIR)

Importing the package loads the extension, so `torch.ops.minimoe.*` resolve once `minimoe` is
imported (where the extension is not built, the PyTorch backend is used and a notice says so).
"""
from . import ops  # noqa: F401  (registers torch.ops.minimoe.*)

__version__ = "0.1.0"
