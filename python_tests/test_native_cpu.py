"""The native CPU head kernels (torch.ops.marengine.{head_sample, adaln_block}) against the
PyTorch reference, the official golden tensors, and the statistics of the sampled chain.

Skips (with the reason) when the extension is not built:
    pip install --no-build-isolation -e .
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from marengine import settings
from marengine.diffusion.samplers import DDPM
from marengine.models.diffloss import DiffLoss
from marengine.models.head import ResBlock
from marengine.ops import native, reference
from marengine.ops.head_job import HeadJob

pytestmark = pytest.mark.skipif(
    not native.available("cpu"), reason="marengine._C is not built (pip install --no-build-isolation -e .)"
)
torch.set_num_threads(2)

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "mar_tiny_official.npz"
ROWS = (1, 7, 59, 1025)
C, Z = 16, 32


def make_diffloss(width: int = 64, depth: int = 2, steps: str = "20", std: float = 0.08, seed: int = 0) -> DiffLoss:
    """A head with every Linear re-drawn (the official init zeroes the AdaLN and output layers)."""
    torch.manual_seed(seed)
    dl = DiffLoss(C, Z, depth, width, steps)
    for m in dl.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=std)
            torch.nn.init.normal_(m.bias, std=std)
        elif isinstance(m, torch.nn.LayerNorm) and m.elementwise_affine:
            torch.nn.init.normal_(m.weight, mean=1.0, std=0.1)
            torch.nn.init.normal_(m.bias, std=0.1)
    return dl.eval()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def inputs(n: int, cfg: float, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rows = n if cfg == 1.0 else 2 * n
    return torch.randn(rows, Z, generator=g), torch.randn(n, C, generator=g)


# ----------------------------------------------------------------------------- fp32 vs reference
@pytest.mark.parametrize("cfg", [1.0, 4.0])
@pytest.mark.parametrize("n", ROWS)
def test_matches_reference_temperature0(n: int, cfg: float) -> None:
    dl = make_diffloss(width=128 if n < 100 else 64, depth=3 if n < 100 else 2)
    z, x_T = inputs(n, cfg)
    ref = dl.sample(z, temperature=0.0, cfg=cfg, noise=x_T, backend="torch")
    out = dl.sample(z, temperature=0.0, cfg=cfg, noise=x_T, backend="native")
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert rel_err(out, ref) <= 1e-4


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_matches_reference_with_step_noise(temperature: float, cfg: float) -> None:
    dl = make_diffloss(width=96, depth=2)
    z, _ = inputs(59, cfg)
    ref = dl.sample(z, temperature, cfg, generator=torch.Generator().manual_seed(5), backend="torch")
    out = dl.sample(z, temperature, cfg, generator=torch.Generator().manual_seed(5), backend="native")
    assert rel_err(out, ref) <= 1e-4


def _golden_diffloss(data) -> DiffLoss:
    dl = DiffLoss(16, 64, 2, 96, "20")
    prefix = "state/diffloss."
    state = {k[len(prefix) :]: torch.from_numpy(data[k].copy()) for k in data.files if k.startswith(prefix)}
    dl.load_state_dict(state, strict=True)
    assert torch.equal(dl.gen_tables.timestep_map, torch.from_numpy(data["schedule/timestep_map"]).long())
    return dl.eval()


@pytest.mark.parametrize("case", ["sample", "sample_cfg"])
def test_golden_official(case: str) -> None:
    if not GOLDEN.exists():
        pytest.skip(f"golden tensors not found at {GOLDEN}")
    np = pytest.importorskip("numpy")
    data = np.load(GOLDEN)
    dl = _golden_diffloss(data)
    z = torch.from_numpy(data[f"{case}/z"].copy())
    noise = torch.from_numpy(data[f"{case}/noise"].copy())
    cfg = float(data["sample_cfg/scale"]) if case == "sample_cfg" else 1.0
    want = torch.from_numpy(data[f"{case}/out"].copy())
    for backend in ("native", "torch"):
        out = dl.sample(z, temperature=0.0, cfg=cfg, noise=noise, backend=backend)
        assert rel_err(out, want) <= 1e-4, backend


# ----------------------------------------------------------------------------- in-kernel noise
def _philox(dl: DiffLoss, z: torch.Tensor, x_T: torch.Tensor, seed: int, offset: int = 0) -> torch.Tensor:
    return native.sample_head_philox(HeadJob(dl.net, dl.gen_tables, z, x_T, 1.0, 1.0, None), seed, offset)


def test_philox_reproducible() -> None:
    dl = make_diffloss()
    z, x_T = inputs(33, 1.0)
    a, b = _philox(dl, z, x_T, 123), _philox(dl, z, x_T, 123)
    assert torch.equal(a, b)
    assert not torch.allclose(a, _philox(dl, z, x_T, 124))
    assert not torch.allclose(a, _philox(dl, z, x_T, 123, offset=native.philox_groups(20, 33, C)))


def test_philox_stream_normal() -> None:
    from marengine import _C

    z = _C.philox_normals(7, 0, 0, 400_000).double()
    n = z.numel()
    assert abs(z.mean().item()) <= 5 / math.sqrt(n)
    assert abs(z.var().item() - 1) <= 5 * math.sqrt(2 / n)
    assert abs((z.abs() < 1).double().mean().item() - 0.682689) <= 5 * math.sqrt(0.2166 / n)
    # element e is independent of how the run is cut: e0 shifts the stream
    assert torch.equal(_C.philox_normals(7, 0, 5, 10), _C.philox_normals(7, 0, 0, 15)[5:])
    assert torch.equal(_C.philox_normals(7, 1, 0, 8), _C.philox_normals(7, 0, 4, 8))


def _known_head(v0: float) -> DiffLoss:
    """eps = 0 and variance value v0 for every input: the chain is linear-Gaussian."""
    dl = make_diffloss(width=64, depth=2, steps="25")
    lin = dl.net.final_layer.linear
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.copy_(torch.cat([torch.zeros(C), torch.full((C,), v0)]))
    return dl


def _chain_moments(dl: DiffLoss, mu0: float, v0: float, temperature: float) -> tuple[float, float]:
    """Exact mean / variance of the final x for x_T ~ N(mu0, 1), from the float64 tables."""
    co = dl.gen_tables.coefs
    mean, var = mu0, 1.0
    for s in range(dl.gen_tables.num_steps - 1, -1, -1):
        a = float(co["post_coef1"][s] * co["sqrt_recip_abar"][s] + co["post_coef2"][s])
        frac = (v0 + 1) / 2
        logvar = frac * float(co["log_betas"][s]) + (1 - frac) * float(co["post_logvar"][s])
        mean, var = a * mean, a * a * var
        if s > 0:
            var += math.exp(logvar) * temperature**2
    return mean, var


@pytest.mark.parametrize("path", ["step_noise", "philox"])
def test_chain_statistics(path: str) -> None:
    """Empirical mean / variance of 4000 x 16 samples within 5 standard errors of the exact values."""
    v0, mu0, temp, n = 0.3, 1.5, 0.8, 4000
    dl = _known_head(v0)
    g = torch.Generator().manual_seed(11)
    z = torch.randn(n, Z, generator=g)
    x_T = mu0 + torch.randn(n, C, generator=g)
    if path == "philox":
        x = native.sample_head_philox(HeadJob(dl.net, dl.gen_tables, z, x_T, temp, 1.0, None), seed=2024)
    else:
        noise = torch.randn(dl.gen_tables.num_steps, n, C, generator=g)
        x = native.sample_head(HeadJob(dl.net, dl.gen_tables, z, x_T, temp, 1.0, noise))
    mean, var = _chain_moments(dl, mu0, v0, temp)
    m = x.numel()
    assert abs(x.double().mean().item() - mean) <= 5 * math.sqrt(var / m)
    assert abs(x.double().var().item() - var) <= 5 * var * math.sqrt(2 / (m - 1))


# ----------------------------------------------------------------------------- low precision
def _moderate_head() -> DiffLoss:
    """Weights std 0.05, output layer scaled by 0.01, used with x_T ~ 0.01 N(0, 1): the chain
    stays within |x| < 1e3, so PyTorch's fp16 autocast reference does not overflow."""
    dl = make_diffloss(width=128, depth=3, std=0.05)
    with torch.no_grad():
        dl.net.final_layer.linear.weight.mul_(0.01)
        dl.net.final_layer.linear.bias.mul_(0.01)
    return dl


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights(dtype: torch.dtype) -> None:
    """|native_lowp - ref32| <= 2 |torch_autocast_lowp - ref32| (max over elements, CFG on)."""
    dl = _moderate_head()
    z, x_T = inputs(59, 3.0)
    x_T = 0.01 * x_T
    tab = dl.gen_tables
    ref32 = reference.sample_head(HeadJob(dl.net, tab, z, x_T, 0.0, 3.0, None))
    with torch.autocast("cpu", dtype=dtype):
        ref_lp = reference.sample_head(HeadJob(dl.net, tab, z, x_T, 0.0, 3.0, None))
        auto = native.sample_head(HeadJob(dl.net, tab, z, x_T, 0.0, 3.0, None))  # picks dtype from autocast
    explicit = native.sample_head(HeadJob(dl.net, tab, z, x_T, 0.0, 3.0, None), weight_dtype=dtype)
    assert torch.equal(auto, explicit)
    torch_err = (ref_lp.double() - ref32.double()).abs().max().item()
    ours = (explicit.double() - ref32.double()).abs().max().item()
    assert 0 < torch_err < float("inf")
    assert 0 < ours <= 2 * torch_err, (ours, torch_err)  # > 0: the low-precision path really ran


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_large_values(dtype: torch.dtype) -> None:
    """An untrained head drives |x| to ~1e5 (past fp16's 65504): the native path keeps the
    chain state in fp32 and stays finite and close to fp32 (autocast fp16 gives NaN here)."""
    dl = make_diffloss(width=128, depth=3, std=0.05)
    z, x_T = inputs(59, 3.0)
    ref32 = reference.sample_head(HeadJob(dl.net, dl.gen_tables, z, x_T, 0.0, 3.0, None))
    out = native.sample_head(HeadJob(dl.net, dl.gen_tables, z, x_T, 0.0, 3.0, None), weight_dtype=dtype)
    assert ref32.abs().max() > 65504
    assert torch.isfinite(out).all()
    assert rel_err(out, ref32) <= 2e-2


