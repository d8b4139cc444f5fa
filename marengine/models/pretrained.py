"""Loading and saving model weights.

- Official checkpoints (`checkpoint-last.pth`: {"model": ..., "model_ema": ...})
  load with `torch.load(weights_only=True)`, strictly.
- `save_pretrained` / `from_pretrained`: a local folder with `config.json`
  (the MARConfig) and `model.safetensors`, written atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..config import MARConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
OFFICIAL_KEYS = ("model_ema", "model")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """torch.load without running pickle code (official files carry an argparse.Namespace)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {e}") from e
    except Exception as e:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {e}") from e


def pick_state_dict(ckpt: Mapping[str, Any], key: str | None = None) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint: `key` if given, else `model_ema` then `model`,
    else the mapping itself when it already is a state dict."""
    if key is not None:
        if key not in ckpt:
            raise KeyError(f"checkpoint has no entry {key!r}; it has {sorted(ckpt)}")
        return dict(ckpt[key])
    for k in OFFICIAL_KEYS:
        if k in ckpt and isinstance(ckpt[k], Mapping):
            return dict(ckpt[k])
    if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return dict(ckpt)
    raise ValueError(f"no model weights found: expected an entry among {OFFICIAL_KEYS}, found {sorted(ckpt)}")


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], assign: bool = False) -> None:
    """load_state_dict(strict=True), raising a ValueError that lists missing and
    unexpected keys and shape mismatches."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        parts = [f"{name} ({len(v)}): {', '.join(v[:20])}{' ...' if len(v) > 20 else ''}"
                 for name, v in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("shape mismatches", shapes)) if v]
        raise ValueError("checkpoint does not match the model; " + "; ".join(parts) +
                         ". Check that the model configuration (size, head depth/width, class_num) "
                         "matches the one the checkpoint was trained with.")
    model.load_state_dict(state, strict=True, assign=assign)


def load_official(model: nn.Module, path: str | os.PathLike, key: str | None = None) -> nn.Module:
    """Load an official MAR checkpoint (`model_ema` by default, as used for sampling) strictly."""
    load_strict(model, pick_state_dict(read_checkpoint(path), key))
    return model


def atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_pretrained(model: nn.Module, folder: str | os.PathLike,
                    state: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write `config.json` and `model.safetensors` (the model's weights, or `state`, e.g. EMA)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    cfg: MARConfig = model.config
    weights = {k: v.detach().contiguous().cpu() for k, v in (state or model.state_dict()).items()}
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(weights, tmp, metadata={"format": "pt"}))
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(cfg.to_json()))
    return folder


def from_pretrained(folder: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """Build the model from `config.json` on the meta device and assign the safetensors weights."""
    from safetensors.torch import load_file

    from .mar import MAR

    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: a pretrained folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        cfg = MARConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder / CONFIG_NAME} is not valid JSON: {e}") from e
    with torch.device("meta"):
        model = MAR.from_config(cfg)
    load_strict(model, load_file(folder / WEIGHTS_NAME, device=str(device)), assign=True)
    return model.eval()
