"""The first-use self-check of the native head kernels (marengine/ops/selfcheck.py), driven on
the CPU kernels (MARENGINE_SELFCHECK=all): a configuration that passes runs natively, one
whose kernel returns a wrong result (injected here) is named in one warning and runs on the
reference from then on, and the switch turns the checks off. The mechanism is the same for
the CUDA kernels, where it is on by default.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from marengine import settings
from marengine.models.diffloss import DiffLoss
from marengine.ops import native, selfcheck
from marengine.ops.head_job import HeadJob

pytestmark = pytest.mark.skipif(not native.available("cpu"), reason="marengine._C is not built")
C, Z = 16, 32


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    selfcheck.clear()
    monkeypatch.setenv("MARENGINE_SELFCHECK", "all")
    monkeypatch.delenv("MARENGINE_HEAD_PATH", raising=False)
    settings.reload()
    yield
    selfcheck.clear()


def make_diffloss(width: int = 64, depth: int = 2) -> DiffLoss:
    torch.manual_seed(0)
    dl = DiffLoss(C, Z, depth, width, "10")
    for m in dl.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.08)
            torch.nn.init.normal_(m.bias, std=0.08)
    return dl.eval()


def inputs(n: int = 7, cfg: float = 3.0):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2 * n if cfg != 1.0 else n, Z, generator=g), torch.randn(n, C, generator=g)


def count_checks(monkeypatch) -> list:
    calls = []
    real = selfcheck.run_check
    monkeypatch.setattr(selfcheck, "run_check", lambda net, cfg: calls.append(cfg) or real(net, cfg))
    return calls


def wrong_kernel(monkeypatch, how: str = "offset") -> None:
    """Inject a broken kernel: every native result is off by one (or the kernel raises)."""
    real = native.sample_head

    def broken(*args, **kw):
        if how == "raise":
            raise RuntimeError("marengine: head_sample launch failed: an illegal memory access was encountered")
        return real(*args, **kw) + 1.0

    monkeypatch.setattr(native, "sample_head", broken)


def test_mode_switch(monkeypatch):
    for value, want in [("", "auto"), ("auto", "auto"), ("1", "auto"), ("all", "all"), ("0", "off"), ("off", "off")]:
        monkeypatch.setenv("MARENGINE_SELFCHECK", value)
        settings.reload()
        assert selfcheck.mode() == want
    monkeypatch.delenv("MARENGINE_SELFCHECK")
    settings.reload()
    assert selfcheck.mode() == "auto"
    assert selfcheck.enabled_for(torch.device("cuda")) and not selfcheck.enabled_for(torch.device("cpu"))
    monkeypatch.setenv("MARENGINE_SELFCHECK", "sometimes")
    with pytest.raises(ValueError, match="MARENGINE_SELFCHECK must be one of auto, all, off"):
        settings.reload()


def test_head_path_follows_the_kernels_choice(monkeypatch):
    cuda = torch.device("cuda", 0)
    # the thresholds the extension reports (csrc/kernel_limits.h), not a Python copy
    big, tile = native.LIMITS["cuda_persistent_max_rows"], native.LIMITS["cuda_small_tile_max_rows"]
    assert 1 < big < tile
    assert [selfcheck.head_path(cuda, r) for r in (1, big, big + 1, tile, tile + 1)] == [
        "persistent",
        "persistent",
        "kernels-32",
        "kernels-32",
        "kernels-64",
    ]
    monkeypatch.setenv("MARENGINE_HEAD_PATH", "kernels")
    settings.reload()
    assert selfcheck.head_path(cuda, 10) == "kernels-32"
    monkeypatch.setenv("MARENGINE_HEAD_PATH", "persistent")
    settings.reload()
    assert selfcheck.head_path(cuda, 4000) == "persistent"
    assert selfcheck.head_path(torch.device("cpu"), 10) == "cpu"


def test_passing_configuration_runs_native_and_is_checked_once(monkeypatch):
    dl = make_diffloss()
    z, x_T = inputs()
    calls = count_checks(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no self-check warning
        outs = [dl.sample(z, 0.0, 3.0, noise=x_T, backend="auto") for _ in range(3)]
    assert len(calls) == 1
    want = native.sample_head(HeadJob(dl.net, dl.gen_tables, z, x_T, 0.0, 3.0, None))
    assert all(torch.equal(o[:7], want) for o in outs)  # the native kernel ran
    (v,) = selfcheck.results()
    assert v.ok and v.error <= v.allowed and v.ms > 0
    assert v.config.describe() == (
        "cpu, cpu path, float32 weights, head 64x2, 16 channels, sampler ddpm, cfg on, clip_denoised off"
    )


def test_wrong_kernel_is_named_once_and_the_reference_runs(monkeypatch):
    dl = make_diffloss()
    z, x_T = inputs()
    wrong_kernel(monkeypatch)
    calls = count_checks(monkeypatch)
    want = dl.sample(z, 0.0, 3.0, noise=x_T, backend="torch")
    with pytest.warns(RuntimeWarning, match=r"failed its self-check for \[cpu, cpu path, float32 weights, head 64x2"):
        first = dl.sample(z, 0.0, 3.0, noise=x_T, backend="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: the verdict is cached
        second = dl.sample(z, 0.0, 3.0, noise=x_T, backend="auto")
    assert torch.equal(first, want) and torch.equal(second, want)
    assert len(calls) == 1
    (v,) = selfcheck.results()
    assert not v.ok and v.error > v.allowed and v.detail == "wrong result"
    with pytest.raises(RuntimeError, match="backend='native' asked for, but the native kernel failed its self-check"):
        dl.sample(z, 0.0, 3.0, noise=x_T, backend="native")


def test_a_kernel_that_raises_fails_its_check(monkeypatch):
    dl = make_diffloss()
    z, x_T = inputs()
    wrong_kernel(monkeypatch, "raise")
    with pytest.warns(RuntimeWarning, match="illegal memory access"):
        out = dl.sample(z, 0.0, 3.0, noise=x_T, backend="auto")
    assert torch.equal(out, dl.sample(z, 0.0, 3.0, noise=x_T, backend="torch"))


def test_configurations_are_checked_separately(monkeypatch):
    dl = make_diffloss()
    z, x_T = inputs()
    calls = count_checks(monkeypatch)
    dl.sample(z, 0.0, 3.0, noise=x_T)
    dl.sample(z, 0.0, 3.0, noise=x_T, sampler="ddim")
    dl.sample(z, 0.0, 3.0, noise=x_T, sampler="dpm++2m", clip_denoised=True)
    dl.sample(z[:7], 0.0, 1.0, noise=x_T)  # no CFG
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dl.sample(z, 0.0, 3.0, noise=x_T)  # bf16 weights
    dl.sample(z, 0.0, 3.0, noise=x_T)  # seen before
    assert len(calls) == 5
    assert all(v.ok for v in selfcheck.results()), [v.line() for v in selfcheck.results()]
    assert {v.config.dtype for v in selfcheck.results()} == {torch.float32, torch.bfloat16}


def test_switch_off_runs_the_kernel_unchecked(monkeypatch):
    dl = make_diffloss()
    z, x_T = inputs()
    right = native.sample_head(HeadJob(dl.net, dl.gen_tables, z, x_T, 0.0, 3.0, None))
    wrong_kernel(monkeypatch)
    calls = count_checks(monkeypatch)
    monkeypatch.setenv("MARENGINE_SELFCHECK", "0")
    settings.reload()
    out = dl.sample(z, 0.0, 3.0, noise=x_T, backend="auto")
    assert calls == [] and torch.equal(out[:7], right + 1.0)  # the (broken) kernel ran


def test_default_checks_cuda_not_cpu(monkeypatch):
    monkeypatch.delenv("MARENGINE_SELFCHECK")
    settings.reload()
    dl = make_diffloss()
    z, x_T = inputs()
    calls = count_checks(monkeypatch)
    dl.sample(z, 0.0, 3.0, noise=x_T, backend="auto")
    assert calls == []


def test_harness_failure_does_not_condemn_the_kernel(monkeypatch, caplog):
    dl = make_diffloss()
    z, x_T = inputs()

    def no_twin(net, device):
        raise TypeError("cannot copy this module")

    monkeypatch.setattr(selfcheck, "_random_twin", no_twin)
    out = dl.sample(z, 0.0, 3.0, noise=x_T, backend="auto")
    assert torch.equal(out[:7], native.sample_head(HeadJob(dl.net, dl.gen_tables, z, x_T, 0.0, 3.0, None)))
    assert "could not run" in caplog.text
    (v,) = selfcheck.results()
    assert v.ok and v.detail.startswith("not checked")


def test_twin_has_the_structure_not_the_weights():
    dl = make_diffloss(width=32, depth=3)
    twin = selfcheck._random_twin(dl.net, torch.device("cpu"))
    pairs = list(zip(dl.net.named_parameters(), twin.named_parameters()))
    assert len(pairs) == len(list(dl.net.parameters()))
    for (name, p), (tname, t) in pairs:
        assert name == tname and p.shape == t.shape and t.dtype == torch.float32
        assert t.data_ptr() != p.data_ptr() and not torch.equal(t, p.detach())
    with torch.device("meta"):  # a template without storage works too (marengine doctor)
        meta = DiffLoss(C, Z, 2, 48, "10").net
    assert selfcheck._random_twin(meta, torch.device("cpu")).input_proj.weight.device.type == "cpu"
