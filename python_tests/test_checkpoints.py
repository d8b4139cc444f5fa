"""Official-format checkpoints and the safetensors pretrained folder."""
from __future__ import annotations

import torch

import pytest
from marengine.config import MARConfig
from marengine.models import MAR, from_pretrained, load_official, save_pretrained
from marengine.models.pretrained import read_checkpoint


def _perturbed(model: MAR, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def test_official_layout_loads_strictly(tmp_path, tiny_mar):
    model_sd, ema_sd = _perturbed(tiny_mar, 1), _perturbed(tiny_mar, 2)
    path = tmp_path / "checkpoint-last.pth"
    torch.save({"model": model_sd, "model_ema": ema_sd, "epoch": 3}, path)
    fresh = MAR.from_config(tiny_mar.config)
    load_official(fresh, path)  # EMA weights by default, as official sampling uses
    assert all(torch.equal(fresh.state_dict()[k], ema_sd[k]) for k in ema_sd)
    load_official(fresh, path, key="model")
    assert all(torch.equal(fresh.state_dict()[k], model_sd[k]) for k in model_sd)


def test_official_state_dict_keys(golden, tiny_mar):
    assert sorted(tiny_mar.state_dict()) == sorted(golden.state())
    for k, v in golden.state().items():
        assert tuple(tiny_mar.state_dict()[k].shape) == tuple(v.shape), k


def test_missing_and_unexpected_keys_are_listed(tmp_path, tiny_mar):
    sd = dict(tiny_mar.state_dict())
    sd.pop("mask_token")
    sd["not_a_param"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(ValueError) as err:
        load_official(MAR.from_config(tiny_mar.config), path)
    assert "mask_token" in str(err.value) and "not_a_param" in str(err.value)


def test_shape_mismatch_is_reported(tmp_path, tiny_mar):
    other = MAR.from_config(MARConfig.from_name("mar_tiny", diffloss_w=64))
    path = tmp_path / "other.pth"
    torch.save({"model": other.state_dict()}, path)
    with pytest.raises(ValueError, match="shape mismatches"):
        load_official(MAR.from_config(tiny_mar.config), path)


def test_corrupt_and_missing_checkpoint(tmp_path):
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        read_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "nope.pth")


def test_pretrained_round_trip(tmp_path, tiny_mar):
    save_pretrained(tiny_mar, tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    assert loaded.config == tiny_mar.config
    for k, v in tiny_mar.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = tiny_mar.sample_tokens(2, num_iter=2, generator=g1, backend="torch")
    b = loaded.sample_tokens(2, num_iter=2, generator=g2, backend="torch")
    assert torch.equal(a, b)


def test_official_sizes_build():
    sizes = {"mar_base": (768, 12, 6, 1024), "mar_large": (1024, 16, 8, 1280), "mar_huge": (1280, 20, 12, 1536)}
    from marengine.models import MODELS
    for name, (dim, depth, head_d, head_w) in sizes.items():
        with torch.device("meta"):
            m = MODELS[name]()
        assert m.encoder_pos_embed_learned.shape == (1, 256 + 64, dim)
        assert len(m.encoder_blocks) == depth and len(m.decoder_blocks) == depth
        assert len(m.diffloss.net.res_blocks) == head_d and m.diffloss.net.model_channels == head_w
