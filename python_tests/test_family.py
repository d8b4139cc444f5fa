"""The generalized autoregressive family (the paper's Table 1): causal AR in raster and random
order with a kv-cache, MAR with cross-entropy, the VQ tokenizers, and their training,
sampling, checkpoints and bad inputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import SMALL, run_training, small_train_config

from marengine.config import ARConfig, family_config
from marengine.models.ar import CausalAR
from marengine.models.ce_head import CEHead, sample_logits
from marengine.models.family import make_model, member_of
from marengine.models.kv_cache import KVCache

# 8x8 images of 4 channels in 2x2 patches (L = 16), 5 diffusion steps strided to end at t=800
# ("ddim5") so that random weights give O(1) tokens
TINY = dict(img_size=8, vae_stride=2, vae_embed_dim=4, num_sampling_steps="ddim5", codebook_size=32)
SMALL_AR = dict(embed_dim=32, depth=1, num_heads=2, diffloss_w=32, diffloss_d=1, diffusion_batch_mul=1)


def randomized(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Every parameter ~ N(0, std^2) (the official init zeros the head's output layers)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module.eval()


def tiny_ar(order: str = "raster", loss: str = "diffusion") -> CausalAR:
    return randomized(make_model(f"ar_{order}_tiny", loss, **TINY))


def sample(model, cfg: float = 1.0, seed: int = 1, **kw) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    num_iter = None if isinstance(model, CausalAR) else 4  # causal: one token per step, all L of them
    labels = torch.tensor([1, 7])
    return model.sample_tokens(2, num_iter, cfg, "linear", labels, 1.0, generator=g, backend="torch", **kw)


# ---------------------------------------------------------------- kv-cache == uncached
@pytest.mark.parametrize("order", ["raster", "random"])
@pytest.mark.parametrize("loss", ["diffusion", "ce"])
@pytest.mark.parametrize("cfg", [pytest.param(1.0, marks=pytest.mark.slow), 3.0])  # diffusion at 1.0: 5-9 s CPU
def test_kv_cache_equals_uncached(order, loss, cfg):
    model = tiny_ar(order, loss)
    cached, uncached = sample(model, cfg), sample(model, cfg, use_cache=False)
    if loss == "ce":
        assert cached.dtype == torch.int64 and cached.shape == (2, 4, 4)
        assert torch.equal(cached, uncached)
    else:
        assert cached.shape == (2, 4, 4, 4) and cached.abs().max() < 100
        torch.testing.assert_close(cached, uncached, rtol=1e-4, atol=1e-4)
    assert not torch.equal(sample(model, cfg, seed=2), cached)  # the seed matters


@pytest.mark.parametrize("order", ["raster", "random"])
def test_cached_steps_equal_the_causal_forward(order):
    """z of each cached step equals the uncached causal backbone's z at that index (fp32)."""
    model = tiny_ar(order)
    g = torch.Generator().manual_seed(0)
    b, length = 3, model.seq_len
    tokens = torch.randn(b, length, model.token_embed_dim, generator=g)
    orders = model.sample_orders(b, g)
    ce = model.class_emb(torch.tensor([0, 4, 9]))
    with torch.no_grad():
        full = model.backbone(tokens[:, :-1], orders, ce)  # [B, L, D]
        cache = model.allocate_cache(b)
        for i in range(length):
            prev = None if i == 0 else tokens[:, i - 1]
            x = model.step_input(prev, None if i == 0 else orders[:, i - 1], orders[:, i], ce)
            torch.testing.assert_close(model.step(x, orders[:, i], cache, i), full[:, i], rtol=1e-5, atol=1e-5)


def test_one_token_per_step():
    model = tiny_ar("random")
    shapes: list[tuple[int, ...]] = []
    hook = model.blocks[0].norm1.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    try:
        sample(model, cfg=2.0)
    finally:
        hook.remove()
    assert shapes == [(4, 1, model.config.embed_dim)] * model.seq_len  # 2 images x 2 (CFG), one token, L steps


