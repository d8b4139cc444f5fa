"""Each device stage of the CUDA head kernels alone, against a CPU reference (llm.c dev/cuda style).

The CUDA kernels were written before any GPU could run them; when one is available this file
says which stage is wrong rather than that an image is. Bottom-up, each stage through the
test-only operators torch.ops.marengine_stages.* (csrc/cuda/stages_cuda.cpp, CUDA builds only):

    gemm          mma.sync (bf16, fp16) and exact FFMA (fp32) tiles, 32x32 and 64x64, every
                  epilogue (SiLU -> T, gate * (.) + residual, fp32 store), odd M / N / K edges
    ln_modulate   Welford LayerNorm [+ affine] + AdaLN modulate -> T, odd row counts, a grid
                  smaller than the rows (the persistent kernel's grid-stride loop)
    silu_rows     SiLU(t_emb[step] + c_emb[row]) over a chunk of steps
    update        the sampler update (every sampler of the [S, 8] table, clip, CFG, step noise
                  and Philox noise): bit for bit with a float32 replica of the reference loop
    row_pre       update + input projection + LN_0 + modulate + SiLU(t_emb + c_emb) per row
    grid_barrier  thousands of grid-wide barriers with cross-block reads in between
    plan          path, modulation chunk and persistent grid the planner picks
    path          the persistent kernel and the per-step kernels whole, against the reference

A failure message starts with "stage <name>[<configuration>]". The references (float64, or
the float32 replica of the update) are checked against the PyTorch modules and the reference
loop on every machine, so on a CPU-only machine this file still runs its reference checks and
skips the device stages cleanly. MARENGINE_STAGES_EMULATE=1 (no GPU) runs the device tests on
a float32 PyTorch stand-in of the stage operators (cuda_stage_emulation.py): a dry run of the
harness, not of the kernels.

    pytest python_tests/test_cuda_stages.py -q            # on a CUDA GPU: all stages
    pytest python_tests/test_cuda_stages.py -q -k gemm    # one stage
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import random_diffloss
from cuda_stage_emulation import update_f32

from marengine import settings
from marengine.diffusion.gaussian import sample_loop
from marengine.diffusion.samplers import HeadSampler
from marengine.diffusion.schedule import make_tables
from marengine.ops.head_job import HeadJob
from marengine.schedules import cfg_combine

SAMPLERS = ("ddpm", "ddim", "ddim:1", "dpm++2m")
LN_EPS = 1e-6
ULP = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _stage_ops():
    """torch.ops.marengine_stages when the CUDA kernels are built and a GPU is present, else None."""
    if not torch.cuda.is_available():
        return None
    try:
        import marengine._C as C
    except ImportError:
        return None
    if not C.built_with_cuda():
        return None
    try:
        torch.ops.marengine_stages.gemm  # noqa: B018  (raises when the namespace has no such op)
    except (AttributeError, RuntimeError):
        return None
    return torch.ops.marengine_stages


STAGES = _stage_ops()
DEV = "cuda"
EMULATED = STAGES is None and os.environ.get("MARENGINE_STAGES_EMULATE", "0") == "1"
if EMULATED:  # a dry run of this harness on the CPU (python_tests/cuda_stage_emulation.py)
    import cuda_stage_emulation as STAGES

    DEV = "cpu"
needs_gpu = pytest.mark.skipif(
    STAGES is None,
    reason="needs a CUDA GPU and marengine._C built with the CUDA kernels (pip install --no-build-isolation -e .)",
)


# ---------------------------------------------------------------------------- comparison
def check_stage(stage: str, out: torch.Tensor, ref: torch.Tensor, tol: torch.Tensor | float) -> None:
    """Every element within its tolerance (NaN never is); else an AssertionError naming the stage."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    assert out64.shape == ref64.shape, f"stage {stage}: shape {tuple(out64.shape)}, want {tuple(ref64.shape)}"
    tol64 = torch.as_tensor(tol, dtype=torch.float64).expand_as(ref64)
    bad = ~((out64 - ref64).abs() <= tol64)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"stage {stage}: {int(bad.sum())} of {bad.numel()} elements off; first at {idx}: "
            f"got {float(out64[idx]):.8g}, want {float(ref64[idx]):.8g} (tolerance {float(tol64[idx]):.3g})"
        )


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- references
def ref_gemm(A, B, bias, epi, residual=None, gate=None):
    """float64 epilogue(A B^T + bias) and the elementwise tolerance of an fp32-accumulated
    result: 4 K 2^-24 sum|a b| for the accumulation, plus the output's rounding."""
    a, b = A.double().cpu(), B.double().cpu()
    acc = a @ b.T + bias.double().cpu()
    mag = a.abs() @ b.abs().T + bias.double().cpu().abs()
    acc_tol = 4 * A.shape[1] * 2.0**-24 * mag + 1e-30
    if epi == 0:
        out = F.silu(acc)
        return out, 1.1 * acc_tol + ULP[B.dtype] * out.abs()
    if epi == 1:
        g = gate.double().cpu()[:, : B.shape[0]]
        out = residual.double().cpu() + g * acc
        return out, g.abs() * acc_tol + 2.0**-23 * out.abs()
    return acc, acc_tol + 2.0**-23 * acc.abs()