# ----------------------------------------------------------------------------- adaln_block
def _resblock(width: int, seed: int = 0) -> ResBlock:
    torch.manual_seed(seed)
    blk = ResBlock(width)
    for m in blk.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.1)
            torch.nn.init.normal_(m.bias, std=0.1)
    torch.nn.init.normal_(blk.in_ln.weight, mean=1.0, std=0.1)
    torch.nn.init.normal_(blk.in_ln.bias, std=0.1)
    return blk


def _adaln_args(blk: ResBlock, y: torch.Tensor, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple:
    mod = blk.adaLN_modulation(y).detach().contiguous()
    cv = lambda t: t.detach().to(dtype).contiguous()  # noqa: E731
    return (
        x,
        mod,
        blk.in_ln.weight.detach(),
        blk.in_ln.bias.detach(),
        cv(blk.mlp[0].weight),
        cv(blk.mlp[0].bias),
        cv(blk.mlp[2].weight),
        cv(blk.mlp[2].bias),
    )


@pytest.mark.parametrize("m", ROWS)
def test_adaln_block_matches_resblock(m: int) -> None:
    width = 96
    blk = _resblock(width)
    g = torch.Generator().manual_seed(m)
    x, y = torch.randn(m, width, generator=g), torch.randn(m, width, generator=g)
    with torch.no_grad():
        ref = blk(x, y)
        out = native.adaln_block(*_adaln_args(blk, y, x))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_adaln_block_low_precision(dtype: torch.dtype) -> None:
    width = 128
    blk = _resblock(width)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(59, width, generator=g), torch.randn(59, width, generator=g)
    with torch.no_grad():
        ref = blk(x, y)
        with torch.autocast("cpu", dtype=dtype):
            ref_lp = blk(x, y).float()
        out = native.adaln_block(*_adaln_args(blk, y, x, dtype))
    torch_err = (ref_lp - ref).abs().max().item()
    assert 0 < (out - ref).abs().max().item() <= 2 * torch_err


# ----------------------------------------------------------------------------- invariances
def test_threading_modes_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    """Row-parallel, column-parallel, one thread and different modulation chunks give the same bits."""
    dl = make_diffloss(width=64, depth=2)
    z, x_T = inputs(70, 2.0)
    run = lambda: native.sample_head(HeadJob(dl.net, dl.gen_tables, z, x_T, 0.0, 2.0, None))  # noqa: E731
    base = run()
    monkeypatch.setenv("MARENGINE_CPU_ROW_MIN", "1000")  # column mode
    settings.reload()
    col = run()
    monkeypatch.setenv("MARENGINE_CPU_MOD_ROWS", "16")  # one step per modulation chunk
    settings.reload()
    chunked = run()
    monkeypatch.setenv("MARENGINE_CPU_ROW_MIN", "1")
    monkeypatch.setenv("MARENGINE_CPU_WORKSPACE_MB", "1")  # many small units per thread
    settings.reload()
    units = run()
    assert _C_knobs()["MARENGINE_CPU_WORKSPACE_MB"] == "1"  # the extension got the reloaded value
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run()
    finally:
        torch.set_num_threads(threads)
    for other in (col, chunked, units, single):
        assert torch.equal(base, other)


def test_pack_cache_follows_weight_updates() -> None:
    """Packed weights are cached between calls; an in-place update or a new tensor repacks."""
    from marengine import _C

    args = _head_args(n=20, w=32, d=2, wdtype=torch.bfloat16)
    first = _call(args)
    assert torch.equal(_call(args), first)  # cached path, same bits
    with torch.no_grad():
        args[9][1].mul_(1.5)  # w1 of block 1, in place
    updated = _call(args)
    fresh = _call(
        [
            a.clone() if isinstance(a, torch.Tensor) else ([t.clone() for t in a] if isinstance(a, list) else a)
            for a in args
        ]
    )
    assert not torch.equal(updated, first)
    assert torch.equal(updated, fresh)
    _C.release_cpu_caches()
    assert torch.equal(_call(args), fresh)


def _cpu_builds() -> list[str]:
    """The CPU kernel builds this CPU can run (best first), e.g. ['avx512_bf16', 'avx512', 'avx2', 'base']."""
    from marengine import _C

    return _C.cpu_kernels_supported().split(",") if native.available("cpu") else []


# Run in a subprocess with MARENGINE_CPU_KERNELS=<build> (chosen once per process). fp32:
# odd row counts on a small head, and the MAR-B/L/H head widths at depth 1, all against the
# PyTorch reference; bf16 weights: the 2x-PyTorch-error rule (CONVENTIONS.md).
_FORCED_BUILD_SCRIPT = """
import sys, torch
sys.path.insert(0, {here!r})
from test_native_cpu import _moderate_head, inputs, make_diffloss, rel_err
from marengine import _C
from marengine.ops import native, reference
from marengine.ops.head_job import HeadJob
torch.set_num_threads(2)
assert _C.cpu_kernels() == {build!r}, _C.cpu_kernels()
def fp32_case(dl, n, cfg):
    z, x_T = inputs(n, cfg)
    ref = dl.sample(z, 0.0, cfg, noise=x_T, backend="torch")
    out = dl.sample(z, 0.0, cfg, noise=x_T, backend="native")
    err = rel_err(out, ref)
    assert err <= 1e-4, ("fp32", n, cfg, err)
small = make_diffloss(width=64, depth=2, steps="5")
for n in (1, 7, 59, 1025):
    fp32_case(small, n, 3.0)
fp32_case(small, 7, 1.0)
for width in (1024, 1280, 1536):
    fp32_case(make_diffloss(width=width, depth=1, steps="2", std=0.02), 7, 3.0)
def bf16_case(dl, n):
    z, x_T = inputs(n, 3.0)
    x_T = 0.01 * x_T
    tab = dl.gen_tables
    ref32 = reference.sample_head(HeadJob(dl.net, tab, z, x_T, 0.0, 3.0, None))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_lp = reference.sample_head(HeadJob(dl.net, tab, z, x_T, 0.0, 3.0, None))
    out = native.sample_head(HeadJob(dl.net, tab, z, x_T, 0.0, 3.0, None), weight_dtype=torch.bfloat16)
    torch_err = (ref_lp.double() - ref32.double()).abs().max().item()
    ours = (out.double() - ref32.double()).abs().max().item()
    assert 0 < torch_err and 0 < ours <= 2 * torch_err, ("bf16", n, ours, torch_err)
mod = _moderate_head()
for n in (1, 7, 59, 1025):
    bf16_case(mod, n)
wide = make_diffloss(width=1024, depth=1, steps="3", std=0.02)
with torch.no_grad():
    wide.net.final_layer.linear.weight.mul_(0.01)
bf16_case(wide, 7)
print("ok")
"""


@pytest.mark.slow
@pytest.mark.parametrize("build", ["avx512_amx", "avx512_bf16", "avx512", "avx2", "base"])
def test_forced_kernel_build_matches_reference(build: str) -> None:
    """Each CPU kernel build this CPU can run, forced with MARENGINE_CPU_KERNELS in a
    subprocess, matches the reference (fp32 within 1e-4, bf16 within the 2x-PyTorch rule)."""
    if build not in _cpu_builds():
        pytest.skip(f"this CPU cannot run the {build} kernels (it runs {_cpu_builds()})")
    code = _FORCED_BUILD_SCRIPT.format(here=str(Path(__file__).resolve().parent), build=build)
    env = dict(os.environ, MARENGINE_CPU_KERNELS=build)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


def _C_knobs() -> dict[str, str]:
    from marengine import _C

    return _C.knobs()


def test_unknown_kernel_build_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARENGINE_CPU_KERNELS", "avx1024")
    with pytest.raises(ValueError, match="MARENGINE_CPU_KERNELS must be one of auto, avx512_amx"):
        settings.reload()


@pytest.mark.parametrize("name", ["avx1024", "AVX2 "])
def test_unknown_kernel_build_falls_back_with_a_message(name: str) -> None:
    """A name that is no build handed to the extension directly: the best build runs and stderr says why."""
    code = f"import torch\nfrom marengine import _C\n_C.set_knobs({{'MARENGINE_CPU_KERNELS': {name!r}}})\n"
    code += "print(_C.cpu_kernels())\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == _cpu_builds()[0]
    assert f"MARENGINE_CPU_KERNELS={name} is not a CPU kernel build" in res.stderr
    assert f"using {_cpu_builds()[0]}" in res.stderr


def test_supported_builds_are_consistent() -> None:
    """The build that runs is the best the CPU supports, and 'base' always runs."""
    from marengine import _C

    builds = _cpu_builds()
    assert builds[-1] == "base" and len(set(builds)) == len(builds)
    if "MARENGINE_CPU_KERNELS" not in os.environ:
        assert _C.cpu_kernels() == builds[0]


def _head_args(
    n: int = 3,
    c: int = 4,
    w: int = 16,
    d: int = 1,
    s: int = 3,
    cfg_on: bool = False,
    wdtype: torch.dtype = torch.float32,
    noise: bool = True,
) -> list:
    g = torch.Generator().manual_seed(0)
    r = lambda *shape, dt=torch.float32: (0.2 * torch.randn(*shape, generator=g)).to(dt)  # noqa: E731
    rows = 2 * n if cfg_on else n
    dl = make_diffloss(steps=str(s))
    coefs = dl.gen_tables.sampler_table(DDPM, "cpu")
    return [
        r(n, c),
        r(rows, w),
        r(s, w),
        r(w, c, dt=wdtype),
        r(w, dt=wdtype),
        [1 + r(w) for _ in range(d)],
        [r(w) for _ in range(d)],
        [r(3 * w, w, dt=wdtype) for _ in range(d)],
        [r(3 * w, dt=wdtype) for _ in range(d)],
        [r(w, w, dt=wdtype) for _ in range(d)],
        [r(w, dt=wdtype) for _ in range(d)],
        [r(w, w, dt=wdtype) for _ in range(d)],
        [r(w, dt=wdtype) for _ in range(d)],
        r(2 * w, w, dt=wdtype),
        r(2 * w, dt=wdtype),
        r(2 * c, w, dt=wdtype),
        r(2 * c, dt=wdtype),
        coefs,
        2.0 if cfg_on else 1.0,
        0.5,
        r(s, n, c) if noise else None,
        17,
        0,
    ]


@pytest.mark.parametrize("cfg_on", [False, True])
@pytest.mark.parametrize("noise", [True, False])
def test_opcheck_head_sample(cfg_on: bool, noise: bool) -> None:
    torch.library.opcheck(torch.ops.marengine.head_sample.default, _head_args(cfg_on=cfg_on, noise=noise))


def test_opcheck_adaln_block() -> None:
    blk = _resblock(24)
    x, y = torch.randn(5, 24), torch.randn(5, 24)
    with torch.no_grad():
        args = _adaln_args(blk, y, x)
    torch.library.opcheck(torch.ops.marengine.adaln_block.default, args)


# ----------------------------------------------------------------------------- bad calls
def _call(args: list) -> torch.Tensor:
    return torch.ops.marengine.head_sample(*args)


BAD_HEAD_CALLS = {
    "x_T float64": (lambda a: a.__setitem__(0, a[0].double()), "x_T must be Float"),
    "c_emb rows": (lambda a: a.__setitem__(1, torch.randn(5, 16)), "c_emb must have N"),
    "t_emb width": (lambda a: a.__setitem__(2, torch.randn(3, 8)), "t_emb must have the head width"),
    "non-contiguous": (lambda a: a.__setitem__(1, torch.randn(16, 3).t()), "contiguous"),
    "list lengths": (lambda a: a.__setitem__(9, a[9] + a[9]), "one entry per block"),
    "coefs shape": (lambda a: a.__setitem__(17, torch.randn(3, 5)), "coefs"),
    "step_noise shape": (lambda a: a.__setitem__(20, torch.randn(3, 2, 4)), "step_noise must have shape"),
    "weight dtype mix": (lambda a: a.__setitem__(9, [a[9][0].bfloat16()]), "one dtype"),
    "out_w width": (lambda a: a.__setitem__(15, torch.randn(8, 12)), "out_w"),
    "negative temperature": (lambda a: a.__setitem__(19, -1.0), "temperature"),
    "meta device": (lambda a: a.__setitem__(3, a[3].to("meta")), "one device"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEAD_CALLS))
def test_bad_head_sample_calls_raise(case: str) -> None:
    corrupt, msg = BAD_HEAD_CALLS[case]
    args = _head_args()
    corrupt(args)
    with pytest.raises(RuntimeError, match=msg):
        _call(args)


def test_bad_adaln_calls_raise() -> None:
    blk = _resblock(24)
    x, y = torch.randn(5, 24), torch.randn(5, 24)
    with torch.no_grad():
        args = list(_adaln_args(blk, y, x))
    bad = list(args)
    bad[1] = bad[1][:, :48].contiguous()
    with pytest.raises(RuntimeError, match="mod"):
        torch.ops.marengine.adaln_block(*bad)
    bad = list(args)
    bad[4] = bad[4].double()
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        torch.ops.marengine.adaln_block(*bad)


def test_sample_head_wrong_rows_raise() -> None:
    dl = make_diffloss()
    z, x_T = inputs(4, 1.0)
    with pytest.raises(ValueError, match="2N"):
        native.sample_head(HeadJob(dl.net, dl.gen_tables, z, x_T, 0.0, 3.0, None))
    with pytest.raises(ValueError, match="step_noise"):
        native.sample_head(HeadJob(dl.net, dl.gen_tables, z, x_T, 1.0, 1.0, None))


# ----------------------------------------------------------------------------- stale weights
def _update_weights(dl: DiffLoss, kind: str) -> None:
    """Change the head's weights the way `kind` of user code does (most bypass nothing, some
    bypass the version counter that the caches key on)."""
    params = list(dl.net.parameters())
    w = dl.net.res_blocks[0].mlp[0].weight
    if kind == "data_copy":  # EMA code: p.data.copy_(...)
        w.data.copy_(w.data * 0.5 + 0.01)
    elif kind == "data_mul":
        for p in params:
            p.data.mul_(0.97)
    elif kind == "numpy_view":  # writes through a numpy view of the storage
        w.detach().numpy()[:3] += 0.25
    elif kind == "data_assign":  # a new storage under the same Parameter
        w.data = w.data.clone() * 1.1
    elif kind == "no_grad_inplace":
        with torch.no_grad():
            w.add_(0.05)
    elif kind == "load_state_dict":
        dl.load_state_dict({k: v * 0.9 for k, v in dl.state_dict().items()})
    elif kind == "vector_to_parameters":
        vec = torch.nn.utils.parameters_to_vector(params)
        torch.nn.utils.vector_to_parameters(vec * 1.05, params)
    elif kind == "optimizer_step":
        opt = torch.optim.SGD(params, lr=0.1)
        for p in params:
            p.grad = torch.full_like(p, 0.01)
        opt.step()
    elif kind == "single_element_data":  # one element of one matrix
        w.data[7, 3] += 0.5
    else:
        raise AssertionError(kind)


KINDS = [
    "data_copy",
    "data_mul",
    "numpy_view",
    "data_assign",
    "no_grad_inplace",
    "load_state_dict",
    "vector_to_parameters",
    "optimizer_step",
    "single_element_data",
]


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_caches_never_serve_stale_weights(kind: str, wdtype: torch.dtype) -> None:
    from marengine.ops import native

    dl = make_diffloss(width=48, depth=2, steps="10")
    z, x_T = inputs(9, 2.0)

    def native_out() -> torch.Tensor:
        return native.sample_head(HeadJob(dl.net, dl.gen_tables, z, x_T, 0.0, 2.0, None), weight_dtype=wdtype)

    before = native_out()
    assert torch.equal(native_out(), before)  # the cached path is the same computation
    _update_weights(dl, kind)
    after = native_out()
    fresh = make_diffloss(width=48, depth=2, steps="10")
    fresh.load_state_dict(dl.state_dict())  # new tensors: nothing cached for them
    want = native.sample_head(HeadJob(fresh.net, fresh.gen_tables, z, x_T, 0.0, 2.0, None), weight_dtype=wdtype)
    assert torch.equal(after, want), f"{kind}: the native sampler used stale weights"
    assert not torch.equal(after, before)


def test_weights_frozen_checks_bytes_once_per_block() -> None:
    from marengine.ops import head_weights, native

    dl = make_diffloss(width=32, depth=1, steps="5")
    z, x_T = inputs(4, 1.0)
    calls = []
    real = head_weights.content_fingerprint
    head_weights.content_fingerprint = lambda ts: calls.append(1) or real(ts)
    try:
        with native.weights_frozen():
            for _ in range(3):
                native.sample_head(HeadJob(dl.net, dl.gen_tables, z, x_T, 0.0, 1.0, None))
        assert len(calls) == 1  # the first call of the block fingerprints, the others trust it
        native.sample_head(HeadJob(dl.net, dl.gen_tables, z, x_T, 0.0, 1.0, None))
        assert len(calls) == 2  # outside a block: every call
    finally:
        head_weights.content_fingerprint = real


def test_weights_frozen_reuses_time_embedding_per_tables() -> None:
    """Inside a weights_frozen() block t_emb is computed once per (net, tables); the samples
    are the same as outside one, and other tables get their own."""
    from marengine.ops import head_weights, native

    dl = make_diffloss(width=32, depth=1, steps="5")
    other = make_diffloss(width=32, depth=1, steps="7", seed=0).gen_tables
    z, x_T = inputs(3, 1.0)
    job = lambda tables: HeadJob(dl.net, tables, z, x_T, 0.0, 1.0, None)  # noqa: E731
    want, want_other = native.sample_head(job(dl.gen_tables)), native.sample_head(job(other))
    calls = []
    real = head_weights.timestep_frequencies
    head_weights.timestep_frequencies = lambda *a: calls.append(1) or real(*a)
    try:
        with native.weights_frozen():
            got = [native.sample_head(job(dl.gen_tables)) for _ in range(3)]
            assert len(calls) == 1
            got_other = native.sample_head(job(other))
            assert len(calls) == 2
            assert torch.equal(native.sample_head(job(dl.gen_tables)), want)
    finally:
        head_weights.timestep_frequencies = real
    assert all(torch.equal(g, want) for g in got)
    assert torch.equal(got_other, want_other) and not torch.equal(want_other, want)


def test_content_fingerprint_sees_every_byte() -> None:
    from marengine.ops import native

    t = torch.randn(1000, 7)
    h = native.content_fingerprint([t])
    for idx in [(0, 0), (999, 6), (500, 3)]:
        u = t.clone()
        u[idx] = torch.nextafter(u[idx], torch.tensor(0.0))
        assert native.content_fingerprint([u]) != h
    assert native.content_fingerprint([t.clone()]) == h
    assert native.content_fingerprint([t[:, :3].contiguous(), t]) != native.content_fingerprint(
        [t, t[:, :3].contiguous()]
    )
