"""Reading and writing model weights: the pieces every loader is built from.

- `read_checkpoint`: torch.load without running pickle code (official files carry an
  argparse.Namespace, which is allowed); a corrupt file is a clear error.
- `pick_state_dict` / `load_strict` / `load_official`: official `checkpoint-last.pth`
  files ({"model", "model_ema"}) and our training checkpoints load strictly.
- `save_pretrained` and `PretrainedMixin`: a pretrained folder holds `config.json`
  (the model configuration plus its "architecture"), `model.safetensors` and, where
  known, `tokenizer.json`; every file is written atomically.

Which kind of file a path is, and building the model it describes, is
`marengine.models.loading` (the one loader).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from ..checks import json_object, read_json_file
from ..files import building_folder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
ARCHITECTURE_KEY = "architecture"
PRETRAINED_KIND = "pretrained"  # the output kind in the folder's manifest (files.claim_output_folder)
OFFICIAL_KEYS = ("model_ema", "model")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A .pth file's contents, loaded with weights_only=True (memory-mapped where possible)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; a checkpoint file (.pth) is expected here")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # files written by torch < 1.6 (not zip) cannot be memory-mapped
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(ckpt, Mapping):
        raise ValueError(
            f"{path} holds a {type(ckpt).__name__}, not a checkpoint dictionary "
            "(expected {'model': state_dict, ...} or a state dict)"
        )
    return dict(ckpt)


def pick_state_dict(ckpt: Mapping[str, Any], key: str | None = None) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint: `key` if given, else `model_ema` then `model`,
    else the mapping itself when it already is a state dict."""
    if key is not None:
        if key not in ckpt:
            raise KeyError(f"checkpoint has no entry {key!r}; it has {sorted(ckpt)}")
        state = ckpt[key]
    else:
        state = next((ckpt[k] for k in OFFICIAL_KEYS if isinstance(ckpt.get(k), Mapping)), None)
        if state is None and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            state = ckpt
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"no model weights found: expected an entry among {OFFICIAL_KEYS} holding a state dict, "
            f"found {sorted(ckpt)}"
        )
    return dict(state)


