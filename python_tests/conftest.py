"""Shared fixtures: the golden tensors of the official implementation and small models."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

GOLDEN = Path(os.environ.get("MARENGINE_GOLDEN",
                             Path(__file__).resolve().parents[2] / "shared" / "golden" / "mar_tiny_official.npz"))


class Golden:
    def __init__(self, path: Path) -> None:
        self.npz = np.load(path)
        self.config = ast.literal_eval(str(self.npz["config/json"]))

    def __getitem__(self, key: str) -> torch.Tensor:
        return torch.from_numpy(np.array(self.npz[key]))

    def keys(self) -> list[str]:
        return list(self.npz.files)

    def state(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {k[len("state/") + len(prefix):]: self[k] for k in self.npz.files
                if k.startswith("state/" + prefix)}


@pytest.fixture(scope="session")
def golden() -> Golden:
    if not GOLDEN.is_file():
        pytest.skip(f"golden tensors not found at {GOLDEN} (set MARENGINE_GOLDEN)")
    return Golden(GOLDEN)


@pytest.fixture(scope="session")
def golden_mar(golden: Golden):
    from marengine.models import MAR

    model = MAR(**golden.config).eval()
    model.load_state_dict(golden.state(), strict=True)
    return model


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|."""
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.fixture
def tiny_mar():
    from marengine.config import MARConfig
    from marengine.models import MAR

    torch.manual_seed(0)
    return MAR.from_config(MARConfig.from_name("mar_tiny", num_sampling_steps="5")).eval()
