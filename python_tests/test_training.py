"""The training engine: exact resume, checkpoint fault tolerance, bad input, DDP."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SMALL, run_training, small_train_config

from marengine.training.checkpoint import load_checkpoint, save_checkpoint
from marengine.training.config import TrainConfig
from marengine.training.trainer import Trainer, TrainingDiverged

REPO = Path(__file__).resolve().parents[1]


def small_cfg(out: Path, **kw) -> TrainConfig:
    return small_train_config(out, **kw)


run = run_training


@pytest.mark.slow  # three trainings
def test_exact_resume(tmp_path):
    straight = run(small_cfg(tmp_path / "a"))
    run(small_cfg(tmp_path / "b", max_steps=3))
    resumed = run(small_cfg(tmp_path / "b", resume=str(tmp_path / "b" / "last.pth")))
    assert resumed.step == straight.step == 6
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), f"{k} differs after resume"
    for k, v in straight.ema.shadow.items():
        assert torch.equal(v, resumed.ema.shadow[k]), f"EMA {k} differs after resume"
    # and it did train: the weights moved
    fresh = Trainer(small_cfg(tmp_path / "c"))
    assert not torch.equal(fresh.model.z_proj.weight, straight.model.z_proj.weight)


@pytest.mark.slow  # a training run
def test_checkpoint_contents_and_official_layout(tmp_path):
    from marengine.models.checkpoints import load_official

    t = run(small_cfg(tmp_path, max_steps=3))
    ckpt = load_checkpoint(tmp_path / "last.pth")
    assert ckpt["step"] == 3 and {"model", "model_ema", "optimizer", "scaler", "rng", "config"} <= set(ckpt)
    fresh = Trainer(small_cfg(tmp_path / "x")).model
    load_official(fresh, tmp_path / "last.pth")  # model_ema loads strictly like an official file
    assert torch.equal(fresh.z_proj.weight, t.ema.shadow["z_proj.weight"])


def test_truncated_and_foreign_checkpoints_refused(tmp_path):
    run(small_cfg(tmp_path, max_steps=3))
    path = tmp_path / "last.pth"
    data = path.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_checkpoint(bad)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        Trainer(small_cfg(tmp_path / "r", resume=str(bad)))
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": {}}, foreign)
    with pytest.raises(ValueError, match="not a marengine training checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError):
        Trainer(small_cfg(tmp_path / "r", resume=str(tmp_path / "missing.pth")))


@pytest.mark.parametrize("source", [pytest.param("ema_folder", marks=pytest.mark.slow), "last_pth"])  # two trainings
def test_init_from_a_folder_or_a_file(tmp_path, source):
    from marengine.models import load_model

    run(small_cfg(tmp_path / "a", max_steps=2))
    path = tmp_path / "a" / ("ema" if source == "ema_folder" else "last.pth")
    want = load_model(path, use_ema=source == "ema_folder").model.state_dict()  # folders hold the EMA
    t = Trainer(small_cfg(tmp_path / "b", init_from=str(path)))
    assert all(torch.equal(t.model.state_dict()[k], v) for k, v in want.items())
    t.fit()  # and it trains on from there
    t.close()
    assert t.step == 6


KILL_WRITER = """
import sys, torch
from marengine.training.checkpoint import save_checkpoint
big = torch.ones(64 * 1024 * 1024 // 4 * 8)  # 256 MB: slow enough to be killed mid-write
while True:
    save_checkpoint(sys.argv[1], {"step": 2, "blob": big})
"""


@pytest.mark.slow  # a training process killed and rerun
def test_sigkill_while_writing_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint(path, {"step": 1, "blob": torch.zeros(4)})
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_WRITER, str(path)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    try:
        for _ in range(6000):  # up to ~60 s for the writer to start its first write
            if list(tmp_path.glob(".last.pth.*.tmp")):
                break
            time.sleep(0.01)
        assert list(tmp_path.glob(".last.pth.*.tmp")), "writer never started"
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    ckpt = load_checkpoint(path)  # the previous (or a complete new) checkpoint, never a torn one
    assert ckpt["step"] in (1, 2)


def test_non_finite_steps_are_skipped_then_stop(tmp_path):
    cfg = small_cfg(tmp_path, max_steps=50, max_bad_steps=3, ckpt_every=1)
    t = Trainer(cfg)
    t.train_step(*t.load_batch(0))
    t.save()
    good = {k: v.clone() for k, v in t.model.state_dict().items()}
    clean = t.load_batch
    t.load_batch = lambda step: (clean(step)[0] * float("nan"), clean(step)[1])  # every later loss is NaN
    with pytest.raises(TrainingDiverged, match="3 consecutive"):
        t.fit()
    assert t.skipped == 3
    ckpt = load_checkpoint(tmp_path / "last.pth")
    assert ckpt["step"] == 1
    assert all(torch.equal(ckpt["model"][k], good[k]) for k in good)
    assert all(torch.equal(t.model.state_dict()[k], good[k]) for k in good)  # no update was applied
    t.close()


def test_bad_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        Trainer(small_cfg(tmp_path / "o", data=str(empty), model_overrides={**SMALL, "img_size": 16}))
    with pytest.raises(FileNotFoundError):
        Trainer(small_cfg(tmp_path / "o", data=str(tmp_path / "nope")))
    (empty / "cat").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        Trainer(small_cfg(tmp_path / "o", data=str(empty)))
    with pytest.raises(ValueError, match="not divisible"):
        Trainer(small_cfg(tmp_path / "o", model_overrides={**SMALL, "img_size": 9}))
    with pytest.raises(ValueError, match="classes but the model's class_num"):
        Trainer(small_cfg(tmp_path / "o", model_overrides={**SMALL, "class_num": 5}))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        Trainer(small_cfg(tmp_path / "o", batch_size=4096))


def test_image_folder_errors(tmp_path):
    from PIL import Image

    from marengine.training.data import BadItem, ImageFolderDataset

    root = tmp_path / "imgs"
    for cls, sizes in {"a": [(16, 16), (16, 16)], "b": [(16, 16), (20, 12)]}.items():
        (root / cls).mkdir(parents=True)
        for i, s in enumerate(sizes):
            Image.new("RGB", s, (i * 40, 0, 0)).save(root / cls / f"{i}.png")
    # files are opened when met: a wrong size (without cropping) or a broken file is a BadItem naming it
    bad = ImageFolderDataset(root, 16, crop=False)[3]
    assert isinstance(bad, BadItem) and bad.path.endswith("1.png") and "20x12, not 16x16" in bad.reason
    ds = ImageFolderDataset(root, 16, crop=True)  # the official crop handles any size
    assert ds[3][0].shape == (3, 16, 16) and ds.num_classes == 2
    (root / "b" / "broken.png").write_bytes(b"not an image")
    ds = ImageFolderDataset(root, 16)  # names only: construction does not open the broken file
    assert isinstance(ds[4], BadItem) and ds[4].path.endswith("broken.png"), ds[4]  # b/0, b/1, b/broken


def _eval_loss(model: torch.nn.Module) -> float:
    from marengine.training.data import DigitsDataset

    ds = DigitsDataset("heldout")
    latents = torch.nn.functional.pixel_unshuffle(ds.images[:256], 2)  # the pixel tokenizer
    with torch.no_grad():
        return float(model.eval()(latents, ds.labels[:256], generator=torch.Generator().manual_seed(0)))


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
@pytest.mark.slow  # torchrun: two training processes
def test_ddp_two_processes_matches_single_process(tmp_path):
    from marengine.models.checkpoints import load_official

    common = [
        "--model-overrides",
        '{"encoder_embed_dim": 32, "encoder_depth": 1, "encoder_num_heads": 2, '
        '"decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2, "diffloss_w": 32, '
        '"diffloss_d": 1}',
        "--max-steps",
        "8",
        "--blr",
        "2e-3",
        "--no-progress",
        "--ckpt-every",
        "8",
        "--ema-rate",
        "0.0",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            "torchrun",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "marengine",
            "train",
            "--out-dir",
            str(tmp_path / "ddp"),
            "--batch-size",
            "32",
            *common,
        ],
        check=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "marengine",
            "train",
            "--out-dir",
            str(tmp_path / "single"),
            "--batch-size",
            "64",
            *common,
        ],
        check=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    losses = {}
    for name in ("ddp", "single"):
        model = Trainer(small_cfg(tmp_path / "e")).model
        load_official(model, tmp_path / name / "last.pth", key="model")
        losses[name] = _eval_loss(model)
    init = _eval_loss(Trainer(small_cfg(tmp_path / "e")).model)
    print(f"held-out loss: ddp {losses['ddp']:.4f}, single {losses['single']:.4f}, init {init:.4f}")
    # same data and global batch; masks and noise are drawn per rank, so the runs agree in
    # distribution, not bitwise: their held-out losses agree within 10% and both improved.
    assert abs(losses["ddp"] - losses["single"]) <= 0.1 * losses["single"], losses
    assert losses["ddp"] < init and losses["single"] < init, (losses, init)
