"""Configuration: one dataclass per concern, presets, and the command-line mapping.

Every field name is unique across the dataclasses, so each one maps onto exactly one flag
(`d_model` -> `--d-model`). A preset is a plain dict of overrides on top of the defaults
(which are the `tiny` preset). The resolved `Config` is printed at start and stored in every
checkpoint as a plain dict (`asdict`).
"""
from __future__ import annotations

import argparse
import inspect
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace


@dataclass
class DataConfig:
    data: str = "builtin"  # builtin, folder:PATH, wds:PATTERN (tar shards) or codes:DIR
    domains: str = "shapes:2,glyphs,patterns"  # built-in domains to mix; NAME:W: W turns a round
    image_size: int = 32  # images are square, this many pixels a side
    text_len: int = 24  # token slots for the text block of a sequence (specials included)
    text_vocab: int = 512  # text ids: 256 bytes, and above 256 BPE merges of the training texts
    workers: int = 0  # data loading processes beside training (0: load in the training process)


@dataclass
class VQConfig:
    vq_downsample: int = 4  # image pixels per code along a side (a power of two)
    vq_codes: int = 1024  # codebook size
    vq_colours: int = 32  # >0: a code is a form (vq_codes / this many) x one of this many colours
    vq_dim: int = 32  # code vector size
    vq_channels: int = 96  # conv width at the code grid (halved per doubling of resolution)
    vq_encoder: str = "patch"  # patch (a code sees its own patch only) | conv (its neighbourhood)
    vq_domains: str = "shapes:6,glyphs,patterns"  # built-in mix stage 1 trains on; "": --domains
    vq_steps: int = 1800  # training steps of stage 1 (0: reuse a cached tokenizer or fail)
    vq_batch: int = 32  # images per VQ step
    vq_lr: float = 3e-3  # AdamW learning rate of the encoder/decoder
    vq_beta: float = 0.25  # commitment loss weight
    vq_edge_weight: float = 1.0  # weight of the image-gradient (edge) term of the recon loss
    vq_decay: float = 0.95  # EMA decay of the codebook statistics
    vq_dead_after: int = 50  # a code unused for this many steps is restarted from an encoder output
    vq_autocast: str = "off"  # bf16 autocast of stage 1's nets: off | bf16 (codes stay float32)


@dataclass
class ModelConfig:
    d_model: int = 128  # residual stream width
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # attention heads (d_model must divide by it)
    d_ffn: int = 512  # hidden neurons of the dense FFN
    rope_base: float = 10000.0  # rotary embedding base
    dropout: float = 0.0  # residual dropout (0 for the small presets: they underfit)
    code_init: str = "random"  # code embeddings start as: random | codebook (projected VQ codes)
    image_pos: str = "rotary2d+conv"  # a code's grid slot: rotary2d+conv (2-D rotary and a grid
    # convolution in every block) | rotary2d (row, column) | none (1-D) | learned (a vector per
    # slot) | rotary2d+learned
    code_features: str = "factors"  # none | pixels | factors: rows shared by codes that look alike


