"""The CUDA kernels of the Diffusion-Loss head against the PyTorch reference.

Mirrors the CPU tests on a CUDA device: torch.ops.marengine.head_sample (the whole
reverse diffusion) and torch.ops.marengine.adaln_block (one AdaLN res block), fp32 to
1e-4 of max|ref| at temperature 0, bf16/fp16 within 2x of PyTorch's own autocast error,
odd row counts (1, 7, 59, 1025) with and without CFG, both head paths (persistent
kernel / per-step kernels) agreeing, Philox reproducibility, CUDA Graph capture,
opcheck, and bad calls raising; every sampler of the coefficient table (DDPM, DDIM with
eta 0 and 1, DPM-Solver++(2M)) with and without clip_denoised on both paths against
marengine.ops.reference.sample_head. Skipped where no CUDA GPU is present. Each device
stage alone: python_tests/test_cuda_stages.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_diffloss, rel_err

from marengine.diffusion.samplers import DDPM, HeadSampler
from marengine.ops.head_job import HeadJob

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: the CUDA kernels cannot run on this machine"
)

FP32_TOL = 1e-4
ROWS = (1, 7, 59, 1025)
DEV = "cuda"


@pytest.fixture(scope="module")
def ops():
    try:
        import marengine._C as C  # registers torch.ops.marengine.*
    except ImportError as e:
        pytest.skip(f"marengine._C is not built ({e}); build with `pip install --no-build-isolation -e .`")
    if not C.built_with_cuda():
        pytest.skip("marengine._C was built without the CUDA kernels (torch without CUDA, or no nvcc)")
    try:
        import marengine.ops.native  # noqa: F401  (fake kernels, Python wrappers)
    except ImportError:
        pass
    return torch.ops.marengine


@pytest.fixture(autouse=True)
def exact_fp32_matmul():
    """The reference must run true fp32 GEMMs (no TF32) for the 1e-4 comparison."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def make_diffloss(**kw):
    """conftest.random_diffloss on the GPU."""
    return random_diffloss(**kw).to(DEV)


def inputs(dl, rows: int, cfg: float, seed: int = 1, x_scale: float = 1.0):
    g = torch.Generator(DEV).manual_seed(seed)
    R = 2 * rows if cfg != 1.0 else rows
    z = torch.randn(R, dl.net.cond_embed.in_features, generator=g, device=DEV)
    x_T = x_scale * torch.randn(rows, dl.in_channels, generator=g, device=DEV)
    return z, x_T


def head_operands(
    dl,
    z,
    x_T,
    cfg=1.0,
    temperature=0.0,
    step_noise=None,
    seed=0,
    offset=0,
    dtype=torch.float32,
    sampler: HeadSampler = DDPM,
    clip: bool = False,
):
    """The argument tuple of torch.ops.marengine.head_sample for `dl` (weights cast to dtype)."""
    net, tab = dl.net, dl.gen_tables
    with torch.no_grad():
        c_emb = net.cond_embed(z).float().contiguous()
        t_emb = net.time_embed(tab.on(z.device)["timestep_map"]).float().contiguous()

    def w(t):
        return t.detach().to(dtype).contiguous()

    blocks = list(net.res_blocks)
    fl = net.final_layer
    return (
        x_T.float().contiguous(),
        c_emb,
        t_emb,
        w(net.input_proj.weight),
        w(net.input_proj.bias),
        [b.in_ln.weight.detach().float().contiguous() for b in blocks],
        [b.in_ln.bias.detach().float().contiguous() for b in blocks],
        [w(b.adaLN_modulation[1].weight) for b in blocks],
        [w(b.adaLN_modulation[1].bias) for b in blocks],
        [w(b.mlp[0].weight) for b in blocks],
        [w(b.mlp[0].bias) for b in blocks],
        [w(b.mlp[2].weight) for b in blocks],
        [w(b.mlp[2].bias) for b in blocks],
        w(fl.adaLN_modulation[1].weight),
        w(fl.adaLN_modulation[1].bias),
        w(fl.linear.weight),
        w(fl.linear.bias),
        tab.sampler_table(sampler, z.device),
        float(cfg),
        float(temperature),
        step_noise,
        int(seed),
        int(offset),
        bool(clip),
    )


