"""Loading a model and its tokenizer for sampling from any of the checkpoint kinds:
a training checkpoint (.pth written by the trainer), a pretrained folder
(config.json + model.safetensors + tokenizer.json), or an official
checkpoint-last.pth (with the preset named and, for the VAE, its weights)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..config import MARConfig
from ..models.mar import MAR
from ..models.pretrained import TOKENIZER_NAME, from_pretrained, load_strict, pick_state_dict, read_checkpoint
from ..training.factory import build_tokenizer


def load_for_sampling(path: str, *, use_ema: bool = True, preset: str | None = None,
                      vae_ckpt: str | None = None, device: str | torch.device = "cpu") -> tuple[MAR, Any]:
    p = Path(path)
    if p.is_dir():
        model = from_pretrained(p, device=device)
        spec_file = p / TOKENIZER_NAME
        spec = json.loads(spec_file.read_text()) if spec_file.is_file() else _vae_spec(model, vae_ckpt)
        return model, build_tokenizer(_with_vae(spec, vae_ckpt)).to(device)
    ckpt = read_checkpoint(p)
    if "config" in ckpt:  # written by the marengine trainer
        cfg = MARConfig.from_dict(ckpt["config"])
        spec = _with_vae(ckpt.get("tokenizer") or _vae_spec(None, vae_ckpt, cfg), vae_ckpt)
    else:  # official checkpoint: the configuration must be named
        if preset is None:
            raise ValueError(f"{p} is an official checkpoint without a configuration: name it with "
                             "--model (mar_base, mar_large, mar_huge)")
        cfg = MARConfig.from_name(preset)
        spec = _vae_spec(None, vae_ckpt, cfg)
    with torch.device("meta"):
        model = MAR.from_config(cfg)
    load_strict(model, pick_state_dict(ckpt, "model_ema" if use_ema else "model"), assign=True)
    return model.to(device).eval(), build_tokenizer(spec).to(device)


def _vae_spec(model: MAR | None, vae_ckpt: str | None, cfg: MARConfig | None = None) -> dict[str, Any]:
    cfg = cfg or model.config
    return {"kind": "vae", "ckpt": vae_ckpt, "embed_dim": cfg.vae_embed_dim}


def _with_vae(spec: dict[str, Any], vae_ckpt: str | None) -> dict[str, Any]:
    return {**spec, "ckpt": vae_ckpt} if spec["kind"] == "vae" and vae_ckpt else spec
