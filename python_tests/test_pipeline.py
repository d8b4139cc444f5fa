"""MARPipeline and editing (inpainting, outpainting, completion) through the API, the CLI and
the torch-free deploy sampler: known tokens come back exactly, bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from marengine.models.tokenizers import PixelTokenizer, VAETokenizer
from marengine.models.vae import AutoencoderKL
from marengine.pipeline import MARPipeline
from marengine.sampling.engine import SampleSettings


@pytest.fixture(scope="module")
def pipe(run_dir):
    return MARPipeline.from_pretrained(run_dir / "ema", device="cpu", settings=SampleSettings(num_iter=6, cfg=2.0))


def digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 1)).astype(np.uint8)


def right_half() -> np.ndarray:
    m = np.zeros((8, 8), bool)
    m[:, 4:] = True
    return m


def test_generation_outputs(pipe):
    out = pipe([3, 1, 4], seed=5, return_latents=True)
    assert out.array.shape == (3, 8, 8, 1) and out.array.dtype == np.uint8
    assert len(out.images) == 3 and out.images[0].size == (8, 8)
    assert out.latents.shape == (3, 4, 4, 4)
    again = pipe([3, 1, 4], seed=5)
    np.testing.assert_array_equal(again.array, out.array)  # seeded
    g = torch.Generator().manual_seed(1)
    assert not np.array_equal(pipe([3, 1, 4], generator=g).array, out.array)


def test_indexed_seeds_each_block_by_its_first_index(pipe):
    """pipe.indexed (marengine sample --num-images, evaluate) is the plain call of each block with the
    generator seeded by block_seed(seed, first index): the same images however the blocks are run."""
    from marengine.sampling.balanced import block_seed

    labels = [3, 1, 4, 1, 5]
    out = pipe.indexed(labels, seed=7, batch_size=2)
    assert out.labels == labels and out.array.shape == (5, 8, 8, 1)
    for start in (0, 2, 4):
        g = torch.Generator().manual_seed(block_seed(7, start))
        block = pipe(labels[start : start + 2], seed=7, batch_size=2, generator=g, progress=False)
        np.testing.assert_array_equal(out.array[start : start + 2], block.array)
    assert not np.array_equal(out.array[:2], pipe(labels[:2], seed=7, progress=False).array)  # not the plain seed


@pytest.mark.parametrize("preset", ["official", "fast"])
def test_inpainting_keeps_known_pixels_exactly(pipe, preset):
    imgs = digits(5)
    out = pipe.inpaint(imgs, right_half(), [0, 1, 2, 3, 4], preset=preset, return_latents=True)
    np.testing.assert_array_equal(out.array[:, :, :4], imgs[:, :, :4])
    assert not np.array_equal(out.array[:, :, 4:], imgs[:, :, 4:])
    # the known latents are the encoded ones, bit for bit
    enc = PixelTokenizer(1, 2).encode(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1).mode()
    assert torch.equal(out.latents[:, :, :, :2], enc[:, :, :, :2])


def test_outpainting_and_per_image_masks(pipe):
    imgs = digits(4, seed=1)
    out = pipe.outpaint(imgs[:, :, :4], [5, 6, 7, 8], padding=(0, 0, 4, 0))
    np.testing.assert_array_equal(out.array[:, :, :4], imgs[:, :, :4])
    out = pipe.outpaint(imgs, [5, 6, 7, 8], region=(2, 2, 6, 6))
    np.testing.assert_array_equal(out.array[:, 2:6, 2:6], imgs[:, 2:6, 2:6])
    masks = np.zeros((4, 8, 8), bool)
    masks[0, :, 4:] = masks[1, 4:, :] = True  # 8 known tokens each
    masks[2, :2, :2] = True  # 15 known
    masks[3, 1, 1] = True  # one pixel unknown -> its whole token is generated
    out = pipe.inpaint(imgs, masks, [1, 2, 3, 4])
    for i in range(4):
        keep = np.ones((8, 8), bool)
        rows, cols = np.nonzero(masks[i])
        for r, c in zip(rows, cols):
            keep[r // 2 * 2 : r // 2 * 2 + 2, c // 2 * 2 : c // 2 * 2 + 2] = False
        np.testing.assert_array_equal(out.array[i][keep], imgs[i][keep])


def test_all_known_returns_the_input_and_all_unknown_generates(pipe):
    imgs = digits(2, seed=3)
    np.testing.assert_array_equal(pipe.inpaint(imgs, np.zeros((8, 8), bool), [1, 2]).array, imgs)
    out = pipe.inpaint(imgs, np.ones((8, 8), bool), [1, 2], seed=4)
    np.testing.assert_array_equal(out.array, pipe([1, 2], seed=4).array)  # plain generation, same draws order


def test_completion_in_latent_space(pipe):
    lat = torch.randn(2, 4, 4, 4).clamp(-1, 1)
    known = torch.zeros(4, 4, dtype=torch.bool)
    known[:2] = True
    out = pipe.complete(lat, known, [7, 7], return_latents=True)
    assert torch.equal(out.latents[:, :, :2], lat[:, :, :2])


def test_vae_tokenizer_keeps_the_encoded_latents():
    from marengine.config import MARConfig
    from marengine.models import MAR

    torch.manual_seed(0)
    vae = AutoencoderKL(16, ch=32, num_res_blocks=1).eval()
    model = MAR.from_config(MARConfig.from_name("mar_tiny", img_size=32, num_sampling_steps="3")).eval()
    pipe = MARPipeline(model, VAETokenizer(vae), SampleSettings(num_iter=2))
    imgs = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[:, 16:] = True
    out = pipe.inpaint(imgs, mask, [1, 2], return_latents=True)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    enc = VAETokenizer(vae).encode(x).mode()
    assert torch.equal(out.latents[:, :, :, :1], enc[:, :, :, :1])


BAD = [
    (lambda p: p.inpaint(digits(2), np.zeros((7, 8), bool), [1, 2]), ValueError, "the mask must be"),
    (lambda p: p.inpaint(digits(2), np.zeros((3, 8, 8), bool), [1, 2]), ValueError, "the mask must be"),
    (lambda p: p.inpaint(np.zeros((2, 9, 9, 1), np.uint8), right_half(), [1, 2]), ValueError, "8x8 pixels"),
    (lambda p: p.inpaint(np.zeros((2, 8, 8, 3), np.uint8), right_half(), [1, 2]), ValueError, "1 channel"),
    (lambda p: p.inpaint(np.zeros((2, 8, 8, 1), np.float32), right_half(), [1, 2]), TypeError, "uint8"),
    (lambda p: p.inpaint(digits(2), right_half(), [1, 12]), ValueError, r"class indices in \[0, 10\)"),
    (lambda p: p.inpaint(digits(2), right_half(), [1]), ValueError, "one label per image"),
    (lambda p: p.inpaint(digits(2), right_half(), [1.5, 2]), TypeError, "must be an integer"),
    (lambda p: p.outpaint(digits(2), [1, 2], padding=(1, 0, 0, 0)), ValueError, "make 8x9"),
    (lambda p: p.outpaint(digits(2), [1, 2]), ValueError, "exactly one of padding"),
    (lambda p: p.outpaint(digits(2), [1, 2], region=(0, 0, 9, 4)), ValueError, "the box"),
    (lambda p: p.inpaint(torch.full((2, 1, 8, 8), 3.0), right_half(), [1, 2]), ValueError, r"in \[-1, 1\]"),
    (lambda p: p([1, 2], num_iter=0), ValueError, "num_iter must be an integer >= 1"),
    (lambda p: p([1, 2], settings="fast"), TypeError, "SampleSettings"),
]


@pytest.mark.parametrize("call, exc, match", BAD, ids=[f"bad-{i}" for i in range(len(BAD))])
def test_bad_editing_input(pipe, call, exc, match):
    with pytest.raises(exc, match=match):
        call(pipe)


def test_save_and_load_the_pipeline(pipe, tmp_path):
    folder = pipe.save_pretrained(tmp_path / "p")
    again = MARPipeline.from_pretrained(folder, device="cpu", settings=pipe.settings)
    np.testing.assert_array_equal(again([1, 2], seed=0).array, pipe([1, 2], seed=0).array)


@pytest.mark.slow  # an ONNX export and a marengine process
def test_edit_command_and_deploy_sampler_keep_known_pixels(run_dir, tmp_path):
    from PIL import Image

    from marengine.cli import main

    imgs = digits(3, seed=9)
    files = []
    for i, im in enumerate(imgs):
        files.append(str(tmp_path / f"d{i}.png"))
        Image.fromarray(im[..., 0]).save(files[-1])
    out = tmp_path / "edit"
    args = ["edit", "--checkpoint", str(run_dir / "ema"), "--images", *files, "--box", "4", "0", "8", "8",
            "--labels", "1", "2", "3", "--out", str(out), "--num-iter", "4"]  # fmt: skip
    assert main(args) == 0
    saved = np.load(out / "samples.npz")
    res = saved["images"]  # the results only; the inputs and masks under their own keys
    assert res.shape == imgs.shape and saved["labels"].tolist() == [1, 2, 3]
    np.testing.assert_array_equal(res[:, :, :4], imgs[:, :, :4])
    np.testing.assert_array_equal(saved["inputs"], imgs)
    want = np.zeros((3, 8, 8), bool)
    want[:, :, 4:] = True  # --box 4 0 8 8: x 4..8, all rows
    np.testing.assert_array_equal(saved["masks"], want)
    # the torch-free deploy sampler does the same through the exported encoder
    pytest.importorskip("onnxscript")
    from marengine.export import deploy
    from marengine.export.onnx import export_from_checkpoint

    export_from_checkpoint(run_dir / "ema", tmp_path / "exp")
    dout = tmp_path / "dep"
    code = deploy.main(["--model", str(tmp_path / "exp"), "--images", *files, "--box", "4", "0", "8", "8",
                        "--labels", "1", "2", "3", "--out", str(dout), "--num-iter", "4"])  # fmt: skip
    assert code == 0
    res = np.load(dout / "samples.npz")["images"]
    np.testing.assert_array_equal(res[:, :, :4], imgs[:, :, :4])
    assert not np.array_equal(res[:, :, 4:], imgs[:, :, 4:])