def reference(dl, z, x_T, cfg, temperature=0.0, generator=None, autocast_dtype=None):
    """DiffLoss.sample with the PyTorch backend: [N, C] (first half with CFG)."""
    n = x_T.shape[0]
    if autocast_dtype is None:
        out = dl.sample(z, temperature, cfg, noise=x_T, generator=generator, backend="torch")
    else:
        with torch.autocast("cuda", dtype=autocast_dtype):
            out = dl.sample(z, temperature, cfg, noise=x_T, generator=generator, backend="torch")
    return out[:n].float()


@pytest.fixture
def head_path(monkeypatch):
    """Force head_sample's path: 'persistent' or 'kernels' (marengine/settings.py, handed to the glue)."""
    from marengine import settings

    def set_path(name: str) -> None:
        monkeypatch.setenv("MARENGINE_HEAD_PATH", name)
        settings.reload()

    return set_path


# ---------------------------------------------------------------- head_sample, fp32
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_head_sample_fp32_matches_reference(ops, rows, cfg):
    dl = make_diffloss()
    z, x_T = inputs(dl, rows, cfg)
    ref = reference(dl, z, x_T, cfg)
    out = ops.head_sample(*head_operands(dl, z, x_T, cfg))
    assert out.shape == (rows, dl.in_channels) and out.dtype == torch.float32
    assert rel_err(out, ref) <= FP32_TOL


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_diffloss_sample_native_backend(ops, rows, cfg):
    """The integration: DiffLoss.sample(backend='native') on CUDA."""
    dl = make_diffloss()
    z, x_T = inputs(dl, rows, cfg)
    ref = dl.sample(z, 0.0, cfg, noise=x_T, backend="torch")
    out = dl.sample(z, 0.0, cfg, noise=x_T, backend="native")
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= FP32_TOL


@pytest.mark.parametrize("width,depth", [(96, 2), (136, 1), (256, 3)])
def test_head_sample_odd_widths(ops, width, depth):
    """Widths that are not multiples of the 32/64 tiles (96: mar_tiny's head; 136 = 17 x 8)."""
    dl = make_diffloss(width=width, depth=depth)
    for rows, cfg in [(7, 3.0), (300, 1.0)]:
        z, x_T = inputs(dl, rows, cfg)
        assert rel_err(ops.head_sample(*head_operands(dl, z, x_T, cfg)), reference(dl, z, x_T, cfg)) <= FP32_TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,cfg", [(7, 3.0), (59, 1.0), (300, 3.0)])
def test_head_paths_agree(ops, head_path, dtype, rows, cfg):
    """The persistent kernel and the per-step kernels compute the same thing."""
    dl = make_diffloss()
    z, x_T = inputs(dl, rows, cfg)
    args = head_operands(dl, z, x_T, cfg, dtype=dtype)
    head_path("persistent")
    a = ops.head_sample(*args)
    head_path("kernels")
    b = ops.head_sample(*args)
    scale = float(a.abs().max())
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("rows", [7, 1025])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_head_sample_step_noise(ops, rows, cfg):
    """temperature 1 with the per-step noise drawn by DiffLoss.sample (same generator seed)."""
    dl = make_diffloss()
    z, x_T = inputs(dl, rows, cfg)
    g = torch.Generator(DEV).manual_seed(5)
    step_noise = torch.randn(dl.gen_tables.num_steps, rows, dl.in_channels, generator=g, device=DEV)
    ref = reference(dl, z, x_T, cfg, temperature=1.0, generator=torch.Generator(DEV).manual_seed(5))
    out = ops.head_sample(*head_operands(dl, z, x_T, cfg, temperature=1.0, step_noise=step_noise))
    assert rel_err(out, ref) <= FP32_TOL


