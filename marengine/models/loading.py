"""The one loader: a model (and what its tokenizer is) from any of the files users have.

- a pretrained folder: `config.json` + `model.safetensors` (+ `tokenizer.json`), written
  by `save_pretrained` and by training (its `ema/` folder);
- a marengine training checkpoint (`last.pth`, `step-N.pth`): carries its config and
  tokenizer spec, the raw weights (`model`) and the EMA weights (`model_ema`);
- an official `checkpoint-last.pth`: weights only, so its configuration must be named
  (a preset such as `mar_base`, a JSON string, a JSON file or a dict).

`load_model` builds the model on the meta device and assigns the weights (no random
init, no pickle code run); `load_weights` loads any of them into an existing model
(fine-tuning with `--init-from`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..checks import read_json_file
from ..config import MARConfig
from .checkpoints import (
    TOKENIZER_NAME,
    check_config_fits_weights,
    load_folder,
    load_strict,
    pick_state_dict,
    read_checkpoint,
    read_folder_config,
    read_folder_weights,
)
from .family import config_from_dict, member_class
from .mar import MAR
from .tokenizers import check_spec, default_tokenizer_spec, with_vae_ckpt

ConfigLike = str | os.PathLike | Mapping[str, Any] | MARConfig


@dataclass
class LoadedModel:
    model: nn.Module  # in eval mode, on the requested device
    tokenizer_spec: dict[str, Any] | None  # see models.tokenizers.build_tokenizer
    kind: str  # "folder" | "training" | "official"


def resolve_config(config: ConfigLike) -> MARConfig:
    """A MARConfig from a preset name, a JSON string, a JSON file, a dict or a MARConfig."""
    if isinstance(config, MARConfig):
        return config
    if isinstance(config, Mapping):
        return MARConfig.from_dict(dict(config))
    text = str(config)
    if text.lstrip().startswith("{"):
        try:
            return MARConfig.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ValueError(f"the model configuration is not valid JSON: {e}") from e
    if Path(text).is_file():
        try:
            return MARConfig.from_dict(json.loads(Path(text).read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{text} is not a valid JSON model configuration: {e}") from e
    return MARConfig.from_name(text)


def build_model(
    architecture: str, config: Mapping[str, Any] | MARConfig, device: str | torch.device = "meta"
) -> nn.Module:
    """An (uninitialised on meta) model of a registered architecture."""
    model_class = member_class(architecture)  # a clear error for an unknown one
    with torch.device(device):
        return model_class.from_config(config)


def from_pretrained(folder: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """The model a pretrained folder holds, of whichever architecture it names."""
    return load_folder(folder, build_model, device)


def load_model(
    path: str | os.PathLike,
    *,
    config: ConfigLike | None = None,
    use_ema: bool = True,
    vae_ckpt: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Load a model for sampling or export from a folder, a training checkpoint or an
    official checkpoint (which needs `config`). EMA weights unless use_ema=False.
    `vae_ckpt` fills in (or replaces) the VAE weights path of the tokenizer spec."""
    p = Path(path)
    vae = None if vae_ckpt is None else str(vae_ckpt)
    if p.is_dir():
        if not use_ema:
            raise ValueError(
                f"{p} is a pretrained folder, which holds one set of weights (the EMA for ema/); "
                "for the raw weights load the training checkpoint (last.pth)"
            )
        model = from_pretrained(p, device)
        spec_file = p / TOKENIZER_NAME
        spec = (
            check_spec(read_json_file(spec_file, "tokenizer spec"), model.config, str(spec_file))
            if spec_file.is_file()
            else default_tokenizer_spec(model.config, vae)
        )
        return LoadedModel(model, with_vae_ckpt(spec, vae), "folder")
    ckpt = read_checkpoint(p)
    arch = MAR.architecture
    if "config" in ckpt:  # written by the marengine trainer: it carries its configuration
        arch = str(ckpt.get("architecture", MAR.architecture))  # older checkpoints: MAR
        if not isinstance(ckpt["config"], Mapping):
            raise ValueError(f"{p}: its 'config' entry is a {type(ckpt['config']).__name__}, not a configuration")
        for key in ("model", "model_ema"):  # the sizes it says against the weights it holds (memory-mapped)
            if isinstance(ckpt.get(key), Mapping):
                shapes = {k: tuple(v.shape) for k, v in ckpt[key].items() if isinstance(v, torch.Tensor)}
                check_config_fits_weights(ckpt["config"], shapes, f"{p} (its 'config')", f"its {key!r} weights")
        try:
            cfg, kind = config_from_dict(arch, dict(ckpt["config"])), "training"
        except (TypeError, ValueError) as e:
            raise type(e)(f"{p} (its 'config'): {e}") from None
        if config is not None and (arch != MAR.architecture or resolve_config(config) != cfg):
            raise ValueError(
                f"{p} is a training checkpoint of another configuration than the one named; "
                "drop --model/--config (the checkpoint carries its own)"
            )
        given = ckpt.get("tokenizer")
        spec = check_spec(given, cfg, f"{p} (its 'tokenizer')") if given else default_tokenizer_spec(cfg, vae)
        spec = with_vae_ckpt(spec, vae)
    elif config is not None:
        cfg, kind = resolve_config(config), "official"
        spec = default_tokenizer_spec(cfg, vae)
    else:
        raise ValueError(
            f"{p} is an official checkpoint without its configuration: name it (--model/--config "
            "mar_base, mar_large, mar_huge, or a JSON configuration)"
        )
    key = ("model_ema" if "model_ema" in ckpt else None) if use_ema else "model"
    model = build_model(arch, cfg)
    load_strict(model, pick_state_dict(ckpt, key), assign=True)
    return LoadedModel(model.to(device).eval(), spec, kind)


def load_weights(model: nn.Module, path: str | os.PathLike, key: str | None = "model") -> nn.Module:
    """Load the weights of a folder, a training checkpoint or an official checkpoint into
    `model` (strictly). For files `key` picks the entry ("model": the raw weights, as
    fine-tuning starts from; "model_ema"; None: EMA where present); folders hold one set."""
    p = Path(path)
    if p.is_dir():
        read_folder_config(p)  # a clear error when it is not a pretrained folder
        state = read_folder_weights(p)
    else:
        ckpt = read_checkpoint(p)
        state = pick_state_dict(ckpt, key if key is None or key in ckpt else None)
    with torch.no_grad():
        load_strict(model, state)
    return model
