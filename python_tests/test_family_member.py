"""Adding a member to the family takes its configuration, its model class and one registry
line: a toy member defined here (nothing else in the repository knows it) trains through the
trainer, samples through the sampling engine, and round-trips through save_pretrained and the
loaders, by the same public functions the CLI uses. Also: the three built-in members satisfy
the contract (models/contract.py), and the contract's attributes say what each one takes."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
import torch.nn as nn
from conftest import run_training, small_train_config

from marengine.config import MEMBER_CONFIGS, SAMPLE_DEFAULTS, checked_fields
from marengine.models import family
from marengine.models.ar import CausalAR
from marengine.models.contract import FamilyMember, MemberConfig, MemberMixin
from marengine.models.family import make_model, member_class, register_member
from marengine.models.loading import from_pretrained, load_model
from marengine.models.mar import MAR
from marengine.models.mar_ce import MARCE
from marengine.sampling.engine import SampleSettings, generate_latents
from marengine.training.config import TrainConfig


# ---------------------------------------------------------------- the toy member (file 1: its config)
@dataclass
class ToyConfig:
    """A per-position regressor of 8x8 one-channel images in 2x2 pixel patches (L = 16 tokens of 4)."""

    img_size: int = 8
    vae_stride: int = 2
    loss: ClassVar[str] = "diffusion"  # continuous tokens: the trainer gives it pixel/VAE latents
    vae_embed_dim: int = 4
    class_num: int = 10
    width: int = 16

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToyConfig:
        return cls(**checked_fields(cls, d, "toy config keys"))


# ---------------------------------------------------------------- (file 2: its model)
class ToyMember(nn.Module, MemberMixin):
    """Predicts every token from its class and position; samples prediction + temperature * noise."""

    architecture = "toy_regressor"
    config_class = ToyConfig
    causal = False
    loss = "diffusion"
    sampling_knobs = ("cfg", "temperature")
    export_parts = ()

    def __init__(self, **fields: Any) -> None:
        super().__init__()
        self.config = ToyConfig(**fields)
        c = self.config
        self.seq_h = self.seq_w = c.img_size // c.vae_stride
        self.seq_len, self.patch_size, self.vae_embed_dim = self.seq_h * self.seq_w, 1, c.vae_embed_dim
        self.num_classes = c.class_num
        self.class_emb = nn.Embedding(c.class_num, c.width)
        self.fake_latent = nn.Parameter(torch.zeros(1, c.width))  # the null class
        self.pos = nn.Parameter(torch.randn(self.seq_len, c.width) * 0.02)
        self.out = nn.Linear(c.width, c.vae_embed_dim)

    def predict(self, class_embedding: torch.Tensor) -> torch.Tensor:  # [B, D] -> [B, C, h, w]
        x = self.out(torch.tanh(class_embedding[:, None] + self.pos))  # [B, L, C]
        return x.transpose(1, 2).reshape(-1, self.vae_embed_dim, self.seq_h, self.seq_w)

    def forward(self, imgs: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None):
        self.check_weights()
        self._check_labels(labels, imgs.shape[0])
        return ((self.predict(self.class_emb(labels)) - imgs) ** 2).mean()

    @torch.no_grad()
    def sample_tokens(
        self,
        bsz,
        num_iter=SAMPLE_DEFAULTS.num_iter,
        cfg=1.0,
        cfg_schedule="linear",
        labels=None,
        temperature=1.0,
        progress=False,
        *,
        generator=None,
        backend="auto",
        clip_denoised=False,
    ):
        null = self.fake_latent.expand(bsz, -1)
        cond = self.predict(self.class_emb(labels) if labels is not None else null)
        mean = cond + (cfg - 1.0) * (cond - self.predict(null))
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return mean + temperature * 0.1 * noise


# ---------------------------------------------------------------- (file 3: its registry line)
@pytest.fixture(scope="module")
def toy():
    saved = (dict(family.ARCHITECTURES), dict(MEMBER_CONFIGS), dict(family.MEMBER_PRESETS), list(family.PRESET_NAMES))
    register_member(ToyMember, presets={"toy_digits": ToyConfig()})
    yield ToyMember
    for live, old in zip((family.ARCHITECTURES, MEMBER_CONFIGS, family.MEMBER_PRESETS, family.PRESET_NAMES), saved):
        live.clear()
        live.update(old) if isinstance(live, dict) else live.extend(old)


# ---------------------------------------------------------------- (file 4: this test)
def test_a_registered_member_trains_samples_saves_and_loads(toy, tmp_path):
    assert isinstance(make_model("toy_digits"), FamilyMember) and isinstance(ToyConfig(), MemberConfig)
    # the trainer builds the member by its preset name, as `marengine train --model` does; on the
    # digits through the pixel tokenizer; the sample grid at step 2 runs the sampling engine
    cfg = small_train_config(tmp_path / "run", model="toy_digits", model_overrides={}, max_steps=2, sample_every=2)
    trainer = run_training(cfg)
    assert isinstance(trainer.model, ToyMember) and trainer.step == 2
    assert len(list((tmp_path / "run" / "samples-2").glob("*.png"))) > 0

    ema = tmp_path / "run" / "ema"  # the pretrained folder the trainer exported (save_pretrained)
    assert json.loads((ema / "config.json").read_text())["architecture"] == "toy_regressor"
    loaded = from_pretrained(ema)
    assert type(loaded) is ToyMember and loaded.config == ToyConfig()
    for name, p in trainer.ema_model().state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], p, rtol=0, atol=0)
    assert type(ToyMember.from_pretrained(ema)) is ToyMember

    last = load_model(tmp_path / "run" / "last.pth").model  # the training checkpoint, as `marengine sample` loads it
    assert type(last) is ToyMember

    settings = SampleSettings(num_iter=4, cfg=2.0, seed=3, batch_size=4)
    a, b = generate_latents(loaded, [1, 2, 3], settings), generate_latents(loaded, [1, 2, 3], settings)
    assert a.shape == (3, 4, 4, 4) and torch.equal(a, b)  # seeded by the settings
    with pytest.raises(ValueError, match="steps=3 does not apply to a ToyMember"):
        generate_latents(loaded, [1], dataclasses.replace(settings, steps=3))  # not in its sampling_knobs


def test_registering_checks_the_contract(toy):
    class Incomplete(nn.Module):
        architecture = "half"

    with pytest.raises(TypeError, match="does not follow the family contract.*config_class"):
        register_member(Incomplete)
    with pytest.raises(ValueError, match="already MAR's"):
        register_member(type("Other", (ToyMember,), {"architecture": "mar"}))
    with pytest.raises(ValueError, match="already names another member"):
        register_member(type("Other", (ToyMember,), {"architecture": "toy2"}), presets={"mar_tiny": ToyConfig()})
    with pytest.raises(ValueError, match="trained with loss 'diffusion', not 'ce'"):
        make_model("toy_digits", "ce")
    with pytest.raises(ValueError, match="unknown training setting model 'toy_nope'"):
        TrainConfig(model="toy_nope")


# ---------------------------------------------------------------- the built-in members
@pytest.mark.parametrize(
    "preset,loss,cls,tokens,knobs,exported",
    [
        (
            "mar_tiny",
            "diffusion",
            MAR,
            "latents",
            {"sampler", "steps", "cache", "order", "token_steps", "editing"},
            True,
        ),
        ("mar_tiny", "ce", MARCE, "codes", {"cache", "order", "editing"}, False),
        ("ar_raster_tiny", "diffusion", CausalAR, "latents", {"sampler", "steps"}, True),
        ("ar_random_tiny", "ce", CausalAR, "codes", set(), True),
    ],
)
def test_the_built_in_members_satisfy_the_contract(preset, loss, cls, tokens, knobs, exported):
    model = make_model(preset, loss)
    assert type(model) is cls and isinstance(model, FamilyMember) and isinstance(model.config, MemberConfig)
    assert model.loss == loss and model.tokenizer_kind == tokens
    assert set(model.sampling_knobs) == {"cfg", "temperature"} | knobs
    assert bool(model.export_parts) == exported
    assert member_class(model.architecture) is cls and cls.config_class is type(model.config)


def test_a_module_outside_the_family_is_not_a_member():
    assert not isinstance(nn.Linear(2, 2), FamilyMember)
    with pytest.raises(ValueError, match="unknown model architecture 'nope'"):
        member_class("nope")
