"""Tests for marengine.models.vae (the KL-16 autoencoder with the official layout).

The official-layout checks use the default (66M-parameter) model built on the
`meta` device, so no memory is allocated; everything numeric runs on a tiny
configuration (ch=32) on the CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from marengine.models.vae import AttnBlock, AutoencoderKL, DiagonalGaussian, Downsample, ResnetBlock, Upsample

torch.set_num_threads(2)


def small_vae(**kw) -> AutoencoderKL:
    """embed_dim=4, two levels (factor 2), ch=32; resolution=32 puts the
    encoder's attention (nominal res 16) on level 1, as level 4 has it in KL-16."""
    torch.manual_seed(0)
    args = dict(embed_dim=4, ch_mult=(1, 2), ch=32, resolution=32)
    args.update(kw)
    return AutoencoderKL(**args).eval()


# --------------------------------------------------------------------------
# (1) official parameter names and shapes
# --------------------------------------------------------------------------

# data/vae_official_shapes.json, a table of expected values derived by hand from LTH14/mar
# models/vae.py with ch=128, ch_mult=(1,1,2,2,4), num_res_blocks=2, z_channels=16,
# double_z=True, encoder attention at res 16 (level 4), no decoder attention.
OFFICIAL_SHAPES: dict[str, tuple[int, ...]] = {
    name: tuple(shape)
    for name, shape in json.loads((Path(__file__).parent / "data" / "vae_official_shapes.json").read_text()).items()
}

# Keys the official layout does NOT have.
OFFICIAL_ABSENT = [
    "encoder.down.4.downsample.conv.weight",  # no downsample after the last level
    "decoder.up.0.upsample.conv.weight",  # no upsample after the first level
    "encoder.down.3.attn.0.q.weight",  # attention only at res 16
    "decoder.up.4.attn.0.q.weight",  # decoder has no level attention
    "encoder.down.0.block.0.nin_shortcut.weight",  # 128 -> 128, no shortcut conv
    "encoder.down.0.block.0.temb_proj.weight",  # temb_ch = 0
    "decoder.up.0.block.3.conv1.weight",  # 3 blocks per decoder level
]

# Tensor count: ResnetBlock 8 (+2 with nin_shortcut), AttnBlock 10.
# Encoder: conv_in 2 + levels (18, 18, 20, 18, 16+2+20) + mid 26 + out 4 = 144.
# Decoder: conv_in 2 + mid 26 + levels (24, 28, 26, 28, 26) + out 4 = 164.
# quant_conv 2 + post_quant_conv 2.
OFFICIAL_TENSOR_COUNT = 144 + 164 + 4
OFFICIAL_PARAM_COUNT = 66_456_019


@pytest.fixture(scope="module")
def meta_default() -> AutoencoderKL:
    with torch.device("meta"):
        return AutoencoderKL()


def test_default_state_dict_matches_official_layout(meta_default: AutoencoderKL) -> None:
    sd = meta_default.state_dict()
    for name, shape in OFFICIAL_SHAPES.items():
        assert name in sd, f"missing official key {name}"
        assert tuple(sd[name].shape) == shape, name
    for name in OFFICIAL_ABSENT:
        assert name not in sd, f"unexpected key {name}"
    assert len(sd) == OFFICIAL_TENSOR_COUNT
    assert sum(p.numel() for p in meta_default.parameters()) == OFFICIAL_PARAM_COUNT
    assert len(list(meta_default.buffers())) == 0


def test_default_groupnorm_settings(meta_default: AutoencoderKL) -> None:
    norms = [m for m in meta_default.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 32 and m.eps == 1e-6 and m.affine for m in norms)
    down = meta_default.encoder.down[0].downsample.conv
    assert down.stride == (2, 2) and down.padding == (0, 0)


