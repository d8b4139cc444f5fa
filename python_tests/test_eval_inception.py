"""The FID Inception-v3: strict loading of the standard weights layout, TF1 bilinear resizing
against an independent numpy transcription of TensorFlow's formula, input conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_fixtures import LAYOUT, random_inception_state, write_inception_file

from marengine.evaluation.inception import load_inception, resize_bilinear_tf1


def tf1_resize_numpy(img: np.ndarray, out: int) -> np.ndarray:
    """TensorFlow 1.x resize_bilinear (align_corners=False, half_pixel_centers=False) of [H, W]:
    scale = in/out in float32; source = i * scale; top/bottom rows lerped, then between them."""
    h, w = img.shape
    res = np.zeros((out, out), np.float64)
    sy, sx = np.float32(h) / np.float32(out), np.float32(w) / np.float32(out)
    for i in range(out):
        y = np.float32(i) * sy
        y0 = int(np.floor(y))
        y1, fy = min(y0 + 1, h - 1), float(y - y0)
        for j in range(out):
            x = np.float32(j) * sx
            x0 = int(np.floor(x))
            x1, fx = min(x0 + 1, w - 1), float(x - x0)
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * fx
            bot = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * fx
            res[i, j] = top + (bot - top) * fy
    return res


@pytest.mark.parametrize("hw", [(8, 8), (33, 20), (299, 299), (512, 300)])
def test_resize_matches_tf1_formula(hw):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=hw).astype(np.float64)
    out = 31
    got = resize_bilinear_tf1(torch.from_numpy(img).float()[None, None], out)[0, 0].numpy()
    np.testing.assert_allclose(got, tf1_resize_numpy(img, out), atol=2e-3, rtol=0)


def test_resize_299_is_identity():
    x = torch.randint(0, 256, (2, 3, 299, 299)).float()
    assert torch.equal(resize_bilinear_tf1(x, 299), x)


@pytest.mark.slow  # builds the Inception network
def test_layout_loads_strictly(tmp_path):
    n_convs = sum(len(v) for v in LAYOUT.values())
    assert n_convs == 94  # the 94 conv+BN units of the TF graph
    state = random_inception_state(seed=3)
    untracked = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    for name, saved in (("tracked", state), ("untracked", untracked)):  # TF conversions lack the BN counters
        torch.save(saved, tmp_path / f"{name}.pth")
        model = load_inception(tmp_path / f"{name}.pth")
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k


@pytest.mark.slow  # builds the Inception network
def test_wrong_keys_are_named(tmp_path):
    state = random_inception_state()
    state.pop("Mixed_6b.branch7x7_2.conv.weight")
    state["aux_logits.fc.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing keys \(Mixed_6b.branch7x7_2.conv.weight\).*unexpected keys"):
        load_inception(tmp_path / "bad.pth")
    state = random_inception_state()
    state["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"wrong shapes: fc.weight \[1000, 2048\]"):
        load_inception(tmp_path / "shape.pth")
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05"):
        load_inception(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="could not be read"):
        load_inception(tmp_path / "junk.pth")


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    return load_inception(write_inception_file(tmp_path_factory.mktemp("w") / "w.pth"))


def test_features_shapes_layouts_and_batching(inception):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(2, 24, 40, 3), dtype=np.uint8)  # [N, H, W, 3]
    pool, logits = inception(imgs)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    assert pool.dtype == logits.dtype == torch.float32
    assert pool.min() >= 0 and pool.std() > 0  # after ReLU and average pooling
    pool_t, _ = inception(torch.from_numpy(imgs).permute(0, 3, 1, 2))  # [N, 3, H, W] tensor: same
    torch.testing.assert_close(pool_t, pool, rtol=0, atol=0)
    one, one_logits = inception(imgs[1:2])  # batch composition does not matter
    torch.testing.assert_close(one, pool[1:2], rtol=1e-5, atol=1e-5)
    # logits are the pool features times fc.weight^T, without the bias
    w = inception.fc.weight.double()
    torch.testing.assert_close(one_logits.double(), one.double() @ w.T, rtol=1e-4, atol=1e-4)


def test_bad_image_inputs(inception):
    with pytest.raises(ValueError, match="uint8"):
        inception(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        inception(np.zeros((1, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        inception(torch.zeros(8, 8, 3, dtype=torch.uint8))
