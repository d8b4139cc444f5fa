"""The family contract: what a model of the generalized autoregressive family provides.

Every member (MAR, MAR-CE, CausalAR, and any member added through `family.register_member`)
satisfies `FamilyMember`; its configuration satisfies `MemberConfig`. The CLI, the trainer,
the exporter and the benchmarks read these attributes instead of testing architecture
names or probing with `hasattr`:

    attribute        what it says                             read by
    architecture     config.json's "architecture" name        checkpoints, loading, registry
    config_class     the configuration dataclass              loading, export checks
    loss             "diffusion" | "ce" (the head)            trainer, tokenizer factory
    tokenizer_kind   "latents" (continuous) | "codes" (VQ)    tokenizer factory, CLI
    causal           one token per step (True) or masked      sampling engine, trainer
    sampling_knobs   which of SAMPLING_KNOBS sample_tokens    sampling engine (presets)
                     takes
    export_parts     the ONNX parts it exports; () = none     `marengine export-onnx`

and the methods `forward(imgs, labels, generator=None) -> loss` (training),
`sample_tokens(bsz, num_iter, cfg, cfg_schedule, labels, temperature, progress, **options)`
(MAR's official signature), `save_pretrained(folder, ...)`, `from_pretrained(folder)` and
`from_config(cfg)`.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import torch

from ..config import LOSSES, SAMPLE_DEFAULTS
from .checkpoints import PretrainedMixin
from .sample_args import SampleArgs

TOKENIZER_KINDS = ("latents", "codes")  # continuous tokens (VAE latents, pixels) | VQ codes
# what sample_tokens may take beyond the official signature's bsz/num_iter/labels/progress:
# CFG scale and temperature, the diffusion head's sampler and steps, backbone reuse (cache),
# the generation order, and editing (known tokens kept exactly)
SAMPLING_KNOBS = ("cfg", "temperature", "sampler", "steps", "cache", "order", "token_steps", "editing")


def tokenizer_kind_of(loss: str) -> str:
    """The tokens a head of loss `loss` models: cross-entropy models VQ codes, Diffusion Loss
    continuous latents."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}")
    return "codes" if loss == "ce" else "latents"


@runtime_checkable
class MemberConfig(Protocol):
    """The configuration dataclass of a member: its fields checked on construction, a JSON-able
    round trip (config.json, checkpoints), and what the trainer and the tokenizer factory read."""

    loss: str  # "diffusion" | "ce"
    img_size: int
    vae_stride: int
    vae_embed_dim: int
    class_num: int

    def to_dict(self) -> dict[str, Any]: ...

    def to_json(self) -> str: ...

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any: ...


