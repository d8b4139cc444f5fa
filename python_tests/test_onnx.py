"""ONNX export, the onnxruntime wrappers and the torch-free sampler (marengine.export)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from marengine import schedules  # noqa: E402
from marengine.config import MARConfig  # noqa: E402
from marengine.diffusion.samplers import HeadSampler  # noqa: E402
from marengine.export import (
    deploy,  # noqa: E402
    deploy_loop,  # noqa: E402
)
from marengine.export.onnx import export_from_checkpoint, export_onnx  # noqa: E402
from marengine.export.runtime import OnnxBackbone, OnnxBackboneModule, OnnxDecoder, OnnxHead, import_onnxruntime  # noqa: E402
from marengine.models import MAR, save_pretrained  # noqa: E402
from marengine.models import orders as generation_orders  # noqa: E402
from marengine.models.tokenizers import VAETokenizer, build_tokenizer, default_tokenizer_spec  # noqa: E402
from marengine.models.vae import AutoencoderKL  # noqa: E402
from marengine.ops import reference  # noqa: E402
from marengine.ops.head_job import HeadJob

REPO = Path(__file__).resolve().parents[1]
CPU = ["CPUExecutionProvider"]
# 8x8 one-channel images, 2x2 pixel patches: L = 16 tokens of C = 4 channels, D = 64; 5 diffusion steps
# strided to end at t=800 ("ddim5"), so that untrained weights give O(1) tokens (a schedule ending at
# t=999 multiplies the first x0 by ~2e4 and drowns everything else; one e2e case covers it)
CFG = MARConfig.from_name("mar_tiny", img_size=8, vae_stride=2, vae_embed_dim=4, num_sampling_steps="ddim5")


def rel_err(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter ~ N(0, 0.05^2): the official init zeros the head's output layers."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return module.eval()


# Larger weights where std 0.05 would leave the output almost blind to the class, the known
# tokens and the guidance scale: the end-to-end test must see a wrong mask or label (tokens
# then move by ~3e-3 relative) well above its tolerance.
SENSITIVE = {
    "class_emb": 1.0,
    "fake_latent": 1.0,
    "attn.qkv": 0.2,
    "attn.proj": 0.15,
    "cond_embed": 0.5,
    "adaLN": 0.3,
    "res_blocks.0.mlp": 0.2,
    "res_blocks.1.mlp": 0.2,
}


def make_model(cfg: MARConfig = CFG, seed: int = 0) -> MAR:
    model = randomized(MAR.from_config(cfg), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = next((v for k, v in SENSITIVE.items() if k in name), None)
            if std is not None:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def known(b: int, L: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(L, generator=gen)[:k].sort().values for _ in range(b)]).reshape(b, k)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = make_model()
    out = tmp_path_factory.mktemp("export")
    paths = export_onnx(model, out, tokenizer=build_tokenizer(default_tokenizer_spec(CFG)))
    return model, out, paths


@pytest.fixture(scope="module")
def sessions(exported):
    _, out, _ = exported
    return {
        "labels": OnnxBackbone(out / "backbone.onnx", CPU),
        "embed": OnnxBackbone(out / "backbone_embed.onnx", CPU),
        "head": OnnxHead(out / "head.onnx", CPU),
        "decoder": OnnxDecoder(out / "decoder.onnx", CPU),
    }


# ---------------------------------------------------------------- files and metadata
@pytest.mark.slow  # ONNX export of the test model (module fixture)
def test_files_metadata_and_deploy_json(exported):
    model, out, paths = exported
    assert set(paths) == {"backbone", "backbone_embed", "head", "decoder", "encoder", "deploy"}
    meta = json.loads((out / "deploy.json").read_text())
    for role in ("backbone", "backbone_embed", "head", "decoder", "encoder"):
        onnx.checker.check_model(str(paths[role]))
        m = onnx.load(str(paths[role]))
        props = {p.key: p.value for p in m.metadata_props}
        assert props["marengine.format_version"] == "1"
        assert props["marengine.role"] == role
        assert json.loads(props["marengine.config"]) == CFG.to_dict()
        assert props["marengine.exporter"] == meta["exporter"][role] == "dynamo"  # torch 2.13: no fallback needed
    assert meta["config"] == CFG.to_dict()
    s = meta["sampling"]
    assert (s["seq_len"], s["seq_h"], s["token_embed_dim"], s["class_num"]) == (16, 4, 4, 10)
    assert meta["tokenizer"]["kind"] == "pixel" and meta["tokenizer"]["image_channels"] == 1
    tables = model.diffloss.gen_tables
    assert meta["diffusion"]["timestep_map"] == tables.timestep_map.tolist()
    dm = deploy.DeployedMAR.load(out, CPU)
    for sampler in ("ddpm", "ddim:0.5", "dpm++2m"):  # the deploy sampler's tables are the engine's, bit for bit
        table, timesteps = deploy_loop.head_table(dm, None, HeadSampler.parse(sampler))
        np.testing.assert_array_equal(table, tables.sampler_table(HeadSampler.parse(sampler), "cpu").numpy())
        assert timesteps.tolist() == tables.timestep_map.tolist()


@pytest.mark.slow  # ONNX export of the test model (module fixture)
def test_one_file_has_dynamic_batch_and_known_axes(exported):
    _, out, _ = exported
    g = onnx.load(str(out / "backbone.onnx")).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.input}
    assert isinstance(dims["tokens"][0], str) and dims["tokens"][1:] == [16, 4]
    assert dims["known_idx"][0] == dims["tokens"][0] and isinstance(dims["known_idx"][1], str)


# ---------------------------------------------------------------- parity
@pytest.mark.parametrize("b", [1, 3, 8])
@pytest.mark.parametrize("k", [0, 1, 15])
@pytest.mark.slow  # ONNX export of the test model (module fixture)
def test_backbone_parity(exported, sessions, b, k):
    model = exported[0]
    L, C = model.seq_len, model.token_embed_dim
    gen = torch.Generator().manual_seed(100 * b + k)
    tokens = torch.randn(b, L, C, generator=gen)
    idx = known(b, L, k, b + k)
    labels = torch.randint(0, 10, (b,), generator=gen)
    uncond = torch.arange(b) % 2 == 1
    with torch.no_grad():
        ce = torch.where(uncond[:, None], model.fake_latent, model.class_emb(labels))
        ref = model.backbone(tokens, idx, ce).numpy()
    out = sessions["labels"](tokens.numpy(), idx.numpy(), labels.numpy(), uncond.numpy())
    assert out.shape == (b, L, 64) and rel_err(out, ref) <= 1e-4
    out = sessions["embed"](tokens.numpy(), idx.numpy(), ce.numpy())
    assert rel_err(out, ref) <= 1e-4


@pytest.mark.slow  # ONNX export of the test model (module fixture)
def test_backbone_torch_tensors_and_module_adapter(exported, sessions):
    model = exported[0]
    tokens, idx = torch.randn(2, 16, 4), known(2, 16, 5, 0)
    ce = model.class_emb(torch.tensor([3, 4])).detach()
    ref = model.backbone(tokens, idx, ce).detach()
    out = OnnxBackboneModule(sessions["embed"])(tokens, idx, ce)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert rel_err(out, ref) <= 1e-4
    with pytest.raises(ValueError, match="class-embedding variant"):
        OnnxBackboneModule(sessions["labels"])


@pytest.mark.slow  # two ONNX exports
def test_backbone_fp16(exported, tmp_path):
    model = exported[0].train()  # export runs in eval mode and gives the caller's mode back
    try:
        paths = export_onnx(model, tmp_path, fp16=True, parts=("backbone",))
        assert model.training
    finally:
        model.eval()
    m = onnx.load(str(paths["backbone"]))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)  # fp16 weights inside
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 at the edges
    bb = OnnxBackbone(paths["backbone"], CPU)
    assert bb.precision == "fp16"
    for b, k in [(1, 0), (3, 1), (8, 15)]:
        tokens, idx, labels = torch.randn(b, 16, 4), known(b, 16, k, k), torch.arange(b) % 10
        with torch.no_grad():
            ref = model.backbone(tokens, idx, model.class_emb(labels)).numpy()
        out = bb(tokens.numpy(), idx.numpy(), labels.numpy())
        assert out.dtype == np.float32 and rel_err(out, ref) <= 1e-2


@pytest.mark.slow  # ONNX export of the test model (module fixture)
def test_io_binding_path(exported):
    """The IO-binding code the CUDA provider uses, run on CPU buffers: torch tensors bound in
    place (K = 0 included), numpy inputs as OrtValues."""
    model, out, _ = exported
    bb = OnnxBackbone(out / "backbone.onnx", CPU)
    bb.use_binding = True
    for k in (0, 6):
        tokens, idx, labels = torch.randn(3, 16, 4), known(3, 16, k, k), torch.tensor([1, 2, 3])
        uncond = torch.tensor([False, False, True])
        with torch.no_grad():
            ce = torch.where(uncond[:, None], model.fake_latent, model.class_emb(labels))
            ref = model.backbone(tokens, idx, ce).numpy()
        z = bb(tokens, idx, labels, uncond)
        assert isinstance(z, torch.Tensor) and rel_err(z, ref) <= 1e-4
        assert rel_err(bb(tokens.numpy(), idx.numpy(), labels.numpy(), uncond.numpy()), ref) <= 1e-4


@pytest.mark.parametrize("n", [1, 7, 59])
@pytest.mark.slow  # ONNX export of the test model (module fixture)
def test_head_step_parity(exported, sessions, n):
    net = exported[0].diffloss.net
    gen = torch.Generator().manual_seed(n)
    x, c = torch.randn(n, 4, generator=gen), torch.randn(n, 64, generator=gen)
    t = torch.randint(0, 1000, (n,), generator=gen)
    with torch.no_grad():
        ref = net(x, t, c).numpy()
    out = sessions["head"](x.numpy(), t.numpy(), c.numpy())
    assert out.shape == (n, 8) and rel_err(out, ref) <= 1e-4


@pytest.mark.slow  # ONNX export of the test model (module fixture)
def test_pixel_decoder_exact(sessions):
    lat = torch.randn(3, 4, 4, 4)
    out = sessions["decoder"](lat.numpy())
    np.testing.assert_array_equal(out, F.pixel_shuffle(lat, 2).numpy())


@pytest.mark.slow  # an ONNX export of a VAE decoder
def test_vae_decoder(tmp_path):
    vae = randomized(AutoencoderKL(embed_dim=4, ch_mult=(1, 2), ch=32, resolution=32), seed=1)
    model = make_model()
    paths = export_onnx(model, tmp_path, tokenizer=VAETokenizer(vae), parts=("decoder",))
    dec = OnnxDecoder(paths["decoder"], CPU)
    lat = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        ref = VAETokenizer(vae).decode(lat).numpy()
    out = dec(lat.numpy())
    assert out.shape == (2, 3, 8, 8) and rel_err(out, ref) <= 1e-4
    paths = export_onnx(model, tmp_path / "fp16", tokenizer=VAETokenizer(vae), parts=("decoder",), fp16=True)
    dec = OnnxDecoder(paths["decoder"], CPU)
    assert dec.precision == "fp16" and rel_err(dec(lat.numpy()), ref) <= 1e-2


@pytest.mark.slow  # an ONNX export
def test_torchscript_exporter_path(tmp_path):
    model = make_model()
    paths = export_onnx(model, tmp_path, parts=("head",), exporter="torchscript")
    head = OnnxHead(paths["head"], CPU)
    assert head.exporter == "torchscript"
    x, t, c = torch.randn(5, 4), torch.tensor([0, 3, 250, 999, 7]), torch.randn(5, 64)
    with torch.no_grad():
        ref = model.diffloss.net(x, t, c).numpy()
    assert rel_err(head(x.numpy(), t.numpy(), c.numpy()), ref) <= 1e-4


# ---------------------------------------------------------------- end to end: torch engine vs numpy sampler
def noise_source(seed: int, channels: int, temperature: float):
    rng = np.random.Generator(np.random.PCG64(seed))
    return deploy_loop.default_noise(rng, channels, temperature)


def torch_engine_tokens(
    model: MAR, monkeypatch, labels, bsz, num_iter, cfg, schedule, temperature, orders, seed, **options
):
    """MAR.sample_tokens (the real torch loop) with the orders and the noise injected."""
    noise = noise_source(seed, model.token_embed_dim, temperature)
    step = iter(range(num_iter))

    def sample(
        z, temperature, cfg, generator=None, backend="auto", clip_denoised=False, sampler="ddpm", steps=None, **kw
    ):
        # DiffLoss.sample's contract with the deploy sampler's noise stream
        guided, s = cfg != 1.0, HeadSampler.parse(sampler)
        tables = model.diffloss.tables(steps)
        x_T, sn = noise(next(step), z.shape[0] // 2 if guided else z.shape[0], tables.num_steps, not s.deterministic)
        x_T = torch.from_numpy(x_T) * (temperature if s.deterministic else 1.0)
        sn = None if sn is None else torch.from_numpy(sn)
        out = reference.sample_head(
            HeadJob(model.diffloss.net, tables, z, x_T, temperature, cfg, sn, sampler=s, clip_denoised=clip_denoised)
        )
        return torch.cat([out, out]) if guided else out

    monkeypatch.setattr(generation_orders, "random_orders", lambda b, L, gen, dev: torch.from_numpy(orders))
    monkeypatch.setattr(model.diffloss, "sample", sample)
    lab = None if labels is None else torch.tensor(labels)
    latents = model.sample_tokens(bsz, num_iter, cfg, schedule, lab, temperature, **options)
    return model.patchify(latents).numpy()


@pytest.mark.parametrize(
    "labels,cfg,schedule,temperature,options",
    [
        ([1, 2, 3], 1.0, "linear", 0.0, {}),
        ([1, 2, 3], 1.0, "linear", 1.0, {}),
        ([4, 5, 6], 3.0, "linear", 1.0, {}),
        ([7, 8, 9], 2.0, "constant", 0.0, {}),
        (None, 1.0, "linear", 0.7, {}),
        ([1, 2, 3], 2.0, "linear", 1.0, {"steps": "5"}),  # ends at t=999: eps errors amplified ~300x
        ([1, 2, 3], 2.0, "linear", 1.0, {"sampler": "ddim", "steps": "8-3", "clip_denoised": True}),
        ([4, 5, 6], 3.0, "linear", 0.9, {"sampler": "ddim:1.0", "steps": [6, 5, 4]}),
        ([7, 8, 9], 2.0, "linear", 1.0, {"sampler": "dpm++2m", "steps": "10-4", "clip_denoised": True}),
    ],
)
@pytest.mark.slow  # ONNX export of the test model (module fixture)
def test_deploy_sampler_matches_torch_engine(exported, monkeypatch, labels, cfg, schedule, temperature, options):
    model, out, _ = exported
    dm = deploy.DeployedMAR.load(out, CPU)
    bsz, num_iter, seed = 3, 4, 11
    options = {"clip_denoised": False, **options}
    orders = deploy.random_orders(np.random.Generator(np.random.PCG64(5)), bsz, 16)
    noise = noise_source(seed, 4, temperature)
    toks = deploy.sample_tokens(
        dm, labels, num_iter, cfg, schedule, temperature, bsz=bsz, orders=orders, noise=noise, **options
    )
    ref = torch_engine_tokens(
        model, monkeypatch, labels, bsz, num_iter, cfg, schedule, temperature, orders, seed, **options
    )
    assert toks.shape == (bsz, 16, 4) and np.abs(ref).max() > 0.1
    assert rel_err(toks, ref) <= 1e-4
    # the ORT backbone in the torch engine (the `backbone=` hook of masked_ar.sample_tokens)
    monkeypatch.setattr(model, "backbone", OnnxBackboneModule(out / "backbone_embed.onnx", CPU))
    ref_ort = torch_engine_tokens(
        model, monkeypatch, labels, bsz, num_iter, cfg, schedule, temperature, orders, seed, **options
    )
    assert rel_err(ref_ort, ref) <= 1e-4


@pytest.mark.slow  # ONNX export of the test model (module fixture)
def test_e2e_tolerance_sees_real_mistakes(exported):
    """The 1e-4 of the end-to-end test is far below what a wrong label or a lost known token does."""
    _, out, _ = exported
    dm = deploy.DeployedMAR.load(out, CPU)
    orders = deploy.random_orders(np.random.Generator(np.random.PCG64(5)), 3, 16)

    def run(labels, backbone=None, cfg=1.0):
        if backbone is not None:
            dm.backbone, saved = backbone, dm.backbone
        try:
            return deploy.sample_tokens(
                dm, labels, 4, cfg, "linear", 1.0, orders=orders, noise=noise_source(11, 4, 1.0)
            )
        finally:
            if backbone is not None:
                dm.backbone = saved

    ref = run([1, 2, 3])
    bb = dm.backbone
    assert rel_err(run([1, 2, 4]), ref) > 1e-3
    assert rel_err(run([1, 2, 3], cfg=3.0), ref) > 1e-3
    assert rel_err(run([1, 2, 3], lambda t, k, lab, unc: bb(t, k[:, 1:], lab, unc)), ref) > 1e-3


def test_deploy_uses_the_shared_schedules():
    # one plan of a generation (masking, CFG and step schedules) for the torch engine and the deploy sampler
    from marengine.diffusion import gaussian, samplers
    from marengine.models import masked_ar

    for name in ("generation_plan", "cfg_combine", "CFG_SCHEDULES", "step_schedule"):
        assert getattr(deploy_loop, name) is getattr(schedules, name), name
    assert masked_ar.generation_plan is schedules.generation_plan
    assert deploy_loop.step_table is samplers.step_table  # and the same head coefficient tables
    for name in ("reverse_mean", "learned_logvar"):  # and the one reverse update
        assert getattr(deploy_loop, name) is getattr(samplers, name) is getattr(gaussian, name), name


@pytest.mark.slow  # ONNX export of the test model (module fixture)
def test_deploy_cli_runs_without_torch(exported, tmp_path):
    _, out, _ = exported
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "from marengine.export import deploy\n"
        f"rc = deploy.main(['--model', {str(out)!r}, '--labels', '1', '2', '3', '--num-iter', '4', '--cfg', '2.0',"
        f" '--temperature', '1.0', '--seed', '0', '--device', 'cpu', '--out', {str(tmp_path / 'o')!r}])\n"
        "assert not [m for m in sys.modules if m.startswith('torch') and sys.modules[m] is not None]\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "o" / "grid.png").is_file()
    s = np.load(tmp_path / "o" / "samples.npz")
    assert s["images"].shape == (3, 8, 8, 1) and s["images"].dtype == np.uint8
    assert s["labels"].tolist() == [1, 2, 3]
    # same seed in-process -> the same images
    dm = deploy.DeployedMAR.load(out, CPU)
    again = deploy.decode(dm, deploy.sample_tokens(dm, [1, 2, 3], 4, 2.0, "linear", 1.0, seed=0))
    np.testing.assert_array_equal(again, s["images"])


# ---------------------------------------------------------------- bad input
@pytest.mark.slow  # ONNX export of the test model (module fixture)
def test_backbone_rejects_bad_inputs(sessions):
    bb, emb = sessions["labels"], sessions["embed"]
    tok, lab = np.zeros((2, 16, 4), np.float32), np.array([1, 2])
    idx = np.array([[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="more than the sequence length"):
        bb(tok, np.tile(np.arange(17), (2, 1)), lab)
    with pytest.raises(ValueError, match=r"known_idx must be in \[0, 16\)"):
        bb(tok, np.array([[0, -1], [2, 3]]), lab)
    with pytest.raises(ValueError, match=r"known_idx must be in \[0, 16\)"):
        bb(tok, np.array([[0, 16], [2, 3]]), lab)
    with pytest.raises(ValueError, match="twice"):
        bb(tok, np.array([[1, 1], [2, 3]]), lab)
    with pytest.raises(TypeError, match="known_idx must have an integer dtype"):
        bb(tok, idx.astype(np.float32), lab)
    with pytest.raises(ValueError, match="known_idx must have shape"):
        bb(tok, np.arange(2), lab)
    with pytest.raises(ValueError, match="tokens must have shape"):
        bb(tok[0], idx, lab)
    with pytest.raises(ValueError, match="tokens must have shape"):
        bb(np.zeros((2, 16, 3), np.float32), idx, lab)
    with pytest.raises(TypeError, match="tokens must have a floating point dtype"):
        bb(tok.astype(np.int64), idx, lab)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        bb(tok.tolist(), idx, lab)
    with pytest.raises(ValueError, match=r"labels .* must be in \[0, 10\)"):
        bb(tok, idx, np.array([1, 10]))
    bb(tok, idx, np.array([1, 10]), np.array([False, True]))  # the label of a null-class row is ignored
    with pytest.raises(TypeError, match="backbone_embed.onnx"):
        bb(tok, idx, np.zeros((2, 64), np.float32))
    with pytest.raises(ValueError, match="class_embedding must have shape"):
        emb(tok, idx, np.zeros((2, 63), np.float32))
    with pytest.raises(TypeError, match="t must have an integer dtype"):
        sessions["head"](np.zeros((2, 4), np.float32), np.zeros(2, np.float32), np.zeros((2, 64), np.float32))
    with pytest.raises(ValueError, match=r"t must be in \[0, 1000\)"):
        sessions["head"](np.zeros((2, 4), np.float32), np.array([0, 1000]), np.zeros((2, 64), np.float32))


@pytest.mark.slow  # ONNX export of the test model (module fixture)
def test_not_an_onnx_file(tmp_path, exported):
    bad = tmp_path / "backbone.onnx"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="could not be loaded as an ONNX model"):
        OnnxBackbone(bad, CPU)
    with pytest.raises(FileNotFoundError):
        OnnxBackbone(tmp_path / "missing.onnx", CPU)
    plain = tmp_path / "plain.onnx"  # valid ONNX, not from marengine
    m = onnx.load(str(exported[2]["decoder"]))
    del m.metadata_props[:]
    onnx.save(m, str(plain))
    with pytest.raises(ValueError, match="not one exported by marengine"):
        OnnxDecoder(plain, CPU)
    with pytest.raises(ValueError, match="holds the 'head' part"):
        OnnxBackbone(exported[2]["head"], CPU)


@pytest.mark.slow  # ONNX export of the test model (module fixture)
def test_config_mismatch_between_files(exported, tmp_path):
    _, out, _ = exported
    folder = tmp_path / "mixed"
    shutil.copytree(out, folder)
    other = make_model(MARConfig.from_dict({**CFG.to_dict(), "diffloss_w": 48}), seed=3)
    export_onnx(other, tmp_path / "other", parts=("head",))
    shutil.copy(tmp_path / "other" / "head.onnx", folder / "head.onnx")
    with pytest.raises(ValueError, match="different model configuration.*diffloss_w: 48 vs 96"):
        deploy.DeployedMAR.load(folder, CPU)


def test_missing_extras_name_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"marengine\[onnx\]"):
        import_onnxruntime()
    from marengine.export.onnx import require_export_deps

    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match=r"onnxscript.*marengine\[onnx\].*marengine\[onnx-gpu\]"):
        require_export_deps()


@pytest.mark.slow  # an ONNX export
def test_export_from_checkpoint(tmp_path):
    model = make_model(seed=4)
    save_pretrained(model, tmp_path / "pre")
    paths = export_from_checkpoint(tmp_path / "pre", tmp_path / "a", parts=("head",))
    x, t, c = torch.randn(3, 4), torch.tensor([1, 2, 3]), torch.randn(3, 64)
    with torch.no_grad():
        ref = model.diffloss.net(x, t, c).numpy()
    assert rel_err(OnnxHead(paths["head"], CPU)(x.numpy(), t.numpy(), c.numpy()), ref) <= 1e-4
    torch.save({"model_ema": model.state_dict()}, tmp_path / "ckpt.pth")
    with pytest.raises(ValueError, match="--config"):
        export_from_checkpoint(tmp_path / "ckpt.pth", tmp_path / "b")
    paths = export_from_checkpoint(tmp_path / "ckpt.pth", tmp_path / "b", config=CFG.to_json(), parts=("head",))
    assert json.loads(paths["deploy"].read_text())["config"] == CFG.to_dict()
