"""The generalized autoregressive family of the paper's Table 1, by name: the registry.

    member      attention       order            tokens per step   class
    ar_raster   causal          raster           1                 CausalAR (order="raster")
    ar_random   causal          random           1                 CausalAR (order="random")
    mar         bidirectional   random           1 ... L           MAR (diffusion) / MARCE (ce)

each under loss "diffusion" (Diffusion Loss on continuous tokens) or "ce" (cross-entropy
over a VQ tokenizer's codes). A preset (`marengine.config.PRESETS` / `AR_PRESETS`, or one given
to `register_member`) names the member and its size; `make_model(preset, loss)` builds it.
What every member provides is the Protocol `contract.FamilyMember`; the registry maps its
architecture name (config.json's "architecture") to its class and configuration dataclass.

Adding a member: its configuration dataclass, its model class (satisfying the contract), and
one line `register_member(ModelClass, presets={...})` (see README, "Adding a family member").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from ..config import FAMILY_PRESETS, MEMBER_CONFIGS, family_config
from .ar import CausalAR
from .contract import contract_gaps
from .mar import MAR
from .mar_ce import MARCE

# architecture name -> model class, and the dataclass of its configuration (config.MEMBER_CONFIGS)
ARCHITECTURES: dict[str, type[nn.Module]] = {}
CONFIG_CLASSES: dict[str, type] = MEMBER_CONFIGS
# presets of the members registered with presets of their own: name -> (architecture, configuration)
MEMBER_PRESETS: dict[str, tuple[str, Any]] = {}
PRESET_NAMES: list[str] = list(FAMILY_PRESETS)  # every preset make_model builds (the registered ones added)
MEMBERS = ("ar_raster", "ar_random", "mar")


def register_member(model_class: type[nn.Module], presets: Mapping[str, Any] | None = None) -> type[nn.Module]:
    """Add `model_class` (its `architecture`, `config_class` and the rest of contract.FamilyMember)
    to the family, with `presets` (name -> a configuration of its `config_class`) that
    `make_model` and the trainer then build by name. Returns the class (usable as a decorator)."""
    arch = getattr(model_class, "architecture", None)
    config_class = getattr(model_class, "config_class", None)
    missing = contract_gaps(model_class)
    if not isinstance(arch, str) or not arch or not isinstance(config_class, type) or missing:
        raise TypeError(
            f"{model_class.__name__} does not follow the family contract (models/contract.py): "
            f"it needs a non-empty `architecture`, a `config_class` and {', '.join(missing) or 'nothing else'}"
        )
    known = ARCHITECTURES.get(arch)
    if known is not None and known is not model_class:
        raise ValueError(f"architecture {arch!r} is already {known.__name__}'s: choose another name")
    for name, cfg in (presets or {}).items():
        if name in FAMILY_PRESETS or MEMBER_PRESETS.get(name, (arch,))[0] != arch:
            raise ValueError(f"preset {name!r} already names another member: choose another name")
        if not isinstance(cfg, config_class):
            raise TypeError(f"preset {name!r} must be a {config_class.__name__}, got {type(cfg).__name__}")
    ARCHITECTURES[arch], CONFIG_CLASSES[arch] = model_class, config_class
    MEMBER_PRESETS.update({name: (arch, cfg) for name, cfg in (presets or {}).items()})
    PRESET_NAMES.extend(name for name in presets or {} if name not in PRESET_NAMES)
    return model_class


for _member in (MAR, MARCE, CausalAR):  # the built-in members; their presets live in config.py
    register_member(_member)


def member_config(preset: str, loss: str = "diffusion", **overrides: Any) -> tuple[str, Any]:
    """(architecture, configuration) of the member a preset names (config.family_config for the
    built-in presets, the registered ones otherwise), with `overrides` replacing fields."""
    if preset not in MEMBER_PRESETS:
        return family_config(preset, loss, **overrides)
    arch, cfg = MEMBER_PRESETS[preset]
    if cfg.loss != loss:
        raise ValueError(f"model {preset!r} is trained with loss {cfg.loss!r}, not {loss!r}")
    return arch, CONFIG_CLASSES[arch].from_dict({**cfg.to_dict(), **overrides})


def member_class(architecture: str) -> type[nn.Module]:
    """The model class registered under `architecture` (a clear error for an unknown one)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown model architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[architecture]


def config_from_dict(architecture: str, d: dict[str, Any]) -> Any:
    """The configuration dataclass of `architecture` from its fields (checked)."""
    return member_class(architecture).config_class.from_dict(dict(d))


def make_model(preset: str, loss: str = "diffusion", device: torch.device | str | None = None, **overrides: Any):
    """A freshly initialised family member: `preset` (e.g. "mar_digits", "ar_random_digits"),
    `loss` ("diffusion" | "ce"), configuration overrides. An unknown pair is a clear error."""
    arch, cfg = member_config(preset, loss, **overrides)
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
    """ "ar_raster", "ar_random" or "mar" (a registered member: its architecture)."""
    architecture_of(model)
    if model.causal:
        return f"ar_{model.config.order}"
    return "mar" if isinstance(model, MAR) else model.architecture


def loss_of(model: nn.Module) -> str:
    """ "diffusion" or "ce"."""
    architecture_of(model)
    return model.loss
