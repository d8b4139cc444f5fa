"""Hostile files and settings (issue 17, points 2-6 and the WEAK classes): every size read from
a file is checked against the weights or shards it describes and against the caps of
marengine.limits before anything is allocated; a path read from a file stays inside its
folder; settings that make the sampler overflow are bounded, and a non-finite result fails
naming the setting; metadata that contradicts the model is refused; every image mode is read
the same way for training and editing. Each case must end in one clear line and leave
nothing behind. Models are tiny and random, files a few kilobytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL
from PIL import Image

from marengine import limits
from marengine.cli import main as cli_main
from marengine.config import ARConfig, MARConfig, VQConfig, family_config
from marengine.models import MAR
from marengine.models.loading import build_model, load_model

# ---------------------------------------------------------------- helpers


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run the CLI in this process: (exit code, stderr)."""
    try:
        code = cli_main(argv)
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    text = err.replace("\r", "\n")
    lines = [ln for ln in text.splitlines() if ln.strip() and "%|" not in ln]  # progress bars aside
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def digits_model(seed: int = 0, head_scale: float | None = None) -> MAR:
    """mar_digits shrunk (conftest.SMALL): pixel tokens of 1 channel, 2x2 pixels, 8x8 images.
    head_scale: the head's weights drawn N(0, head_scale) (the official init zeroes its output
    layer), so that its chain overflows."""
    torch.manual_seed(seed)
    model = MAR.from_config(MARConfig.from_name("mar_digits", num_sampling_steps="5", **SMALL)).eval()
    if head_scale is not None:
        with torch.no_grad():
            for p in model.diffloss.parameters():
                if p.ndim == 2:
                    p.normal_(0.0, head_scale)
    return model


@pytest.fixture
def folder(tmp_path) -> Path:
    """A pretrained folder of the small digits model with its pixel tokenizer."""
    return digits_model().save_pretrained(tmp_path / "m", tokenizer={"kind": "pixel", "channels": 1, "stride": 2})


def edit_json(path: Path, **changes) -> dict:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))
    return d


@pytest.fixture
def no_build(monkeypatch):
    """Fail the test if a model is built or weights are read (the check must come first)."""
    import safetensors.torch

    def refuse(*a, **k):
        raise AssertionError("the model was built or its weights read before the sizes were checked")

    monkeypatch.setattr(MAR, "__init__", refuse)  # the configuration's own checks still run first
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)


# ---------------------------------------------------------------- point 2: sizes in config.json
@pytest.mark.parametrize(
    "field, value",
    [
        ("encoder_depth", 1_000_000),
        ("decoder_depth", 3),
        ("encoder_embed_dim", 1 << 20),
        ("diffloss_w", 64),
        ("diffloss_d", 0),
        ("class_num", -5),
    ],
)
def test_config_json_sizes_are_checked_against_the_weights_header(folder, no_build, field, value):
    edit_json(folder / "config.json", **{field: value})
    with pytest.raises(ValueError, match=rf"config\.json: field '{field}' is {value} but .*model\.safetensors"):
        load_model(folder)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("img_size", 10**9, r"img_size must be an integer in \[1, 4096\]"),
        ("buffer_size", -1, r"buffer_size must be an integer in \[0, "),
        ("encoder_num_heads", 10**6, r"encoder_num_heads must be an integer in \[1, 256\]"),
        ("vae_stride", 0, r"vae_stride must be an integer in \[1, "),
    ],
)
def test_config_json_caps_name_the_file_and_field(folder, no_build, field, value, match):
    edit_json(folder / "config.json", **{field: value})
    with pytest.raises(ValueError, match=rf"config\.json: .*{match}"):
        load_model(folder)


def test_config_json_within_the_caps_but_not_the_weights_is_refused_before_reading_them(folder, monkeypatch):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("weights read"))
    edit_json(folder / "config.json", img_size=16)  # 64 tokens: positional embeddings of another shape
    with pytest.raises(ValueError, match=r"model\.safetensors does not match its model configuration.*pos_embed"):
        load_model(folder)


