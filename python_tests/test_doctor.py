"""`marengine doctor`: build info, backends and the self-checks; exit 1 when a self-check fails."""

from __future__ import annotations

import pytest
import torch

from marengine.cli import main
from marengine.ops import native, selfcheck

pytestmark = pytest.mark.skipif(not native.available("cpu"), reason="marengine._C is not built")
SMALL = ["--cpu-width", "64", "--cpu-depth", "1"]


@pytest.fixture(autouse=True)
def fresh():
    selfcheck.clear()
    yield
    selfcheck.clear()


def test_doctor_reports_build_and_passes(capsys):
    assert main(["doctor", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "CPU kernels" in out and native._C.cpu_kernels() in out
    assert "all 3 self-checks passed" in out
    assert "head 64x1" in out
    if not torch.cuda.is_available():
        assert "GPU                        none visible" in out
    if not native._C.built_with_cuda():
        assert "CUDA kernels               not built (" in out


def test_doctor_fails_on_a_wrong_kernel(capsys, monkeypatch):
    real = native.sample_head
    monkeypatch.setattr(native, "sample_head", lambda *a, **k: real(*a, **k) * 1.01)
    assert main(["doctor", *SMALL]) == 1
    out = capsys.readouterr().out
    assert "FAIL cpu, cpu path, float32 weights, head 64x1" in out
    assert "self-checks FAILED" in out


def test_doctor_without_checks(capsys):
    assert main(["doctor", "--no-checks", "--width", "96", "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "backends for a 96x2 head" in out and "self-checks" not in out
    assert selfcheck.results() == []


def test_doctor_says_what_precision_auto_runs(capsys, monkeypatch):
    from marengine.ops import precision

    for units, said in ((True, "bf16 (the device has bf16 units)"), (False, "fp32 (no bf16 units")):
        monkeypatch.setattr(precision, "bf16_units", lambda device, units=units: units)
        assert main(["doctor", "--no-checks"]) == 0
        out = capsys.readouterr().out
        assert "sampling precision" in out and f"cpu                        {said}" in out


def test_doctor_fails_when_no_check_can_run(capsys, monkeypatch):
    """No kernels built: nothing was checked, so the doctor says so and does not pass."""
    import dataclasses

    from marengine.ops import buildinfo

    real = buildinfo.build_info
    monkeypatch.setattr(buildinfo, "build_info", lambda: dataclasses.replace(real(), extension=None, gpus=[]))
    assert main(["doctor", *SMALL]) == 1
    out = capsys.readouterr().out
    assert "NO self-check ran" in out and "passed" not in out


def test_doctor_does_not_count_a_check_that_could_not_run(capsys, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("harness broke")

    monkeypatch.setattr(selfcheck, "_compare", broken)
    assert main(["doctor", *SMALL]) == 1
    out = capsys.readouterr().out
    assert out.count("SKIP cpu") == 3 and "not checked: harness broke" in out
    assert "NO self-check ran: all 3 could not run" in out and "self-checks passed" not in out


def test_doctor_counts_only_this_run(capsys, monkeypatch):
    """One check whose harness fails among passing ones: the result names both counts."""
    real = selfcheck._compare

    def first_broken(net, config, *a, **k):
        if config.dtype == torch.bfloat16:
            raise RuntimeError("harness broke")
        return real(net, config, *a, **k)

    monkeypatch.setattr(selfcheck, "_compare", first_broken)
    assert main(["doctor", *SMALL]) == 1
    out = capsys.readouterr().out
    assert "all 2 self-checks that ran passed; 1 of 3 could NOT run" in out
    assert main(["doctor", *SMALL, "--threads", "1"]) == 1  # the verdicts of the first run are not counted again
    assert "all 2 self-checks that ran passed; 1 of 3 could NOT run" in capsys.readouterr().out