SAMPLERS = ("ddpm", "ddim", "ddim:1", "dpm++2m")


@pytest.mark.parametrize("path", ["persistent", "kernels"])
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("rows,cfg", [(7, 3.0), (300, 1.0)])
def test_head_sample_samplers(ops, head_path, path, sampler, clip, rows, cfg):
    """Every sampler of the coefficient table, with and without clip_denoised, on both paths,
    against the PyTorch reference loop (fp32, per-step noise where the sampler draws any)."""
    from marengine.ops import reference as torch_reference

    smp = HeadSampler.parse(sampler)
    dl = make_diffloss()
    z, x_T = inputs(dl, rows, cfg)
    temperature = 0.0 if smp.deterministic else 1.0
    noise = None
    if temperature > 0:
        g = torch.Generator(DEV).manual_seed(9)
        noise = torch.randn(dl.gen_tables.num_steps, rows, dl.in_channels, generator=g, device=DEV)
    ref = torch_reference.sample_head(
        HeadJob(dl.net, dl.gen_tables, z, x_T, temperature, cfg, noise, sampler=smp, clip_denoised=clip)
    )
    head_path(path)
    out = ops.head_sample(*head_operands(dl, z, x_T, cfg, temperature, noise, sampler=smp, clip=clip))
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= FP32_TOL, (path, sampler, clip)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_diffloss_sample_native_samplers(ops, sampler):
    """DiffLoss.sample(sampler=..., backend='native') through the dispatcher on CUDA."""
    dl = make_diffloss()
    z, x_T = inputs(dl, 59, 3.0)
    kw = dict(noise=x_T, sampler=sampler, clip_denoised=True)
    ref = dl.sample(z, 1.0, 3.0, generator=torch.Generator(DEV).manual_seed(2), backend="torch", **kw)
    out = dl.sample(z, 1.0, 3.0, generator=torch.Generator(DEV).manual_seed(2), backend="native", **kw)
    assert rel_err(out, ref) <= FP32_TOL


# ---------------------------------------------------------------- head_sample, bf16 / fp16
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_head_sample_lowp_within_2x_of_torch(ops, dtype, rows, cfg):
    dl = make_diffloss(out_scale=1e-2)
    z, x_T = inputs(dl, rows, cfg, x_scale=0.1)
    ref = reference(dl, z, x_T, cfg).double()
    torch_lp = reference(dl, z, x_T, cfg, autocast_dtype=dtype).double()
    out = ops.head_sample(*head_operands(dl, z, x_T, cfg, dtype=dtype)).double()
    err, torch_err = (out - ref).abs().max(), (torch_lp - ref).abs().max()
    assert torch.isfinite(out).all()
    assert err <= 2 * torch_err + 1e-6 * ref.abs().max(), (float(err), float(torch_err))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,cfg", [(7, 3.0), (1025, 1.0)])
def test_diffloss_sample_native_autocast(ops, dtype, rows, cfg):
    """Under autocast the native backend runs its GEMMs in the autocast dtype (native.pick_weight_dtype)."""
    dl = make_diffloss(out_scale=1e-2)
    z, x_T = inputs(dl, rows, cfg, x_scale=0.1)
    ref = reference(dl, z, x_T, cfg).double()
    torch_lp = reference(dl, z, x_T, cfg, autocast_dtype=dtype).double()
    with torch.autocast("cuda", dtype=dtype):
        out = dl.sample(z, 0.0, cfg, noise=x_T, backend="native")[:rows].double()
    assert (out - ref).abs().max() <= 2 * (torch_lp - ref).abs().max() + 1e-6 * ref.abs().max()


