"""sample_tokens: reproducibility, CFG batching, and clear errors on bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import ONE_BLOCK, rel_err

from marengine.models import MAR


def _sample(model: MAR, seed: int, **kw) -> torch.Tensor:
    kw = {"num_iter": 4, "labels": torch.tensor([1, 2, 3]), "backend": "torch", **kw}
    return model.sample_tokens(3, generator=torch.Generator().manual_seed(seed), **kw)


def _randomize(model: MAR) -> MAR:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_seeded_sampling_is_reproducible(tiny_mar):
    model = _randomize(tiny_mar)
    a, b, c = _sample(model, 0), _sample(model, 0), _sample(model, 1)
    assert a.shape == (3, model.vae_embed_dim, model.seq_h, model.seq_w)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_cfg_sampling_reproducible(tiny_mar, schedule):
    model = _randomize(tiny_mar)
    a = _sample(model, 3, cfg=3.0, cfg_schedule=schedule)
    b = _sample(model, 3, cfg=3.0, cfg_schedule=schedule)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert not torch.allclose(a, _sample(model, 3))  # guidance changes the result


def test_every_token_is_sampled(tiny_mar):
    model = _randomize(tiny_mar)
    out = model.patchify(_sample(model, 0, num_iter=model.seq_len, temperature=0.5))
    assert (out.abs().sum(-1) > 0).all()


def test_unconditional_sampling(tiny_mar):
    out = _sample(_randomize(tiny_mar), 0, labels=None, cfg=2.0)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        ({"labels": torch.tensor([1, 2, 10])}, ValueError, "labels must be in"),
        ({"labels": torch.tensor([-1, 2, 3])}, ValueError, "labels must be in"),
        ({"labels": torch.tensor([1.0, 2.0, 3.0])}, TypeError, "int64"),
        ({"labels": torch.tensor([1, 2])}, ValueError, "shape"),
        ({"num_iter": 0}, ValueError, "num_iter"),
        ({"num_iter": 17}, ValueError, "num_iter"),
        ({"temperature": -0.1}, ValueError, "temperature"),
        ({"cfg": 0.5}, ValueError, "cfg"),
        ({"cfg": 2.0, "cfg_schedule": "cosine"}, ValueError, "cfg_schedule"),
        ({"backend": "cuda-magic"}, ValueError, "backend"),
    ],
)
def test_bad_sampling_arguments(tiny_mar, kw, exc, match):
    with pytest.raises(exc, match=match):
        _sample(tiny_mar, 0, **kw)


def test_bad_tokens_and_masks(tiny_mar):
    emb = tiny_mar.class_emb(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="tokens must be"):
        tiny_mar.forward_mae_encoder(torch.zeros(2, 15, 16), torch.ones(2, 15), emb)
    with pytest.raises(ValueError, match=r"imgs \(latents\) must have shape \[\*, 16, 4, 4\]"):
        tiny_mar(torch.zeros(2, 16, 3, 3), torch.tensor([0, 1]))
    mask = torch.ones(2, 16)
    mask[0, :3] = 0
    mask[1, :5] = 0
    with pytest.raises(ValueError, match="same number of tokens"):
        tiny_mar.forward_mae_encoder(torch.zeros(2, 16, 16), mask, emb)
    with pytest.raises(ValueError, match="labels must be in"):
        tiny_mar(torch.zeros(2, 16, 4, 4), torch.tensor([0, 10]))


def test_bad_head_sampling_arguments(tiny_mar):
    head = tiny_mar.diffloss
    z = torch.randn(3, 64)
    with pytest.raises(ValueError, match="even number"):
        head.sample(z, cfg=2.0)
    with pytest.raises(ValueError, match=r"noise \(x_T\) must have shape"):
        head.sample(z, noise=torch.zeros(2, 16))
    with pytest.raises(ValueError, match="temperature"):
        head.sample(z, temperature=-1.0)


def test_bad_config():
    with pytest.raises(ValueError, match="not divisible"):
        MAR(img_size=64, vae_stride=16, patch_size=3, **ONE_BLOCK)
    with pytest.raises(ValueError, match="num_heads"):
        MAR(img_size=64, **{**ONE_BLOCK, "encoder_embed_dim": 30, "encoder_num_heads": 4})


def test_training_loss_and_gradients(tiny_mar):
    model = _randomize(tiny_mar).train()
    imgs, labels = torch.randn(4, 16, 4, 4), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)  # dropout draws from the global generator
    loss = model(imgs, labels, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    again = model(imgs, labels, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and torch.equal(loss, again)
    loss.backward()
    assert model.decoder_embed.weight.grad.abs().sum() > 0
    assert model.diffloss.net.input_proj.weight.grad.abs().sum() > 0


def test_mask_ratio_is_truncated_normal():
    from marengine.models.masking import sample_mask_ratio

    g = torch.Generator().manual_seed(0)
    r = torch.tensor([sample_mask_ratio(0.7, g) for _ in range(4000)])
    assert r.min() >= 0.7 and r.max() <= 1.0
    # mean of N(1, 0.25) truncated to [0.7, 1]: 1 + 0.25 (phi(a) - phi(0)) / (Phi(0) - Phi(a)), a = -1.2
    a = torch.tensor(-1.2, dtype=torch.float64)
    phi = lambda x: torch.exp(-x * x / 2) / (2 * torch.pi) ** 0.5  # noqa: E731
    mean = 1 + 0.25 * (phi(a) - phi(torch.tensor(0.0, dtype=torch.float64))) / (0.5 - torch.special.ndtr(a))
    assert abs(float(r.double().mean()) - float(mean)) < 5 * float(r.double().std()) / 4000**0.5


def test_bf16_autocast_sampling(tiny_mar):
    model = _randomize(tiny_mar)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _sample(model, 0, cfg=2.0, temperature=0.0)
    ref = _sample(model, 0, cfg=2.0, temperature=0.0)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().max() <= 0.1 * ref.abs().max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward(tiny_mar, dtype):
    """Backbone and head under autocast stay close to fp32 on inputs of a trained model's scale."""
    model = _randomize(tiny_mar)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 16, 16, generator=g)
    emb = model.class_emb(torch.tensor([0, 1]))
    known = torch.stack([torch.arange(5), torch.arange(5, 10)])
    with torch.no_grad():
        ref = model.backbone(tokens, known, emb)
        with torch.autocast("cpu", dtype=dtype):
            out = model.backbone(tokens, known, emb)
            head = model.diffloss.net(tokens[:, 0], torch.tensor([3, 700]), out[:, 0])
        head_ref = model.diffloss.net(tokens[:, 0], torch.tensor([3, 700]), ref[:, 0])
    assert torch.isfinite(out).all() and not torch.equal(out.float(), ref)  # low precision did run
    assert (out.float() - ref).abs().max() <= 0.05 * ref.abs().max()
    assert (head.float() - head_ref).abs().max() <= 0.05 * head_ref.abs().max()


