"""Training settings: the official recipe as defaults, written once (the CLI reads them from
here), each checked for type and range when a TrainConfig is made."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..checks import Rules, check_bool, check_choice, check_fields, check_float, check_int, check_str
from ..config import LOSSES, checked_fields
from ..models.contract import tokenizer_kind_of
from ..models.family import PRESET_NAMES, member_config
from ..models.tokenizers import TOKENIZER_KINDS

PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")
_COUNT = (check_int, {"lo": 0})
_EVERY = (check_int, {"lo": 1})
_RATE = (check_float, {"lo": 0.0, "lo_open": True})
_TEXT = (check_str, {})
_FLAG = (check_bool, {})
TRAIN_CONFIG_RULES: Rules = {
    "model": (check_choice, {"choices": PRESET_NAMES}),
    "loss": (check_choice, {"choices": LOSSES}),
    "init_from": (check_str, {"optional": True}),
    "data": _TEXT,
    "tokenizer": (check_choice, {"choices": TOKENIZER_KINDS}),
    "vae_ckpt": (check_str, {"optional": True}),
    "vq_ckpt": (check_str, {"optional": True}),
    "crop": _FLAG,
    "num_workers": _COUNT,
    "batch_size": _EVERY,
    "blr": _RATE,
    "lr": (check_float, {"lo": 0.0, "lo_open": True, "optional": True}),
    "min_lr": (check_float, {"lo": 0.0}),
    "lr_schedule": (check_choice, {"choices": LR_SCHEDULES}),
    "warmup_steps": _COUNT,
    "max_steps": (check_int, {"lo": 1, "hint": "the number of optimizer steps to train"}),
    "weight_decay": (check_float, {"lo": 0.0}),
    "grad_clip": _RATE,
    "ema_rate": (check_float, {"lo": 0.0, "hi": 1.0, "hi_open": True}),
    "ema_warmup": _FLAG,
    "precision": (check_choice, {"choices": PRECISIONS}),
    "grad_checkpointing": _FLAG,
    "max_bad_steps": _EVERY,
    "seed": (check_int, {"lo": 0, "hi": 2**31 - 1}),
    "device": _TEXT,
    "out_dir": _TEXT,
    "save_every": _COUNT,
    "ckpt_every": _EVERY,
    "sample_every": _COUNT,
    "log_every": _EVERY,
    "resume": (check_str, {"optional": True}),
    "overwrite": _FLAG,
    "progress": _FLAG,
}


@dataclass
class TrainConfig:
    # fmt: off
    # model
    model: str = "mar_digits"                   # the family member and its size: a preset of marengine.config
                                                # PRESETS (MAR) or AR_PRESETS (causal AR, raster or random order)
    loss: str = "diffusion"                     # "diffusion" (Diffusion Loss) or "ce" (cross-entropy over VQ codes)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None                # official checkpoint-last.pth or a pretrained folder, to fine-tune
    # data
    data: str = "digits"                        # "digits", an image folder root/<class>/*, or a latent cache
                                                # folder (cache-latents; an older single .safetensors also works)
    tokenizer: str = "pixel"                    # "pixel" (no VAE), "vae" (KL-16) or "vq" (codes, for loss="ce")
    vae_ckpt: str | None = None                 # kl16.ckpt for tokenizer="vae"
    vq_ckpt: str | None = None                  # tokenizer="vq": a folder from `marengine train-vq`, or LDM's VQ-16
    crop: bool = True                           # image folders: official center crop
    num_workers: int = 0                        # DataLoader worker processes; 0 loads in the training process,
                                                # which suits the in-memory digits on a CPU (workers would compete
                                                # with the training step for the cores); use 4-8 per GPU for images
    # optimisation (official recipe)
    batch_size: int = 64                        # per process
    blr: float = 1e-4                           # lr = blr * global batch / 256
    lr: float | None = None                     # absolute lr, overrides blr
    min_lr: float = 0.0
    lr_schedule: str = "constant"               # "constant" or "cosine" after warmup
    warmup_steps: int = 0
    max_steps: int = 1000
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 3.0
    ema_rate: float = 0.9999
    ema_warmup: bool = False
    precision: str = "auto"                     # "auto" (bf16 on GPU, fp32 on CPU), "fp32", "tf32", "bf16", "fp16"
    grad_checkpointing: bool = False
    max_bad_steps: int = 20                     # consecutive non-finite steps before training stops
    seed: int = 0
    device: str = "auto"
    # output
    out_dir: str = "runs/train"
    save_every: int = 0                         # keep step-N.pth every N steps (0: only last.pth)
    ckpt_every: int = 200                       # write last.pth every N steps (and at the end)
    sample_every: int = 0                       # sample grid every N steps (0: never)
    log_every: int = 10
    resume: str | None = None                   # a training checkpoint (or its folder) to continue exactly
    overwrite: bool = False                     # start over in an out_dir that holds a run (replaces its files)
    progress: bool = True
    # fmt: on

    def __post_init__(self) -> None:
        check_fields(self, TRAIN_CONFIG_RULES, "training setting")
        self.betas = tuple(
            check_float(f"training setting betas[{i}]", b, 0.0, 1.0, hi_open=True) for i, b in enumerate(self.betas)
        )
        if len(self.betas) != 2:
            raise ValueError(f"training setting betas must be two numbers (beta1, beta2), got {list(self.betas)}")
        if not isinstance(self.model_overrides, dict):
            raise TypeError(
                f"training setting model_overrides must be a JSON object (a dict), "
                f"got {type(self.model_overrides).__name__}"
            )
        member_config(self.model, self.loss, **self.model_overrides)  # unknown member/loss or override: an error now
        if (tokenizer_kind_of(self.loss) == "codes") != (self.tokenizer == "vq"):
            raise ValueError(
                f"training setting loss {self.loss!r} does not go with tokenizer {self.tokenizer!r}: cross-entropy "
                "models the codes of a VQ tokenizer (--loss ce --tokenizer vq --vq-ckpt DIR), Diffusion Loss "
                "continuous tokens (--tokenizer pixel or vae)"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = checked_fields(cls, d, "training settings")
        if "betas" in d and isinstance(d["betas"], (list, tuple)):
            d["betas"] = tuple(d["betas"])
        return cls(**d)


# The main job: a small MAR on the bundled digits, on the CPU, in minutes.
DEMO = TrainConfig(
    model="mar_digits",
    data="digits",
    batch_size=128,
    blr=1e-3,
    max_steps=800,
    warmup_steps=100,
    ema_rate=0.999,
    ema_warmup=True,
    out_dir="runs/demo",
    ckpt_every=250,
    log_every=25,
)