def test_the_caps_hold_every_preset():
    from marengine.config import AR_PRESETS, PRESETS

    for cfg in PRESETS.values():
        MARConfig.from_dict(cfg.to_dict())
    for cfg in AR_PRESETS.values():
        ARConfig.from_dict(cfg.to_dict())
    with pytest.raises(ValueError, match=r"AR config depth must be an integer in \[1, 256\]"):
        ARConfig(depth=limits.MAX_DEPTH + 1)
    with pytest.raises(ValueError, match=r"VQ config hidden must be an integer in \[1, 16384\]"):
        VQConfig(hidden=10**9)
    with pytest.raises(ValueError, match=r"VQ config codebook_size must be an integer in \[1, "):
        VQConfig(codebook_size=-1)


def test_training_checkpoint_config_is_checked_against_its_weights(tmp_path):
    model = digits_model()
    state = model.state_dict()
    cfg = {**model.config.to_dict(), "encoder_depth": 1_000_000}
    path = tmp_path / "last.pth"
    torch.save({"model": state, "model_ema": state, "config": cfg, "architecture": "mar"}, path)
    with pytest.raises(ValueError, match=r"last\.pth \(its 'config'\): field 'encoder_depth' is 1000000"):
        load_model(path)
    torch.save({"model": state, "config": {**cfg, "encoder_depth": 1, "buffer_size": -3}}, path)
    with pytest.raises(ValueError, match=r"last\.pth \(its 'config'\).*buffer_size must be"):
        load_model(path)


def test_causal_ar_and_vq_folders_are_checked_too(tmp_path):
    from marengine.models.vq import DigitsVQ

    arch, cfg = family_config("ar_raster_tiny")
    ar = build_model(arch, cfg, device="cpu")
    ar.save_pretrained(tmp_path / "ar")
    edit_json(tmp_path / "ar" / "config.json", depth=200)
    with pytest.raises(ValueError, match=r"config\.json: field 'depth' is 200 but .* holds weights for 2"):
        load_model(tmp_path / "ar")
    DigitsVQ.from_config(VQConfig()).save_pretrained(tmp_path / "vq")
    edit_json(tmp_path / "vq" / "config.json", hidden=10**9)
    with pytest.raises(ValueError, match=r"vq/config\.json: VQ config hidden must be an integer in \[1, 16384\]"):
        DigitsVQ.from_pretrained(tmp_path / "vq")


def test_doctor_refuses_a_huge_check_head(capsys):
    code, err = cli(["doctor", "--cpu-width", "100000"], capsys)
    assert code == 2
    assert "--cpu-width must be an integer in [1, 4096], got 100000" in one_line(err)
    code, err = cli(["doctor", "--depth", "0"], capsys)
    assert code == 2 and "--depth must be an integer in [1, 32]" in one_line(err)


# ---------------------------------------------------------------- point 2 and 6: latent cache index.json
@pytest.fixture
def cache(tmp_path) -> Path:
    """A 5-item cache in shards of 2 (moments [2, 2, 2, 2]) written by the real writer."""
    from marengine.training.latent_cache import LatentCacheWriter

    settings = dict(num_items=5, shard_size=2, moments_shape=[2, 2, 2, 2], dtype="float32", scale=0.5, num_classes=3)
    w = LatentCacheWriter(tmp_path / "cache", settings)
    w.prepare()
    rng = np.random.default_rng(0)
    for i in range(w.num_shards):
        n = len(w.item_range(i))
        w.write(i, rng.integers(0, 3, n), rng.standard_normal((n, 2, 2, 2, 2)).astype(np.float32))
    w.finalize()
    return tmp_path / "cache"


def _index(cache: Path, edit) -> None:
    index = json.loads((cache / "index.json").read_text())
    edit(index)
    (cache / "index.json").write_text(json.dumps(index))