# ---------------------------------------------------------------- Philox noise
def test_sample_head_philox_wrapper(ops):
    """marengine.ops.native.sample_head_philox: same (seed, offset) -> same tokens; new offset -> new noise."""
    from marengine.ops import native

    dl = make_diffloss()
    z, x_T = inputs(dl, 59, 3.0)
    stride = native.philox_groups(dl.gen_tables.num_steps, 59, dl.in_channels)
    a = native.sample_head_philox(HeadJob(dl.net, dl.gen_tables, z, x_T, 1.0, 3.0, None), seed=123, offset=0)
    b = native.sample_head_philox(HeadJob(dl.net, dl.gen_tables, z, x_T, 1.0, 3.0, None), seed=123, offset=0)
    c = native.sample_head_philox(HeadJob(dl.net, dl.gen_tables, z, x_T, 1.0, 3.0, None), seed=123, offset=stride)
    assert a.shape == (59, dl.in_channels) and torch.equal(a, b) and not torch.equal(a, c)


def test_philox_reproducible(ops):
    dl = make_diffloss()
    z, x_T = inputs(dl, 59, 3.0)
    a = ops.head_sample(*head_operands(dl, z, x_T, 3.0, temperature=1.0, seed=7, offset=0))
    b = ops.head_sample(*head_operands(dl, z, x_T, 3.0, temperature=1.0, seed=7, offset=0))
    c = ops.head_sample(*head_operands(dl, z, x_T, 3.0, temperature=1.0, seed=8, offset=0))
    d = ops.head_sample(*head_operands(dl, z, x_T, 3.0, temperature=1.0, seed=7, offset=1 << 20))
    cold = ops.head_sample(*head_operands(dl, z, x_T, 3.0, temperature=0.0, seed=7))
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, d)
    assert not torch.allclose(a, cold)


@pytest.mark.parametrize("rows,cfg", [(7, 3.0), (300, 1.0)])
def test_philox_matches_cpu(ops, head_path, rows, cfg):
    """The CPU and CUDA kernels draw the same stream (csrc/philox.h), so their chains agree."""
    dl = make_diffloss()
    z, x_T = inputs(dl, rows, cfg)
    args = head_operands(dl, z, x_T, cfg, temperature=1.0, seed=11, offset=3)
    cpu_args = tuple(
        [t.cpu() for t in a] if isinstance(a, list) else (a.cpu() if torch.is_tensor(a) else a) for a in args
    )
    ref = ops.head_sample(*cpu_args)
    for path in ("persistent", "kernels"):
        head_path(path)
        assert rel_err(ops.head_sample(*args).cpu(), ref) <= 2 * FP32_TOL


def test_cuda_graph_capture(ops, head_path):
    """No host syncs: a call can be captured once per shape and replayed."""
    dl = make_diffloss()
    z, x_T = inputs(dl, 59, 3.0)
    args = head_operands(dl, z, x_T, 3.0, temperature=1.0, seed=3)
    for path in ("persistent", "kernels"):
        head_path(path)
        eager = ops.head_sample(*args)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            ops.head_sample(*args)  # warm-up outside capture
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = ops.head_sample(*args)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, eager), path