# --------------------------------------------------------------------------
# (2) shapes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("ch_mult,size", [((1, 2), 32), ((1, 1, 2), 32)])
def test_encode_decode_shapes(ch_mult: tuple[int, ...], size: int) -> None:
    vae = small_vae(ch_mult=ch_mult)
    f = 2 ** (len(ch_mult) - 1)
    assert vae.downsample_factor == f
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        post = vae.encode(x)
        assert post.mean.shape == (2, 4, size // f, size // f)
        assert post.logvar.shape == post.mean.shape == post.std.shape
        out = vae.decode(post.mode())
        assert out.shape == x.shape
        dec, post2 = vae(x, sample_posterior=False)
    assert dec.shape == x.shape
    assert torch.allclose(dec, out)
    assert torch.isfinite(dec).all()


def test_non_square_input() -> None:
    vae = small_vae()
    with torch.no_grad():
        post = vae.encode(torch.zeros(1, 3, 32, 16))
        assert post.mean.shape == (1, 4, 16, 8)
        assert vae.decode(post.mean).shape == (1, 3, 32, 16)


def test_small_model_has_encoder_attention_only_at_res16() -> None:
    vae = small_vae()
    assert len(vae.encoder.down[0].attn) == 0
    assert len(vae.encoder.down[1].attn) == 2
    assert all(len(level.attn) == 0 for level in vae.decoder.up)


def test_follows_module_dtype() -> None:
    vae = small_vae().double()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        dec, post = vae(x, generator=torch.Generator().manual_seed(0))
    assert dec.dtype == torch.float64 and post.sample().dtype == torch.float64


# --------------------------------------------------------------------------
# (3) posterior
# --------------------------------------------------------------------------


def test_posterior_sampling_seeded() -> None:
    vae = small_vae()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        post = vae.encode(x)
    a = post.sample(torch.Generator().manual_seed(1))
    b = post.sample(torch.Generator().manual_seed(1))
    c = post.sample(torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(post.mode(), post.mean)
    eps = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a, post.mean + post.std * eps)

    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    with torch.no_grad():
        d1, _ = vae(x, generator=g1)
        d2, _ = vae(x, generator=g2)
        d3, _ = vae(x, sample_posterior=False)
    assert torch.equal(d1, d2)
    assert not torch.allclose(d1, d3)


def test_posterior_moments_and_clamp() -> None:
    mean = torch.randn(2, 3, 4, 4)
    logvar = torch.randn(2, 3, 4, 4)
    logvar[0, 0, 0, 0] = 100.0
    logvar[1, 2, 3, 3] = -100.0
    post = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    assert torch.equal(post.mean, mean)
    assert post.logvar[0, 0, 0, 0] == 20.0 and post.logvar[1, 2, 3, 3] == -30.0
    assert torch.allclose(post.std, torch.exp(0.5 * logvar.clamp(-30, 20)))
    assert torch.allclose(post.var, post.std**2)
    kl = 0.5 * (mean**2 + post.var - 1 - post.logvar).sum(dim=(1, 2, 3))
    assert torch.allclose(post.kl(), kl)


# --------------------------------------------------------------------------
# (4) checkpoints
# --------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path) -> None:
    src = small_vae()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "kl.ckpt"
    torch.save({"model": src.state_dict()}, path)
    dst = small_vae(ckpt_path=path)
    for (k, a), (k2, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k

    bare = tmp_path / "bare.ckpt"
    torch.save(src.state_dict(), bare)
    dst2 = small_vae(ckpt_path=str(bare))
    assert torch.equal(dst2.quant_conv.weight, src.quant_conv.weight)


def test_checkpoint_key_mismatch_raises(tmp_path) -> None:
    sd = small_vae().state_dict()
    del sd["decoder.up.0.block.2.conv1.weight"]
    sd["encoder.down.0.block.0.temb_proj.weight"] = torch.zeros(32, 512)
    path = tmp_path / "bad.ckpt"
    torch.save({"model": sd}, path)
    with pytest.raises(ValueError) as err:
        small_vae(ckpt_path=path)
    msg = str(err.value)
    assert "decoder.up.0.block.2.conv1.weight" in msg
    assert "encoder.down.0.block.0.temb_proj.weight" in msg


def test_checkpoint_shape_mismatch_raises(tmp_path) -> None:
    sd = small_vae().state_dict()
    path = tmp_path / "other_dim.ckpt"
    torch.save({"model": sd}, path)
    with pytest.raises(ValueError, match="quant_conv.weight"):
        small_vae(embed_dim=8, ckpt_path=path)


def test_checkpoint_missing_file(tmp_path) -> None:
    path = tmp_path / "nope" / "kl16.ckpt"
    with pytest.raises(FileNotFoundError, match="kl16.ckpt"):
        small_vae(ckpt_path=path)


# --------------------------------------------------------------------------
# (5) building blocks against hand-written computations
# --------------------------------------------------------------------------


def _randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _gn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, groups: int = 32) -> torch.Tensor:
    B, C, H, W = x.shape
    xg = x.reshape(B, groups, -1)
    mu = xg.mean(-1, keepdim=True)
    var = xg.var(-1, unbiased=False, keepdim=True)
    xn = ((xg - mu) / torch.sqrt(var + 1e-6)).reshape(B, C, H, W)
    return xn * w[None, :, None, None] + b[None, :, None, None]


def _silu(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + torch.exp(-x))


def test_resnet_block_matches_reference() -> None:
    blk = ResnetBlock(32, 64).double().eval()
    _randomize(blk, 0)
    x = torch.randn(2, 32, 5, 6, dtype=torch.float64)
    p = {k: v.detach() for k, v in blk.named_parameters()}
    h = F.conv2d(_silu(_gn(x, p["norm1.weight"], p["norm1.bias"])), p["conv1.weight"], p["conv1.bias"], padding=1)
    h = F.conv2d(_silu(_gn(h, p["norm2.weight"], p["norm2.bias"])), p["conv2.weight"], p["conv2.bias"], padding=1)
    skip = torch.einsum("oc,bchw->bohw", p["nin_shortcut.weight"][:, :, 0, 0], x)
    ref = skip + p["nin_shortcut.bias"][None, :, None, None] + h
    with torch.no_grad():
        assert torch.allclose(blk(x), ref, atol=1e-10)

    same = ResnetBlock(32, 32).double()
    assert not hasattr(same, "nin_shortcut")
    _randomize(same, 1)
    with torch.no_grad():
        same.conv2.weight.zero_()
        same.conv2.bias.zero_()
        assert torch.equal(same(x), x)  # identity skip when the residual branch is zero


def test_attention_block_matches_reference() -> None:
    C, H, W = 64, 3, 4
    blk = AttnBlock(C).double().eval()
    _randomize(blk, 2)
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    p = {k: v.detach() for k, v in blk.named_parameters()}
    n = _gn(x, p["norm.weight"], p["norm.bias"])

    def proj(name: str, t: torch.Tensor) -> torch.Tensor:  # 1x1 conv -> [B, HW, C]
        y = torch.einsum("oc,bchw->bhwo", p[f"{name}.weight"][:, :, 0, 0], t) + p[f"{name}.bias"]
        return y.reshape(t.shape[0], H * W, C)

    q, k, v = proj("q", n), proj("k", n), proj("v", n)
    ref = torch.empty(2, H * W, C, dtype=torch.float64)
    for b in range(2):
        for i in range(H * W):
            logits = [float(q[b, i] @ k[b, j]) / math.sqrt(C) for j in range(H * W)]
            m = max(logits)
            w = torch.tensor([math.exp(s - m) for s in logits], dtype=torch.float64)
            w = w / w.sum()
            ref[b, i] = (w[:, None] * v[b]).sum(0)
    ref_img = ref.transpose(1, 2).reshape(2, C, H, W)
    ref_out = x + proj("proj_out", ref_img).transpose(1, 2).reshape(2, C, H, W)
    with torch.no_grad():
        assert torch.allclose(blk(x), ref_out, atol=1e-10)


def test_downsample_and_upsample_match_reference() -> None:
    down = Downsample(8).double()
    _randomize(down, 3)
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    padded = torch.zeros(1, 8, 7, 7, dtype=torch.float64)
    padded[:, :, :6, :6] = x  # zero row/column added at the bottom/right only
    ref = F.conv2d(padded, down.conv.weight, down.conv.bias, stride=2)
    with torch.no_grad():
        out = down(x)
    assert out.shape == (1, 8, 3, 3)
    assert torch.allclose(out, ref, atol=1e-12)

    up = Upsample(8).double()
    _randomize(up, 4)
    y = torch.randn(1, 8, 3, 2, dtype=torch.float64)
    rep = y.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    ref_up = F.conv2d(rep, up.conv.weight, up.conv.bias, padding=1)
    with torch.no_grad():
        assert torch.allclose(up(y), ref_up, atol=1e-12)
