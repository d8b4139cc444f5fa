"""Reading and writing model weights: the pieces every loader is built from.

- `read_checkpoint`: torch.load without running pickle code (official files carry an
  argparse.Namespace, which is allowed); a corrupt file is a clear error.
- `pick_state_dict` / `load_strict` / `load_official`: official `checkpoint-last.pth`
  files ({"model", "model_ema"}) and our training checkpoints load strictly.
- `save_pretrained` and `PretrainedMixin`: a pretrained folder holds `config.json`
  (the model configuration plus its "architecture"), `model.safetensors` and, where
  known, `tokenizer.json`; every file is written atomically.

Which kind of file a path is, and building the model it describes, is
`marengine.models.loading` (the one loader).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..files import building_folder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
ARCHITECTURE_KEY = "architecture"
PRETRAINED_KIND = "pretrained"  # the output kind in the folder's manifest (files.claim_output_folder)
OFFICIAL_KEYS = ("model_ema", "model")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A .pth file's contents, loaded with weights_only=True (memory-mapped where possible)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; a checkpoint file (.pth) is expected here")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # files written by torch < 1.6 (not zip) cannot be memory-mapped
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(ckpt, Mapping):
        raise ValueError(
            f"{path} holds a {type(ckpt).__name__}, not a checkpoint dictionary "
            "(expected {'model': state_dict, ...} or a state dict)"
        )
    return dict(ckpt)


def pick_state_dict(ckpt: Mapping[str, Any], key: str | None = None) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint: `key` if given, else `model_ema` then `model`,
    else the mapping itself when it already is a state dict."""
    if key is not None:
        if key not in ckpt:
            raise KeyError(f"checkpoint has no entry {key!r}; it has {sorted(ckpt)}")
        state = ckpt[key]
    else:
        state = next((ckpt[k] for k in OFFICIAL_KEYS if isinstance(ckpt.get(k), Mapping)), None)
        if state is None and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            state = ckpt
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"no model weights found: expected an entry among {OFFICIAL_KEYS} holding a state dict, "
            f"found {sorted(ckpt)}"
        )
    return dict(state)


def non_finite_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the floating tensors of `state` that hold NaN or an infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], assign: bool = False) -> None:
    """load_state_dict(strict=True), raising a ValueError that lists missing and
    unexpected keys, shape mismatches and weights that are not finite (NaN/inf: the
    checkpoint of a diverged run, which would sample black images)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = [
            f"{name} ({len(v)}): {', '.join(v[:20])}{' ...' if len(v) > 20 else ''}"
            for name, v in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
            if v
        ]
        raise ValueError(
            "checkpoint does not match the model; "
            + "; ".join(parts)
            + ". Check that the model configuration (size, head depth/width, class_num) "
            "matches the one the checkpoint was trained with."
        )
    bad = non_finite_keys(state)
    if bad:
        raise ValueError(
            f"the checkpoint's weights are not finite (NaN or inf) in {len(bad)} tensor(s): "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; it comes from a diverged run, "
            "use an earlier checkpoint"
        )
    model.load_state_dict(state, strict=True, assign=assign)


def load_official(model: nn.Module, path: str | os.PathLike, key: str | None = None) -> nn.Module:
    """Load an official MAR checkpoint (`model_ema` by default, as used for sampling) strictly."""
    load_strict(model, pick_state_dict(read_checkpoint(path), key))
    return model


# ---------------------------------------------------------------- pretrained folders
def save_pretrained(
    model: nn.Module,
    folder: str | os.PathLike,
    state: Mapping[str, torch.Tensor] | None = None,
    tokenizer: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `config.json` and `model.safetensors` (the model's weights, or `state`, e.g. the
    EMA) and, when given, `tokenizer.json` (a tokenizer spec, see models.tokenizers).

    The folder is built beside `folder` and moved into place whole. `folder` must be new or
    empty, or hold an earlier pretrained folder marengine wrote (replaced only when
    `overwrite`); a folder holding anything else is refused (files.claim_output_folder)."""
    from safetensors.torch import save_file

    config = {ARCHITECTURE_KEY: model.architecture, **model.config.to_dict()}
    weights = {k: v.detach().contiguous().cpu() for k, v in (state or model.state_dict()).items()}
    with building_folder(folder, PRETRAINED_KIND, overwrite=overwrite) as built:
        save_file(weights, str(built / WEIGHTS_NAME), metadata={"format": "pt"})
        (built / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
        if tokenizer is not None:
            (built / TOKENIZER_NAME).write_text(json.dumps(dict(tokenizer), indent=2, sort_keys=True))
    return Path(folder)


def read_folder_config(folder: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """(architecture, configuration fields) of a pretrained folder's config.json."""
    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} not found: a pretrained folder holds {CONFIG_NAME} and "
                f"{WEIGHTS_NAME} (written by save_pretrained or by training as ema/)"
            )
    try:
        cfg = json.loads((folder / CONFIG_NAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{folder / CONFIG_NAME} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{folder / CONFIG_NAME} must hold a JSON object of configuration fields")
    return str(cfg.pop(ARCHITECTURE_KEY, "mar")), cfg


def read_folder_weights(folder: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_NAME
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (corrupt or truncated?): {e}") from e


class PretrainedMixin:
    """`save_pretrained(dir)` / `from_pretrained(dir)` as methods (the diffusers/timm habit).

    A class using it has `architecture` (the name written to config.json), `config`
    (a dataclass with `to_dict`) and a classmethod `from_config`."""

    architecture: str = ""

    def save_pretrained(
        self,
        folder: str | os.PathLike,
        state: Mapping[str, torch.Tensor] | None = None,
        tokenizer: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> Path:
        return save_pretrained(self, folder, state, tokenizer, overwrite)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: torch.device | str = "cpu") -> Any:
        """Build from config.json on the meta device and assign the weights (no init cost)."""
        arch, cfg = read_folder_config(folder)
        if arch != cls.architecture:
            raise ValueError(
                f"{folder} holds a {arch!r} model, not a {cls.architecture!r} one: load it with "
                "marengine.models.loading.from_pretrained, which picks the class"
            )
        with torch.device("meta"):
            model = cls.from_config(cfg)  # type: ignore[attr-defined]
        load_strict(model, read_folder_weights(folder, device), assign=True)
        return model.eval()
