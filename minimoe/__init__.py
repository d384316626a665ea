"""minimoe: a readable Show-o-style unified multimodal transformer with Mixture-of-Experts.

Modules, in data-flow order: config, data, vq, tokenizers, sequences, model, sampler,
inference, trainer, checkpoint, metrics, plots, pipeline.
"""
__version__ = "0.1.0"