# ---------------------------------------------------------------- adaln_block
def block_operands(block, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """The weights adaln_block takes after x and mod: LayerNorm weight and bias, then the MLP's two
    linear layers (weight, bias), those cast to `dtype` when given."""
    mlp = [
        t.detach() if dtype is None else t.detach().to(dtype)
        for t in (block.mlp[0].weight, block.mlp[0].bias, block.mlp[2].weight, block.mlp[2].bias)
    ]
    return [block.in_ln.weight.detach(), block.in_ln.bias.detach(), *mlp]


def adaln_reference(block, x, mod, dtype=None):
    shift, scale, gate = mod.chunk(3, dim=-1)
    h = block.in_ln(x) * (1 + scale) + shift
    if dtype is None:
        return x + gate * block.mlp(h)
    with torch.autocast("cuda", dtype=dtype):
        m = block.mlp(h)
    return x + gate * m.float()


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_adaln_block(ops, rows, dtype):
    dl = make_diffloss(width=256, depth=1)
    block = dl.net.res_blocks[0]
    g = torch.Generator(DEV).manual_seed(rows)
    x = torch.randn(rows, 256, generator=g, device=DEV)
    mod = 0.5 * torch.randn(rows, 3 * 256, generator=g, device=DEV)
    with torch.no_grad():
        ref = adaln_reference(block, x, mod).double()
        out = ops.adaln_block(x, mod, *block_operands(block, dtype)).double()
        if dtype == torch.float32:
            assert rel_err(out, ref) <= 1e-5
        else:
            torch_err = (adaln_reference(block, x, mod, dtype).double() - ref).abs().max()
            assert (out - ref).abs().max() <= 2 * torch_err + 1e-6 * ref.abs().max()


# ---------------------------------------------------------------- opcheck, bad calls
def test_opcheck(ops):
    if not hasattr(torch.library, "opcheck"):
        pytest.skip("torch.library.opcheck needs torch >= 2.4")
    dl = make_diffloss(width=96, depth=2)
    z, x_T = inputs(dl, 7, 3.0)
    torch.library.opcheck(ops.head_sample.default, head_operands(dl, z, x_T, 3.0, temperature=1.0, seed=1))
    block = dl.net.res_blocks[0]
    x = torch.randn(5, 96, device=DEV)
    mod = torch.randn(5, 288, device=DEV)
    torch.library.opcheck(ops.adaln_block.default, (x, mod, *block_operands(block)))


def test_zero_rows(ops):
    dl = make_diffloss(width=96, depth=1)
    z, x_T = inputs(dl, 0, 1.0)
    out = ops.head_sample(*head_operands(dl, z, x_T))
    assert out.shape == (0, dl.in_channels)


def _replace(args, index, value):
    args = list(args)
    args[index] = value
    return tuple(args)


def test_bad_calls_raise(ops):
    dl = make_diffloss(width=96, depth=2)
    z, x_T = inputs(dl, 7, 3.0)
    good = head_operands(dl, z, x_T, 3.0)
    ops.head_sample(*good)  # sanity
    bad = {
        "x_T on the CPU": _replace(good, 0, good[0].cpu()),
        "x_T float16": _replace(good, 0, good[0].half()),
        "c_emb with 3N rows": _replace(good, 1, torch.cat([good[1], good[1][:7]])),
        "t_emb of another width": _replace(good, 2, good[2][:, :88].contiguous()),
        "a weight on the CPU": _replace(good, 9, [good[9][0].cpu(), good[9][1]]),
        "mixed weight dtypes": _replace(good, 9, [good[9][0].half(), good[9][1]]),
        "list lengths differ": _replace(good, 11, good[11][:1]),
        "non-contiguous weight": _replace(good, 9, [good[9][0].t(), good[9][1]]),
        "coefs of another length": _replace(good, 17, good[17][:3]),
        "step_noise of a wrong shape": _replace(good, 20, torch.zeros(2, 7, 16, device=DEV)),
        "negative temperature": _replace(good, 19, -1.0),
    }
    for what, args in bad.items():
        with pytest.raises(RuntimeError):
            ops.head_sample(*args)
            pytest.fail(f"no error for {what}")

    # width not a multiple of 8: the CUDA kernels need 16-byte rows
    odd = make_diffloss(width=12, depth=1)
    z, x_T = inputs(odd, 3, 1.0)
    with pytest.raises(RuntimeError, match="multiple of 8"):
        ops.head_sample(*head_operands(odd, z, x_T))

    block = dl.net.res_blocks[0]
    x = torch.randn(5, 96, device=DEV)
    p = block_operands(block)
    with pytest.raises(RuntimeError):
        ops.adaln_block(x, torch.randn(5, 96, device=DEV), *p)  # mod must be [M, 3W]
    with pytest.raises(RuntimeError):
        ops.adaln_block(x.double(), torch.randn(5, 288, device=DEV), *p)