def test_clip_denoised_bounds_the_final_step(golden, golden_mar):
    """At temperature 0 the last reverse step returns the x_0 prediction, clamped to [-1, 1]."""
    z, noise = golden["sample/z"], golden["sample/noise"]
    free = golden_mar.diffloss.sample(z, temperature=0.0, noise=noise, backend="torch")
    clipped = golden_mar.diffloss.sample(z, temperature=0.0, noise=noise, backend="torch", clip_denoised=True)
    assert free.abs().max() > 10 and clipped.abs().max() <= 1.0
    from marengine.ops import native_available

    if native_available("cpu"):  # the native loops clip too
        fast = golden_mar.diffloss.sample(z, temperature=0.0, noise=noise, backend="native", clip_denoised=True)
        assert rel_err(fast, clipped) <= 1e-4


@pytest.mark.parametrize("seq_len,num_iter,unknown", [(16, 4, 16), (256, 64, 256), (64, 16, 23), (7, 7, 7), (9, 3, 1)])
def test_generation_plan_is_the_official_schedule_computed_once(seq_len, num_iter, unknown):
    """The plan both loops run, against the official formulas written out here: floor(L cos(pi/2
    (k+1)/T)) clamped to [1, unknown-1] tokens left, the linear CFG ramp on that count, the
    head's step schedule per iteration and a cache policy's refresh test."""
    import math

    from marengine.schedules import generation_plan, mask_lengths

    plan = generation_plan(seq_len, num_iter, unknown, 3.0, "linear", "20-5", refresh=lambda k: k % 3 == 0)
    left = [0 if it.last else it.mask_len for it in plan]
    assert left == mask_lengths(seq_len, num_iter, unknown) and plan[-1].step == num_iter - 1
    masked = unknown
    for it in plan:
        expect = max(1, min(masked - 1, math.floor(seq_len * math.cos(math.pi / 2 * (it.step + 1) / num_iter))))
        assert it.mask_len == expect and it.cfg == 1.0 + 2.0 * (seq_len - expect) / seq_len
        hi_lo = 20 + (5 - 20) * (it.step / (num_iter - 1) if num_iter > 1 else 1.0)
        assert it.head_steps == max(1, round(hi_lo)) and it.refresh == (it.step % 3 == 0)
        masked = expect
    assert all(
        it.refresh and it.head_steps is None for it in generation_plan(seq_len, num_iter, unknown, 1, "constant")
    )