def non_finite_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the floating tensors of `state` that hold NaN or an infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], assign: bool = False) -> None:
    """load_state_dict(strict=True), raising a ValueError that lists missing and
    unexpected keys, shape mismatches and weights that are not finite (NaN/inf: the
    checkpoint of a diverged run, which would sample black images)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = [
            f"{name} ({len(v)}): {', '.join(v[:20])}{' ...' if len(v) > 20 else ''}"
            for name, v in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
            if v
        ]
        raise ValueError(
            "checkpoint does not match the model; "
            + "; ".join(parts)
            + ". Check that the model configuration (size, head depth/width, class_num) "
            "matches the one the checkpoint was trained with."
        )
    bad = non_finite_keys(state)
    if bad:
        raise ValueError(
            f"the checkpoint's weights are not finite (NaN or inf) in {len(bad)} tensor(s): "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; it comes from a diverged run, "
            "use an earlier checkpoint"
        )
    model.load_state_dict(state, strict=True, assign=assign)


def load_official(model: nn.Module, path: str | os.PathLike, key: str | None = None) -> nn.Module:
    """Load an official MAR checkpoint (`model_ema` by default, as used for sampling) strictly."""
    load_strict(model, pick_state_dict(read_checkpoint(path), key))
    return model


# ---------------------------------------------------------------- pretrained folders
def save_pretrained(
    model: nn.Module,
    folder: str | os.PathLike,
    state: Mapping[str, torch.Tensor] | None = None,
    tokenizer: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `config.json` and `model.safetensors` (the model's weights, or `state`, e.g. the
    EMA) and, when given, `tokenizer.json` (a tokenizer spec, see models.tokenizers).

    The folder is built beside `folder` and moved into place whole. `folder` must be new or
    empty, or hold an earlier pretrained folder marengine wrote (replaced only when
    `overwrite`); a folder holding anything else is refused (files.claim_output_folder)."""
    from safetensors.torch import save_file

    config = {ARCHITECTURE_KEY: model.architecture, **model.config.to_dict()}
    weights = {k: v.detach().contiguous().cpu() for k, v in (state or model.state_dict()).items()}
    with building_folder(folder, PRETRAINED_KIND, overwrite=overwrite) as built:
        save_file(weights, str(built / WEIGHTS_NAME), metadata={"format": "pt"})
        (built / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
        if tokenizer is not None:
            (built / TOKENIZER_NAME).write_text(json.dumps(dict(tokenizer), indent=2, sort_keys=True))
    return Path(folder)


def read_folder_config(folder: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """(architecture, configuration fields) of a pretrained folder's config.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"pretrained folder {folder} not found")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} not found: a pretrained folder holds {CONFIG_NAME} and "
                f"{WEIGHTS_NAME} (written by save_pretrained or by training as ema/){_folder_hint(folder)}"
            )
    cfg = json_object(read_json_file(folder / CONFIG_NAME, "model configuration"), folder / CONFIG_NAME, "fields")
    arch = cfg.pop(ARCHITECTURE_KEY, "mar")
    if not isinstance(arch, str):
        raise ValueError(f"{folder / CONFIG_NAME}: field {ARCHITECTURE_KEY!r} must be a string, got {arch!r}")
    return arch, cfg


def _folder_hint(folder: Path) -> str:
    """What a folder that is not a pretrained one looks like instead."""
    if (folder / "ema" / CONFIG_NAME).is_file() or (folder / "last.pth").is_file():
        return f"; {folder} is a training run: load {folder / 'ema'} (EMA weights) or {folder / 'last.pth'}"
    if (folder / "deploy.json").is_file():
        return f"; {folder} is an ONNX export: sample from it with `python -m marengine.export.deploy --model {folder}`"
    return ""


def read_folder_weights(folder: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_NAME
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (corrupt or truncated?): {e}") from e


def read_weight_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of a safetensors file, from its header alone (nothing is loaded)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (corrupt or truncated?): {e}") from e


# the configuration fields the weights of the family say themselves: blocks counted per stack,
# and (tensor, dimension) pairs giving a size
_STACKS = {
    "encoder_blocks": "encoder_depth",
    "decoder_blocks": "decoder_depth",
    "blocks": "depth",
    "diffloss.net.res_blocks": "diffloss_d",
}
_STACK_KEY = re.compile(r"^(encoder_blocks|decoder_blocks|blocks|diffloss\.net\.res_blocks)\.(\d+)\.")
_SIZES = {
    "encoder_embed_dim": ("encoder_norm.weight", 0),
    "decoder_embed_dim": ("decoder_norm.weight", 0),
    "embed_dim": ("norm.weight", 0),
    "diffloss_w": ("diffloss.net.input_proj.weight", 0),
    "class_num": ("class_emb.weight", 0),
    "codebook_size": ("ce_head.linear.weight", 0),
}


def sizes_of_weights(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """Configuration fields (depths, widths, classes, codes) that tensor shapes fix."""
    out: dict[str, int] = {}
    for key in shapes:
        m = _STACK_KEY.match(key)
        if m:
            field = _STACKS[m.group(1)]
            out[field] = max(out.get(field, 0), int(m.group(2)) + 1)
    for field, (key, dim) in _SIZES.items():
        if key in shapes and len(shapes[key]) > dim:
            out[field] = int(shapes[key][dim])
    return out


def check_config_fits_weights(
    config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], config_file: Any, weights_file: Any
) -> None:
    """Refuse a configuration whose sizes contradict the weights it comes with, before the model
    is built (a config.json that says a million blocks next to a file holding two)."""
    for field, found in sizes_of_weights(shapes).items():
        said = config.get(field)
        if isinstance(said, int) and not isinstance(said, bool) and said != found:  # other types: the config's checks
            raise ValueError(
                f"{config_file}: field {field!r} is {said!r} but {weights_file} holds weights for {found}: "
                "the configuration does not belong to these weights"
            )


def check_shapes(model: nn.Module, shapes: Mapping[str, tuple[int, ...]], weights_file: Any) -> None:
    """The model's tensors (built on the meta device) against the shapes a weights file declares,
    before the file is read (load_strict says the same after reading it)."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [f"{k}: file {shapes[k]} vs model {own[k]}" for k in own if k in shapes and shapes[k] != own[k]]
    missing = sorted(set(own) - set(shapes))
    unexpected = sorted(set(shapes) - set(own))
    if wrong or missing or unexpected:
        parts = [
            f"{name} ({len(v)}): {', '.join(v[:5])}{' ...' if len(v) > 5 else ''}"
            for name, v in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong))
            if v
        ]
        raise ValueError(f"{weights_file} does not match its model configuration; " + "; ".join(parts))


class PretrainedMixin:
    """`save_pretrained(dir)` / `from_pretrained(dir)` as methods (the diffusers/timm habit).

    A class using it has `architecture` (the name written to config.json), `config`
    (a dataclass with `to_dict`) and a classmethod `from_config`."""

    architecture: str = ""

    def save_pretrained(
        self,
        folder: str | os.PathLike,
        state: Mapping[str, torch.Tensor] | None = None,
        tokenizer: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> Path:
        return save_pretrained(self, folder, state, tokenizer, overwrite)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: torch.device | str = "cpu") -> Any:
        """Build from config.json on the meta device and assign the weights (no init cost)."""

        def build(arch: str, cfg: dict[str, Any]) -> nn.Module:
            if arch != cls.architecture:
                raise ValueError(
                    f"{folder} holds a {arch!r} model, not a {cls.architecture!r} one: load it with "
                    "marengine.models.loading.from_pretrained, which picks the class"
                )
            return cls.from_config(cfg)  # type: ignore[attr-defined]

        return load_folder(folder, build, device)


def load_folder(
    folder: str | os.PathLike, build: Callable[[str, dict[str, Any]], nn.Module], device: torch.device | str = "cpu"
) -> nn.Module:
    """The model of a pretrained folder: config.json checked against the weights' header, the
    model built by `build(architecture, fields)` on the meta device, its shapes checked against
    the header, and only then the weights read and assigned (in eval mode)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a pretrained folder ({CONFIG_NAME} + {WEIGHTS_NAME})")
    arch, cfg = read_folder_config(folder)
    shapes = read_weight_shapes(folder / WEIGHTS_NAME)
    check_config_fits_weights(cfg, shapes, folder / CONFIG_NAME, folder / WEIGHTS_NAME)
    try:
        with torch.device("meta"):
            model = build(arch, cfg)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{folder / CONFIG_NAME}: {e}") from None
    check_shapes(model, shapes, folder / WEIGHTS_NAME)
    load_strict(model, read_folder_weights(folder, device), assign=True)
    return model.eval()
