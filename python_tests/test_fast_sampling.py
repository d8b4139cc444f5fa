"""Fast sampling: head samplers (DDPM / DDIM / DPM-Solver++), step schedules, backbone
caching and presets.

The samplers are checked against a case with a known answer: data x0 ~ N(mu, s^2) per
channel, for which the optimal eps prediction is analytic, so every sampler must produce
that distribution (DDIM/DPM-Solver++ as the deterministic flow, DDPM with its posterior
variance); the native CPU kernel must agree with the reference for every sampler.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import rel_err

from marengine.diffusion.samplers import SAMPLERS, HeadSampler, step_table
from marengine.diffusion.schedule import make_tables
from marengine.models.backbone_cache import CachePolicy
from marengine.ops import native_available, reference
from marengine.ops.head_job import HeadJob
from marengine.schedules import step_schedule

MU, SD = torch.tensor([0.7, -1.2, 0.0]), torch.tensor([0.5, 0.2, 1.3])


class GaussianEps(torch.nn.Module):
    """The exact eps predictor for data N(MU, SD^2): E[eps | x_t] =
    sqrt(1-abar) (x_t - sqrt(abar) mu) / (abar sd^2 + 1 - abar); variance output -1 (the posterior's)."""

    in_channels = 3

    def __init__(self) -> None:
        super().__init__()
        self.abar = torch.cumprod(1 - make_tables("").betas, 0).float()  # per training timestep

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        a = self.abar[t].unsqueeze(-1)
        eps = (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * SD**2 + 1 - a)
        return torch.cat([eps, -torch.ones_like(eps)], dim=1)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "ddim:1.0", "dpm++2m"])
def test_every_sampler_reaches_a_known_distribution(sampler):
    s = HeadSampler.parse(sampler)
    steps = "50" if s.kind == "dpm++2m" else "250"  # a second-order solver needs far fewer steps
    tables = make_tables(steps)
    n = 20000
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(n, 3, generator=g)
    noise = None if s.deterministic else torch.randn(tables.num_steps, n, 3, generator=g)
    out = reference.sample_head(HeadJob(GaussianEps(), tables, torch.zeros(n, 1), x_T, 1.0, 1.0, noise, sampler=s))
    mean, sd = out.mean(0), out.std(0)
    assert torch.allclose(mean, MU, atol=0.03), (sampler, mean)
    assert torch.allclose(sd, SD, rtol=0.05, atol=0.01), (sampler, sd)


def test_few_steps_differ_and_many_steps_agree_across_samplers():
    # the deterministic flows (DDIM eta=0 and DPM-Solver++) map the same x_T to nearly the same x_0 at
    # many steps; at 5 steps DPM-Solver++ is already close while DDIM is visibly off
    n = 4000
    x_T = torch.randn(n, 3, generator=torch.Generator().manual_seed(1))

    def run(kind: str, steps: str) -> torch.Tensor:
        return reference.sample_head(
            HeadJob(
                GaussianEps(), make_tables(steps), torch.zeros(n, 1), x_T, 1.0, 1.0, None, sampler=HeadSampler(kind)
            )
        )

    exact = run("dpm++2m", "1000")
    assert (run("ddim", "1000") - exact).abs().max() < 0.02
    assert (run("dpm++2m", "8") - exact).abs().mean() < (run("ddim", "8") - exact).abs().mean()


def test_ddpm_table_is_the_official_posterior_bit_for_bit():
    for spacing in ("100", "ddim25", "7", "10,15,20", "1"):
        t = make_tables(spacing)
        tab, table = t.on("cpu"), t.sampler_table(HeadSampler("ddpm"), "cpu")
        for col, name in enumerate(["sqrt_recip_abar", "sqrt_recipm1_abar", "post_coef1", "post_coef2"]):
            assert torch.equal(table[:, col], tab[name]), (spacing, name)
        assert torch.equal(table[:, 5], tab["post_logvar"]) and torch.equal(table[:, 6], tab["log_betas"])
        assert table[0, 7] == 0 and bool((table[1:, 7] == 1).all())
    for kind in SAMPLERS:  # every sampler returns x0 at the last step
        row = step_table(make_tables("10").betas.tolist(), HeadSampler(kind))[0]
        assert row[2:5] == [1.0, 0.0, 0.0] or kind == "ddpm"


# ---------------------------------------------------------------- native vs reference
@pytest.mark.skipif(not native_available("cpu"), reason="native kernels not built")
@pytest.mark.parametrize("sampler", ["ddim", "ddim:1.0", "dpm++2m"])
@pytest.mark.parametrize("cfg, temperature, clip", [(1.0, 0.0, False), (3.0, 1.0, True), (2.0, 0.8, False)])
def test_native_matches_reference_for_every_sampler(sampler, cfg, temperature, clip):
    from test_native_cpu import inputs, make_diffloss

    dl = make_diffloss(width=64, depth=2, steps="12")
    z, x_T = inputs(21, cfg)
    s = HeadSampler.parse(sampler)
    tables = dl.tables("12")
    noise = torch.randn(tables.num_steps, *x_T.shape, generator=torch.Generator().manual_seed(3))
    noise = None if s.deterministic or temperature == 0 else noise
    job = HeadJob(dl.net, tables, z, x_T, temperature, cfg, noise, sampler=s, clip_denoised=clip)
    ref = reference.sample_head(job)
    from marengine.ops import native

    out = native.sample_head(job)
    assert rel_err(out, ref) <= 1e-4, (sampler, rel_err(out, ref))