def ref_ln_modulate(h, ln_w, ln_b, mods, shift_col, dtype):
    h64 = h.double().cpu()
    n = F.layer_norm(h64, (h64.shape[1],), eps=LN_EPS)
    if ln_w is not None:
        n = n * ln_w.double().cpu() + ln_b.double().cpu()
    W = h64.shape[1]
    m = mods.double().cpu()
    out = n * (1 + m[:, shift_col + W : shift_col + 2 * W]) + m[:, shift_col : shift_col + W]
    return out, 1e-5 * (1 + out.abs()) + ULP[dtype] * out.abs()


def ref_silu_rows(t_emb, c_emb, i0, rows, dtype):
    S, R = t_emb.shape[0], c_emb.shape[0]
    q = torch.arange(rows)
    steps = S - 1 - (i0 + q // R)
    out = F.silu(t_emb.double().cpu()[steps] + c_emb.double().cpu()[q % R])
    return out, 1e-6 * (1 + out.abs()) + ULP[dtype] * out.abs()


def table(sampler: str, steps: int = 12) -> torch.Tensor:
    return make_tables(str(steps)).sampler_table(HeadSampler.parse(sampler), "cpu")


def fake_outputs(x: torch.Tensor, rows: int, seed: int) -> torch.Tensor:
    """A deterministic stand-in for the network: (eps, v) rows [rows, 2C] from x, v in (-1, 1)."""
    C = x.shape[1]
    m = torch.randn(C, 2 * C, generator=gen(seed)) / math.sqrt(C)
    xx = torch.cat([x, 0.5 * x]) if rows != x.shape[0] else x
    out = torch.tanh(xx @ m)
    return torch.cat([out[:, :C] * 3, out[:, C:]], dim=1).contiguous()


# ---------------------------------------------------------------------------- references, on any machine
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("guided", [False, True])
def test_update_replica_is_the_reference_loop(sampler, clip, guided):
    """update_f32 iterated over the table is sample_loop, bit for bit (so the CUDA update, checked
    against update_f32 below, is the reference's update)."""
    N, C, cfg, temperature = 9, 5, 2.5, 0.8
    coefs = table(sampler)
    S = coefs.shape[0]
    x_T = torch.randn(N, C, generator=gen(1))
    noise = torch.randn(S, N, C, generator=gen(2))
    rows = 2 * N if guided else N

    def eps_fn(x, step):
        out = fake_outputs(x, rows, 3)
        if not guided:
            return out
        return torch.cat([cfg_combine(out[:N, :C], out[N:, :C], cfg), out[:N, C:]], dim=1)

    want = sample_loop(coefs, eps_fn, x_T, temperature, noise, clip)
    x, x0p = x_T.clone(), torch.zeros_like(x_T)
    for it in range(S):
        x, x0p = update_f32(x, x0p, fake_outputs(x, rows, 3), coefs, it, cfg, temperature, noise, clip)
    assert torch.equal(x, want)


def test_references_match_torch_modules():
    g = gen(4)
    h = 5 + 2 * torch.randn(7, 96, generator=g)
    ln = torch.nn.LayerNorm(96, eps=LN_EPS)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.1 * torch.randn(96, generator=g))
        ln.bias.copy_(0.1 * torch.randn(96, generator=g))
    mods = torch.randn(7, 3 * 96, generator=g)
    got, _ = ref_ln_modulate(h, ln.weight.detach(), ln.bias.detach(), mods, 0, torch.float32)
    want = ln(h) * (1 + mods[:, 96:192]) + mods[:, :96]
    torch.testing.assert_close(got.float(), want.detach(), rtol=1e-5, atol=1e-5)
    A, B, bias = torch.randn(5, 16, generator=g), torch.randn(12, 16, generator=g), torch.randn(12, generator=g)
    torch.testing.assert_close(ref_gemm(A, B, bias, 0)[0].float(), F.silu(F.linear(A, B, bias)))
    gate, res = torch.randn(5, 20, generator=g), torch.randn(5, 12, generator=g)
    torch.testing.assert_close(ref_gemm(A, B, bias, 1, res, gate)[0].float(), res + gate[:, :12] * F.linear(A, B, bias))