def test_a_good_cache_opens(cache):
    from marengine.training.latent_dataset import LatentCacheDataset

    ds = LatentCacheDataset(cache)
    assert len(ds) == 5 and ds.latent_shape == (1, 2, 2)
    x, label = ds.get(4, torch.Generator().manual_seed(0))
    assert x.shape == (1, 2, 2) and 0 <= label < 3


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda ix: ix["shards"][0].update(count=300_000_000), r"shard .*shard-00000-of-00003\.npy does not match"),
        (lambda ix: ix["shards"][1].update(count=-2), r"shards\[1\]: field 'count' must be an integer >= 0"),
        (lambda ix: ix["shards"][1].update(count="2"), r"shards\[1\]: field 'count' must be an integer"),
        (lambda ix: ix.update(shards=[], num_items=0), r"the cache holds no items"),
        (lambda ix: ix.update(num_items=10**9), r"field 'num_items' is 1000000000, its shards hold 5"),
        (lambda ix: ix["settings"].update(num_classes=-1), r"settings: field 'num_classes' must be an integer in"),
        (lambda ix: ix["settings"].update(moments_shape=[2, 2, 10**6, 2]), r"moments_shape: field 'h' must be"),
        (lambda ix: ix["settings"].update(scale=float("inf")), r"field 'scale' must be a finite number"),
        (lambda ix: ix.update(shards={"a": 1}), r"field 'shards' must be a list"),
        (lambda ix: ix["shards"].append({"name": "../outside.npy", "count": 1}), r"outside its folder"),
        (lambda ix: ix["shards"][0].update(name="/etc/passwd"), r"outside its folder"),
        (lambda ix: ix["shards"][0].update(name=7), r"names a file 7, which is not a file name"),
    ],
)
def test_cache_index_sizes_and_names_are_checked_at_open(cache, edit, match):
    from marengine.training.latent_dataset import LatentCacheDataset

    _index(cache, edit)
    with pytest.raises(ValueError, match=match):
        LatentCacheDataset(cache)


def test_cache_shard_symlink_leading_outside_is_refused(cache, tmp_path):
    from marengine.training.latent_dataset import LatentCacheDataset

    outside = tmp_path / "elsewhere.npy"
    os.replace(cache / "shard-00002-of-00003.npy", outside)
    os.symlink(outside, cache / "shard-00002-of-00003.npy")
    with pytest.raises(ValueError, match=r"leads outside its folder .*symbolic link"):
        LatentCacheDataset(cache)


def test_cache_index_that_is_not_json_is_one_line(cache, capsys):
    from marengine.training.latent_dataset import LatentCacheDataset

    (cache / "index.json").write_text('{"format": ')
    with pytest.raises(ValueError, match=r"index\.json is not valid JSON \(a latent cache index"):
        LatentCacheDataset(cache)


# ---------------------------------------------------------------- point 4: tokenizer.json against the model
@pytest.mark.parametrize(
    "spec, match",
    [
        ({"kind": "pixel", "channels": 3, "stride": 2}, r"does not fit the model: .*vae_embed_dim 12 \(model: 4\)"),
        ({"kind": "pixel", "channels": 1, "stride": 4}, r"does not fit the model: .*vae_stride 4 \(model: 2\)"),
        ({"kind": "vae", "embed_dim": 4, "ckpt": None}, r"does not fit the model: .*vae_stride 16 \(model: 2\)"),
        ({"kind": "vq", "codebook_size": 8, "stride": 2}, r"describes a 'vq' tokenizer, but the model needs"),
        ({"kind": "pixel", "channels": -1, "stride": 2}, r"field 'channels' must be an integer in \[1, "),
        ({"kind": "pixel", "channels": 2, "stride": 2}, r"field 'channels' must be 1 \(grayscale\) or 3"),
        ({"kind": "pixel", "stride": 2}, r"field 'channels' is missing"),
        ({"kind": "magic"}, r"must hold a tokenizer spec"),
        ([1, 2], r"must hold a tokenizer spec"),
    ],
)
def test_tokenizer_json_that_contradicts_the_model_is_refused(folder, spec, match):
    from marengine.pipeline import MARPipeline

    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"tokenizer\.json.*" + match):
        load_model(folder)
    with pytest.raises(ValueError, match=match):
        MARPipeline.from_pretrained(folder, device="cpu")