@dataclass
class MoEConfig:
    # What becomes a MoE and how (docs/design.md, section 8; formulas in moe.py and routing.py).
    moe: str = "none"  # how FFNs become experts: none | scratch | naive | drop | random | taylor
    num_experts: int = 8  # routed experts per MoE layer (random, taylor: 6)
    top_k: int = 2  # experts per token: GShard top-2, 1 gives Switch (random, taylor: 3)
    num_shared: int = 0  # always-on shared experts; not for naive or drop (random, taylor: 2)
    text_experts: int = 4  # taylor's text experts; also the text group's size (random, taylor: 3)
    router_groups: str = "none"  # none | modality: a token routes only among its modality's experts
    drop_ratio: float = 0.5  # drop: share of each expert's neurons re-initialised (Drop-Upcycling)
    untie_attention: str = "none"  # none | modality: text and image copies of attention and norms
    moe_layers: str = "all"  # which blocks become MoE: all | every_other | last:N
    expert_scale: float = 0.0  # multiplier of the routed output; 0: per method (see convert.py)
    naive_noise: float = 0.01  # naive: noise std relative to the dense weights' std
    taylor_batches: int = 8  # taylor: calibration batches for the importance scores
    taylor_per_token: bool = False  # taylor: sum |a*g| per token instead of |sum a*g|
    taylor_router_init: bool = True  # taylor: router starts as a text/image probe (convert.py)
    # Router (routing.py has every schedule; each is a pure function of the MoE step).
    router_bias: bool = True  # learnable bias b in logits = W x + b
    router_temp_start: float = 2.0  # softmax temperature tau at the first MoE step ...
    router_temp_end: float = 1.0  # ... annealed to this (and kept for inference)
    balance_start: float = 0.01  # balance-loss coefficient alpha at the first MoE step ...
    balance_end: float = 0.0  # ... decayed to this
    balance_scope: str = "global"  # global | modality (balance text and image tokens separately)
    z_loss_weight: float = 0.001  # router z-loss weight
    anneal_steps: int = 0  # steps over which tau, alpha and the prior anneal (0: all MoE steps)
    anneal_shape: str = "cosine"  # linear | exponential | cosine
    router_prior: str = "none"  # none | modality | domain: annealed learnable bias b_i(t)
    prior_strength: float = 2.0  # initial logit bonus of the favoured experts
    aux_free_rate: float = 0.0  # >0: DeepSeek-V3 selection-bias balancing at this rate per step
    capacity_factor: float = 0.0  # expert capacity as a multiple of the even share (0: dropless)
    random_routing: bool = False  # top-2: keep the second expert with probability min(1, 2 g2)
    router_sample: bool = False  # training picks experts by sampling softmax(logits / tau)
    moe_backend: str = "auto"  # torch (moe.py) | ext (the C++/CUDA ops) | auto (ext if built)


@dataclass
class TrainConfig:
    seed: int = 0  # seeds the model init, the data stream and every per-step random draw
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dense_steps: int = 3500  # optimizer steps of stage 2 (dense model)
    moe_steps: int = 600  # optimizer steps of stage 3 (the MoE; unused with --moe none)
    moe_lr: float = 1e-3  # peak learning rate of stage 3 (warmup, then cosine as in stage 2)
    batch_t2i: int = 16  # text-to-image rows per step
    batch_mmu: int = 12  # image-understanding rows per step
    batch_lm: int = 4  # texts per step (packed into as few text-only rows as they fit)
    grad_accum: int = 1  # micro-batches (of the sizes above) per optimizer step
    lr: float = 4e-3  # peak learning rate of both optimizers (validation-tuned, 2e-3 to 8e-3)
    optimizer: str = "muon"  # muon (the blocks' matrices; AdamW for the rest) | adamw (all)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup: int = 60  # linear warmup steps
    weight_decay: float = 0.05  # decoupled weight decay (matrices and embeddings only)
    grad_clip: float = 1.0  # clip the global gradient norm to this
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop | skip (drop that update)
    max_skips: int = 10  # with --on-nonfinite skip: stop once more steps than this were skipped
    w_t2i: float = 1.0  # loss weight of masked-token prediction on images
    w_mmu: float = 1.0  # loss weight of answer prediction
    w_lm: float = 0.1  # loss weight of text next-token prediction
    t2i_focal: float = 0.0  # focal T2I loss: a code predicted at probability p weighs (1-p)**this
    t2i_smoothing: float = 0.0  # T2I label smoothing, spread over the codes only (MaskGIT: 0.1)
    mask_power: float = 1.0  # T2I masks a cos(pi t / 2) ** mask_power share (< 1: more masked)
    caption_dropout: float = 0.1  # probability of the empty caption (for classifier-free guidance)
    caption_share: float = 0.5  # share of MMU rows that caption their image (the empty question)
    caption_questions: bool = False  # a captioning row then asks what fits (--mmu-turns)
    mmu_turns: int = 3  # questions a MMU row may carry about its image (no turn sees another)
    question_mix: str = "uniform"  # uniform | balanced: rare answer types (position) asked more
    log_every: int = 10  # steps between log lines
    ckpt_every: int = 200  # steps between checkpoints
    sample_every: int = 400  # steps between PNG sample grids (0: never)
    heldout_every: int = 100  # steps between held-out loss checks in the log (0: never)
    tensorboard: bool = False  # also write the log as TensorBoard events (pip extra: tensorboard)
    sample_steps: int = 16  # MaskGIT steps of sampling (grids, checks, sample.py, eval.py)
    guidance: float = 2.0  # classifier-free guidance scale at the first step (validation-tuned) ...
    guidance_schedule: str = "falling"  # ... then x the share still masked | constant | rising
    choice_temperature: float = 4.5  # MaskGIT confidence noise at the first step, annealed to 0
    code_temperature: float = 1.0  # softmax temperature of the codes drawn (0: the likeliest)
    activation_checkpointing: bool = False  # recompute each block in backward: less memory
    autocast: str = "auto"  # bf16 training steps: auto (CUDA and CPU) | bf16 | off
    compile: str = "auto"  # torch.compile training: auto (a long enough CPU stage) | true | false
    fsdp: bool = False  # under torchrun: shard weights, gradients and AdamW state (FSDP2)


