"""Per-token head steps: head_sample with a step count per row (row_table; native CPU, CUDA where
there is a GPU) against the PyTorch reference, the uniform path it must keep bit for bit, the
per-token schedule (schedules.TokenSteps, models/token_steps.py) in the masked loop, and the
errors of bad inputs."""

from __future__ import annotations

import pytest
import torch

from marengine import settings
from marengine.diffusion.samplers import DDPM, HeadSampler
from marengine.diffusion.schedule import TableStack, make_tables
from marengine.ops import native, reference
from marengine.ops.head_job import HeadJob
from marengine.schedules import Iteration, TokenSteps

needs_native = pytest.mark.skipif(not native.available("cpu"), reason="marengine._C is not built")
torch.set_num_threads(2)
C, Z = 16, 32
COUNTS = (3, 5, 8)


def _diffloss():
    from test_native_cpu import make_diffloss

    return make_diffloss(width=64, depth=2, steps="8")


def _rows(n: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.tensor(COUNTS)[torch.randint(0, len(COUNTS), (n,), generator=g)]


def _inputs(n: int, cfg: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n if cfg == 1.0 else 2 * n, Z, generator=g), torch.randn(n, C, generator=g)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


# ----------------------------------------------------------------------------- tables
def test_stack_rows_are_the_tables_rows() -> None:
    stack = TableStack([make_tables("3"), make_tables("8")])
    table = stack.sampler_table(DDPM, "cpu")
    assert table.shape == (11, 8) and stack.num_steps == 8 and stack.firsts == (0, 3)
    assert torch.equal(table[3:], make_tables("8").sampler_table(DDPM, "cpu"))
    assert torch.equal(stack.on("cpu")["timestep_map"][:3], make_tables("3").timestep_map)
    rt = stack.row_table(torch.tensor([8, 3, 8]))
    assert rt.dtype == torch.int32 and rt.tolist() == [[3, 8], [0, 3], [3, 8]]


def test_reference_rows_of_one_count_are_the_uniform_reference() -> None:
    dl = _diffloss()
    z, x_T = _inputs(9, 2.0)
    noise = torch.randn(5, 9, C, generator=torch.Generator().manual_seed(2))
    tables = dl.tables(5)
    uni = reference.sample_head(HeadJob(dl.net, tables, z, x_T, 1.0, 2.0, noise))
    rows = reference.sample_head(
        HeadJob(dl.net, dl.table_stack((5,)), z, x_T, 1.0, 2.0, noise, row_steps=torch.full((9,), 5))
    )
    assert torch.equal(uni, rows)


def test_reference_row_alone_equals_its_own_steps() -> None:
    """A row with n steps in a mixed call gives what a call of n steps gives it alone."""
    dl = _diffloss()
    z, x_T = _inputs(6, 1.0)
    rs = torch.tensor([8, 3, 5, 3, 8, 5])
    noise = torch.randn(8, 6, C, generator=torch.Generator().manual_seed(4))
    mixed = reference.sample_head(HeadJob(dl.net, dl.table_stack(COUNTS), z, x_T, 0.7, 1.0, noise, row_steps=rs))
    for n in (0, 1, 2):
        k = int(rs[n])
        one = slice(n, n + 1)
        alone = reference.sample_head(HeadJob(dl.net, dl.tables(k), z[one], x_T[one], 0.7, 1.0, noise[:k, one]))
        torch.testing.assert_close(mixed[one], alone, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- native CPU
def _groups_close(out: torch.Tensor, ref: torch.Tensor, rs: torch.Tensor) -> None:
    """Each step count's rows within the native tests' rule (rel. error <= 1e-4), group by group:
    an untrained head's outputs reach ~1e5, so one error over all rows could hide a group."""
    n = rs.shape[0]
    for k in COUNTS:
        m = rs == k
        if bool(m.any()):
            assert _rel_err(out[:n][m], ref[:n][m]) <= 1e-4, k


@needs_native
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("sampler", ["ddpm", "dpm++2m"])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("n", [1, 7, 59])
def test_native_mixed_rows_match_reference(n: int, cfg: float, sampler: str, clip: bool) -> None:
    """Same Philox-free noise (step_noise from one generator) on both; clip_denoised keeps the
    values in [-1, 1], where running a row with another count is an O(1) error."""
    dl = _diffloss()
    z, _ = _inputs(n, cfg)
    rs = _rows(n)
    kw = dict(row_steps=rs, step_counts=COUNTS, sampler=sampler, clip_denoised=clip)
    ref = dl.sample(z, 1.0, cfg, generator=torch.Generator().manual_seed(5), backend="torch", **kw)
    out = dl.sample(z, 1.0, cfg, generator=torch.Generator().manual_seed(5), backend="native", **kw)
    _groups_close(out, ref, rs)
    if clip and n == 59:  # the check has teeth: the uniform 8-step result is far from the 3/5-step rows
        kw.pop("row_steps"), kw.pop("step_counts")
        uni = dl.sample(z, 1.0, cfg, generator=torch.Generator().manual_seed(5), backend="native", steps=8, **kw)
        assert _rel_err(out[:n][rs != 8], uni[:n][rs != 8]) > 0.1


@needs_native
def test_native_mixed_rows_threading_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Row mode (units of panels per thread, rows of each unit finishing at different steps) and
    column mode give the reference's result; 100 rows span several panels and units."""
    dl = _diffloss()
    z, x_T = _inputs(100, 2.5)
    rs = _rows(100, seed=9)
    kw = dict(noise=x_T, row_steps=rs, step_counts=COUNTS, clip_denoised=True)
    ref = dl.sample(z, 0.0, 2.5, backend="torch", **kw)
    for row_min in ("1", "1000"):
        monkeypatch.setenv("MARENGINE_CPU_ROW_MIN", row_min)
        _groups_close(dl.sample(z, 0.0, 2.5, backend="native", **kw), ref, rs)


@needs_native
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_native_rows_of_one_count_are_the_uniform_path_bitwise(cfg: float) -> None:
    dl = _diffloss()
    z, x_T = _inputs(37, cfg)
    noise = torch.randn(5, 37, C, generator=torch.Generator().manual_seed(6))
    uni = native.sample_head(HeadJob(dl.net, dl.tables(5), z, x_T, 1.0, cfg, noise))
    rows = native.sample_head(
        HeadJob(dl.net, dl.table_stack((3, 5)), z, x_T, 1.0, cfg, noise, row_steps=torch.full((37,), 5))
    )
    assert torch.equal(uni, rows)


@needs_native
def test_native_philox_rows_of_one_count_are_the_uniform_path() -> None:
    """With in-kernel noise too: the noise element of (iteration, row) does not depend on the table."""
    dl = _diffloss()
    z, x_T = _inputs(20, 1.0)
    stack = dl.table_stack((5,))
    uni = native.sample_head_philox(HeadJob(dl.net, dl.tables(5), z, x_T, 1.0, 1.0, None), 11)
    rows = native.sample_head_philox(HeadJob(dl.net, stack, z, x_T, 1.0, 1.0, None, row_steps=torch.full((20,), 5)), 11)
    assert torch.equal(uni, rows)


# ----------------------------------------------------------------------------- bad inputs
def _bad_call(backend: str, row_steps: object, counts: tuple[int, ...] = COUNTS) -> None:
    dl = _diffloss()
    z, x_T = _inputs(4, 1.0)
    dl.sample(z, 0.0, 1.0, noise=x_T, backend=backend, row_steps=row_steps, step_counts=counts)


BAD_ROW_STEPS = {
    "shape": (torch.tensor([3, 5, 8]), ValueError, "shape \\[4\\]"),
    "2-d": (torch.full((4, 1), 3), ValueError, "shape \\[4\\]"),
    "float": (torch.full((4,), 3.0), TypeError, "int32 or int64"),
    "list": ([3, 3, 3, 3], TypeError, "int tensor"),
    "unprepared count": (torch.tensor([3, 4, 5, 8]), ValueError, "outside the prepared ones"),
    "zero": (torch.tensor([3, 0, 5, 8]), ValueError, "outside the prepared ones"),
}


@pytest.mark.parametrize("backend", ["torch", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("case", sorted(BAD_ROW_STEPS))
def test_bad_row_steps_raise(case: str, backend: str) -> None:
    value, exc, match = BAD_ROW_STEPS[case]
    with pytest.raises(exc, match=match):
        _bad_call(backend, value)


def test_bad_step_counts_raise() -> None:
    with pytest.raises(ValueError, match="ints in \\[1, 1000\\]"):
        _bad_call("torch", torch.full((4,), 3), (3, 0))
    with pytest.raises(ValueError, match="not both"):
        dl = _diffloss()
        z, x_T = _inputs(4, 1.0)
        dl.sample(z, 0.0, 1.0, noise=x_T, steps=5, row_steps=torch.full((4,), 5))


@needs_native
def test_bad_row_table_op_calls_raise() -> None:
    """The operator's own checks (csrc/head_checks.h): dtype, shape, values, max_steps."""
    dl = _diffloss()
    z, x_T = _inputs(4, 1.0)
    stack = dl.table_stack((3, 5))
    good = stack.row_table(torch.tensor([3, 5, 5, 3]))
    cases = [
        (good.long(), 5, "row_table must be Int"),
        (good[:3].contiguous(), 5, "row_table .* must have shape"),
        (torch.tensor([[0, 3], [3, 6], [3, 5], [0, 3]], dtype=torch.int32), 5, "6 steps"),
        (torch.tensor([[0, 3], [6, 5], [3, 5], [0, 3]], dtype=torch.int32), 5, "past the stacked table"),
        (good, 0, "max_steps must be in"),
    ]
    for rt, max_steps, match in cases:
        with pytest.raises(RuntimeError, match=match):
            _op_call(dl, stack, z, x_T, rt, max_steps)
    with pytest.raises(RuntimeError, match="only used with a row_table"):
        _op_call(dl, stack, z, x_T, None, 5)


def _op_call(dl, stack, z, x_T, rt, max_steps):
    w = native.collect_weights(dl.net, torch.float32, z.device)
    c_emb, t_emb = native.embeddings(dl.net, stack, z)
    coefs = stack.sampler_table(DDPM, "cpu")
    args = (x_T, c_emb, t_emb, *w.args(), coefs, 1.0, 0.0, None, 0, 0, False, rt, max_steps)
    return torch.ops.marengine.head_sample(*args)


# ----------------------------------------------------------------------------- the schedule
def test_token_steps_parse() -> None:
    p = TokenSteps.parse("hf:base=8,boost=16,frac=0.25,early=2")
    assert (p.base, p.boost, p.frac, p.early) == (8, 16, 0.25, 2)
    assert TokenSteps.parse("off") is None and TokenSteps.parse(None) is None
    assert TokenSteps.parse("hf:boost=12").base is None
    for bad, match in [
        ("lf:boost=3", "unknown kind"),
        ("hf:base=8", "boost=N"),
        ("hf:boost=16,frac=2", "frac must be in"),
        ("hf:boost=0", "\\[1, 1000\\]"),
        ("hf:boost=x", "invalid literal"),
        ("hf:boost=4,boost=5", "each once"),
        ("hf:size=3,boost=4", "not one of"),
    ]:
        with pytest.raises(ValueError, match=match):
            TokenSteps.parse(bad)


def test_token_steps_counts_and_boosted_rows() -> None:
    it = Iteration(step=3, mask_len=10, last=False, cfg=1.0, head_steps=6, refresh=True)
    assert TokenSteps.parse("hf:boost=16").counts(it, 100) == (6, 16)
    assert TokenSteps.parse("hf:base=20,boost=16").counts(it, 100) == (20, 20)  # never fewer
    assert TokenSteps.parse("hf:boost=16,frac=0.25").boosted(it, 10) == 3
    assert TokenSteps.parse("hf:boost=16,frac=0.25,early=4").boosted(it, 10) == 10


def test_neighbour_variance_scores() -> None:
    from marengine.models.token_steps import neighbour_variance

    tokens = torch.zeros(1, 9, 2)  # 3 x 3 grid
    tokens[0, 0] = torch.tensor([4.0, 0.0])
    known = torch.tensor([[True, True, False, True, False, False, False, False, False]])
    score = neighbour_variance(tokens, known, 3, 3)[0]
    # position 4 (centre) sees known 0, 1, 3: channel 0 values (4, 0, 0): var 32/9; channel 1: 0
    assert score[4].item() == pytest.approx(16 / 9)
    assert torch.isinf(score[8])  # no known neighbour
    assert score[1].item() == pytest.approx(2.0)  # sees 0 and 3: channel 0 (4, 0) var 4, channel 1 var 0


# ----------------------------------------------------------------------------- the masked loop
def _randomize(model) -> None:
    torch.manual_seed(0)
    for p in model.parameters():
        p.data.normal_(0, 0.05)


@pytest.mark.parametrize("backend", ["torch", pytest.param("native", marks=needs_native)])
def test_masked_loop_with_token_steps_cfg_editing(tiny_mar, backend: str) -> None:
    _randomize(tiny_mar)
    L, C = tiny_mar.seq_len, tiny_mar.token_embed_dim
    labels = torch.tensor([1, 2])
    run = lambda **kw: tiny_mar.sample_tokens(  # noqa: E731
        2, 4, 3.0, "linear", labels, 1.0, generator=torch.Generator().manual_seed(0), backend=backend, **kw
    )
    plain = run(steps=3)
    boosted = run(steps=3, token_steps="hf:boost=8,frac=0.5")
    assert torch.isfinite(boosted).all() and not torch.equal(plain, boosted)  # the boost changes tokens
    # a boost no larger than the base count is the uniform schedule, bit for bit
    assert torch.equal(run(steps=3, token_steps="hf:boost=3,frac=0.5"), plain)
    known_tokens = torch.randn(2, L, C, generator=torch.Generator().manual_seed(1))
    known = torch.zeros(2, L, dtype=torch.bool)
    known[:, ::3] = True
    out = tiny_mar.patchify(
        run(steps="4-2", token_steps="hf:boost=6,frac=0.3,early=1", known_tokens=known_tokens, known_mask=known)
    )
    assert torch.equal(out[known], known_tokens[known])  # editing keeps the known tokens exactly


def test_token_steps_through_settings_and_presets() -> None:
    from marengine.config import resolve_preset
    from marengine.sampling.engine import SampleSettings

    assert resolve_preset("official", token_steps="hf:boost=16").token_steps == "hf:boost=16"
    assert resolve_preset("official", token_steps="off").token_steps is None
    s = SampleSettings(token_steps="hf:boost=16,frac=0.1")
    assert s.options()["token_steps"] == "hf:boost=16,frac=0.1"
    with pytest.raises(ValueError, match="token_steps"):
        SampleSettings(token_steps="hf:frac=0.1")


# ----------------------------------------------------------------------------- CUDA
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and native.available("cuda")), reason="needs a CUDA GPU and the CUDA kernels"
)


@needs_cuda
@pytest.mark.parametrize("path", ["persistent", "kernels"])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("n", [7, 300])
def test_cuda_mixed_rows_match_reference(monkeypatch: pytest.MonkeyPatch, n: int, cfg: float, path: str) -> None:
    monkeypatch.setenv("MARENGINE_HEAD_PATH", path)
    settings.reload()  # the knob is read once (marengine/settings.py)
    dl = _diffloss().cuda()
    z, x_T = (t.cuda() for t in _inputs(n, cfg))
    rs = _rows(n).cuda()
    noise = torch.randn(8, n, C, device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    stack = dl.table_stack(COUNTS)
    for sampler in (DDPM, HeadSampler.parse("dpm++2m")):
        for clip in (False, True):
            kw = dict(sampler=sampler, row_steps=rs, clip_denoised=clip)
            ref = reference.sample_head(HeadJob(dl.net, stack, z, x_T, 1.0, cfg, noise, **kw))
            out = native.sample_head(HeadJob(dl.net, stack, z, x_T, 1.0, cfg, noise, **kw))
            _groups_close(out.cpu(), ref.cpu(), rs.cpu())


@needs_native
@pytest.mark.parametrize("cfg_on", [False, True])
def test_opcheck_head_sample_with_row_table(cfg_on: bool) -> None:
    """The schema, the fake kernel and the CPU kernel agree with a row_table and max_steps."""
    from test_native_cpu import _head_args

    args = _head_args(n=5, s=3, cfg_on=cfg_on)
    args[2] = torch.randn(8, 16)  # t_emb of a stack of 3 + 5 steps
    args[17] = TableStack([make_tables("3"), make_tables("5")]).sampler_table(DDPM, "cpu")
    args[20] = torch.randn(5, 5, 4)  # step_noise [max_steps, N, C]
    rt = torch.tensor([[3, 5], [0, 3], [3, 5], [0, 3], [0, 3]], dtype=torch.int32)
    torch.library.opcheck(torch.ops.marengine.head_sample.default, (*args, False, rt, 5))