def test_tokenizer_json_mismatch_through_the_cli_writes_nothing(folder, tmp_path, capsys):
    (folder / "tokenizer.json").write_text(json.dumps({"kind": "pixel", "channels": 3, "stride": 2}))
    out = tmp_path / "out"
    code, err = cli(
        ["sample", "--checkpoint", str(folder), "--labels", "1", "--num-iter", "2", "--out", str(out)], capsys
    )
    assert code == 2 and "does not fit the model" in one_line(err)
    assert not out.exists()


def test_training_checkpoint_tokenizer_is_checked(tmp_path):
    model = digits_model()
    path = tmp_path / "last.pth"
    state = model.state_dict()
    spec = {"kind": "pixel", "channels": 1, "stride": 4}
    torch.save({"model": state, "config": model.config.to_dict(), "tokenizer": spec}, path)
    with pytest.raises(ValueError, match=r"last\.pth \(its 'tokenizer'\) does not fit the model"):
        load_model(path)


# ---------------------------------------------------------------- point 3: settings that overflow the sampler
@pytest.mark.parametrize("setting", ["cfg", "temperature"])
def test_absurd_cfg_and_temperature_are_refused_by_the_api(setting):
    from marengine.models.tokenizers import PixelTokenizer
    from marengine.pipeline import MARPipeline
    from marengine.sampling.engine import SampleSettings

    model = digits_model()
    kw = {"cfg": 1.0, "temperature": 1.0, setting: 1e30}
    cap = limits.MAX_CFG if setting == "cfg" else limits.MAX_TEMPERATURE
    bound = rf"{setting} must be a finite number in \[[01].0, {cap}\]"
    with pytest.raises(ValueError, match=bound):
        model.sample_tokens(1, 2, kw["cfg"], "linear", torch.tensor([1]), kw["temperature"])
    with pytest.raises(ValueError, match=bound):
        SampleSettings(**kw)
    pipe = MARPipeline(model, PixelTokenizer(1, 2))
    with pytest.raises(ValueError, match=bound):
        pipe([1], num_iter=2, **kw)


@pytest.mark.parametrize("flag", ["--cfg", "--temperature"])
def test_absurd_cfg_and_temperature_are_refused_by_the_cli(folder, tmp_path, capsys, flag):
    out = tmp_path / "out"
    argv = ["sample", "--checkpoint", str(folder), "--labels", "1", "--num-iter", "2", flag, "1e30", "--out", str(out)]
    code, err = cli(argv, capsys)
    assert code == 2
    assert f"{flag} must be a finite number in [" in one_line(err)
    assert not out.exists()


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_non_finite_latents_fail_naming_the_setting(backend):
    from marengine.ops import dispatch

    if backend == "native" and not dispatch.native_available("cpu"):
        pytest.skip("native CPU kernels not built")
    model = digits_model(head_scale=1.0)  # a head whose chain overflows
    labels = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"non-finite latents .*cfg=50 made the sampler overflow: lower it"):
        model.sample_tokens(2, 2, 50.0, "constant", labels, 1.0, backend=backend)
    with pytest.raises(ValueError, match=r"non-finite latents .*temperature=9 made the sampler overflow"):
        model.sample_tokens(2, 2, 1.0, "constant", labels, 9.0, backend=backend)
    with pytest.raises(ValueError, match=r"non-finite tokens .*cfg=50"):  # the head alone (the official API)
        model.diffloss.sample(torch.randn(4, model.diffloss.net.cond_embed.in_features), 1.0, 50.0, backend=backend)


def test_non_finite_result_through_the_cli_writes_nothing(tmp_path, capsys):
    folder = digits_model(head_scale=1.0).save_pretrained(
        tmp_path / "m", tokenizer={"kind": "pixel", "channels": 1, "stride": 2}
    )
    out = tmp_path / "out"
    argv = ["sample", "--checkpoint", str(folder), "--labels", "1", "--num-iter", "2", "--cfg", "50"]
    code, err = cli([*argv, "--out", str(out)], capsys)
    assert code == 2 and "non-finite latents" in one_line(err) and "cfg=50" in err
    assert not (out / "grid.png").exists() and not (out / "samples.npz").exists()


