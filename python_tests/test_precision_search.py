"""The matmul-precision knob (ops/precision.py) and the preset search's Pareto front (bench/pareto.py)."""

from __future__ import annotations

import math

import pytest
import torch

from marengine.bench.pareto import dominates, fastest_within, pareto_front
from marengine.config import SAMPLING_PRESETS, resolve_preset
from marengine.ops import precision
from marengine.sampling.engine import SampleSettings


def _pts(*rows):
    return [{"name": n, "speed": s, "loss": q} for n, s, q in rows]


def test_pareto_front_by_hand():
    pts = _pts(("a", 1.0, 1.0), ("b", 2.0, 1.2), ("c", 1.5, 1.3), ("d", 3.0, 2.0), ("e", 2.0, 1.1), ("f", 0.5, 0.9))
    # c is dominated by b and e (faster, less loss); b by e (same speed, less loss)
    assert [p["name"] for p in pareto_front(pts, "speed", "loss")] == ["f", "a", "e", "d"]
    assert dominates(pts[4], pts[1], "speed", "loss") and not dominates(pts[1], pts[4], "speed", "loss")
    assert not dominates(pts[0], pts[0], "speed", "loss")  # a point never dominates itself


def test_pareto_front_skips_nan_and_keeps_ties():
    pts = _pts(("a", 2.0, 1.0), ("b", 2.0, 1.0), ("n", math.nan, 0.1), ("m", 9.0, math.nan))
    assert [p["name"] for p in pareto_front(pts, "speed", "loss")] == ["a", "b"]


def test_fastest_within_budget():
    pts = [{"n": "x", "s": 3.0, "fd": 1.2, "acc": 0.0}, {"n": "y", "s": 2.0, "fd": 1.04, "acc": 0.4},
           {"n": "z", "s": 2.5, "fd": 1.01, "acc": 1.5}]  # fmt: skip
    assert fastest_within(pts, "s", {"fd": 1.05, "acc": 0.5})["n"] == "y"
    assert fastest_within(pts, "s", {"fd": 1.5, "acc": 2.0})["n"] == "x"
    assert fastest_within(pts, "s", {"fd": 1.0}) is None


def test_resolve_precision(monkeypatch):
    assert precision.resolve_precision("fp32", "cpu") == torch.float32
    assert precision.resolve_precision("bf16", "cpu") == torch.bfloat16
    monkeypatch.setattr(precision, "bf16_units", lambda device: False)
    assert precision.resolve_precision("auto", "cpu") == torch.float32  # emulated bf16 is no gain
    assert isinstance(precision.precision_context("auto", "cpu"), type(precision.precision_context("fp32", "cpu")))
    monkeypatch.setattr(precision, "bf16_units", lambda device: True)
    assert precision.resolve_precision("auto", "cpu") == torch.bfloat16
    with precision.precision_context("auto", "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        precision.resolve_precision("fp16", "cpu")


def test_bf16_units_reads_the_cpu_builds(monkeypatch):
    from marengine.ops import native

    if native._C is None:
        pytest.skip("the native extension is not built")

    class FakeC:
        def __init__(self, builds):
            self.builds = builds

        def cpu_kernels_supported(self):
            return self.builds

    monkeypatch.setattr(native, "_C", FakeC("avx512,avx2,base"))
    assert not precision.bf16_units("cpu")
    monkeypatch.setattr(native, "_C", FakeC("avx512_bf16,avx512,avx2,base"))
    assert precision.bf16_units("cpu")


def test_sample_settings_precision():
    assert SampleSettings(precision="bf16").speed().precision == "bf16"
    assert SampleSettings().speed().precision == SAMPLING_PRESETS["official"].precision == "fp32"
    assert resolve_preset("fast", precision="fp32").precision == "fp32"
    with pytest.raises(ValueError, match="unknown precision"):
        SampleSettings(precision="int8")


def test_bf16_generation_runs_the_backbone_in_bf16(monkeypatch):
    """precision='bf16' runs the loop under autocast: the backbone's matmuls see bf16 inputs."""
    from marengine.bench.models import random_model
    from marengine.sampling.engine import generate_latents

    model = random_model("mar_digits", "cpu")
    seen = []
    hook = model.encoder_blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        fp32 = generate_latents(model, [3], SampleSettings(num_iter=2, cfg=1.0, batch_size=1, steps=3, backend="torch"))
        assert set(seen) == {torch.float32}
        seen.clear()
        bf16 = generate_latents(
            model, [3], SampleSettings(num_iter=2, cfg=1.0, batch_size=1, steps=3, backend="torch", precision="bf16")
        )
        assert set(seen) == {torch.bfloat16}
    finally:
        hook.remove()
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape and torch.isfinite(bf16).all()