# ---------------------------------------------------------------- the MAR loop
def _sample(model, **kw):
    g = torch.Generator().manual_seed(0)
    args = dict(num_iter=6, cfg=2.5, labels=torch.tensor([1, 2, 3]), temperature=1.0)
    args.update(kw)
    return model.sample_tokens(3, generator=g, backend="torch", **args)


def _randomized(model):
    """Every weight re-drawn (the official init zeroes the head's output layers); LayerNorm gains ~1."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = name.endswith("weight") and "norm" in name or "_ln." in name and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (1.0 if gain else 0.0))
    return model


def test_cache_that_always_refreshes_is_the_plain_backbone(tiny_mar):
    model = _randomized(tiny_mar)
    plain = _sample(model)
    assert torch.equal(_sample(model, cache=None), plain)
    always = _sample(model, cache=CachePolicy(refresh_every=1, warmup=1))
    assert torch.allclose(always, plain, atol=1e-5, rtol=1e-5)


def test_cache_reuses_between_refreshes(tiny_mar):
    model = _randomized(tiny_mar)
    plain = _sample(model, temperature=0.0)
    calls = {"backbone": 0}
    real = model.backbone

    def counting(*a):
        calls["backbone"] += 1
        return real(*a)

    model.backbone = counting
    try:
        cached = _sample(model, temperature=0.0, cache="refresh=3,warmup=2,tokens=0,cfg=1")
    finally:
        del model.backbone
    assert calls["backbone"] == 6  # the CFG cache alone: every iteration runs the conditional half...
    assert cached.shape == plain.shape and torch.isfinite(cached).all()
    for cache in ("refresh=3,warmup=2", "refresh=3,warmup=2,cfg=0", "refresh=2,warmup=1,tokens=1,cfg=1"):
        tok = _sample(model, temperature=0.0, cache=cache)
        assert tok.shape == plain.shape and torch.isfinite(tok).all()
        assert not torch.equal(tok, plain)  # reused features change the result a little...
        assert rel_err(tok, plain) < 0.5  # ...not a lot
    unguided = _sample(model, temperature=0.0, cfg=1.0, cache="refresh=3,warmup=2")
    assert rel_err(unguided, _sample(model, temperature=0.0, cfg=1.0)) < 0.5


def test_step_schedule_and_sampler_reach_the_head(tiny_mar, monkeypatch):
    seen = []
    real = tiny_mar.diffloss.sample

    def spy(z, *a, **kw):
        seen.append((kw.get("sampler"), kw.get("steps")))
        return real(z, *a, **kw)

    monkeypatch.setattr(tiny_mar.diffloss, "sample", spy)
    _sample(tiny_mar, sampler="dpm++2m", steps="9-4")
    assert [s for _, s in seen] == step_schedule("9-4", 6)
    assert all(s.kind == "dpm++2m" for s, _ in seen)


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        ({"sampler": "euler"}, ValueError, "unknown head sampler"),
        ({"sampler": "ddpm:0.5"}, ValueError, "only ddim takes a parameter"),
        ({"sampler": "ddim:2"}, ValueError, "DDIM eta must be"),
        ({"steps": 0}, ValueError, r"diffusion steps must be in \[1, 1000\]"),
        ({"steps": [5] * 7}, ValueError, "7 entries but there are only 6 iterations"),
        ({"steps": "20-x"}, ValueError, "diffusion-step schedule"),
        ({"cache": "refresh=0"}, ValueError, "refresh_every must be an integer >= 1"),
        ({"cache": "often"}, ValueError, "bad cache setting"),
        ({"cache": "refresh=2", "backbone": lambda *a: None}, ValueError, "drop backbone= or cache="),
    ],
)
def test_bad_fast_settings(tiny_mar, kw, exc, match):
    with pytest.raises(exc, match=match):
        _sample(tiny_mar, **kw)


def test_presets_resolve_and_bad_ones_are_refused():
    from marengine.config import SAMPLING_PRESETS, resolve_preset
    from marengine.sampling.engine import SampleSettings

    assert resolve_preset("official") == SAMPLING_PRESETS["official"]
    fast = SampleSettings(preset="fast", num_iter=8).options()
    assert fast["sampler"] == SAMPLING_PRESETS["fast"].sampler and fast["cache"] == SAMPLING_PRESETS["fast"].cache
    assert SampleSettings(preset="fast", num_iter=8, cache="off").options()["cache"] is None
    assert SampleSettings(preset="fast", num_iter=8, steps=7).options()["steps"] == 7
    with pytest.raises(ValueError, match="unknown sampling setting preset"):
        SampleSettings(preset="turbo")
    with pytest.raises(ValueError, match="unknown head sampler"):
        SampleSettings(sampler="heun")
    with pytest.raises(ValueError, match="only 4 iterations"):
        SampleSettings(num_iter=4, steps=[3] * 5)


def test_cosine_step_annealing_is_monotone():
    for spec in ("50-5", "50-5:cos", "5-50"):
        s = step_schedule(spec, 16)
        assert s[0] == int(spec.split("-")[0]) and s[-1] == int(spec.split("-")[1].split(":")[0])
        d = [b - a for a, b in zip(s, s[1:])]
        assert all(x <= 0 for x in d) or all(x >= 0 for x in d)
    assert math.isclose(sum(step_schedule("10-10", 4)), 40)
