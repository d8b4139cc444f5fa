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


def test_cfg_cache_alone_runs_the_conditional_half_each_iteration(tiny_mar):
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
    assert not torch.equal(cached, plain)  # ...and the unconditional half comes from the cache


# ---------------------------------------------------------------- backbone reuse against a slow reference
def _block_by_hand(blk, x, stored, fresh, visible):
    """One pre-norm block over every position x [R, T, D], written out: the keys/values of a
    position are its own where fresh [R, T] and `stored` (K, V [R, H, T, hd]) elsewhere (stored
    None: all its own); a row sees the positions where visible [R, T]. -> (x [R, T, D], (K, V) used)."""
    attn = blk.attn
    r, t, d = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(blk.norm1(x)).reshape(r, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # [R, H, T, hd]
    if stored is not None:
        own = fresh[:, None, :, None]
        k, v = torch.where(own, k, stored[0]), torch.where(own, v, stored[1])
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // heads)  # [R, H, T, T]
    weights = scores.masked_fill(~visible[:, None, None, :], float("-inf")).softmax(-1)
    x = x + attn.proj((weights @ v).transpose(1, 2).reshape(r, t, d))
    h = blk.norm2(x)
    return x + blk.mlp.fc2(torch.nn.functional.gelu(blk.mlp.fc1(h))), (k, v)


class SlowReuse:
    """The reuse semantics of a cache policy, written the slow way as a stand-in backbone for the
    plain loop (not the engine's code): every iteration runs the whole encoder and decoder over all
    buffer + L positions. An iteration is full at the first `warmup` and then every `refresh`-th;
    a full one stores every position's keys/values per layer (and, guided, z_cond - z_uncond).
    On the others, with token reuse, only the tokens that became known since the previous
    iteration (encoder) and those plus the positions predicted now (decoder) use their own
    keys/values; every other position's are substituted from the store, which then keeps the
    ones used. With the CFG cache the unconditional rows are z_cond minus the stored difference.
    `known` [n_iter][B, L]: which tokens each iteration knows (from a plain run: the positions
    depend only on the generator's orders), so that an iteration knows what it predicts."""

    def __init__(self, model, known: list[torch.Tensor], refresh: int, warmup: int, tokens: bool, cfg: bool) -> None:
        self.m, self.known = model, known
        self.refresh, self.warmup, self.tokens, self.cfg = refresh, warmup, tokens, cfg
        self.i, self.enc, self.dec, self.delta, self.prev = 0, None, None, None, None

    def __call__(self, x: torch.Tensor, known_idx: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
        m, i = self.m, self.i
        self.i += 1
        rows, L = x.shape[:2]
        bsz, buf = self.known[0].shape[0], m.buffer_size
        known = torch.zeros(rows, L, dtype=torch.bool).scatter(1, known_idx, True)  # [R, L]
        assert torch.equal(known[:bsz], self.known[i])
        later = self.known[i + 1] if i + 1 < len(self.known) else torch.ones_like(self.known[i])
        to_pred = (later & ~self.known[i]).repeat(rows // bsz, 1)  # [R, L]
        full = i < self.warmup or (i - self.warmup) % self.refresh == 0
        reuse = self.tokens and not full
        new = known & ~self.prev if reuse else None
        self.prev = known
        no_buf, all_buf = torch.zeros(rows, buf, dtype=torch.bool), torch.ones(rows, buf, dtype=torch.bool)
        # encoder over every position; a row sees the buffer and the known tokens
        h = torch.cat([ce.unsqueeze(1).expand(-1, buf, -1), m.z_proj(x)], dim=1) + m.encoder_pos_embed_learned
        h = m.z_proj_ln(h)
        seen = torch.cat([all_buf, known], dim=1)  # [R, T]
        fresh = torch.cat([no_buf, new], dim=1) if reuse else None
        enc = []
        for layer, blk in enumerate(m.encoder_blocks):
            h, kv = _block_by_hand(blk, h, self.enc[layer] if reuse else None, fresh, seen)
            enc.append(kv)
        # decoder over every position: the encoder's rows where known, the mask token elsewhere
        d = torch.where(seen.unsqueeze(-1), m.decoder_embed(m.encoder_norm(h)), m.mask_token)
        d = d + m.decoder_pos_embed_learned
        fresh = torch.cat([no_buf, new | to_pred], dim=1) if reuse else None
        dec = []
        for layer, blk in enumerate(m.decoder_blocks):
            d, kv = _block_by_hand(blk, d, self.dec[layer] if reuse else None, fresh, torch.ones_like(seen))
            dec.append(kv)
        z = m.decoder_norm(d)[:, buf:] + m.diffusion_pos_embed_learned  # [R, L, D]
        if self.tokens:
            self.enc, self.dec = enc, dec
        if rows > bsz and self.cfg:
            if full:
                self.delta = z[:bsz] - z[bsz:]
            else:
                z = torch.cat([z[:bsz], z[:bsz] - self.delta])
        return z


def _backbone_outputs(model, **kw) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run _sample with a stand-in head that ignores z and returns fixed random tokens, so that
    every run sees the same tokens whatever its backbone computes (no chain amplifies a rounding
    difference): per iteration, the z rows the head was given ([P, D], then the null-class rows)
    and which tokens the backbone pass knew [B, L]."""
    zs, known = [], []
    g = torch.Generator().manual_seed(11)
    real = model.backbone

    def head(z, *a, **k):
        zs.append(z.clone())
        return torch.randn(z.shape[0], model.token_embed_dim, generator=g)

    def spy(x, known_idx, ce):
        known.append(torch.zeros(3, model.seq_len, dtype=torch.bool).scatter(1, known_idx[:3], True))
        return real(x, known_idx, ce)

    model.diffloss.sample = head
    try:
        if kw.get("backbone") is None and kw.get("cache") is None:
            kw["backbone"] = spy
        _sample(model, **kw)
    finally:
        del model.diffloss.sample
    return zs, known


@pytest.mark.parametrize(
    "cache, refresh, warmup, tokens, cfg, scale",
    [
        ("refresh=2", 2, 2, True, True, 2.5),
        ("refresh=3,warmup=1", 3, 1, True, True, 2.5),
        ("refresh=2,warmup=1,cfg=0", 2, 1, True, False, 2.5),
        ("refresh=3,warmup=1,tokens=0", 3, 1, False, True, 2.5),
        ("refresh=3,warmup=1", 3, 1, True, True, 1.0),  # unguided: the token cache alone
    ],
)
def test_cached_sampling_matches_a_slow_reference_of_the_reuse(tiny_mar, cache, refresh, warmup, tokens, cfg, scale):
    """The engine's cached sampling gives the head, at every iteration, the z rows of the slow
    reference at fp32 tolerance."""
    model = _randomized(tiny_mar)
    plain, known = _backbone_outputs(model, cfg=scale)  # the positions depend only on the generator's orders
    assert len(known) == 6 and not known[0].any()
    never, _ = _backbone_outputs(model, cfg=scale, backbone=SlowReuse(model, known, 1, 1, tokens, cfg))
    ref, _ = _backbone_outputs(model, cfg=scale, backbone=SlowReuse(model, known, refresh, warmup, tokens, cfg))
    cached, _ = _backbone_outputs(model, cfg=scale, cache=cache)
    assert len(plain) == len(never) == len(ref) == len(cached) == 6
    reused = 0
    for it in range(6):
        torch.testing.assert_close(never[it], plain[it], atol=1e-5, rtol=1e-4)  # the reference pass is the model's
        where = f"iteration {it}"
        torch.testing.assert_close(cached[it], ref[it], atol=1e-5, rtol=1e-4, msg=lambda m, w=where: f"{w}: {m}")
        reused += not torch.allclose(ref[it], plain[it], atol=1e-3, rtol=1e-2)
    assert reused >= 2  # the reuse changes z at the iterations that reuse (the test can tell)


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
    assert SampleSettings(preset="turbo").speed() == SAMPLING_PRESETS["turbo"]
    with pytest.raises(ValueError, match="unknown sampling setting preset"):
        SampleSettings(preset="warp")
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