@dataclass
class Config:
    preset: str = "tiny"
    data: DataConfig = field(default_factory=DataConfig)
    vq: VQConfig = field(default_factory=VQConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def image_tokens(self) -> int:
        return (self.data.image_size // self.vq.vq_downsample) ** 2

    @property
    def domain_names(self) -> list[str]:
        """Named data domains; rows of any other (folder) domain share one index after them."""
        return [d.partition(":")[0] for d in self.data.domains.split(",")]

    @property
    def seq_len(self) -> int:
        # text block + [soi] + image codes + [eoi]; every task's rows share this length
        return self.data.text_len + self.image_tokens + 2


SECTIONS = ("data", "vq", "model", "moe", "train")
# A saved config without these fields was made with one codebook, no shared code rows, a
# tokenizer trained on the model's own mix, constant guidance, codes drawn at temperature 1 and
# AdamW throughout.
ABSENT = {"vq_colours": 0, "code_features": "none", "vq_domains": "",
          "guidance_schedule": "constant", "code_temperature": 1.0, "optimizer": "adamw"}
# Fields outside "train" that a resumed run may still change: they set how the data is loaded,
# never which data or what is computed from it.
FREE_ON_RESUME = ("workers",)
# Fields inside "train" that a resumed run may not change: the saved optimizer state is one
# optimizer's.
FIXED_ON_RESUME = ("optimizer",)

# Presets override the defaults (which are `tiny`: 2 CPU cores, minutes).
PRESETS: dict[str, dict] = {
    "tiny": {},
    # One GPU, about an hour: 64x64 images, 256 image tokens.
    "small": dict(
        image_size=64, text_len=96, text_vocab=256, vq_codes=1024, vq_dim=64, vq_channels=128,
        vq_steps=5000, vq_batch=128, d_model=512, n_layers=8, n_heads=8, d_ffn=2048,
        dense_steps=20000, batch_t2i=48, batch_mmu=32, batch_lm=16, lr=6e-4, warmup=500,
        ckpt_every=1000, sample_every=2000, heldout_every=1000, log_every=50, sample_steps=16,
        moe_steps=5000, moe_lr=3e-4,
        workers=4,  # decoding real images keeps a GPU waiting; 4 is a guess until measured
    ),
    # Show-o scale: 24 layers, d_model 2048, 16x16 = 256 tokens from an 8192-code tokenizer.
    "full": dict(
        image_size=256, text_len=128, text_vocab=256, vq_downsample=16, vq_codes=8192,
        vq_dim=64, vq_channels=512, vq_steps=50000, vq_batch=64, d_model=2048, n_layers=24,
        n_heads=32, d_ffn=8192, dense_steps=200000, batch_t2i=64, batch_mmu=32, batch_lm=16,
        lr=2e-4, warmup=2000, ckpt_every=2000, sample_every=5000, heldout_every=5000,
        log_every=100, sample_steps=18, moe_steps=50000, moe_lr=1e-4, fsdp=True,
        activation_checkpointing=True, optimizer="adamw",  # FSDP shards Muon's matrices
        workers=4,  # as small: a guess until bench/data_loading.py is measured
        # a photograph's 16x16 patch is not one ink on one ground: one codebook
        vq_colours=0, code_features="none",
    ),
}

# The expert layout of the methods that split the dense FFN's neurons: of the 8 slices, 2 stay
# always on as shared experts, so the neurons every token needs survive the conversion, and a
# token takes 3 of the other 6, so it reaches 5 of the 8 (docs/EXPERIMENTS.md, "Shared experts
# by default"). It applies as a whole, over the preset, unless a flag sets any of its four
# fields; then all four start from the preset's.
SPLIT_LAYOUT = dict(num_experts=6, num_shared=2, text_experts=3, top_k=3)
SPLIT_METHODS = ("random", "taylor")

MOE_METHODS = ("none", "scratch", "naive", "drop", "random", "taylor")
GUIDANCE_SCHEDULES = ("constant", "falling", "rising")  # sampler.guidance_at
UPCYCLED = ("scratch", "naive", "drop")  # experts as wide as the dense FFN; the others split it
# Flags whose value is one of a fixed set (argparse lists them in --help and refuses others).
CHOICES = {"moe": MOE_METHODS, "balance_scope": ("global", "modality"),
           "anneal_shape": ("linear", "exponential", "cosine"),
           "router_prior": ("none", "modality", "domain"), "router_groups": ("none", "modality"),
           "untie_attention": ("none", "modality"),
           "moe_backend": ("torch", "ext", "auto"), "on_nonfinite": ("stop", "skip"),
           "autocast": ("auto", "bf16", "off"), "vq_autocast": ("off", "bf16"),
           "compile": ("auto", "true", "false"),
           "optimizer": ("adamw", "muon"),
           "question_mix": ("uniform", "balanced"),
           "image_pos": ("none", "learned", "rotary2d", "rotary2d+learned", "rotary2d+conv"),
           "guidance_schedule": GUIDANCE_SCHEDULES,
           "vq_encoder": ("conv", "patch"), "code_init": ("random", "codebook"),
           "code_features": ("none", "pixels", "factors")}


def moe_layer_ids(spec: str, n_layers: int) -> list[int]:
    """Blocks that become MoE layers: all, every_other (1, 3, 5, ... as in GShard) or last:N."""
    if spec == "all":
        return list(range(n_layers))
    if spec == "every_other":
        return list(range(1, n_layers, 2))
    if spec.startswith("last:") and spec[5:].isdigit() and 1 <= int(spec[5:]) <= n_layers:
        return list(range(n_layers - int(spec[5:]), n_layers))
    raise ValueError(f"--moe-layers {spec!r}: use all, every_other or last:N with "
                     f"1 <= N <= {n_layers}")


def expert_hidden(cfg: "Config") -> int:
    """Hidden neurons of one expert: the dense width when upcycling, a share of it when the
    dense neurons are split among routed and shared experts."""
    m = cfg.moe
    if m.moe in UPCYCLED:
        return cfg.model.d_ffn
    return cfg.model.d_ffn // (m.num_experts + m.num_shared)


def _field_owner() -> dict[str, str]:
    """Field name -> section name, for every overridable field."""
    owner = {}
    for section in SECTIONS:
        cls = type(getattr(Config(), section))
        for f in fields(cls):
            assert f.name not in owner, f"config field {f.name} is defined twice"
            owner[f.name] = section
    return owner


def make_config(preset: str = "tiny", **overrides) -> Config:
    """The preset with `overrides` applied (flat field names). Raises ValueError on unknowns."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = Config(preset=preset)
    owner = _field_owner()
    method = overrides.get("moe", PRESETS[preset].get("moe", cfg.moe.moe))
    layout = SPLIT_LAYOUT if method in SPLIT_METHODS and not SPLIT_LAYOUT.keys() & overrides \
        else {}
    for name, value in {**PRESETS[preset], **layout, **overrides}.items():
        if name not in owner:
            raise ValueError(f"unknown config field {name!r}; the fields are the flags of "
                             f"python train.py --help")
        setattr(getattr(cfg, owner[name]), name, value)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Raise ValueError naming the first inconsistent value."""
    d, v, m = cfg.data, cfg.vq, cfg.model
    for name, allowed in CHOICES.items():
        value = flat(cfg)[name]
        if value not in allowed:
            raise ValueError(f"--{name.replace('_', '-')} {value!r}: use one of "
                             f"{', '.join(allowed)}")
    if v.vq_downsample & (v.vq_downsample - 1) or d.image_size % v.vq_downsample:
        raise ValueError(f"--vq-downsample {v.vq_downsample} must be a power of two dividing "
                         f"--image-size {d.image_size}")
    if v.vq_colours < 0 or (v.vq_colours and (v.vq_codes % v.vq_colours
                                              or v.vq_codes // v.vq_colours < 2)):
        raise ValueError(f"--vq-colours {v.vq_colours} must be 0 or divide --vq-codes "
                         f"{v.vq_codes} into at least 2 forms")
    if m.code_features == "factors" and not v.vq_colours:
        raise ValueError("--code-features factors needs a tokenizer of forms and colours: "
                         "set --vq-colours")
    if m.d_model % m.n_heads or (m.d_model // m.n_heads) % 2:
        raise ValueError(f"--d-model {m.d_model} must split into --n-heads {m.n_heads} heads "
                         f"of even size (rotary embeddings rotate pairs)")
    if cfg.train.optimizer == "muon" and cfg.train.fsdp:
        raise ValueError("--optimizer muon orthogonalises whole matrices, which --fsdp shards "
                         "over ranks: use --optimizer adamw with --fsdp")
    if d.text_len < 8:
        raise ValueError(f"--text-len {d.text_len} is too short; use at least 8")
    if d.text_vocab < 256:
        raise ValueError(f"--text-vocab {d.text_vocab}: text needs at least the 256 byte ids")
    if not (d.data == "builtin" or d.data.startswith(("folder:", "codes:", "wds:"))):
        raise ValueError(f"--data {d.data!r}: use 'builtin' or 'folder:PATH' (or 'wds:PATTERN' "
                         f"for tar shards, 'codes:DIR' for pre-tokenised codes)")
    counts = dict(vq_steps=v.vq_steps, dense_steps=cfg.train.dense_steps,
                  moe_steps=cfg.train.moe_steps, batch_t2i=cfg.train.batch_t2i,
                  batch_mmu=cfg.train.batch_mmu, batch_lm=cfg.train.batch_lm,
                  capacity_factor=cfg.moe.capacity_factor, aux_free_rate=cfg.moe.aux_free_rate,
                  anneal_steps=cfg.moe.anneal_steps, naive_noise=cfg.moe.naive_noise,
                  max_skips=cfg.train.max_skips, choice_temperature=cfg.train.choice_temperature,
                  code_temperature=cfg.train.code_temperature,
                  vq_edge_weight=v.vq_edge_weight, t2i_focal=cfg.train.t2i_focal,
                  sample_every=cfg.train.sample_every,
                  heldout_every=cfg.train.heldout_every, workers=d.workers)
    for name, value in counts.items():
        if not value >= 0:  # also refuses NaN
            raise ValueError(f"--{name.replace('_', '-')} {value} must be >= 0")
    for name, value in dict(guidance=cfg.train.guidance, t2i_focal=cfg.train.t2i_focal,
                            choice_temperature=cfg.train.choice_temperature,
                            code_temperature=cfg.train.code_temperature).items():
        if not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')} {value} is not a finite number")
    if not 0 <= cfg.train.t2i_smoothing < 1:  # also refuses NaN
        raise ValueError(f"--t2i-smoothing {cfg.train.t2i_smoothing} must be in [0, 1)")
    if not 0 < cfg.train.mask_power < math.inf:  # also refuses NaN
        raise ValueError(f"--mask-power {cfg.train.mask_power} must be a positive number (1: "
                         f"the cosine schedule; below 1 masks more of each image)")
    for name, value in dict(caption_dropout=cfg.train.caption_dropout,
                            caption_share=cfg.train.caption_share).items():
        if not 0 <= value <= 1:  # also refuses NaN
            raise ValueError(f"--{name.replace('_', '-')} {value}: use a probability in [0, 1]")
    for name, value in dict(grad_accum=cfg.train.grad_accum,
                            sample_steps=cfg.train.sample_steps,
                            mmu_turns=cfg.train.mmu_turns).items():
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} {value} must be >= 1")
    validate_moe(cfg)


def validate_moe(cfg: Config) -> None:
    m, d_ffn = cfg.moe, cfg.model.d_ffn
    if m.moe == "none":
        for name in ("router_groups", "untie_attention"):
            if getattr(m, name) != "none":
                raise ValueError(f"--{name.replace('_', '-')} {getattr(m, name)} changes the MoE "
                                 f"stage; pick a --moe method")
        return
    moe_layer_ids(m.moe_layers, cfg.model.n_layers)
    if m.num_experts < 1 or not 1 <= m.top_k <= m.num_experts:
        raise ValueError(f"--top-k {m.top_k} must be between 1 and --num-experts {m.num_experts}")
    if m.num_shared < 0:
        raise ValueError(f"--num-shared {m.num_shared} must be >= 0")
    if m.moe in ("naive", "drop") and m.num_shared:
        raise ValueError(f"--moe {m.moe} copies the dense FFN into routed experts only; "
                         f"use --num-shared 0")
    if not 0 <= m.drop_ratio <= 1:
        raise ValueError(f"--drop-ratio {m.drop_ratio} must be between 0 and 1")
    if m.moe not in UPCYCLED and d_ffn % (m.num_experts + m.num_shared):
        raise ValueError(f"--d-ffn {d_ffn} does not split into --num-experts {m.num_experts} + "
                         f"--num-shared {m.num_shared} equal experts; pick counts that divide it")
    grouped = m.router_groups == "modality"
    if (m.moe == "taylor" or grouped) and not 1 <= m.text_experts < m.num_experts:
        raise ValueError(f"--text-experts {m.text_experts} must leave at least one text and one "
                         f"image expert among --num-experts {m.num_experts}")
    if grouped and min(m.text_experts, m.num_experts - m.text_experts) < m.top_k:
        raise ValueError(f"--router-groups modality: the text group has {m.text_experts} and the "
                         f"image group {m.num_experts - m.text_experts} experts, but each token "
                         f"takes --top-k {m.top_k} of its own group's; lower --top-k or change "
                         f"--text-experts")
    if m.random_routing and m.top_k != 2:
        raise ValueError("--random-routing True needs --top-k 2 (it drops the second expert)")
    if m.router_temp_start <= 0 or m.router_temp_end <= 0:
        raise ValueError("router temperatures must be > 0")
    if min(m.balance_start, m.balance_end) < 0:
        raise ValueError("--balance-start and --balance-end must be >= 0")
    ends = {"router temperature": (m.router_temp_start, m.router_temp_end),
            "balance coefficient": (m.balance_start, m.balance_end)}
    for name, (start, end) in ends.items():
        if m.anneal_shape == "exponential" and min(start, end) <= 0:
            raise ValueError(f"--anneal-shape exponential needs positive end points, but the "
                             f"{name} goes {start} -> {end}; use linear or cosine")


def dense_version(cfg: Config) -> Config:
    """The same config with --moe none: the architecture of a MoE run's dense stage."""
    return replace(cfg, moe=replace(cfg.moe, moe="none"))


def parse_bool(text: str) -> bool:
    """argparse type for boolean flags: --random-routing true / false (also 1/0, yes/no)."""
    words = {"true": True, "1": True, "yes": True, "on": True,
             "false": False, "0": False, "no": False, "off": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; use true or false")
    return words[text.lower()]


def field_comments(cls) -> dict[str, str]:
    """The comment after each field of a config dataclass: the field's documentation, reused
    as the flag's --help so that the two never drift apart."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"\s+(\w+): [^=]+=.*?  # (.*)$", line)
        if match:
            comments[match.group(1)] = match.group(2)
    return comments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, defaulting to None (= keep the preset's value)."""
    parser.add_argument("--preset", default=None, choices=list(PRESETS),
                        help="size preset: tiny (CPU, minutes), small (1 GPU), full (Show-o scale)")
    for section in SECTIONS:
        group = parser.add_argument_group(f"{section} config")
        cls = type(getattr(Config(), section))
        comments = field_comments(cls)
        for f in fields(cls):
            kind = parse_bool if isinstance(f.default, bool) else type(f.default)
            group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind,
                               default=None, choices=CHOICES.get(f.name),
                               help=f"{comments.get(f.name, '')} (tiny preset: {f.default})")


def explicit_overrides(args: argparse.Namespace) -> dict:
    """The config fields the user set on the command line (flat names)."""
    return {name: getattr(args, name) for name in _field_owner()
            if getattr(args, name, None) is not None}


def from_args(args: argparse.Namespace) -> Config:
    return make_config(args.preset or "tiny", **explicit_overrides(args))


def section_of(name: str) -> str:
    return _field_owner()[name]


def flat(cfg: Config) -> dict:
    """Every overridable field of `cfg` by its flat name."""
    return {name: getattr(getattr(cfg, sec), name) for name, sec in _field_owner().items()}


def to_dict(cfg: Config) -> dict:
    return asdict(cfg)


def from_dict(d: dict) -> Config:
    """Inverse of `to_dict` (for checkpoints). Unknown keys are ignored; missing ones take
    their ABSENT value if they have one (what a config without the field meant), else the
    default."""
    cfg = Config(preset=d.get("preset", "tiny"))
    for section in SECTIONS:
        sub = getattr(cfg, section)
        for f in fields(sub):
            if f.name in d.get(section, {}):
                value = d[section][f.name]
                if isinstance(value, bool) and isinstance(f.default, str):
                    value = str(value).lower()  # a switch saved as a boolean: true | false
                setattr(sub, f.name, value)
            elif f.name in ABSENT:
                setattr(sub, f.name, ABSENT[f.name])
    return cfg


def describe(cfg: Config) -> str:
    """The resolved config as aligned `name = value` lines, grouped by section."""
    lines = [f"preset = {cfg.preset}"]
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for k, v in asdict(getattr(cfg, section)).items():
            lines.append(f"  {k:<16} = {v}")
    lines.append(f"  (derived) image_tokens = {cfg.image_tokens}, seq_len = {cfg.seq_len}")
    return "\n".join(lines)


__all__ = ["Config", "DataConfig", "VQConfig", "ModelConfig", "MoEConfig", "TrainConfig",
           "PRESETS", "make_config", "validate", "add_arguments", "from_args", "to_dict",
           "explicit_overrides", "section_of", "flat",
           "from_dict", "describe", "MOE_METHODS", "UPCYCLED", "moe_layer_ids", "expert_hidden",
           "parse_bool", "dense_version"]