def test_non_finite_result_of_the_causal_and_ce_models(tmp_path):
    arch, cfg = family_config("ar_raster_tiny", num_sampling_steps="3")
    torch.manual_seed(0)
    ar = build_model(arch, cfg, device="cpu")
    ar.load_state_dict({k: torch.randn_like(v) for k, v in ar.state_dict().items()})
    with pytest.raises(ValueError, match=r"non-finite latents .*cfg=80"):
        ar.eval().sample_tokens(1, None, 80.0, "constant", torch.tensor([1]), 1.0)
    arch, cfg = family_config("mar_tiny", "ce")
    ce = build_model(arch, cfg, device="cpu").eval()
    ce.load_state_dict({k: torch.randn_like(v) for k, v in ce.state_dict().items()})
    with torch.no_grad():
        ce.ce_head.linear.weight.mul_(1e37)  # finite weights whose logits overflow
    with pytest.raises(ValueError, match=r"non-finite logits .*cfg=2"):
        ce.sample_tokens(1, 2, 2.0, "constant", torch.tensor([1]), 1.0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy reports the overflow the test provokes
def test_non_finite_result_of_the_deploy_sampler():
    from marengine.export.deploy import DeployedMAR
    from marengine.export.deploy_loop import sample_tokens

    cfg = MARConfig.from_name("mar_digits", num_sampling_steps="5", **SMALL)
    meta = {"config": cfg.to_dict(), "sampling": {"seq_len": 16, "token_embed_dim": 4, "class_num": 10}}

    def backbone(x, idx, lab, unc):  # [B, L, C] -> z [B, L, D]
        return np.zeros((x.shape[0], 16, 32), np.float32)

    def head(x, t, z):  # eps and variance that overflow the chain
        return np.full((x.shape[0], 8), 3e38, np.float32)

    dm = DeployedMAR(meta, backbone, head, None)
    with pytest.raises(ValueError, match=r"non-finite latents .*cfg=20 made the sampler overflow"):
        sample_tokens(dm, [1], 2, cfg=20.0, cfg_schedule="constant")
    with pytest.raises(ValueError, match=r"cfg must be a finite number in \[1.0, 100.0\]"):
        sample_tokens(dm, [1], 2, cfg=1e30)


# ---------------------------------------------------------------- deploy.json
@pytest.fixture
def deploy_folder(tmp_path) -> Path:
    """deploy.json of the small digits model (no .onnx files: every check here comes first)."""
    from marengine.export.onnx import deploy_metadata

    model = digits_model()
    meta = deploy_metadata(
        model, {"kind": "pixel", "latent_scale": 1.0, "image_channels": 1, "embed_dim": 4, "stride": 2}
    )
    meta["files"] = {"backbone": "backbone.onnx", "head": "head.onnx", "decoder": "decoder.onnx"}
    out = tmp_path / "export"
    out.mkdir()
    (out / "deploy.json").write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m["sampling"].update(seq_len=10**9), r"field 'sampling\.seq_len' is 1000000000 but its model"),
        (lambda m: m["sampling"].update(token_embed_dim=-1), r"field 'sampling\.token_embed_dim' is -1"),
        (lambda m: m["config"].update(encoder_depth=10**6), r"\(config\): MAR config encoder_depth must be an int"),
        (lambda m: m["config"].update(img_size=0), r"\(config\): MAR config img_size must be an integer"),
        (lambda m: m["tokenizer"].update(stride=4), r"\(tokenizer\): field 'stride' is 4 but the model's vae_stride"),
        (lambda m: m["tokenizer"].update(image_channels=7), r"field 'image_channels' must be 1 or 3"),
        (lambda m: m["files"].update(backbone="../../x.onnx"), r"names '\.\./\.\./x\.onnx', outside its folder"),
        (lambda m: m["files"].update(head="/tmp/head.onnx"), r"names '/tmp/head\.onnx', outside its folder"),
        (lambda m: m.update(format_version="1"), r"format version '1'"),
    ],
)
def test_deploy_json_is_checked_before_use(deploy_folder, capsys, edit, match):
    from marengine.export import deploy as dep

    meta = json.loads((deploy_folder / "deploy.json").read_text())
    edit(meta)
    (deploy_folder / "deploy.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=match):
        dep.DeployedMAR.load(deploy_folder)
    out = deploy_folder.parent / "samples"
    code = dep.main(["--model", str(deploy_folder), "--labels", "1", "--num-iter", "2", "--out", str(out)])
    assert code == 2 and one_line(capsys.readouterr().err).startswith("error: ")
    assert not (out / "grid.png").exists()


def test_deploy_json_symlink_leading_outside_is_refused(deploy_folder, tmp_path):
    from marengine.export.deploy import DeployedMAR

    (tmp_path / "elsewhere.onnx").write_bytes(b"not onnx")
    os.symlink(tmp_path / "elsewhere.onnx", deploy_folder / "backbone.onnx")
    with pytest.raises(ValueError, match=r"'backbone\.onnx', which leads outside its folder"):
        DeployedMAR.load(deploy_folder)


# ---------------------------------------------------------------- point 5: images
def _write(path: Path, im: Image.Image) -> Path:
    im.save(path)
    return path


def test_16_bit_grayscale_is_scaled_not_saturated(tmp_path):
    from marengine.editing import load_images
    from marengine.imageio import read_image

    wide = np.random.default_rng(0).integers(0, 65536, (8, 8), dtype=np.uint16)
    path = _write(tmp_path / "g16.png", Image.fromarray(wide))
    expected = np.floor(wide.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)  # round(v / 257)
    assert np.array_equal(read_image(path, 1)[..., 0], expected)
    rgb = read_image(path, 3)
    assert all(np.array_equal(rgb[..., c], expected) for c in range(3))
    assert np.array_equal(load_images([path], 1)[0, ..., 0], expected)  # the edit command's reader


def test_palette_and_alpha_images(tmp_path):
    from marengine.imageio import read_image

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).quantize(16)
    path = _write(tmp_path / "p.png", pal)
    assert np.array_equal(read_image(path, 3), np.asarray(pal.convert("RGB")))
    opaque = _write(tmp_path / "rgba.png", Image.fromarray(np.dstack([rgb, np.full((8, 8), 255, np.uint8)])))
    assert np.array_equal(read_image(opaque, 3), rgb)
    gray, alpha = rng.integers(0, 256, (8, 8), dtype=np.uint8), rng.integers(0, 256, (8, 8), dtype=np.uint8)
    la = _write(tmp_path / "la.png", Image.fromarray(np.dstack([gray, alpha]), "LA"))
    over_black = np.floor(gray.astype(np.float64) * alpha / 255.0 + 0.5).astype(np.uint8)
    assert np.array_equal(read_image(la, 1)[..., 0], over_black)
    floats = _write(tmp_path / "f.tif", Image.fromarray(np.zeros((8, 8), np.float32)))
    with pytest.raises(ValueError, match=r"f\.tif is a floating-point image \(mode F\)"):
        read_image(floats, 1)


