"""The generalized autoregressive family of the paper's Table 1, by name.

    member      attention       order            tokens per step   class
    ar_raster   causal          raster           1                 CausalAR (order="raster")
    ar_random   causal          random           1                 CausalAR (order="random")
    mar         bidirectional   random           1 ... L           MAR (diffusion) / MARCE (ce)

each under loss "diffusion" (Diffusion Loss on continuous tokens) or "ce" (cross-entropy
over a VQ tokenizer's codes). A preset (`marengine.config.PRESETS` / `AR_PRESETS`) names
the member and its size; `make_model(preset, loss)` builds it. Every member has the
training contract `model(latents_or_codes, labels, generator=...) -> loss`, MAR's
`sample_tokens` signature, `save_pretrained` / `from_pretrained`, and is registered by
its architecture name in `ARCHITECTURES` (config.json's "architecture").
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..config import ARCH_AR, ARCH_MAR, ARCH_MAR_CE, ARConfig, MARCEConfig, MARConfig, family_config
from .ar import CausalAR
from .mar import MAR
from .mar_ce import MARCE

# architecture name -> model class, and the dataclass of its configuration
ARCHITECTURES: dict[str, type[nn.Module]] = {ARCH_MAR: MAR, ARCH_MAR_CE: MARCE, ARCH_AR: CausalAR}
CONFIG_CLASSES: dict[str, type] = {ARCH_MAR: MARConfig, ARCH_MAR_CE: MARCEConfig, ARCH_AR: ARConfig}
MEMBERS = ("ar_raster", "ar_random", "mar")


def config_from_dict(architecture: str, d: dict[str, Any]) -> Any:
    """The configuration dataclass of `architecture` from its fields (checked)."""
    if architecture not in CONFIG_CLASSES:
        raise ValueError(f"unknown model architecture {architecture!r}; known: {sorted(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[architecture].from_dict(dict(d))


def make_model(preset: str, loss: str = "diffusion", device: torch.device | str | None = None, **overrides: Any):
    """A freshly initialised family member: `preset` (e.g. "mar_digits", "ar_random_digits"),
    `loss` ("diffusion" | "ce"), configuration overrides. An unknown pair is a clear error."""
    arch, cfg = family_config(preset, loss, **overrides)
    if device is None:
        return ARCHITECTURES[arch].from_config(cfg)
    with torch.device(device):
        return ARCHITECTURES[arch].from_config(cfg)


def architecture_of(model: nn.Module) -> str:
    arch = getattr(model, "architecture", None)
    if arch not in ARCHITECTURES:
        raise TypeError(f"{type(model).__name__} is not a model of the family ({', '.join(ARCHITECTURES)})")
    return arch


def member_of(model: nn.Module) -> str:
    """ "ar_raster", "ar_random" or "mar"."""
    return "mar" if architecture_of(model) != ARCH_AR else f"ar_{model.config.order}"


def loss_of(model: nn.Module) -> str:
    """ "diffusion" or "ce"."""
    architecture_of(model)
    return model.loss