@pytest.mark.parametrize("loss", ["diffusion", "ce"])
def test_no_host_sync_inside_the_cached_loop(monkeypatch, loss):
    """Once the loop has started nothing reads a tensor value back to the host (torch head)."""
    model = tiny_ar("random", loss)
    armed = []

    def refuse(name):
        original = getattr(torch.Tensor, name)

        def guarded(self, *a, **kw):
            if armed:
                raise AssertionError(f"host sync inside the sampling loop: Tensor.{name}")
            return original(self, *a, **kw)

        return guarded

    for name in ("item", "tolist", "nonzero", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse(name))
    step_input = model.step_input

    def arm_then_step(*a, **kw):
        armed.append(True)
        return step_input(*a, **kw)

    monkeypatch.setattr(model, "step_input", arm_then_step)
    scatter = model.scatter_ordered

    def disarm_then_scatter(*a, **kw):  # the loop is over: its one check of the result may sync
        armed.clear()
        return scatter(*a, **kw)

    monkeypatch.setattr(model, "scatter_ordered", disarm_then_scatter)
    try:
        out = sample(model, cfg=2.0)
    finally:
        armed.clear()
    assert out.shape[0] == 2


def test_head_sampler_and_steps_of_a_causal_diffusion_model():
    """sampler/steps reach the head at every token: a per-token list of one count is that count,
    a different count or sampler changes the tokens; a CE model refuses them."""
    model = tiny_ar("random")
    base = sample(model, cfg=2.0)
    seven = sample(model, cfg=2.0, steps=7)
    torch.testing.assert_close(sample(model, cfg=2.0, steps=[7] * 16, sampler="ddpm"), seven, rtol=0, atol=0)
    assert not torch.equal(seven, base) and not torch.equal(sample(model, cfg=2.0, steps="8-2"), seven)
    ddim = sample(model, cfg=2.0, sampler="ddim", steps=3)
    assert ddim.shape == base.shape and torch.isfinite(ddim).all() and not torch.equal(ddim, base)
    with pytest.raises(ValueError, match="cross-entropy model has none"):
        sample(tiny_ar("random", "ce"), steps=3)


@pytest.mark.parametrize("loss", ["diffusion", "ce"])
def test_the_engine_drives_every_member_under_a_preset(loss):
    """generate_latents with the fast preset: the head knobs reach a causal diffusion model, a CE
    model (causal or masked) gets none of them; a knob given explicitly that a model cannot
    take is a clear error, not silently dropped."""
    from marengine.sampling.engine import SampleSettings, generate_latents

    members = [tiny_ar("random", loss)]
    if loss == "ce":
        members.append(randomized(make_model("mar_tiny", "ce", **TINY)))
    for model in members:
        out = generate_latents(model, [1, 7, 3], SampleSettings(preset="fast", batch_size=2))
        if loss == "ce":
            assert out.dtype == torch.int64 and out.shape == (3, 4, 4)
        else:
            assert out.shape == (3, 4, 4, 4) and torch.isfinite(out).all()
        if loss == "ce":
            with pytest.raises(ValueError, match="does not apply to a .*cross-entropy.*drop it"):
                generate_latents(model, [1], SampleSettings(sampler="ddim"))
    if loss == "diffusion":
        with pytest.raises(ValueError, match="cache=.*does not apply to a CausalAR"):
            generate_latents(members[0], [1], SampleSettings(cache="refresh=2"))


def test_random_orders_follow_the_generator_and_given_orders_are_used():
    model = tiny_ar("random")
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(model.sample_orders(2, g1), model.sample_orders(2, g2))
    orders = torch.stack([torch.arange(16), torch.arange(16).flip(0)])
    a, b = sample(model, orders=orders), sample(model, orders=orders, use_cache=False)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- bad input
