"""Training checkpoints: model, EMA, optimizer, scaler, step/epoch, RNG states,
config; written atomically (temporary file, fsync, rename) so that a crash
while writing leaves the previous checkpoint intact."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write
from ..models.checkpoints import read_checkpoint

FORMAT = "marengine-train-v1"
LAST = "last.pth"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint; a missing, corrupt or truncated file is a clear error."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint {path} does not exist")
    try:
        ckpt = read_checkpoint(path)
    except ValueError as e:
        raise ValueError(f"{e}; it cannot be resumed from: use an earlier checkpoint in the same folder") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a marengine training checkpoint (format {FORMAT!r} expected); "
            "to start from official weights use --init-from instead of --resume"
        )
    return ckpt


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