@runtime_checkable
class FamilyMember(Protocol):
    """A model of the family (see the module docstring for who reads what)."""

    architecture: ClassVar[str]
    config_class: ClassVar[type]
    loss: str
    tokenizer_kind: str
    causal: bool
    sampling_knobs: tuple[str, ...]
    export_parts: tuple[str, ...]
    config: Any
    seq_len: int
    num_classes: int

    def forward(
        self, imgs: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...

    def sample_tokens(
        self,
        bsz: int,
        num_iter: int | None,
        cfg: float,
        cfg_schedule: str,
        labels: torch.Tensor | None,
        temperature: float,
        progress: bool = False,
        **options: Any,
    ) -> torch.Tensor: ...

    def save_pretrained(self, folder: Any, **kwargs: Any) -> Any: ...

    @classmethod
    def from_pretrained(cls, folder: Any, **kwargs: Any) -> Any: ...

    @classmethod
    def from_config(cls, cfg: Any) -> Any: ...


def contract_gaps(cls: type) -> list[str]:
    """The names of FamilyMember that `cls` lacks (an instance attribute set in __init__, such
    as `config` or `seq_len`, counts when the class annotates it)."""
    names = [*FamilyMember.__annotations__, *(n for n in vars(FamilyMember) if not n.startswith("_"))]
    have = set(dir(cls)) | {n for klass in cls.__mro__ for n in getattr(klass, "__annotations__", {})}
    return [n for n in dict.fromkeys(names) if n not in have]


class MemberMixin(PretrainedMixin):
    """What the members share beyond the contract's declarations: from_config, sample_tokens
    (the official signature, once, running the member's `sampling_loop`), the derived tokenizer
    kind, save_pretrained / from_pretrained, and the checks every entry point runs first. A
    class using it sets `architecture`, `config_class`, `loss`, `sampling_loop` and
    `default_num_iter` (or defines its own sample_tokens) and has `fake_latent` (the null
    class) and `num_classes`."""

    config_class: ClassVar[type]
    config: Any
    loss: str
    default_num_iter: int | None  # what num_iter=None means
    sampling_loop: Callable[..., torch.Tensor]  # (model, SampleArgs, **loop options) -> tokens
    seq_len: int
    num_classes: int
    fake_latent: torch.Tensor

    @classmethod
    def from_config(cls, cfg: Any) -> Any:
        """A freshly initialised model of configuration `cfg` (its dataclass or a dict of fields)."""
        cfg = cfg if isinstance(cfg, cls.config_class) else cls.config_class.from_dict(dict(cfg))
        return cls(**cfg.to_dict())

    @torch.no_grad()
    def sample_tokens(
        self,
        bsz: int,
        num_iter: int | None = None,
        cfg: float = SAMPLE_DEFAULTS.cfg,
        cfg_schedule: str = SAMPLE_DEFAULTS.cfg_schedule,
        labels: torch.Tensor | None = None,
        temperature: float = SAMPLE_DEFAULTS.temperature,
        progress: bool = False,
        **options: Any,
    ) -> torch.Tensor:
        """Generate the tokens of `bsz` images: latents [bsz, C, h, w] (Diffusion Loss) or codes
        [bsz, h, w] (cross-entropy), all randomness from the `generator` option. The official
        signature; num_iter None is the member's `default_num_iter` (MAR: the official 64; a
        causal member: its L tokens, the only count it takes).

        The keyword options are those of the member's `sampling_loop`: every loop takes
        generator, backend ("auto" | "torch" | "native" head kernels) and clip_denoised (clamp
        x_0 predictions to [-1, 1]; pixel tokens); the masked loop (models/masked_ar.py) also
        backbone (a stand-in, e.g. onnxruntime), sampler ("ddpm" | "ddim[:eta]" | "dpm++2m"),
        steps (diffusion steps per iteration: an int, "A-B" annealing or a list), cache (a
        CachePolicy), known_tokens with known_mask (editing) and order ("random", "halton",
        "lattice"); the causal loop (models/ar_sampling.py) orders, use_cache, kv_cache, sampler
        and steps. Which of them apply is the member's `sampling_knobs`."""
        num_iter = self.default_num_iter if num_iter is None else num_iter
        args = SampleArgs.take(bsz, num_iter, cfg, cfg_schedule, labels, temperature, progress, options=options)
        return self.sampling_loop(self, args, **options)

    @property
    def tokenizer_kind(self) -> str:
        return tokenizer_kind_of(self.loss)

    def check_weights(self) -> None:
        """A clear error when the model was built on the meta device and never given weights."""
        if self.fake_latent.is_meta:
            raise ValueError(
                "the model's weights are on the meta device (shapes only, no data): load weights with "
                f"load_state_dict(..., assign=True), {type(self).__name__}.from_pretrained or "
                "marengine.models.load_model"
            )

    def _check_labels(self, labels: torch.Tensor, bsz: int) -> None:
        """labels: an int64 (or int32) tensor [bsz] of class indices in [0, num_classes)."""
        if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
            raise TypeError(
                f"labels must be an int64 tensor of class indices, got {type(labels).__name__} "
                f"{getattr(labels, 'dtype', '')}"
            )
        if labels.is_meta:
            raise ValueError("labels are on the meta device (no data): pass a tensor of class indices")
        if labels.shape != (bsz,):
            raise ValueError(f"labels must have shape ({bsz},), got {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"labels must be in [0, {self.num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]"
            )
