"""Training checkpoints: model, EMA, optimizer, scaler, step/epoch, RNG states,
config; written atomically (temporary file, fsync, rename) so that a crash
while writing leaves the previous checkpoint intact."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_copy, atomic_write
from ..models.checkpoints import read_checkpoint

FORMAT = "marengine-train-v1"
LAST = "last.pth"
STEP_FILE = re.compile(r"step-\d+\.pth")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], also: str | os.PathLike | None = None) -> Path:
    """Write `path` whole or not at all; then, if given, publish the same file as `also`
    (e.g. step-N.pth first, then last.pth), so a kill at any moment leaves each name
    either its previous checkpoint or the new one."""
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))
    if also is not None:
        atomic_copy(path, also)
    return path


def run_files(folder: str | os.PathLike) -> list[str]:
    """The names of a training run's files in `folder` (empty when it holds none)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = {LAST, "metrics.csv", "ema"}
    return sorted(p.name for p in folder.iterdir() if p.name in names or STEP_FILE.fullmatch(p.name))


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
