"""onnxruntime sessions for exported MAR models: `OnnxBackbone`, `OnnxHead`, `OnnxDecoder`.

Torch-free at import (the deployment sampler uses this module); torch is imported
only when a caller hands in torch tensors, and then results come back as torch
tensors on the caller's device. Every call validates its inputs in Python (dtype,
rank, shape, index ranges) before ORT sees them, so a bad call is a clear
ValueError/TypeError, never an ORT crash.

With the CUDA provider, inputs and outputs are bound to device buffers through
`session.io_binding()` (torch CUDA tensors are bound in place, numpy arrays are
copied into `OrtValue`s on the device); on CPU a plain `session.run` is used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import ARCH_MAR, MEMBER_CONFIGS

FORMAT_VERSION = 1
META_PREFIX = "marengine."
KEY_FORMAT = META_PREFIX + "format_version"
KEY_ROLE = META_PREFIX + "role"
KEY_CONFIG = META_PREFIX + "config"
KEY_EXPORTER = META_PREFIX + "exporter"
KEY_PRECISION = META_PREFIX + "precision"
KEY_TOKENIZER = META_PREFIX + "tokenizer"
KEY_ARCHITECTURE = META_PREFIX + "architecture"
# role -> file name inside an export folder
FILES = {
    "backbone": "backbone.onnx",
    "backbone_embed": "backbone_embed.onnx",
    "head": "head.onnx",
    "decoder": "decoder.onnx",
    "encoder": "encoder.onnx",
}
DEPLOY_JSON = "deploy.json"
INSTALL_HINT = (
    "install the extra: `pip install 'marengine[onnx]'` (CPU: onnx, onnxscript, onnxruntime) "
    "or `pip install 'marengine[onnx-gpu]'` (onnxruntime-gpu)"
)


def import_onnxruntime():
    """onnxruntime, or an ImportError that names the extra to install."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(
            f"running exported MAR models needs onnxruntime, which is not installed: {INSTALL_HINT}"
        ) from e
    return onnxruntime


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always."""
    avail = import_onnxruntime().get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in avail else []) + ["CPUExecutionProvider"]


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "dtype") and hasattr(x, "data_ptr")


def _kind(x: Any) -> str:
    """'f' float, 'i' integer, 'b' bool, 'c' complex, for numpy arrays and torch tensors."""
    if _is_torch(x):
        if x.dtype.is_floating_point:
            return "f"
        if x.dtype.is_complex:
            return "c"
        return "b" if str(x.dtype) == "torch.bool" else "i"
    k = x.dtype.kind
    return "i" if k == "u" else k


_KIND_NAMES = {"f": "a floating point", "i": "an integer", "b": "a bool"}
_NP_DTYPES = {"f": np.float32, "i": np.int64, "b": np.bool_}


def _check(name: str, x: Any, kinds: str, ndim: int, shape: Sequence[int | None]) -> None:
    """Type, dtype kind, rank and shape (None = any) of one input."""
    if not isinstance(x, np.ndarray) and not _is_torch(x):
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if _kind(x) not in kinds:
        want = " or ".join(_KIND_NAMES[k] for k in kinds)
        raise TypeError(f"{name} must have {want} dtype, got {x.dtype}")
    if x.ndim != ndim or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")


def _check_range(name: str, x: Any, lo: int, hi: int) -> None:
    empty = x.size == 0 if isinstance(x, np.ndarray) else x.numel() == 0
    if empty:
        return
    mn, mx = int(x.min()), int(x.max())
    if mn < lo or mx >= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}), got values in [{mn}, {mx}]")


def checked_config(config: Any, architecture: str, source: str) -> dict[str, Any]:
    """A model configuration read from a file (JSON text or a dict), checked by its dataclass
    (sizes positive and within marengine.limits) before any size is taken from it."""
    classes = MEMBER_CONFIGS  # architecture -> configuration dataclass (registered members included)
    if architecture not in classes:
        raise ValueError(f"{source}: unknown architecture {architecture!r}; known: {sorted(classes)}")
    try:
        d = json.loads(config) if isinstance(config, str) else config
        if not isinstance(d, dict):
            raise ValueError(f"a JSON object of configuration fields is expected, got {type(d).__name__}")
        classes[architecture].from_dict(dict(d))
    except (TypeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{source}: {e}") from None
    return dict(d)


class OnnxModel:
    """One exported marengine .onnx file on onnxruntime; checks its metadata on load."""

    roles: tuple[str, ...] = ()
    output: str = ""

    def __init__(
        self, path: str | os.PathLike, providers: Sequence[str] | None = None, session_options: Any = None
    ) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} does not exist")
        self.providers = list(providers) if providers is not None else default_providers()
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=session_options, providers=self.providers)
        except Exception as e:  # ORT raises its own InvalidProtobuf / Fail / NoSuchFile types
            raise ValueError(
                f"{self.path} could not be loaded as an ONNX model ({type(e).__name__}: "
                f"{str(e).strip()[:300]}); expected a file written by `marengine export-onnx`"
            ) from e
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        if KEY_FORMAT not in self.metadata or KEY_CONFIG not in self.metadata:
            raise ValueError(
                f"{self.path} is an ONNX model but not one exported by marengine "
                f"(no {KEY_FORMAT!r} / {KEY_CONFIG!r} metadata)"
            )
        version = int(self.metadata[KEY_FORMAT])
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{self.path} has export format version {version}; this marengine reads "
                f"versions <= {FORMAT_VERSION}: upgrade marengine"
            )
        self.role = self.metadata.get(KEY_ROLE, "")
        if self.roles and self.role not in self.roles:
            raise ValueError(f"{self.path} holds the {self.role!r} part of a MAR export, expected one of {self.roles}")
        self.config: dict[str, Any] = checked_config(
            self.metadata[KEY_CONFIG], self.metadata.get(KEY_ARCHITECTURE, ARCH_MAR), f"{self.path} ({KEY_CONFIG})"
        )
        self.precision = self.metadata.get(KEY_PRECISION, "fp32")
        self.exporter = self.metadata.get(KEY_EXPORTER, "")
        self.on_cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"
        # IO binding on the device with CUDA; on CPU a plain run (binding works there too: tests use it)
        self.use_binding, self.device_type = self.on_cuda, ("cuda" if self.on_cuda else "cpu")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._read_config()

    def _read_config(self) -> None:
        """What a part derives from its config and metadata once they are checked (subclasses)."""

    def _run(self, feeds: dict[str, Any], out_shape: tuple[int, ...]) -> Any:
        """Run on validated inputs; the result is a torch tensor when the first input is one
        (on its device), else a numpy array."""
        first = feeds[self.input_names[0]]
        if self.use_binding:
            return self._run_bound(feeds, out_shape, first)
        out = self.session.run([self.output], {name: _numpy(x) for name, x in feeds.items()})[0]
        if _is_torch(first):
            import torch

            return torch.from_numpy(out).to(first.device)
        return out

    def _run_bound(self, feeds: dict[str, Any], out_shape: tuple[int, ...], first: Any) -> Any:
        """IO binding: torch CUDA tensors are bound in place and the output is written into a
        torch tensor; numpy inputs become OrtValues on the device (the output is copied back)."""
        ort = import_onnxruntime()
        binding = self.session.io_binding()
        kind = self.device_type
        opts = self.session.get_provider_options().get("CUDAExecutionProvider", {}) if kind == "cuda" else {}
        dev_id = int(opts.get("device_id", 0))
        keep = []  # buffers that must outlive the run
        if _is_torch(first):
            import torch

            dev = torch.device(kind, dev_id) if kind == "cuda" else torch.device("cpu")
            torch_dt = {"f": torch.float32, "i": torch.int64, "b": torch.bool}
            for name, x in feeds.items():
                if not _is_torch(x):
                    x = torch.from_numpy(np.asarray(x))
                t = x.detach().to(device=dev, dtype=torch_dt[_kind(x)]).contiguous()
                keep.append(t)
                if t.numel() == 0:  # no device buffer to point at (K = 0): ORT allocates the empty tensor
                    binding.bind_cpu_input(name, _numpy(t))
                else:
                    binding.bind_input(name, kind, dev_id, _NP_DTYPES[_kind(x)], tuple(t.shape), t.data_ptr())
            out = torch.empty(out_shape, dtype=torch.float32, device=dev)
            binding.bind_output(self.output, kind, dev_id, np.float32, out_shape, out.data_ptr())
            if kind == "cuda":
                torch.cuda.current_stream(dev).synchronize()  # inputs written by torch are ready for ORT's stream
            self.session.run_with_iobinding(binding)  # returns after ORT's stream has finished
            return out.to(first.device)
        for name, x in feeds.items():
            v = ort.OrtValue.ortvalue_from_numpy(_numpy(x), kind, dev_id)
            keep.append(v)
            binding.bind_ortvalue_input(name, v)
        binding.bind_output(self.output, kind, dev_id)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()


def _numpy(x: Any) -> np.ndarray:
    """A contiguous host array in the dtype ORT expects (float32, int64 or bool)."""
    dt = _NP_DTYPES[_kind(x)]
    arr = x.detach().to("cpu").numpy() if _is_torch(x) else np.asarray(x)
    return np.ascontiguousarray(arr, dtype=dt)


class OnnxBackbone(OnnxModel):
    """The exported MAR backbone: z [B, L, D] from tokens [B, L, C] and known_idx [B, K].

    `backbone.onnx` takes class labels [B] (int) and `uncond` [B] (bool: the row gets the
    null class `fake_latent`, its label is ignored); `backbone_embed.onnx` takes
    class_embedding [B, D] like `MAR.backbone`. Call as `bb(tokens, known_idx, cond, uncond=None)`
    with cond the labels or the class embedding, numpy arrays or torch tensors.
    """

    roles = ("backbone", "backbone_embed")
    output = "z"

    def _read_config(self) -> None:
        c = self.config
        self.seq_h = self.seq_w = c["img_size"] // c["vae_stride"] // c["patch_size"]
        self.seq_len = self.seq_h * self.seq_w
        self.token_embed_dim = c["vae_embed_dim"] * c["patch_size"] ** 2
        self.embed_dim = c["encoder_embed_dim"]
        self.z_dim = c["decoder_embed_dim"]
        self.class_num = c["class_num"]
        self.takes_labels = self.role == "backbone"

    def validate(self, tokens: Any, known_idx: Any, cond: Any, uncond: Any = None) -> dict[str, Any]:
        L = self.seq_len
        _check("tokens", tokens, "f", 3, (None, L, self.token_embed_dim))
        b = tokens.shape[0]
        _check("known_idx", known_idx, "i", 2, (b, None))
        k = known_idx.shape[1]
        if k > L:
            raise ValueError(f"known_idx has K={k} known positions per row, more than the sequence length {L}")
        _check_range("known_idx", known_idx, 0, L)
        if k > 1:
            s = np.sort(known_idx, axis=1) if isinstance(known_idx, np.ndarray) else known_idx.sort(dim=1).values
            if bool((s[:, 1:] == s[:, :-1]).any()):
                raise ValueError("known_idx holds a position twice in a row: each row must list distinct positions")
        if not self.takes_labels:
            if uncond is not None:
                raise ValueError(
                    f"{self.path.name} takes class_embedding; `uncond` is for the labels variant "
                    f"(backbone.onnx): pass the null class (fake_latent) as the embedding instead"
                )
            _check("class_embedding", cond, "f", 2, (b, self.embed_dim))
            return {"tokens": tokens, "known_idx": known_idx, "class_embedding": cond}
        if (isinstance(cond, np.ndarray) or _is_torch(cond)) and _kind(cond) == "f":
            raise TypeError(
                f"{self.path.name} takes integer class labels [B]; for a class embedding use backbone_embed.onnx"
            )
        _check("labels", cond, "i", 1, (b,))
        if uncond is None:
            uncond = np.zeros(b, dtype=bool)
            if _is_torch(cond):
                import torch

                uncond = torch.from_numpy(uncond).to(cond.device)
        _check("uncond", uncond, "b", 1, (b,))
        cond_rows = cond[~uncond]
        _check_range("labels (of rows with uncond=False)", cond_rows, 0, self.class_num)
        return {"tokens": tokens, "known_idx": known_idx, "labels": cond, "uncond": uncond}

    def __call__(self, tokens: Any, known_idx: Any, cond: Any, uncond: Any = None) -> Any:
        feeds = self.validate(tokens, known_idx, cond, uncond)
        return self._run(feeds, (tokens.shape[0], self.seq_len, self.z_dim))


class OnnxBackboneModule:
    """Drop-in for `MAR.backbone(tokens, known_idx, class_embedding) -> z` on onnxruntime:
    torch tensors in, a torch tensor (float32, on the tokens' device) out. Needs the
    class-embedding variant (`backbone_embed.onnx`)."""

    def __init__(
        self, path_or_backbone: str | os.PathLike | OnnxBackbone, providers: Sequence[str] | None = None
    ) -> None:
        bb = path_or_backbone
        if not isinstance(bb, OnnxBackbone):
            bb = OnnxBackbone(bb, providers)
        if bb.takes_labels:
            raise ValueError(
                f"{bb.path} takes class labels; OnnxBackboneModule needs the class-embedding "
                f"variant ({FILES['backbone_embed']})"
            )
        self.onnx = bb
        self.config = bb.config

    def __call__(self, tokens: Any, known_idx: Any, class_embedding: Any) -> Any:
        z = self.onnx(tokens, known_idx, class_embedding)  # float32
        return z.to(class_embedding.dtype) if _is_torch(z) and _is_torch(class_embedding) else z


class OnnxHead(OnnxModel):
    """One step of the exported denoising MLP: out [N, 2C] = net(x [N, C], t [N] training timesteps, c [N, Z])."""

    roles = ("head",)
    output = "out"

    def _read_config(self) -> None:
        c = self.config
        self.channels = c["vae_embed_dim"] * c["patch_size"] ** 2
        self.z_dim = c["decoder_embed_dim"]
        self.train_steps = int(self.metadata.get(META_PREFIX + "train_steps", 1000))

    def __call__(self, x: Any, t: Any, c: Any) -> Any:
        _check("x", x, "f", 2, (None, self.channels))
        n = x.shape[0]
        _check("t", t, "i", 1, (n,))
        _check_range("t", t, 0, self.train_steps)
        _check("c", c, "f", 2, (n, self.z_dim))
        return self._run({"x": x, "t": t, "c": c}, (n, 2 * self.channels))


class _OnnxTokenizerPart(OnnxModel):
    """The shapes both tokenizer parts check: MAR latents [C, h, w] and images [ch, H, W]."""

    def _read_config(self) -> None:
        try:
            self.tokenizer: dict[str, Any] = json.loads(self.metadata.get(KEY_TOKENIZER, "{}")) or {}
        except ValueError as e:
            raise ValueError(f"{self.path}: its {KEY_TOKENIZER} metadata is not valid JSON: {e}") from None
        check_tokenizer_info(self.tokenizer, self.config, f"{self.path} ({KEY_TOKENIZER})")
        c = self.config
        side = c["img_size"] // c["vae_stride"]
        self.latent_shape = (c["vae_embed_dim"], side, side)
        self.image_shape = (self.tokenizer.get("image_channels", 3), c["img_size"], c["img_size"])


class OnnxDecoder(_OnnxTokenizerPart):
    """The exported detokenizer: images [B, ch, H, W] in [-1, 1] from MAR latents [B, C, h, w]
    (scaled as MAR sees them)."""

    roles = ("decoder",)
    output = "images"

    def __call__(self, latents: Any) -> Any:
        _check("latents", latents, "f", 4, (None, *self.latent_shape))
        return self._run({"latents": latents}, (latents.shape[0], *self.image_shape))


def check_tokenizer_info(tok: Any, config: dict[str, Any], source: str) -> None:
    """The tokenizer an export describes must fit its model: image channels 1 or 3, latent
    channels and stride the model's (else the images would come out of the wrong shape)."""
    if not isinstance(tok, dict):
        raise ValueError(f"{source}: the tokenizer must be a JSON object, got {type(tok).__name__}")
    if "image_channels" in tok and tok["image_channels"] not in (1, 3):
        raise ValueError(f"{source}: field 'image_channels' must be 1 or 3, got {tok['image_channels']!r}")
    for field, model_field in (("embed_dim", "vae_embed_dim"), ("stride", "vae_stride")):
        if field in tok and tok[field] != config.get(model_field):
            raise ValueError(
                f"{source}: field {field!r} is {tok[field]!r} but the model's {model_field} is "
                f"{config.get(model_field)!r}: the tokenizer does not fit the model"
            )


def config_mismatch(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two MAR config dicts, as 'key: a vs b'."""
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class OnnxEncoder(_OnnxTokenizerPart):
    """The exported tokenizer's encoder: MAR latents [B, C, h, w] (the posterior's mode, scaled
    as MAR sees them) from images [B, ch, H, W] in [-1, 1]; editing's known tokens."""

    roles = ("encoder",)
    output = "latents"

    def __call__(self, images: Any) -> Any:
        _check("images", images, "f", 4, (None, *self.image_shape))
        return self._run({"images": images}, (images.shape[0], *self.latent_shape))
