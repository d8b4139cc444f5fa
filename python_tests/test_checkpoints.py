"""Official-format checkpoints and the safetensors pretrained folder."""

from __future__ import annotations

import pytest
import torch

from marengine.config import MARConfig
from marengine.models import MAR, from_pretrained, load_official, save_pretrained
from marengine.models.checkpoints import read_checkpoint


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


def test_save_and_from_pretrained_methods(tmp_path, tiny_mar):
    tiny_mar.save_pretrained(tmp_path / "m", tokenizer={"kind": "pixel", "channels": 1, "stride": 2})
    loaded = MAR.from_pretrained(tmp_path / "m")
    assert loaded.config == tiny_mar.config and not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tiny_mar.state_dict().items())
    assert (tmp_path / "m" / "tokenizer.json").is_file()


def test_official_constructor_arguments_are_kept():
    import inspect

    from marengine.models import AutoencoderKL, DiffLoss
    from marengine.models.head import SimpleMLPAdaLN

    # the official signatures (LTH14/mar models/diffloss.py, models/vae.py)
    assert list(inspect.signature(DiffLoss).parameters) == [
        "target_channels",
        "z_channels",
        "depth",
        "width",
        "num_sampling_steps",
        "grad_checkpointing",
    ]
    assert list(inspect.signature(SimpleMLPAdaLN).parameters) == [
        "in_channels",
        "model_channels",
        "out_channels",
        "z_channels",
        "num_res_blocks",
        "grad_checkpointing",
    ]
    assert list(inspect.signature(AutoencoderKL).parameters)[:3] == ["embed_dim", "ch_mult", "ckpt_path"]
    loss = DiffLoss(4, 8, 2, 16, "10", grad_checkpointing=True)
    assert loss.net.grad_checkpointing
    # checkpointing changes memory, not values: same loss and gradients
    plain = DiffLoss(4, 8, 2, 16, "10")
    plain.load_state_dict(loss.state_dict())
    g = torch.Generator().manual_seed(0)
    target, z = torch.randn(6, 4, generator=g), torch.randn(6, 8, generator=g)
    t, noise = torch.randint(0, 1000, (6,), generator=g), torch.randn(6, 4, generator=g)
    for m in (loss, plain):
        m.train().zero_grad()
        m(target, z, t=t, noise=noise).backward()
    for (k, a), b in zip(loss.named_parameters(), plain.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), k


@pytest.mark.parametrize("kind", ["folder", "training", "official"])
def test_one_loader_for_every_kind(tmp_path, tiny_mar, kind):
    from marengine.models import load_model, load_weights

    ema = _perturbed(tiny_mar, 3)
    if kind == "folder":
        path = tiny_mar.save_pretrained(tmp_path / "f", state=ema)
    elif kind == "training":
        path = tmp_path / "last.pth"
        torch.save(
            {
                "model": tiny_mar.state_dict(),
                "model_ema": ema,
                "config": tiny_mar.config.to_dict(),
                "tokenizer": {"kind": "vae", "embed_dim": 16, "ckpt": None},
            },
            path,
        )
    else:
        path = tmp_path / "checkpoint-last.pth"
        torch.save({"model": tiny_mar.state_dict(), "model_ema": ema}, path)
        with pytest.raises(ValueError, match="without its configuration"):
            load_model(path)
    loaded = load_model(path, config=tiny_mar.config if kind == "official" else None)
    assert loaded.kind == kind and loaded.model.config == tiny_mar.config
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in ema.items())  # EMA by default
    # --init-from: any kind loads into an existing model (files: the raw weights; folders: what they hold)
    fresh = MAR.from_config(tiny_mar.config)
    load_weights(fresh, path)
    want = ema if kind == "folder" else tiny_mar.state_dict()
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in want.items())