def test_orders_that_are_not_permutations_are_refused():
    model = tiny_ar("random")
    bad = torch.arange(16).repeat(2, 1)
    bad[1, 3] = 5  # position 5 twice, 3 never
    with pytest.raises(ValueError, match="permutation.*row 1"):
        sample(model, orders=bad)
    with pytest.raises(ValueError, match="permutation"):
        sample(model, orders=torch.arange(1, 17).repeat(2, 1))  # out of range
    with pytest.raises(ValueError, match=r"shape \[2, 16\]"):
        sample(model, orders=torch.arange(16).repeat(3, 1))
    with pytest.raises(TypeError, match="integer"):
        sample(model, orders=torch.arange(16).repeat(2, 1).float())
    with pytest.raises(ValueError, match="raster order"):
        sample(tiny_ar("raster"), orders=torch.stack([torch.arange(16), torch.arange(16).flip(0)]))


def test_a_cache_of_the_wrong_size_is_refused():
    model = tiny_ar()
    with pytest.raises(ValueError, match="2 x batch"):
        sample(model, cfg=2.0, kv_cache=model.allocate_cache(2))  # CFG needs 4 rows
    good = model.allocate_cache(2)
    short = KVCache(good.k[:, :, :, :8], good.v[:, :, :, :8])
    with pytest.raises(ValueError, match="16 positions"):
        sample(model, kv_cache=short)
    with pytest.raises(ValueError, match="do not pass a kv_cache"):
        sample(model, kv_cache=good, use_cache=False)
    out = sample(model, kv_cache=good)  # the right one is reused as given
    torch.testing.assert_close(out, sample(model), rtol=0, atol=0)


def test_an_aliased_cache_is_refused():
    """A cache whose positions share memory (expanded, or k and v one buffer) would let one
    sequence's writes overwrite another's: it is refused, not sampled from."""
    model = tiny_ar()
    good = model.allocate_cache(2)
    expanded = KVCache(good.k[:, :1].expand_as(good.k), good.v[:, :1].expand_as(good.v))  # both rows alias
    with pytest.raises(ValueError, match=r"cache's k has elements that share memory.*expand"):
        sample(model, kv_cache=expanded)
    with pytest.raises(ValueError, match="k and v share memory"):
        sample(model, kv_cache=KVCache(good.k, good.k))
    heads = good.k[:, :, :1].expand_as(good.k).contiguous()  # .contiguous() gives each its own storage
    out = sample(model, kv_cache=KVCache(heads, good.v.clone()))
    torch.testing.assert_close(out, sample(model), rtol=0, atol=0)


def test_overlap_helpers():
    from marengine.models.kv_cache import overlap, self_overlapping

    buf = torch.zeros(2, 3, 4, 5)
    assert not any(self_overlapping(t) for t in (buf, buf[:, :, :2], buf.transpose(1, 3)))
    assert self_overlapping(buf[:, :1].expand(2, 3, 4, 5))
    assert self_overlapping(torch.zeros(10).as_strided((3, 4), (2, 1)))  # rows overlap by two elements
    assert not self_overlapping(torch.zeros(1, 1).expand(1, 1))  # size-1 dims do not matter
    assert overlap(buf[0], buf[0, 1:]) and not overlap(buf[0], buf[1]) and not overlap(buf, torch.zeros(2, 3, 4, 5))


def test_unknown_member_or_loss_and_mismatched_tokenizer():
    from marengine.training.config import TrainConfig

    with pytest.raises(ValueError, match="unknown loss 'mse'.*diffusion, ce"):
        family_config("mar_digits", "mse")
    with pytest.raises(ValueError, match="no such member"):
        make_model("gpt_digits", "ce")
    with pytest.raises(ValueError, match="unknown training setting model .ar_digits.*ar_raster_digits"):
        TrainConfig(model="ar_digits")
    with pytest.raises(ValueError, match="does not go with tokenizer"):
        TrainConfig(model="ar_raster_digits", loss="ce")
    with pytest.raises(ValueError, match="does not go with tokenizer"):
        TrainConfig(model="ar_raster_digits", tokenizer="vq")
    with pytest.raises(ValueError, match="order"):
        ARConfig(order="spiral")
    with pytest.raises(ValueError, match="one token per step"):
        tiny_ar().sample_tokens(2, 4)


