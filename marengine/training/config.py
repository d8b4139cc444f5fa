"""Training settings: the official recipe as defaults, written once (the CLI reads them from here)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..config import checked_fields


@dataclass
class TrainConfig:
    # fmt: off
    # model
    model: str = "mar_digits"                   # a preset of marengine.config.PRESETS
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None                # official checkpoint-last.pth or a pretrained folder, to fine-tune
    # data
    data: str = "digits"                        # "digits", an image folder root/<class>/*, or a latent cache
                                                # folder (cache-latents; an older single .safetensors also works)
    tokenizer: str = "pixel"                    # "pixel" (no VAE) or "vae" (KL-16)
    vae_ckpt: str | None = None                 # kl16.ckpt for tokenizer="vae"
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
    progress: bool = True
    # fmt: on

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = checked_fields(cls, d, "training settings")
        if "betas" in d:
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
