"""The main job end to end, and the sample and edit commands on its outputs.

The plumbing tests run the demo with a short recipe (a few steps, 2 samples per digit: seconds,
whatever the machine's load); the quality gate and the inpainting test need the full recipe
(800 steps, minutes) and are marked slow (`pytest -m slow`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import marengine_cli


@pytest.fixture(scope="module")
def short_demo(short_demo_root) -> Path:
    """`marengine demo` with a short recipe (conftest.SHORT_DEMO): the same command and outputs in seconds."""
    return short_demo_root / "runs" / "demo"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """The full demo (the README's main job): minutes on a CPU, so only for the slow tests."""
    out = tmp_path_factory.mktemp("demo")
    proc = marengine_cli(
        "demo", "--out-dir", str(out), "--no-progress", "--no-evaluate", timeout=3600, one_thread=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(out / "grid.png") in proc.stdout
    return out


def test_demo_writes_outputs(short_demo):
    for name in ("grid.png", "samples.npz", "last.pth", "ema/config.json", "ema/model.safetensors"):
        assert (short_demo / name).is_file(), name
    data = np.load(short_demo / "samples.npz")
    assert data["images"].dtype == np.uint8 and data["images"].shape == (20, 8, 8, 1)
    assert sorted(np.bincount(data["labels"]).tolist()) == [2] * 10


def test_demo_writes_one_png_per_sample(short_demo):
    """samples/class{c}_{i}.png is the i-th sample of digit c, pixel for pixel the npz's."""
    from PIL import Image

    data = np.load(short_demo / "samples.npz")
    pngs = sorted(p.name for p in (short_demo / "samples").glob("*.png"))
    assert pngs == sorted(f"class{c}_{i}.png" for c in range(10) for i in range(2))
    for c in (0, 7):
        (first, second) = np.flatnonzero(data["labels"] == c)
        for i, k in enumerate((first, second)):
            with Image.open(short_demo / "samples" / f"class{c}_{i}.png") as im:
                assert im.mode == "L" and im.size == (8, 8)
                np.testing.assert_array_equal(np.asarray(im), data["images"][k, :, :, 0])


@pytest.mark.slow  # a marengine process
def test_demo_png_feeds_edit(short_demo, tmp_path):
    """A demo PNG goes straight into `marengine edit`; samples.npz keeps results, inputs and
    masks apart, and the kept pixels are the input's."""
    png = short_demo / "samples" / "class3_0.png"
    args = ["--images", str(png), "--box", "4", "0", "8", "8", "--labels", "3", "--num-iter", "2", "--threads", "1"]
    proc = marengine_cli("edit", "--checkpoint", str(short_demo / "ema"), *args, "--out", str(tmp_path / "e"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = np.load(tmp_path / "e" / "samples.npz")
    assert set(saved.files) == {"images", "labels", "inputs", "masks"}
    demo = np.load(short_demo / "samples.npz")
    src = demo["images"][np.flatnonzero(demo["labels"] == 3)[0]]  # what class3_0.png holds
    np.testing.assert_array_equal(saved["inputs"][0], src)
    assert saved["images"].shape == (1, 8, 8, 1) and saved["masks"].shape == (1, 8, 8)
    assert saved["masks"][0, :, 4:].all() and not saved["masks"][0, :, :4].any()
    np.testing.assert_array_equal(saved["images"][0, :, :4], src[:, :4])


@pytest.mark.slow
def test_demo_quality_gate(demo_dir):
    """An independent classifier trained on real digits recognises >= 90% of the samples."""
    from marengine.evaluation.digits import evaluate

    data = np.load(demo_dir / "samples.npz")
    report = evaluate(data["images"], data["labels"])
    print(report)
    assert report.classifier_accuracy >= 0.9  # the judge itself is competent
    assert report.accuracy >= 0.9, str(report)


@pytest.mark.slow  # two marengine processes
def test_sample_command(short_demo, tmp_path):
    """The training checkpoint and the EMA folder sample the same images (same EMA weights, seed)."""
    got = []
    for name, checkpoint in (("s", short_demo / "last.pth"), ("t", short_demo / "ema")):
        args = ["--labels", "3", "3", "7", "--num-iter", "8", "--cfg", "2.0", "--seed", "1", "--threads", "1"]
        proc = marengine_cli("sample", "--checkpoint", str(checkpoint), *args, "--out", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr[-3000:]
        got.append(np.load(tmp_path / name / "samples.npz"))
    a, b = got
    assert a["images"].shape == (3, 8, 8, 1) and a["labels"].tolist() == [3, 3, 7]
    assert np.array_equal(a["images"], b["images"])


@pytest.mark.slow  # two marengine processes
def test_sample_command_bad_label(short_demo, tmp_path):
    proc = marengine_cli(
        "sample", "--checkpoint", str(short_demo / "last.pth"), "--labels", "12", "--out", str(tmp_path / "x")
    )
    assert proc.returncode == 2 and "--labels must be class indices in [0, 10)" in proc.stderr
    proc = marengine_cli("train", "--resume", str(tmp_path / "nothing.pth"), "--out-dir", str(tmp_path / "y"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


@pytest.mark.slow
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