def test_check_stage_names_the_stage():
    ref = torch.randn(4, 6, generator=gen(5))
    check_stage("demo[ok]", ref + 1e-9, ref, 1e-6)
    wrong = ref.clone()
    wrong[2, 3] += 1.0
    with pytest.raises(AssertionError, match=r"stage demo\[wrong\]: 1 of 24 elements off; first at \(2, 3\)"):
        check_stage("demo[wrong]", wrong, ref, 1e-6)
    with pytest.raises(AssertionError, match="stage demo"):
        check_stage("demo[nan]", torch.full_like(ref, float("nan")), ref, 1.0)


# ---------------------------------------------------------------------------- gemm tiles
GEMM_SHAPES = [(1, 13, 8), (7, 24, 40), (33, 72, 136), (130, 130, 264)]


@needs_gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("small", [True, False], ids=["32x32", "64x64"])
@pytest.mark.parametrize("epi", [0, 1, 2], ids=["silu", "gate_res", "f32"])
@pytest.mark.parametrize("mnk", GEMM_SHAPES, ids=lambda s: "M{}N{}K{}".format(*s))
def test_stage_gemm(dtype, small, epi, mnk):
    M, N, K = mnk
    T = DTYPES[dtype]
    g = gen(M * 1000 + N + K)
    A = torch.randn(M, K, generator=g).to(T)
    B = (torch.randn(N, K, generator=g) / math.sqrt(K)).to(T)
    bias = 0.1 * torch.randn(N, generator=g)
    res = torch.randn(M, N, generator=g) if epi == 1 else None
    gate = torch.randn(M, N + 8, generator=g) if epi == 1 else None  # ldg != N
    cuda = lambda t: None if t is None else t.to(DEV)  # noqa: E731
    out = STAGES.gemm(cuda(A), cuda(B), cuda(bias), cuda(res), cuda(gate), epi, small)
    ref, tol = ref_gemm(A, B, bias, epi, res, gate)
    kind = "FFMA" if T == torch.float32 else "mma"
    check_stage(
        f"gemm[{kind} {dtype}, {'32x32' if small else '64x64'} tiles, epi {epi}, M={M} N={N} K={K}]", out, ref, tol
    )