def test_training_reads_16_bit_images_as_editing_does(tmp_path):
    from marengine.imageio import read_image
    from marengine.training.data import ImageFolderDataset

    wide = np.random.default_rng(2).integers(0, 65536, (8, 8), dtype=np.uint16)
    (tmp_path / "data" / "a").mkdir(parents=True)
    path = _write(tmp_path / "data" / "a" / "x.png", Image.fromarray(wide))
    ds = ImageFolderDataset(tmp_path / "data", size=8, crop=False, flip=False)
    arr = ds.load(0)
    assert np.array_equal(arr, read_image(path, 3))
    assert (arr == 255).mean() < 0.05  # not saturated to white (PIL's own I;16 -> RGB clips 98% of it)


def test_an_edit_keeps_exactly_the_16_bit_input(tmp_path):
    from marengine.editing import load_images
    from marengine.models.tokenizers import PixelTokenizer
    from marengine.pipeline import MARPipeline

    wide = np.random.default_rng(3).integers(0, 65536, (8, 8), dtype=np.uint16)
    expected = np.floor(wide.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    pipe = MARPipeline(digits_model(), PixelTokenizer(1, 2))
    mask = np.zeros((8, 8), bool)
    mask[:, 4:] = True  # generate the right half, keep the left
    for given in (Image.fromarray(wide), load_images([_write(tmp_path / "in.png", Image.fromarray(wide))], 1)):
        out = pipe.inpaint(given, mask, [3], num_iter=2)
        assert np.array_equal(out.array[0, :, :4, 0], expected[:, :4])


def test_decompression_bomb_is_one_line(tmp_path, monkeypatch, capsys):
    from marengine.imageio import read_image
    from marengine.training.data import ImageFolderDataset

    (tmp_path / "data" / "a").mkdir(parents=True)
    path = _write(tmp_path / "data" / "a" / "big.png", Image.fromarray(np.zeros((64, 64), np.uint8)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over the warning, over the error
    with pytest.raises(ValueError, match=r"big\.png: refused, its size exceeds PIL's limit .*decompression bomb"):
        read_image(path, 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # between the warning and the error
    with pytest.raises(ValueError, match=r"decompression bomb"):
        read_image(path, 1)
    bad = ImageFolderDataset(tmp_path / "data", size=8, crop=True).load(0)
    assert "decompression bomb" in bad.reason and "\n" not in bad.reason
    folder = digits_model().save_pretrained(tmp_path / "m", tokenizer={"kind": "pixel", "channels": 1, "stride": 2})
    argv = ["edit", "--checkpoint", str(folder), "--images", str(path), "--box", "0", "0", "4", "4", "--labels", "1"]
    code, err = cli([*argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "decompression bomb" in one_line(err)
    assert not (tmp_path / "out" / "grid.png").exists()


# ---------------------------------------------------------------- the WEAK classes
@pytest.mark.parametrize(
    "flag, value, match",
    [
        ("--sampler", "ddim:x", "the eta of ddim:ETA must be a number in [0, 1]"),
        ("--sampler", "DDPM", "unknown head sampler 'DDPM'"),
        ("--steps", "15-", "a diffusion-step schedule is an int"),
        ("--cache", "refresh=2,tokens=2", "bad cache setting 'tokens=2'"),
        ("--cache", "refresh=2,refresh=3", "cache setting 'refresh' is given twice"),
    ],
)
def test_knob_strings_are_one_line(folder, tmp_path, capsys, flag, value, match):
    out = tmp_path / "out"
    code, err = cli(["sample", "--checkpoint", str(folder), "--labels", "1", flag, value, "--out", str(out)], capsys)
    assert code == 2 and match in one_line(err)
    assert not out.exists()


def test_step_lists_of_the_api(folder):
    from marengine.schedules import step_schedule

    for bad in (["a"], [None], [1.5]):
        with pytest.raises(TypeError, match="diffusion steps must be integers"):
            step_schedule(bad, 3)
    assert step_schedule([np.int64(3), 4.0], 3) == [3, 4, 4]


def test_from_pretrained_of_the_wrong_kind_of_folder(folder, tmp_path):
    from marengine.pipeline import MARPipeline

    run = tmp_path / "run"
    (run / "ema").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (run / "ema" / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(FileNotFoundError, match=r"is a training run: load .*ema"):
        MARPipeline.from_pretrained(run, device="cpu")
    export = tmp_path / "export"
    export.mkdir()
    (export / "deploy.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"is an ONNX export"):
        load_model(export)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing")


def test_from_pretrained_of_damaged_files(folder):
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])  # the data cut short, the header whole
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        load_model(folder)
    weights.write_bytes(data)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config\.json must hold a JSON object"):
        load_model(folder)
    (folder / "config.json").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        load_model(folder)