def test_bad_training_inputs():
    model = make_model("ar_raster_tiny", "ce", **TINY)
    with pytest.raises(ValueError, match=r"codes must be in \[0, 32\)"):
        model(torch.full((2, 4, 4), 32), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(2, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        make_model("ar_raster_tiny", **TINY)(torch.zeros(2, 4, 4, 4), torch.tensor([0, 10]))


# ---------------------------------------------------------------- cross-entropy head
def test_ce_head_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    assert sample_logits(logits, 0.0, g).tolist() == [0]
    n = 20000
    for t in (0.5, 1.0, 2.0):
        codes = sample_logits(logits.expand(n, -1), t, g)
        freq = torch.bincount(codes, minlength=4).double() / n
        torch.testing.assert_close(freq, torch.softmax(logits[0].double() / t, 0), atol=0.015, rtol=0)
    cold = sample_logits(logits.expand(n, -1), 0.05, g)
    assert (cold == 0).all()


def test_ce_head_cfg_mixes_logits_and_loss():
    head = randomized(CEHead(8, 5))
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    cond, uncond = head(z[:3]), head(z[3:])
    want = (uncond + 3.0 * (cond - uncond)).argmax(-1)
    assert torch.equal(head.sample(z, 0.0, 3.0), want)
    with pytest.raises(ValueError, match="even number of rows"):
        head.sample(z[:5], 1.0, 2.0)
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    manual = torch.nn.functional.cross_entropy(head(z), target)
    torch.testing.assert_close(head.loss(z, target), manual)
    mask = torch.tensor([1, 0, 1, 0, 0, 0])
    masked = torch.nn.functional.cross_entropy(head(z[[0, 2]]), target[[0, 2]])
    torch.testing.assert_close(head.loss(z, target, mask), masked)


# ---------------------------------------------------------------- checkpoints of every member
@pytest.mark.parametrize("preset,loss", [("ar_random_tiny", "diffusion"), ("ar_raster_tiny", "ce"), ("mar_tiny", "ce")])
def test_pretrained_round_trip(tmp_path, preset, loss):
    from marengine.models import from_pretrained

    overrides = TINY if preset.startswith("ar") else dict(num_sampling_steps="5", vae_embed_dim=16)
    model = randomized(make_model(preset, loss, **overrides))
    model.save_pretrained(tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert torch.equal(sample(model, cfg=2.0), sample(loaded, cfg=2.0))
    assert type(model).from_pretrained(tmp_path / "m").config == model.config


def test_members_and_architectures():
    assert member_of(make_model("ar_raster_tiny", **TINY)) == "ar_raster"
    assert member_of(make_model("ar_random_tiny", "ce", **TINY)) == "ar_random"
    assert member_of(make_model("mar_tiny", "ce")) == "mar"
    marce = make_model("mar_tiny", "ce")
    assert not hasattr(marce, "diffloss") and marce.config.codebook_size == 32


# ---------------------------------------------------------------- VQ tokenizers
@pytest.fixture(scope="module")
def digits_vq(tmp_path_factory):
    from marengine.config import VQConfig
    from marengine.training.vq import train_vq

    out = tmp_path_factory.mktemp("vq") / "vq"
    train_vq(out, config=VQConfig(codebook_size=32, hidden=16), steps=10, batch_size=32)
    return out


def test_vq_round_trip(digits_vq):
    from marengine.models.tokenizers import build_tokenizer
    from marengine.models.vq import DigitsVQ
    from marengine.training.data import DigitsDataset

    tok = build_tokenizer({"kind": "vq", "ckpt": str(digits_vq), "codebook_size": 32, "stride": 2})
    x = DigitsDataset("heldout").images[:16]
    codes = tok.encode(x).sample()
    assert codes.shape == (16, 4, 4) and codes.dtype == torch.int64 and 0 <= codes.min() and codes.max() < 32
    rec = tok.decode(codes)
    assert rec.shape == x.shape and rec.abs().max() <= 1.0
    assert torch.equal(tok.decode(codes.float()), rec)  # the sampling engine passes codes as floats
    assert torch.equal(DigitsVQ.from_pretrained(digits_vq).encode_codes(x), codes)
    assert tok.encode(rec).mode().shape == codes.shape
    with pytest.raises(ValueError, match="32 codes and stride 2; the model expects 64"):
        build_tokenizer({"kind": "vq", "ckpt": str(digits_vq), "codebook_size": 64, "stride": 2})
    with pytest.raises(ValueError, match="needs its weights"):
        build_tokenizer({"kind": "vq", "ckpt": None, "codebook_size": 32, "stride": 2})


def test_vq_straight_through_gradients():
    from marengine.models.vq import DigitsVQ

    vq = DigitsVQ(codebook_size=8, hidden=8)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    rec, codes, qloss = vq(x)
    (torch.nn.functional.mse_loss(rec, x) + qloss).backward()
    assert vq.encoder[0].weight.grad.abs().sum() > 0  # through the quantizer
    assert vq.quantize.embedding.weight.grad.abs().sum() > 0


def test_ldm_vq16_key_layout_and_strict_loading(tmp_path):
    from marengine.models.ldm_vq import LDMVQModel

    with torch.device("meta"):
        f16 = LDMVQModel()  # the vq-f16 configuration
    sd = f16.state_dict()
    want = {
        "quantize.embedding.weight": (16384, 8),
        "quant_conv.weight": (8, 8, 1, 1),
        "post_quant_conv.weight": (8, 8, 1, 1),
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.conv_out.weight": (8, 512, 3, 3),  # no double_z
        "encoder.down.4.attn.1.proj_out.weight": (512, 512, 1, 1),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "decoder.conv_in.weight": (512, 8, 3, 3),
        "decoder.up.4.attn.2.k.weight": (512, 512, 1, 1),  # attention at resolution 16 in the decoder too
        "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    for k, shape in want.items():
        assert tuple(sd[k].shape) == shape, k
    assert f16.stride == 16 and f16.codebook_size == 16384
    # a random state dict saved as LDM saves it (Lightning "state_dict", with the training losses)
    small = dict(embed_dim=4, n_embed=16, z_channels=4, resolution=32, ch=32, ch_mult=(1, 2), attn_resolutions=(16,))
    src = randomized(LDMVQModel(**small))
    state = {**src.state_dict(), "loss.discriminator.main.0.weight": torch.zeros(2), "loss.logvar": torch.zeros(())}
    torch.save({"state_dict": state, "global_step": 7}, tmp_path / "vq.ckpt")
    dst = LDMVQModel(**small).load_checkpoint(tmp_path / "vq.ckpt")
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(dst.encode_codes(x), src.encode_codes(x)) and dst.encode_codes(x).shape == (2, 16, 16)
    del state["quantize.embedding.weight"]
    torch.save({"state_dict": state}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="missing keys.*quantize.embedding.weight"):
        LDMVQModel(**small).load_checkpoint(tmp_path / "bad.ckpt")


# ---------------------------------------------------------------- training and sampling, every member
@pytest.mark.parametrize(
    "model,loss",
    [(m, loss) for m in ("ar_raster_digits", "ar_random_digits", "mar_digits") for loss in ("diffusion", "ce")],
)
def test_every_member_trains_and_samples(tmp_path, digits_vq, model, loss):
    from marengine.models import load_model
    from marengine.models.tokenizers import build_tokenizer
    from marengine.sampling.engine import SampleSettings, generate

    overrides = dict(SMALL) if model == "mar_digits" else dict(SMALL_AR)
    overrides["num_sampling_steps"] = "ddim5"
    if loss == "ce":
        overrides.update(codebook_size=32, **({"vae_embed_dim": 32} if model == "mar_digits" else {}))
    cfg = small_train_config(
        tmp_path,
        model=model,
        loss=loss,
        model_overrides=overrides,
        tokenizer="vq" if loss == "ce" else "pixel",
        vq_ckpt=str(digits_vq) if loss == "ce" else None,
        max_steps=3,
    )
    t = run_training(cfg)
    arch = ("mar" if loss == "diffusion" else "mar_ce") if model == "mar_digits" else "ar"
    assert t.step == 3 and t.model.architecture == arch
    for path in (tmp_path / "last.pth", tmp_path / "ema"):
        loaded = load_model(path)
        assert type(loaded.model) is type(t.model) and loaded.tokenizer_spec["kind"] == cfg.tokenizer
        images = generate(loaded.model, build_tokenizer(loaded.tokenizer_spec), [0, 5], SampleSettings(cfg=2.0))
        assert images.shape == (2, 8, 8, 1)
    resumed = run_training(dataclasses.replace(cfg, max_steps=4, resume=str(tmp_path / "last.pth")))
    assert resumed.step == 4


def test_cli_trains_and_samples_a_causal_member(tmp_path):
    import json

    from marengine.cli import main

    out = tmp_path / "run"
    overrides = json.dumps(SMALL_AR)
    args = ["train", "--model", "ar_random_digits", "--loss", "diffusion", "--model-overrides", overrides]
    assert main([*args, "--max-steps", "2", "--batch-size", "8", "--out-dir", str(out), "--no-progress"]) == 0
    assert main(["sample", "--checkpoint", str(out / "ema"), "--labels", "1", "2", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "grid.png").is_file()
    assert main(["sample", "--checkpoint", str(out / "last.pth"), "--num-iter", "4", "--out", str(tmp_path / "t")]) == 2


# ---------------------------------------------------------------- ONNX
@pytest.mark.slow  # two ONNX exports
def test_onnx_export_of_the_causal_backbone_and_cached_step(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    from marengine.export.ar_onnx import export_ar_onnx

    model = tiny_ar("random")
    paths = export_ar_onnx(model, tmp_path / "x", parts=("ar_backbone", "ar_step"))
    backbone, step = (ort.InferenceSession(str(paths[k]), providers=["CPUExecutionProvider"]) for k in paths)
    g = torch.Generator().manual_seed(5)
    b, length = 3, model.seq_len
    tokens = torch.randn(b, length, model.token_embed_dim, generator=g)
    orders, ce = model.sample_orders(b, g), model.class_emb(torch.tensor([1, 2, 3])).detach()
    with torch.no_grad():
        want = model.backbone(tokens[:, :-1], orders, ce).numpy()  # [B, L, D]
    feeds = {"tokens": tokens[:, :-1].numpy(), "orders": orders.numpy(), "class_embedding": ce.numpy()}
    np.testing.assert_allclose(backbone.run(None, feeds)[0], want, rtol=1e-4, atol=1e-5)
    past = np.zeros((model.depth, b, model.num_heads, 0, model.head_dim), np.float32)  # T = 0 at the first step
    past_k, past_v = past, past
    for i in range(length):
        j = max(i - 1, 0)
        feeds = {
            "token": tokens[:, j].numpy(),
            "pos": orders[:, j].numpy(),
            "next_pos": orders[:, i].numpy(),
            "class_embedding": ce.numpy(),
            "first": np.full((b,), i == 0),
            "past_k": past_k,
            "past_v": past_v,
        }
        z, past_k, past_v = step.run(None, feeds)
        np.testing.assert_allclose(z, want[:, i], rtol=1e-4, atol=1e-5)
    assert past_k.shape == (model.depth, b, model.num_heads, length, model.head_dim)


def test_mar_with_ce_is_not_exported(tmp_path):
    from marengine.cli import main

    make_model("mar_tiny", "ce").save_pretrained(tmp_path / "m")
    assert main(["export-onnx", "--checkpoint", str(tmp_path / "m"), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_old_mar_training_checkpoints_still_load(tmp_path):
    """Checkpoints written before the family carry no "architecture": they are MAR's."""
    from marengine.models import MAR, load_model

    mar = make_model("mar_tiny", num_sampling_steps="5")
    sd = mar.state_dict()
    old = {"format": "marengine-train-v1", "config": mar.config.to_dict(), "model": sd, "model_ema": sd}
    torch.save(old, tmp_path / "old.pth")
    loaded = load_model(tmp_path / "old.pth")
    assert type(loaded.model) is MAR and loaded.kind == "training"
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in sd.items())


def test_sample_grids_during_training_of_a_causal_member(tmp_path):
    overrides = dict(SMALL_AR, num_sampling_steps="ddim5")
    cfg = small_train_config(tmp_path, model="ar_raster_digits", model_overrides=overrides, max_steps=2)
    run_training(dataclasses.replace(cfg, sample_every=2))
    assert (tmp_path / "samples-2" / "grid.png").is_file()


# ---------------------------------------------------------------- MAR-CE runs MAR's one masked loop
def _marce():
    return randomized(make_model("mar_tiny", "ce", **TINY)).eval()


def _ce_sample(model, cfg=3.0, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return model.sample_tokens(3, 4, cfg, "linear", torch.tensor([1, 7, 2]), 1.0, generator=g, **kw)


def test_mar_ce_editing_keeps_the_known_codes():
    model = _marce()
    codes = torch.randint(
        0, model.codebook_size, (3, model.seq_h, model.seq_w), generator=torch.Generator().manual_seed(5)
    )
    known = torch.zeros(3, model.seq_len, dtype=torch.bool)
    known[:, : model.seq_len // 2] = True  # the top half given
    out = _ce_sample(model, known_tokens=codes, known_mask=known)
    assert out.shape == codes.shape and out.dtype == torch.int64
    assert torch.equal(out.flatten(1)[known], codes.flatten(1)[known])
    assert not torch.equal(out.flatten(1)[~known], codes.flatten(1)[~known])  # the rest was generated
    everything = torch.ones_like(known)
    assert torch.equal(_ce_sample(model, known_tokens=codes, known_mask=everything), codes)  # nothing to fill


def test_mar_ce_cache_always_full_is_the_plain_loop_and_partial_reuse_runs():
    model = _marce()
    plain = _ce_sample(model)
    assert torch.equal(_ce_sample(model, cache="refresh=1,warmup=1"), plain)  # every pass full: bit for bit
    reused = _ce_sample(model, cache="refresh=3,warmup=1")
    assert reused.shape == plain.shape and reused.dtype == torch.int64


def test_mar_ce_guidance_at_scale_one_combines_the_logits_as_mar_does():
    """With guidance on, the loop hands the head both halves at every iteration, also where the
    schedule's scale is 1 (as MAR does); at cfg 1 there is no null half at all."""
    from marengine.models.mar_ce import CodeTokens

    model, seen = _marce(), []
    real = CodeTokens.__call__

    def spy(self, z, z_null, it):
        seen.append((z_null is not None, it.cfg))
        return real(self, z, z_null, it)

    CodeTokens.__call__ = spy
    try:
        _ce_sample(model, cfg=3.0)
        assert seen and all(guided for guided, _ in seen)
        seen.clear()
        _ce_sample(model, cfg=1.0)
        assert seen and not any(guided for guided, _ in seen)
    finally:
        CodeTokens.__call__ = real
    z = torch.randn(6, model.config.decoder_embed_dim)
    g = torch.Generator().manual_seed(0)
    assert model.ce_head.sample(z, 1.0, 1.0, generator=g, guided=True).shape == (3,)  # both halves combined


def test_mar_ce_builds_no_diffusion_head():
    model = _marce()
    assert not any(k.startswith("diffloss.") for k in model.state_dict())
    from marengine.models.family import loss_of

    assert loss_of(model) == "ce"
