"""The training input: seeded resumable batches, DataLoader workers, unreadable images, the sharded latent cache."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL, run_training, small_train_config

from marengine.training.config import TrainConfig
from marengine.training.data import BadItem, ImageFolderDataset, collate_items
from marengine.training.latent_cache import build_latent_cache, file_sha256
from marengine.training.latent_dataset import LatentCacheDataset, SafetensorsLatentsDataset
from marengine.training.sampler import ItemKey, SeededItems, StepBatchSampler, item_generator, mix_seed
from marengine.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
RGB8 = {**SMALL, "vae_embed_dim": 12}  # mar_digits on 8x8 RGB images (pixel tokens of 3 x 2 x 2)
VAE_CONFIG = {"ch": 32, "num_res_blocks": 1}  # a small KL-16-shaped VAE (5 levels, stride 16)
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def make_folder(root: Path, per_class: int, size: int, classes: int = 2, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size, size + 2 * (i % 3), 3), dtype=np.uint8)  # some not square
            Image.fromarray(arr).save(root / f"class{c}" / f"img{i:03d}.png")
    return root


def add_corrupt(root: Path) -> list[Path]:
    """A file that is not an image and a truncated PNG."""
    junk = root / "class0" / "junk.png"
    junk.write_bytes(b"this is not an image")
    good = (root / "class1" / "img000.png").read_bytes()
    cut = root / "class1" / "cut.png"
    cut.write_bytes(good[: len(good) // 2])
    return [junk, cut]


def save_vae(path: Path):
    from marengine.models.vae import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(16, **VAE_CONFIG).eval()
    torch.save({"model": vae.state_dict()}, path)
    return vae


def cfg_for(out: Path, **kw) -> TrainConfig:
    return small_train_config(out, **{"model_overrides": dict(RGB8), "batch_size": 6, **kw})


fit = run_training


def same_weights(a: Trainer, b: Trainer) -> None:
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), f"{k} differs"


# ---------------------------------------------------------------- sampler and per-item seeds
def test_sampler_order_resume_and_ranks():
    n, bs, seed = 50, 4, 3
    full = StepBatchSampler(n, bs, seed, 0, 30)
    assert full.steps_per_epoch == 12 and len(full) == 30
    batches = list(full)
    for step in (0, 5, 11, 12, 29):  # the order the trainer has always used
        epoch, k = divmod(step, 12)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        assert [key.index for key in batches[step]] == perm[k * bs : (k + 1) * bs].tolist()
        assert all(key.epoch == epoch for key in batches[step])
    epoch0 = [key.index for b in batches[:12] for key in b]
    assert len(set(epoch0)) == 48  # drop-last: no repeats within an epoch
    assert list(StepBatchSampler(n, bs, seed, 7, 30)) == batches[7:]  # resume at any step
    ranks = [list(StepBatchSampler(n, bs // 2, seed, 0, 30, rank=r, world_size=2)) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == batches  # rank slices of the same global batch
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StepBatchSampler(3, 4, 0, 0, 1)


def test_item_randomness_comes_from_the_item_key(tmp_path):
    seeds = {mix_seed(*p) for p in [(0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 0, 0)]}
    assert len(seeds) == 4 and all(0 <= s < 2**63 for s in seeds)
    ds = ImageFolderDataset(make_folder(tmp_path, 3, 8), 8)
    items = SeededItems(ds, seed=5)
    torch.manual_seed(1)
    a = [items[ItemKey(e, 1)][0] for e in range(12)]
    torch.manual_seed(2)  # global RNG state must not matter
    b = [items[ItemKey(e, 1)][0] for e in range(12)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    flipped = [torch.equal(x, a[0].flip(-1)) and not torch.equal(x, a[0]) for x in a]
    assert any(flipped) and not all(flipped)  # the flip does vary with the epoch
    g = item_generator(5, 3, 1)
    assert torch.equal(ds.get(1, g)[0], items[ItemKey(3, 1)][0])


# ---------------------------------------------------------------- image folders, unreadable files
def test_image_folder_lists_names_without_opening(tmp_path, monkeypatch):
    import PIL.Image

    root = make_folder(tmp_path / "imgs", 4, 8)
    (root / "class1" / "notes.txt").write_text("not an image extension: ignored")
    (root / "class1" / "sub").mkdir()
    PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "class1" / "sub" / "deep.png")

    def no_open(*a, **k):
        raise AssertionError("the dataset opened an image while being built")

    monkeypatch.setattr(PIL.Image, "open", no_open)
    ds = ImageFolderDataset(root, 8)
    assert len(ds) == 9 and ds.classes == ["class0", "class1"]
    assert ds.path(8) == root / "class1" / "sub" / "deep.png" and int(ds.labels[8]) == 1
    assert ds.names.dtype.kind == "S"  # one numpy array, not a list of Python objects


def test_collate_drops_bad_items():
    good = [(torch.full((3, 2, 2), float(i)), i) for i in range(3)]
    b = collate_items([good[0], BadItem("x.png", "broken"), good[2]])
    assert b.x.shape == (2, 3, 2, 2) and b.y.tolist() == [0, 2] and b.bad == [BadItem("x.png", "broken")]
    empty = collate_items([BadItem("x.png", "broken")])
    assert empty.x is None and empty.y is None and len(empty.bad) == 1


def test_check_data_lists_unreadable_images(tmp_path, capsys):
    from marengine.cli import main

    root = make_folder(tmp_path / "imgs", 4, 16)
    assert main(["check-data", "--data", str(root), "--img-size", "16", "--no-progress"]) == 0
    assert "all readable" in capsys.readouterr().out
    junk, cut = add_corrupt(root)
    assert main(["check-data", "--data", str(root), "--img-size", "16", "--num-workers", "2", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"unreadable: {junk}" in out and f"unreadable: {cut}" in out and "2 unreadable" in out
    # without cropping, images that are not img-size square are reported too
    assert main(["check-data", "--data", str(root), "--img-size", "16", "--no-crop", "--no-progress"]) == 1
    assert "not 16x16" in capsys.readouterr().out


@pytest.mark.slow  # trainings on image folders
def test_training_skips_and_reports_unreadable_images(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs", 8, 8)
    bad_files = {str(p) for p in add_corrupt(root)}
    cfg = cfg_for(tmp_path / "run", data=str(root), max_steps=8)  # 18 items, 3 steps per epoch
    with caplog.at_level(logging.WARNING, logger="marengine.data"):
        t = fit(cfg)
    assert t.step == 8 and t.skipped == 0
    ds = t.dataset
    met = [k for s in range(8) for k in t.loader.sampler.keys(s) if str(ds.path(k.index)) in bad_files]
    assert met and t.loader.bad.count == len(met)  # counted every time they were met
    for f in bad_files:  # ... and logged once per file, naming it
        assert sum(f in r.getMessage() for r in caplog.records) == 1, f
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert int(rows[-1]["bad_inputs"]) == len(met)


def test_a_batch_of_only_unreadable_images_skips_its_step(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs", 1, 8, classes=1)
    for i in range(3):
        (root / "class0" / f"bad{i}.png").write_bytes(b"broken")
    cfg = cfg_for(tmp_path / "run", data=str(root), batch_size=1, max_steps=4, warmup_steps=0)
    with caplog.at_level(logging.WARNING):
        t = fit(cfg)
    assert t.step == 4 and t.skipped == 3 and t.loader.bad.count == 3  # one epoch: each file once
    assert sum("no readable item" in r.getMessage() for r in caplog.records) == 3
    assert t.ema.updates == 1  # only the good image's step updated the model


@pytest.mark.slow  # worker processes
def test_workers_and_resume_give_bitwise_the_same_run(tmp_path):
    """Per-item randomness (flips) is seeded per item: 2 workers + resume == 0 workers straight."""
    root = make_folder(tmp_path / "imgs", 8, 8)
    add_corrupt(root)
    straight = fit(cfg_for(tmp_path / "a", data=str(root)))
    fit(cfg_for(tmp_path / "b", data=str(root), num_workers=2, max_steps=3))
    resumed = fit(cfg_for(tmp_path / "b", data=str(root), num_workers=2, resume=str(tmp_path / "b" / "last.pth")))
    assert straight.step == resumed.step == 6
    same_weights(straight, resumed)
    for k, v in straight.ema.shadow.items():
        assert torch.equal(v, resumed.ema.shadow[k]), f"EMA {k} differs"
    assert resumed.loader.bad.count == straight.loader.bad.count > 0  # the count survives the resume


# ---------------------------------------------------------------- the sharded latent cache
def _build(root: Path, vae, vae_path: Path, out: Path, **kw):
    from marengine.config import VAE_LATENT_SCALE

    ds = ImageFolderDataset(root, kw.pop("img_size", 64), flip=False)
    args = {
        "vae_sha256": file_sha256(vae_path),
        "vae_config": {"embed_dim": 16, **VAE_CONFIG},
        "scale": VAE_LATENT_SCALE,
        "shard_size": 5,
        "batch_size": 3,
        **kw,
    }
    return build_latent_cache(ds, vae, out, **args)


@pytest.mark.slow  # a VAE encodes five caches
def test_latent_cache_contents_rerun_and_refusal(tmp_path):
    root = make_folder(tmp_path / "imgs", 6, 64)
    add_corrupt(root)  # 14 files, 2 unreadable
    vae = save_vae(tmp_path / "vae.ckpt")
    index = _build(root, vae, tmp_path / "vae.ckpt", tmp_path / "cache")
    assert index["num_items"] == 12 and index["num_skipped"] == 2 and len(index["shards"]) == 3
    cache = LatentCacheDataset(tmp_path / "cache")
    assert len(cache) == 12 and cache.latent_shape == (16, 4, 4) and cache.num_classes == 2
    ds = ImageFolderDataset(root, 64, flip=False)
    good = [i for i in range(len(ds)) if not isinstance(ds[i], BadItem)]
    x = torch.stack([ds[i][0] for i in good])
    with torch.no_grad():
        want = [vae.encode(x).moments, vae.encode(x.flip(-1)).moments]  # [12, 32, 4, 4] each
    for j, i in enumerate(good):
        for view in (0, 1):
            m, label = cache.read(j, view)
            torch.testing.assert_close(torch.from_numpy(m), want[view][j], rtol=1e-4, atol=1e-5)
            assert label == int(ds.labels[i])
    # the same command again: nothing to do, nothing rewritten
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    assert _build(root, vae, tmp_path / "vae.ckpt", tmp_path / "cache") == index
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    # other settings into the same folder are refused, naming the difference
    with pytest.raises(ValueError, match="other settings.*shard_size"):
        _build(root, vae, tmp_path / "vae.ckpt", tmp_path / "cache", shard_size=4)
    with pytest.raises(ValueError, match="other settings.*img_size"):
        _build(root, vae, tmp_path / "vae.ckpt", tmp_path / "cache", img_size=32)
    # shards written by two ranks (here one after the other) are the same files
    _build(root, vae, tmp_path / "vae.ckpt", tmp_path / "split", rank=1, world_size=2)
    assert not (tmp_path / "split" / "index.json").exists()
    assert _build(root, vae, tmp_path / "vae.ckpt", tmp_path / "split", rank=0, world_size=2) == index
    for s in index["shards"]:
        assert (tmp_path / "split" / s["name"]).read_bytes() == (tmp_path / "cache" / s["name"]).read_bytes()
    # a folder that was never finished is a clear error at training time
    (tmp_path / "half").mkdir()
    shutil.copy(tmp_path / "cache" / "settings.json", tmp_path / "half")
    with pytest.raises(ValueError, match="incomplete"):
        LatentCacheDataset(tmp_path / "half")


def _cache_cmd(root: Path, vae: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "marengine",
        "cache-latents",
        "--data",
        str(root),
        "--vae-ckpt",
        str(vae),
        "--vae-config",
        json.dumps(VAE_CONFIG),
        "--out",
        str(out),
        "--img-size",
        "128",
        "--shard-size",
        "4",
        "--batch-size",
        "2",
        "--no-progress",
    ]


def _cache_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.slow  # three cache-latents processes
def test_sigkill_during_cache_latents_then_rerun_completes_it(tmp_path):
    root = make_folder(tmp_path / "imgs", 20, 128, seed=1)  # 40 images, 10 shards
    save_vae(tmp_path / "vae.ckpt")
    subprocess.run(
        _cache_cmd(root, tmp_path / "vae.ckpt", tmp_path / "ref"),
        check=True,
        cwd=REPO,
        env=ENV,
        timeout=300,
        capture_output=True,
    )
    out = tmp_path / "cache"
    proc = subprocess.Popen(
        _cache_cmd(root, tmp_path / "vae.ckpt", out),
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(12000):  # up to ~60 s for the first shard
            if list(out.glob("shard-*.npy")) or proc.poll() is not None:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done = sorted(out.glob("shard-*.npy"))
    assert not (out / "index.json").exists() and 1 <= len(done) < 10, "killed too early or too late"
    before = {p.name: p.stat().st_mtime_ns for p in done}
    (out / ".shard-00009-of-00010.npy.marengine-stale_ab.tmp").write_bytes(b"half a shard")  # as if killed mid-write
    subprocess.run(
        _cache_cmd(root, tmp_path / "vae.ckpt", out), check=True, cwd=REPO, env=ENV, timeout=300, capture_output=True
    )
    assert {p.name: p.stat().st_mtime_ns for p in done} == before  # complete shards were kept, not redone
    assert not list(out.glob(".*tmp")) and not list(out.glob("*.tmp"))
    assert _cache_files(out) == _cache_files(tmp_path / "ref")  # bitwise the uninterrupted cache


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
@pytest.mark.slow  # torchrun: three processes
def test_cache_latents_under_torchrun_matches_one_process(tmp_path):
    root = make_folder(tmp_path / "imgs", 5, 128)  # 10 images, 3 shards
    save_vae(tmp_path / "vae.ckpt")
    one = _cache_cmd(root, tmp_path / "vae.ckpt", tmp_path / "one")
    two = [
        "torchrun",
        "--standalone",
        "--nproc_per_node=2",
        *_cache_cmd(root, tmp_path / "vae.ckpt", tmp_path / "two")[1:],
    ]
    for cmd in (one, two):
        subprocess.run(cmd, check=True, cwd=REPO, env=ENV, timeout=300, capture_output=True)
    assert _cache_files(tmp_path / "two") == _cache_files(tmp_path / "one")


@pytest.mark.slow  # three trainings, one with worker processes
def test_training_from_the_cache(tmp_path):
    from safetensors.torch import save_file

    root = make_folder(tmp_path / "imgs", 8, 64)
    vae = save_vae(tmp_path / "vae.ckpt")
    _build(root, vae, tmp_path / "vae.ckpt", tmp_path / "cache")
    cfg = cfg_for(
        tmp_path / "r0",
        data=str(tmp_path / "cache"),
        model="mar_tiny",
        model_overrides=dict(SMALL),
        tokenizer="vae",
        vae_ckpt=str(tmp_path / "vae.ckpt"),
        batch_size=4,
        max_steps=4,
    )
    w0 = fit(cfg)
    w2 = fit(dataclasses.replace(cfg, out_dir=str(tmp_path / "r2"), num_workers=2))
    same_weights(w0, w2)  # view choice and posterior sample are seeded per item
    with pytest.raises(ValueError, match=r"latents of shape \(16, 4, 4\).*expects \(16, 2, 2\)"):
        Trainer(dataclasses.replace(cfg, out_dir=str(tmp_path / "r3"), model_overrides={**SMALL, "img_size": 32}))
    # an earlier single-file cache still trains, and gives the same items
    sharded = LatentCacheDataset(tmp_path / "cache")
    both = [np.stack([sharded.read(i, v)[0] for v in (0, 1)]) for i in range(len(sharded))]
    labels = [sharded.read(i, 0)[1] for i in range(len(sharded))]
    save_file(
        {"moments": torch.from_numpy(np.stack(both)), "labels": torch.tensor(labels), "num_classes": torch.tensor(2)},
        tmp_path / "old.safetensors",
    )
    old = SafetensorsLatentsDataset(tmp_path / "old.safetensors", sharded.scale)
    for i in (0, 5, 15):
        a, b = old.get(i, item_generator(0, 1, i)), sharded.get(i, item_generator(0, 1, i))
        assert torch.equal(a[0], b[0]) and a[1] == b[1]
    legacy = fit(dataclasses.replace(cfg, out_dir=str(tmp_path / "r4"), data=str(tmp_path / "old.safetensors")))
    same_weights(w0, legacy)