# ---------------------------------------------------------------------------- row stages
@needs_gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("rows,W", [(1, 8), (5, 96), (37, 136), (9, 1032)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("blocks", [0, 1])
def test_stage_ln_modulate(dtype, rows, W, affine, blocks):
    T = DTYPES[dtype]
    g = gen(rows + W)
    h = 4 + 3 * torch.randn(rows, W, generator=g)  # a mean far from 0: Welford must hold
    mods = 0.5 * torch.randn(rows, 5 * W + 4, generator=g)
    shift_col = W + 4  # shift and scale in the middle of a wider row, as in the modulation buffer
    ln_w = 1 + 0.1 * torch.randn(W, generator=g) if affine else None
    ln_b = 0.1 * torch.randn(W, generator=g) if affine else None
    cuda = lambda t: None if t is None else t.to(DEV)  # noqa: E731
    out = STAGES.ln_modulate(cuda(h), cuda(ln_w), cuda(ln_b), cuda(mods), shift_col, T, blocks)
    ref, tol = ref_ln_modulate(h, ln_w, ln_b, mods, shift_col, T)
    name = f"ln_modulate[{dtype}, rows={rows} W={W}, affine={affine}, blocks={blocks or 'one warp per row'}]"
    check_stage(name, out, ref, tol)


@needs_gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("R,i0,rows", [(1, 0, 1), (10, 2, 30), (74, 4, 148), (300, 0, 300)])
@pytest.mark.parametrize("blocks", [0, 2])
def test_stage_silu_rows(dtype, R, i0, rows, blocks):
    T = DTYPES[dtype]
    g = gen(R + rows)
    t_emb, c_emb = torch.randn(6, 104, generator=g), torch.randn(R, 104, generator=g)
    out = STAGES.silu_rows(t_emb.to(DEV), c_emb.to(DEV), i0, rows, T, blocks)
    ref, tol = ref_silu_rows(t_emb, c_emb, i0, rows, T)
    check_stage(f"silu_rows[{dtype}, R={R}, iterations from {i0}, {rows} rows, blocks={blocks}]", out, ref, tol)


def _update_case(sampler, N, C, guided, it, seed=7):
    g = gen(seed)
    coefs = table(sampler)
    S = coefs.shape[0]
    R = 2 * N if guided else N
    x = torch.randn(N, C, generator=g)
    x0p = torch.randn(N, C, generator=g)
    outr = torch.randn(R, 2 * C, generator=g)
    outr[:, C:] = torch.tanh(outr[:, C:])  # v in (-1, 1)
    return coefs, S, x, x0p, outr


@needs_gpu
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("noise", ["none", "step", "philox"])
def test_stage_update(sampler, clip, guided, noise):
    """Every iteration of the table (first, middle, step 0); exact where no noise is drawn."""
    from marengine import _C

    N, C, cfg, temperature = 37, 16, 3.0, 0.0 if noise == "none" else 0.9
    coefs, S, x, x0p, outr = _update_case(sampler, N, C, guided, 0)
    seed, offset = 5, 3
    philox = _C.philox_normals(seed, offset, 0, S * N * C).reshape(S, N, C)
    step_noise = torch.randn(S, N, C, generator=gen(8)) if noise == "step" else None
    ref_noise = philox if noise == "philox" else step_noise
    for it in sorted({0, 1, S // 2, S - 1}):
        want, want_x0 = update_f32(x, x0p, outr, coefs, it, cfg, temperature, ref_noise, clip)
        sn = step_noise.to(DEV) if step_noise is not None else None
        got, got_x0 = STAGES.update(
            x.to(DEV), x0p.to(DEV), outr.to(DEV), coefs.to(DEV), it, cfg, temperature, sn, seed, offset, clip, 3
        )
        name = f"update[{sampler}, clip={clip}, cfg={'on' if guided else 'off'}, noise={noise}, iteration {it}/{S}]"
        check_stage(name + " x0", got_x0, want_x0, 0.0)
        drawn = bool(coefs[S - 1 - it, 7] != 0) and temperature > 0
        # exact without noise; exp (and Philox's log/sin/cos) may differ from libm by a few ulp
        tol = 0.0 if not drawn else (4 * 2.0**-23 + (2e-6 if noise == "philox" else 0)) * (1 + want.abs())
        check_stage(name, got, want, tol)


@needs_gpu
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("i", [0, 5])
@pytest.mark.parametrize("ln0,make_y", [(True, False), (False, True)], ids=["persistent", "per-step"])
@pytest.mark.parametrize("blocks", [0, 1])
def test_stage_row_pre(dtype, guided, i, ln0, make_y, blocks):
    """row_pre as the persistent kernel calls it (update, projection, LN_0 + modulate) and as the
    per-step kernels do (update, projection, SiLU(t_emb + c_emb))."""
    T = DTYPES[dtype]
    N, C, W, cfg = 23, 16, 136, 2.0
    coefs, S, x, x0p, outr = _update_case("dpm++2m", N, C, guided, i, seed=11)
    g = gen(12)
    R = outr.shape[0]
    in_w, in_b = torch.randn(W, C, generator=g) / 4, 0.1 * torch.randn(W, generator=g)
    ln_w0, ln_b0 = 1 + 0.1 * torch.randn(W, generator=g), 0.1 * torch.randn(W, generator=g)
    mods0 = 0.5 * torch.randn(R, 3 * W, generator=g)
    t_emb, c_emb = torch.randn(S, W, generator=g), torch.randn(R, W, generator=g)
    cuda = lambda t: None if t is None else t.to(DEV)  # noqa: E731
    got = STAGES.row_pre(
        *(cuda(t) for t in (x, x0p, outr, coefs, in_w.to(T), in_b.to(T))),
        cuda(ln_w0) if ln0 else None,
        cuda(ln_b0) if ln0 else None,
        cuda(mods0) if ln0 else None,
        cuda(t_emb),
        cuda(c_emb),
        i,
        cfg,
        0.0,
        None,
        0,
        0,
        False,
        make_y,
        T,
        blocks,
    )
    what = "LN_0" if ln0 else "SiLU"
    name = f"row_pre[{dtype}, iteration {i}, cfg={'on' if guided else 'off'}, {what}, blocks={blocks}]"
    x_new, x0_new = (x, x0p) if i == 0 else update_f32(x, x0p, outr, coefs, i - 1, cfg, 0.0, None, False)
    check_stage(name + " x", got[0], x_new, 0.0)
    check_stage(name + " x0_prev", got[1], x0_new, 0.0)
    h = x_new.double() @ in_w.to(T).double().T + in_b.to(T).double()
    h = torch.cat([h, h]) if guided else h
    h_tol = 4e-6 * (1 + x_new.double().abs() @ in_w.to(T).double().abs().T)
    check_stage(name + " h", got[2], h, torch.cat([h_tol, h_tol]) if guided else h_tol)
    if ln0:
        a, tol = ref_ln_modulate(got[2].cpu(), ln_w0, ln_b0, mods0, 0, T)
        check_stage(name + " A (LN_0 + modulate)", got[3], a, tol)
    if make_y:
        y = F.silu(t_emb.double()[S - 1 - i] + c_emb.double())
        check_stage(name + " y", got[4], y, 1e-6 * (1 + y.abs()) + ULP[T] * y.abs())


# ---------------------------------------------------------------------------- grid barrier, planner
@needs_gpu
@pytest.mark.parametrize(
    "blocks,rounds", [(0, 2000), (-1, 500), (2, 2000)], ids=["persistent-grid", "all-resident", "two-blocks"]
)
def test_stage_grid_barrier(blocks, rounds):
    errors, grid, word = STAGES.grid_barrier(torch.empty(1, device=DEV), rounds, blocks)
    name = f"grid_barrier[{grid} blocks, {rounds} x 2 barriers]"
    assert errors == 0, f"stage {name}: {errors} reads after a barrier saw a word of the round before"
    assert word == 0, f"stage {name}: the barrier word ended at {word:#x}, not 0 (an arrival was miscounted)"
    if blocks == 0 and not EMULATED:
        props = torch.cuda.get_device_properties(0)
        assert grid <= 2 * props.multi_processor_count, f"stage {name}: grid larger than 2 blocks per SM"


@needs_gpu
def test_stage_plan():
    like = torch.empty(1, device=DEV)
    for R, chunk in [(10, 26), (74, 4), (200, 2), (256, 1)]:
        path, got_chunk, grid, ws = STAGES.plan(like, R // 2, R, 16, 1024, 6, 100, torch.bfloat16, -1)
        assert (path, got_chunk) == (0, chunk), f"stage plan[R={R}]: path {path}, chunk {got_chunk}"
        assert grid > 0 and ws > 0, f"stage plan[R={R}]: grid {grid}, workspace {ws}"
    path, _, _, _ = STAGES.plan(like, 150, 300, 16, 1024, 6, 100, torch.bfloat16, -1)
    assert path == 1, "stage plan[R=300]: the per-step kernels should take more than 256 rows"


# ---------------------------------------------------------------------------- whole paths
@needs_gpu
@pytest.mark.parametrize("path", ["persistent", "kernels"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("sampler", ["ddpm", "dpm++2m"])
@pytest.mark.parametrize("rows,cfg", [(37, 3.0), (300, 1.0)])
def test_stage_path(monkeypatch, path, dtype, sampler, rows, cfg):
    from marengine.ops import native, reference

    T = DTYPES[dtype]
    dl = random_diffloss(width=256, depth=3, steps="12", out_scale=1e-2).to(DEV)
    smp = HeadSampler.parse(sampler)
    g = torch.Generator(DEV).manual_seed(rows)
    z = torch.randn(rows * (2 if cfg != 1.0 else 1), 32, generator=g, device=DEV)
    x_T = 0.1 * torch.randn(rows, 16, generator=g, device=DEV)
    temp = 0.0 if smp.deterministic else 1.0
    noise = torch.randn(dl.gen_tables.num_steps, rows, 16, generator=g, device=DEV) if temp else None
    args = (dl.net, dl.gen_tables, z, x_T, temp, cfg, noise)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference must be true fp32
    try:
        with torch.no_grad():
            ref = reference.sample_head(HeadJob(*args, sampler=smp)).double()
            if T != torch.float32:
                with torch.autocast(DEV, dtype=T):
                    torch_lp = reference.sample_head(HeadJob(*args, sampler=smp)).double()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    monkeypatch.setenv("MARENGINE_HEAD_PATH", path)
    settings.reload()
    out = native.sample_head(HeadJob(*args, sampler=smp), weight_dtype=T).double()
    name = f"path[{path}, {dtype}, {sampler}, rows={rows}, cfg={cfg}]"
    assert torch.isfinite(out).all(), f"stage {name}: non-finite output"
    err = float((out - ref).abs().max())
    allowed = 1e-4 * float(ref.abs().max())
    if T != torch.float32:
        allowed = 2 * float((torch_lp - ref).abs().max()) + 1e-6 * float(ref.abs().max())
    assert err <= allowed, f"stage {name}: max error {err:.3g} > allowed {allowed:.3g}"
