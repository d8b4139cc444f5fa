"""Presets and defaults: the one place they are written.

`MARConfig` mirrors the constructor arguments of the official `MAR` class with
the official defaults; `PRESETS` names the official sizes plus the small
configurations this project uses (digits demo, tests).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from . import limits
from .checks import Rules, check_bool, check_choice, check_fields, check_float, check_int
from .schedules import space_timesteps

# Diffusion Loss (paper section 3 / official DiffLoss): fixed constants of the process.
TRAIN_DIFFUSION_STEPS = 1000
LAYERNORM_EPS = 1e-6
VAE_LATENT_SCALE = 0.2325  # KL-16 latents are multiplied by this before MAR sees them


def checked_fields(cls: type, d: dict[str, Any], what: str) -> dict[str, Any]:
    """A copy of `d`, after checking that every key is a field of the dataclass `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; valid keys are {sorted(names)}")
    return dict(d)


_FRACTION = (check_float, {"lo": 0.0, "hi": 1.0})
_DROPOUT = (check_float, {"lo": 0.0, "hi": 1.0, "hi_open": True})


def _capped(cap: int, what: str) -> tuple[Any, dict[str, Any]]:
    """A positive integer at most `cap` (marengine.limits): a size a file may not inflate."""
    return check_int, {"lo": 1, "hi": cap, "hint": f"the {what} cap of marengine.limits"}


# the sizes every member of the family shares
SIZE_RULES: Rules = {
    "img_size": _capped(limits.MAX_IMAGE_SIZE, "image size"),
    "vae_stride": _capped(limits.MAX_STRIDE, "stride"),
    "patch_size": _capped(limits.MAX_STRIDE, "patch size"),
    "vae_embed_dim": _capped(limits.MAX_CHANNELS, "channel"),
    "class_num": _capped(limits.MAX_CLASSES, "class count"),
    "diffloss_d": _capped(limits.MAX_DEPTH, "depth"),
    "diffloss_w": _capped(limits.MAX_WIDTH, "width"),
    "diffusion_batch_mul": _capped(limits.MAX_BATCH_MUL, "diffusion_batch_mul"),
    "mlp_ratio": (check_float, {"lo": 0.0, "lo_open": True, "hi": limits.MAX_MLP_RATIO}),
    "label_drop_prob": _FRACTION,
    "attn_dropout": _DROPOUT,
    "proj_dropout": _DROPOUT,
    "grad_checkpointing": (check_bool, {}),
}
MAR_CONFIG_RULES: Rules = {
    **SIZE_RULES,
    **{k: _capped(limits.MAX_WIDTH, "width") for k in ("encoder_embed_dim", "decoder_embed_dim")},
    **{k: _capped(limits.MAX_DEPTH, "depth") for k in ("encoder_depth", "decoder_depth")},
    **{k: _capped(limits.MAX_HEADS, "heads") for k in ("encoder_num_heads", "decoder_num_heads")},
    "buffer_size": (check_int, {"lo": 0, "hi": limits.MAX_BUFFER}),
    "mask_ratio_min": _FRACTION,
}


def check_seq_len(what: str, img_size: int, vae_stride: int, patch_size: int) -> int:
    """Tokens of one image, at most limits.MAX_SEQ_LEN; the image must split into tokens."""
    if img_size % (vae_stride * patch_size):
        raise ValueError(
            f"{what} img_size {img_size} is not divisible by vae_stride*patch_size = "
            f"{vae_stride * patch_size}: the image does not split into tokens"
        )
    seq_len = (img_size // (vae_stride * patch_size)) ** 2
    if seq_len > limits.MAX_SEQ_LEN:
        raise ValueError(f"{what}: {seq_len} tokens per image, more than the cap {limits.MAX_SEQ_LEN} of limits")
    return seq_len


@dataclass
class FamilyConfig:
    """The fields every member of the family shares (the token grid, the class conditioning,
    dropout and the Diffusion-Loss head), their checks and their JSON form; a member's
    dataclass adds its backbone's fields, its `RULES` and its `WHAT` (the name in messages)."""

    WHAT: ClassVar[str] = "model config"
    RULES: ClassVar[Rules] = {}
    img_size: int = 256
    vae_stride: int = 16
    patch_size: int = 1
    mlp_ratio: float = 4.0
    vae_embed_dim: int = 16
    label_drop_prob: float = 0.1
    class_num: int = 1000
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    diffloss_d: int = 3
    diffloss_w: int = 1024
    num_sampling_steps: str = "100"
    diffusion_batch_mul: int = 4
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        check_fields(self, self.RULES, self.WHAT)
        self.check_member()
        check_seq_len(self.WHAT, self.img_size, self.vae_stride, self.patch_size)
        self.num_sampling_steps = str(self.num_sampling_steps)
        space_timesteps(TRAIN_DIFFUSION_STEPS, self.num_sampling_steps)  # a clear error for a bad spacing

    def check_member(self) -> None:
        """The member's own checks, after its fields' (none here)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        d = checked_fields(cls, d, f"{cls.WHAT} keys")
        if "num_sampling_steps" in d:
            d["num_sampling_steps"] = str(d["num_sampling_steps"])
        return cls(**d)


@dataclass
class MARConfig(FamilyConfig):
    """Constructor arguments of `MAR`, with the official defaults."""

    WHAT: ClassVar[str] = "MAR config"
    RULES: ClassVar[Rules] = MAR_CONFIG_RULES
    loss: ClassVar[str] = "diffusion"  # the head (the family contract's loss kind; not a field)
    encoder_embed_dim: int = 1024
    encoder_depth: int = 16
    encoder_num_heads: int = 16
    decoder_embed_dim: int = 1024
    decoder_depth: int = 16
    decoder_num_heads: int = 16
    mask_ratio_min: float = 0.7
    buffer_size: int = 64

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> MARConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **checked_fields(cls, overrides, "MAR config keys"))


def _sized(dim: int, depth: int, heads: int, **kw: Any) -> MARConfig:
    return MARConfig(
        encoder_embed_dim=dim,
        encoder_depth=depth,
        encoder_num_heads=heads,
        decoder_embed_dim=dim,
        decoder_depth=depth,
        decoder_num_heads=heads,
        **kw,
    )


# every digits member of the family: 2x2 pixel patches of 4 channels, 10 classes, 50 head steps, no dropout
_DIGITS_GRID: dict[str, Any] = dict(
    vae_stride=2, vae_embed_dim=4, class_num=10, num_sampling_steps="50", attn_dropout=0.0, proj_dropout=0.0
)
_DIGITS = dict(patch_size=1, buffer_size=4, **_DIGITS_GRID)  # the MAR digits models

# every tiny member (tests): 4x4 tokens of a 64x64 image, 10 classes, a small head of 20 steps
_TINY_GRID: dict[str, Any] = dict(
    img_size=64, vae_stride=16, class_num=10, diffloss_d=2, diffloss_w=96, num_sampling_steps="20"
)

PRESETS: dict[str, MARConfig] = {
    # official sizes (the official training scripts pair them with these heads)
    "mar_base": _sized(768, 12, 12, diffloss_d=6, diffloss_w=1024),
    "mar_large": _sized(1024, 16, 16, diffloss_d=8, diffloss_w=1280),
    "mar_huge": _sized(1280, 20, 16, diffloss_d=12, diffloss_w=1536),
    # 8x8 digits with the pixel-patch tokenizer (2x2 pixels -> 16 tokens of 4 channels)
    "mar_digits": _sized(128, 3, 4, img_size=8, diffloss_d=3, diffloss_w=256, diffusion_batch_mul=2, **_DIGITS),
    # the digits upsampled to 16x16 (data "digits16"): 64 tokens of 2x2 pixels, so that the number of
    # iterations matters; small enough to train on a CPU in minutes (the speed/quality benchmark)
    "mar_digits16": _sized(96, 2, 4, img_size=16, diffloss_d=2, diffloss_w=128, diffusion_batch_mul=1, **_DIGITS),
    # tiny, for tests
    "mar_tiny": _sized(64, 2, 4, buffer_size=8, **_TINY_GRID),
}


@dataclass
class SampleDefaults:
    """Defaults of `MAR.sample_tokens` and the `sample` command (the official ones)."""

    num_iter: int = 64
    cfg: float = 1.0
    cfg_schedule: str = "linear"
    temperature: float = 1.0


SAMPLE_DEFAULTS = SampleDefaults()


@dataclass(frozen=True)
class ServeDefaults:
    """Defaults of the continuous-batching engine (pipeline/engine.py) and `marengine serve`."""

    host: str = "127.0.0.1"  # loopback only unless asked
    port: int = 8000
    max_batch_rows: int = 64  # backbone rows in one iteration (an image with CFG takes 2)
    max_queue: int = 256  # waiting requests; more answer 429
    max_n: int = 8  # images per request
    max_body_bytes: int = 4 << 20  # request bodies (base64 images of edits included)
    body_timeout: float = 10.0  # seconds to receive a request's body (slow clients get 408)
    request_timeout: float = 300.0  # seconds a request may wait and run (504 after)
    shutdown_grace: float = 30.0  # seconds in-flight requests get to finish on shutdown


SERVE_DEFAULTS = ServeDefaults()


@dataclass(frozen=True)
class EvalDefaults:
    """Defaults of `marengine evaluate` and the metrics (torch-fidelity's conventions)."""

    batch_size: int = 64  # images per Inception forward
    workers: int = 4  # DataLoader workers decoding image files (at most the CPU count)
    shard_size: int = 1024  # images per resumable shard (rounded up to whole sampling batches)
    isc_splits: int = 10  # Inception Score splits
    isc_seed: int = 2020  # the Inception Score's shuffle (numpy RandomState(2020).permutation)
    prc_k: int = 3  # precision/recall neighbourhood


EVAL_DEFAULTS = EvalDefaults()
# the head sampler's backends: native kernels where built, else torch ("auto"), or one forced
HEAD_BACKENDS = ("auto", "torch", "native")


GENERATION_ORDERS = ("random", "halton", "lattice")  # models/orders.py; random is the official order
# matmul precision of a generation (ops/precision.py): auto = bf16 where the device has bf16 units
SAMPLING_PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class SamplingPreset:
    """How the head and the backbone are run (not what is sampled: num_iter, cfg and the
    temperature stay the caller's). Strings are parsed where they are used:
    sampler by diffusion.samplers.HeadSampler.parse, steps by schedules.step_schedule,
    cache by models.backbone_cache.CachePolicy.parse."""

    sampler: str = "ddpm"  # ddpm | ddim[:eta] | dpm++2m
    steps: int | str | list[int] | None = None  # head diffusion steps per iteration; None: the model's own
    cache: str | None = None  # cross-iteration backbone reuse, e.g. "refresh=3,warmup=2"; None: off
    order: str = "random"  # the masked loop's generation order (GENERATION_ORDERS)
    precision: str = "fp32"  # matmul precision (SAMPLING_PRECISIONS): "auto" = bf16 where the device has bf16 units
    token_steps: str | None = None  # per-token head steps, e.g. "hf:boost=16,frac=0.25" (schedules.TokenSteps)
    note: str = ""


# Named sampling presets, the one place they are written (SampleSettings, MAR.sample_tokens
# through the pipeline, `marengine sample --preset`, the deploy sampler).
SAMPLING_PRESETS: dict[str, SamplingPreset] = {
    "official": SamplingPreset(note="the official sampler: DDPM with the model's steps at every iteration"),
    "fast": SamplingPreset(
        sampler="ddpm",
        steps="15-4",
        cache="refresh=5,warmup=2",
        precision="auto",
        note="no measurable quality loss: the official DDPM head annealed from 15 to 4 diffusion steps over the "
        "iterations (DiSA-style), the backbone reused between full passes every 5th iteration (LazyMAR-style), "
        "bf16 matmuls where the device has bf16 units",
    ),
    "turbo": SamplingPreset(
        sampler="ddpm",
        steps="10-3",
        cache="refresh=8,warmup=2",
        precision="auto",
        note="a stated quality loss (README): head steps annealed from 10 to 3, a full backbone pass every 8th "
        "iteration, bf16 matmuls where the device has bf16 units",
    ),
}


def resolve_preset(
    preset: str = "official",
    sampler: str | None = None,
    steps: int | str | list[int] | None = None,
    cache: str | None = None,
    order: str | None = None,
    precision: str | None = None,
    token_steps: str | None = None,
) -> SamplingPreset:
    """The named preset with the explicitly given fields replacing its own (None: keep)."""
    if preset not in SAMPLING_PRESETS:
        raise ValueError(f"unknown sampling preset {preset!r}; choose one of {', '.join(SAMPLING_PRESETS)}")
    base = SAMPLING_PRESETS[preset]
    fields = dict(sampler=sampler, steps=steps, cache=cache, order=order, precision=precision, token_steps=token_steps)
    given = {k: v for k, v in fields.items() if v is not None}
    for off in ("cache", "token_steps"):
        if given.get(off) in ("off", "none", ""):
            given[off] = None
    out = dataclasses.replace(base, **given)
    for name, value, choices in (
        ("generation order", out.order, GENERATION_ORDERS),
        ("precision", out.precision, SAMPLING_PRECISIONS),
    ):
        if value not in choices:
            raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return out


# ---------------------------------------------------------------- the generalized autoregressive family
# Table 1 of the paper: causal AR in raster order, causal AR in random order and MAR, each under
# Diffusion Loss (continuous tokens) or cross-entropy over a VQ tokenizer's codes.
LOSSES = ("diffusion", "ce")
AR_ORDERS = ("raster", "random")
AR_CONFIG_RULES: Rules = {
    **SIZE_RULES,
    "embed_dim": _capped(limits.MAX_WIDTH, "width"),
    "depth": _capped(limits.MAX_DEPTH, "depth"),
    "num_heads": _capped(limits.MAX_HEADS, "heads"),
    "codebook_size": _capped(limits.MAX_CODEBOOK, "codebook"),
}


@dataclass
class ARConfig(FamilyConfig):
    """Constructor arguments of the causal AR backbone (`marengine.models.ar.CausalAR`).

    A GPT-style transformer: a class token, then the tokens in `order` ("raster" or "random";
    random orders tell the model the position of the next token), causal attention, and a
    Diffusion-Loss head (loss="diffusion", tokens of `vae_embed_dim` channels) or a
    cross-entropy head over `codebook_size` codes of a VQ tokenizer (loss="ce").
    The defaults are the paper's AR-L (32 blocks of width 1024) on KL-16 latents."""

    WHAT: ClassVar[str] = "AR config"
    RULES: ClassVar[Rules] = AR_CONFIG_RULES
    embed_dim: int = 1024
    depth: int = 32
    num_heads: int = 16
    order: str = "raster"
    loss: str = "diffusion"
    codebook_size: int = 16384

    def check_member(self) -> None:
        check_choice("AR config order", self.order, AR_ORDERS)
        check_choice("AR config loss", self.loss, LOSSES)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"AR config embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.loss == "ce" and self.patch_size != 1:
            raise ValueError("AR config: cross-entropy models one code per position, so patch_size must be 1")


@dataclass
class MARCEConfig(MARConfig):
    """MAR's backbone with a cross-entropy head over `codebook_size` VQ codes (Table 1's MAR
    rows under cross-entropy). Each code is embedded as a learned `vae_embed_dim`-vector,
    the token MAR's backbone reads; patch_size must be 1 (one code per position)."""

    codebook_size: int = 16384
    loss: ClassVar[str] = "ce"

    def check_member(self) -> None:
        self.codebook_size = check_int(
            "MAR-CE config codebook_size", self.codebook_size, lo=1, hi=limits.MAX_CODEBOOK, hint="the cap of limits"
        )
        if self.patch_size != 1:
            raise ValueError("MAR-CE config: cross-entropy models one code per position, so patch_size must be 1")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MARCEConfig:
        return cls(**checked_fields(cls, d, "MAR-CE config keys"))


def _ar(dim: int, depth: int, heads: int, order: str, **kw: Any) -> ARConfig:
    return ARConfig(embed_dim=dim, depth=depth, num_heads=heads, order=order, **kw)


# the digits models of the family share mar_digits' token grid, width, head and recipe; the AR
# backbone has as many blocks as MAR's encoder and decoder together (the paper's comparison)
_AR_DIGITS: dict[str, Any] = dict(
    img_size=8, diffloss_d=3, diffloss_w=256, diffusion_batch_mul=2, codebook_size=128, **_DIGITS_GRID
)
_AR_TINY: dict[str, Any] = dict(codebook_size=32, **_TINY_GRID)
AR_PRESETS: dict[str, ARConfig] = {
    # the paper's AR-L (32 blocks, width 1024) in raster and in random order
    "ar_raster_large": _ar(1024, 32, 16, "raster"),
    "ar_random_large": _ar(1024, 32, 16, "random"),
    "ar_raster_digits": _ar(128, 6, 4, "raster", **_AR_DIGITS),
    "ar_random_digits": _ar(128, 6, 4, "random", **_AR_DIGITS),
    # tiny, for tests
    "ar_raster_tiny": _ar(64, 2, 4, "raster", **_AR_TINY),
    "ar_random_tiny": _ar(64, 2, 4, "random", **_AR_TINY),
}
# the code embedding of MAR with cross-entropy is as wide as its encoder unless overridden; the
# codebook of the digits VQ tokenizer (models.vq) has 128 codes
CE_CODEBOOK_SIZE = {"mar_digits": _AR_DIGITS["codebook_size"], "mar_tiny": _AR_TINY["codebook_size"]}
# architecture names (config.json's "architecture") of the family
ARCH_MAR, ARCH_MAR_CE, ARCH_AR = "mar", "mar_ce", "ar"
# architecture -> its configuration dataclass (torch-free readers such as export.runtime use it;
# models.family.register_member adds a new member's here)
MEMBER_CONFIGS: dict[str, type] = {ARCH_MAR: MARConfig, ARCH_MAR_CE: MARCEConfig, ARCH_AR: ARConfig}
FAMILY_PRESETS: tuple[str, ...] = (*PRESETS, *AR_PRESETS)


def family_config(preset: str, loss: str = "diffusion", **overrides: Any) -> tuple[str, Any]:
    """(architecture, configuration) of a family member: `preset` names the member and its size
    (a MAR preset or an AR preset), `loss` is "diffusion" or "ce"; overrides replace fields."""
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r} for model {preset!r}: choose one of {', '.join(LOSSES)}")
    if preset in AR_PRESETS:
        cfg = dataclasses.replace(AR_PRESETS[preset], loss=loss)
        return ARCH_AR, dataclasses.replace(cfg, **checked_fields(ARConfig, overrides, "AR config keys"))
    if preset not in PRESETS:
        raise ValueError(
            f"unknown model {preset!r} (with loss {loss!r}): the family has no such member; "
            f"choose one of {', '.join(FAMILY_PRESETS)}"
        )
    if loss == "diffusion":
        return ARCH_MAR, MARConfig.from_name(preset, **overrides)
    base = PRESETS[preset].to_dict()
    base.update(vae_embed_dim=base["encoder_embed_dim"], codebook_size=CE_CODEBOOK_SIZE.get(preset, 16384))
    base.update(checked_fields(MARCEConfig, overrides, "MAR-CE config keys"))
    return ARCH_MAR_CE, MARCEConfig.from_dict(base)


@dataclass
class VQConfig:
    """The small VQ tokenizer of the digits (`marengine.models.vq.DigitsVQ`): `stride` x `stride`
    pixel patches of a `channels`-channel image -> one of `codebook_size` codes, each an
    `embed_dim`-vector; convolutions of `hidden` channels around the quantizer."""

    img_size: int = 8
    channels: int = 1
    stride: int = 2
    embed_dim: int = 8
    codebook_size: int = 128
    hidden: int = 64

    def __post_init__(self) -> None:
        caps = {
            "img_size": limits.MAX_IMAGE_SIZE,
            "channels": limits.MAX_CHANNELS,
            "stride": limits.MAX_STRIDE,
            "embed_dim": limits.MAX_CHANNELS,
            "codebook_size": limits.MAX_CODEBOOK,
            "hidden": limits.MAX_WIDTH,
        }
        for name, cap in caps.items():
            value = check_int(f"VQ config {name}", getattr(self, name), lo=1, hi=cap, hint="the cap of limits")
            setattr(self, name, value)
        if self.img_size % self.stride:
            raise ValueError(f"VQ config img_size {self.img_size} is not divisible by the stride {self.stride}")

    to_dict = FamilyConfig.to_dict
    to_json = FamilyConfig.to_json

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VQConfig:
        return cls(**checked_fields(cls, d, "VQ config keys"))
