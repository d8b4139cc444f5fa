"""Shared fixtures: the golden tensors of the official implementation and small models."""

from __future__ import annotations

import ast
import math
import os
import subprocess
import sys
from pathlib import Path

# MKL's strict reproducibility (read at its first call): a matrix product gives a row the same
# bits whatever the other rows, which the continuous-batching tests compare bit for bit
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _settings_of_this_test():
    """marengine/settings.py reads the environment once: each test starts from its own
    environment, and the settings a test reloaded after a monkeypatch.setenv do not outlive it
    (this teardown runs after monkeypatch has restored the environment)."""
    from marengine import settings

    settings.reload()
    yield
    settings.reload()


GOLDEN = Path(
    os.environ.get(
        "MARENGINE_GOLDEN", Path(__file__).resolve().parents[2] / "shared" / "golden" / "mar_tiny_official.npz"
    )
)


class Golden:
    def __init__(self, path: Path) -> None:
        self.npz = np.load(path)
        self.config = ast.literal_eval(str(self.npz["config/json"]))

    def __getitem__(self, key: str) -> torch.Tensor:
        return torch.from_numpy(np.array(self.npz[key]))

    def keys(self) -> list[str]:
        return list(self.npz.files)

    def state(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {k[len("state/") + len(prefix) :]: self[k] for k in self.npz.files if k.startswith("state/" + prefix)}


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


# ---------------------------------------------------------------- tiny training runs
def shrunk(width: int, depth: int = 1, heads: int = 2) -> dict[str, int]:
    """Model overrides that cut a preset's encoder and decoder alike to `depth` blocks of `width` with `heads` heads."""
    sizes = {"embed_dim": width, "depth": depth, "num_heads": heads}
    return {f"{part}_{key}": value for part in ("encoder", "decoder") for key, value in sizes.items()}


# mar_digits shrunk to one block of width 32 and a 1x32 head: a training step takes milliseconds
ONE_BLOCK = shrunk(32)
SMALL = dict(**ONE_BLOCK, diffloss_w=32, diffloss_d=1, diffusion_batch_mul=1, attn_dropout=0.1, proj_dropout=0.1)


def small_train_config(out: Path, **kw):
    """A 6-step training run of the SMALL model on the digits, checkpoints every 3 steps."""
    import dataclasses

    from marengine.training.config import TrainConfig

    base = TrainConfig(
        model="mar_digits",
        model_overrides=dict(SMALL),
        batch_size=16,
        blr=1e-2,
        max_steps=6,
        warmup_steps=2,
        ema_rate=0.9,
        out_dir=str(out),
        ckpt_every=3,
        log_every=1,
        progress=False,
    )
    return dataclasses.replace(base, **kw)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A finished 2-step training run of the SMALL digits model (last.pth, ema/, metrics.csv),
    trained once for the session: a test that changes a run works on a copy."""
    out = tmp_path_factory.mktemp("run") / "run"
    run_training(small_train_config(out, max_steps=2, ckpt_every=2))
    return out


def run_training(cfg):
    """Train to the end and close (also on failure); returns the Trainer."""
    from marengine.training.trainer import Trainer

    t = Trainer(cfg)
    try:
        t.fit()
    finally:
        t.close()
    return t


def random_diffloss(width: int = 256, depth: int = 2, steps: str = "10", out_scale: float = 1.0):
    """A DiffLoss with random weights everywhere (the official init zeroes the AdaLN and
    output layers, which would make eps identically zero). Random weights do not predict
    the noise, so the chain grows to |x| ~ 1e5 (see ../shared/golden/README.md); the
    low-precision tests shrink the output layer (out_scale) and x_T so that PyTorch's
    float16 autocast reference, which casts x to float16, stays finite."""
    from marengine.models.diffloss import DiffLoss

    torch.manual_seed(0)
    dl = DiffLoss(16, 32, depth, width, steps)  # tokens of 16 channels, conditions of 32
    with torch.no_grad():
        for name, p in dl.net.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[1]))
            elif "ln" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
        dl.net.final_layer.linear.weight.mul_(out_scale)
        dl.net.final_layer.linear.bias.mul_(out_scale)
    return dl.eval()


# ---------------------------------------------------------------- the demo, cut short
# the demo's own recipe with few steps and samples: its outputs and plumbing in seconds, not its quality
SHORT_DEMO = [
    "--max-steps",
    "12",
    "--warmup-steps",
    "2",
    "--batch-size",
    "32",
    "--ckpt-every",
    "12",
    "--log-every",
    "4",
]
SHORT_DEMO += ["--per-class", "2", "--num-iter", "4", "--threads", "1", "--no-progress", "--no-evaluate"]


def marengine_cli(*args: str, timeout: int = 600, one_thread: bool = True) -> subprocess.CompletedProcess:
    """`python -m marengine ARGS` in a fresh interpreter of this checkout (one thread per library
    unless one_thread=False: a long run the suite waits for, such as the full demo, takes the cores)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if one_thread:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "marengine", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout, capture_output=True, text=True)


@pytest.fixture(scope="session")
def short_demo_root(tmp_path_factory) -> Path:
    """A scratch folder whose runs/demo (the README's path) holds the outputs of `marengine demo`
    with SHORT_DEMO, run once for the session; tests that change files work on copies."""
    root = tmp_path_factory.mktemp("demo-short")
    out = root / "runs" / "demo"
    proc = marengine_cli("demo", "--out-dir", str(out), *SHORT_DEMO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(out / "grid.png") in proc.stdout
    return root
