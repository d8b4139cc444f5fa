"""The main job end to end, with its quality gate, and the sample command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "marengine", *args], cwd=REPO, env=env, timeout=timeout, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    proc = _cli("demo", "--out-dir", str(out), "--no-progress", "--no-evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(out / "grid.png") in proc.stdout
    return out


def test_demo_writes_outputs(demo_dir):
    for name in ("grid.png", "samples.npz", "last.pth", "ema/config.json", "ema/model.safetensors"):
        assert (demo_dir / name).is_file(), name
    data = np.load(demo_dir / "samples.npz")
    assert data["images"].dtype == np.uint8 and data["images"].shape == (100, 8, 8, 1)
    assert sorted(np.bincount(data["labels"]).tolist()) == [10] * 10


def test_demo_quality_gate(demo_dir):
    """An independent classifier trained on real digits recognises >= 90% of the samples."""
    from marengine.evaluation.digits import evaluate

    data = np.load(demo_dir / "samples.npz")
    report = evaluate(data["images"], data["labels"])
    print(report)
    assert report.classifier_accuracy >= 0.9  # the judge itself is competent
    assert report.accuracy >= 0.9, str(report)


def test_sample_command(demo_dir, tmp_path):
    """The training checkpoint and the EMA folder sample the same images (same EMA weights, seed)."""
    got = []
    for name, checkpoint in (("s", demo_dir / "last.pth"), ("t", demo_dir / "ema")):
        args = ["--labels", "3", "3", "7", "--num-iter", "8", "--cfg", "2.0", "--seed", "1"]
        proc = _cli("sample", "--checkpoint", str(checkpoint), *args, "--out", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr[-3000:]
        got.append(np.load(tmp_path / name / "samples.npz"))
    a, b = got
    assert a["images"].shape == (3, 8, 8, 1) and a["labels"].tolist() == [3, 3, 7]
    assert np.array_equal(a["images"], b["images"])


def test_sample_command_bad_label(demo_dir, tmp_path):
    proc = _cli("sample", "--checkpoint", str(demo_dir / "last.pth"), "--labels", "12", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "--labels must be class indices in [0, 10)" in proc.stderr
    proc = _cli("train", "--resume", str(tmp_path / "nothing.pth"), "--out-dir", str(tmp_path / "y"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_inpainting_held_out_digits(demo_dir):
    """The demo model completes real held-out digits whose right half is masked: with the true
    label the judge recognises >= 90%; with a wrong label it follows that label less often than
    when the label alone drives generation (the known half pulls towards the true digit)."""
    from marengine.evaluation.digits import evaluate
    from marengine.pipeline import MARPipeline
    from marengine.sampling.engine import SampleSettings
    from marengine.training.data import DigitsDataset

    ds = DigitsDataset("heldout")
    idx = np.concatenate([np.flatnonzero(ds.labels.numpy() == c)[:10] for c in range(10)])
    imgs = np.round((ds.images[idx].numpy() + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)  # [100, 8, 8, 1]
    labels = ds.labels[idx].numpy()
    pipe = MARPipeline.from_pretrained(
        demo_dir / "ema", device="cpu", settings=SampleSettings(num_iter=16, cfg=2.0, temperature=1.0)
    )
    mask = np.zeros((8, 8), bool)
    mask[:, 4:] = True
    true = pipe.inpaint(imgs, mask, labels, seed=0)
    np.testing.assert_array_equal(true.array[:, :, :4], imgs[:, :, :4])
    wrong_labels = (labels + 5) % 10
    wrong = pipe.inpaint(imgs, mask, wrong_labels, seed=0)
    plain = pipe(wrong_labels, seed=0)
    acc_true = evaluate(true.array, labels).accuracy
    follow_wrong = evaluate(wrong.array, wrong_labels).accuracy
    follow_plain = evaluate(plain.array, wrong_labels).accuracy
    print(
        f"right half inpainted: true label recognised {acc_true:.1%}; a wrong label followed {follow_wrong:.1%} "
        f"(the same labels from scratch: {follow_plain:.1%})"
    )
    assert acc_true >= 0.9
    assert follow_wrong < follow_plain
