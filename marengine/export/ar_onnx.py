"""Export a causal AR model (`models.ar.CausalAR`) to ONNX: the uncached backbone, the one-token
step with its kv-cache as inputs and outputs, and the head.

Files written to `out_dir` (each carries `marengine.*` metadata: role, the ARConfig JSON):
  ar_backbone.onnx  tokens [B, L-1, C] f32 (codes [B, L-1] i64 for loss="ce"), orders [B, L] i64,
                    class_embedding [B, D] f32 -> z [B, L, D]           (the causal forward, B dynamic)
  ar_step.onnx      token [R, C] f32 (code [R] i64), pos [R] i64, next_pos [R] i64,
                    class_embedding [R, D] f32, first [R] bool, past_k, past_v [depth, R, H, T, hd] f32
                    -> z [R, D], present_k, present_v [depth, R, H, T+1, hd]
                    (first: the input is the class token, token and pos are ignored; R and T dynamic,
                    T = 0 at the first step)
  head.onnx         loss="diffusion": one step of the Diffusion-Loss MLP (x, t, c -> out), as MAR's
  ce_head.onnx      loss="ce": z [N, D] -> logits [N, K]
The sampling loop itself (orders, CFG, the reverse diffusion or the categorical draw) is
not exported: it runs in Python around these files. The torch-free deploy sampler
(`export.deploy`) drives MAR exports only.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..files import building_folder, claim_output_folder
from ..models.ar import CausalAR
from ..models.checkpoints import non_finite_keys, read_checkpoint, read_folder_config
from ..models.kv_cache import concat_kv
from ..models.loading import load_model
from ..models.mar import MAR
from .onnx import EXPORT_KIND, HeadStep, export_module, require_export_deps
from .runtime import FORMAT_VERSION, KEY_CONFIG, KEY_FORMAT, KEY_ROLE

log = logging.getLogger("marengine.export")
AR_FILES = {
    "ar_backbone": "ar_backbone.onnx",
    "ar_step": "ar_step.onnx",
    "head": "head.onnx",
    "ce_head": "ce_head.onnx",
}
AR_PARTS = CausalAR.export_parts  # the family contract: ("ar_backbone", "ar_step", "head"); "head": ce_head.onnx for ce


class ARBackbone(nn.Module):
    def __init__(self, model: CausalAR) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, orders: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        return self.model.backbone(tokens, orders, class_embedding)


class ARStep(nn.Module):
    """One token through every block, with past keys/values in and present keys/values out."""

    def __init__(self, model: CausalAR) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        token: torch.Tensor,
        pos: torch.Tensor,
        next_pos: torch.Tensor,
        class_embedding: torch.Tensor,
        first: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        x = torch.where(first.unsqueeze(-1), class_embedding, m.embed_tokens(token) + m.pos_embed[0][pos])
        x = m.input_ln((x + m.target_pos_embed[0][next_pos]).unsqueeze(1))  # [R, 1, D]
        present: list[torch.Tensor] = []
        for layer, blk in enumerate(m.blocks):
            x = blk(x, kv=concat_kv(past_k[layer], past_v[layer], present))
        z = m.norm(x[:, 0]) + m.head_pos_embed[0][next_pos]
        return z, torch.stack(present[0::2]), torch.stack(present[1::2])


class CEHeadLogits(nn.Module):
    def __init__(self, model: CausalAR) -> None:
        super().__init__()
        self.head = model.ce_head

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z)


def export_ar_onnx(
    model: CausalAR, out_dir: str | os.PathLike, parts: Sequence[str] = AR_PARTS, overwrite: bool = False
) -> dict[str, Path]:
    """Export `model` (a CausalAR, float32) to `out_dir` (published whole when complete; the
    output rule of export_onnx); {role: path}."""
    require_export_deps()
    unknown = sorted(set(parts) - set(AR_PARTS))
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose among {AR_PARTS}")
    if not isinstance(model, CausalAR):
        raise TypeError(f"export_ar_onnx exports causal AR models, got {type(model).__name__} (MAR: export_onnx)")
    bad = non_finite_keys(model.state_dict())
    if bad:
        raise ValueError(f"the model's weights are not finite (NaN or inf) in {', '.join(bad[:5])}: nothing exported")
    out = claim_output_folder(out_dir, EXPORT_KIND, overwrite=overwrite)  # before any work
    training = model.training
    try:
        with building_folder(out, EXPORT_KIND, overwrite=overwrite) as built:
            paths = _export_all(model.float().eval(), built, tuple(parts))
        return {role: out / p.name for role, p in paths.items()}
    finally:
        model.train(training)


def _export_all(model: CausalAR, out: Path, parts: tuple[str, ...]) -> dict[str, Path]:
    cfg = model.config
    out.mkdir(parents=True, exist_ok=True)
    common = {KEY_FORMAT: str(FORMAT_VERSION), KEY_CONFIG: cfg.to_json(), "marengine.architecture": model.architecture}
    g = torch.Generator().manual_seed(0)
    device = model.fake_latent.device
    b, length, dim, ce = 2, model.seq_len, cfg.embed_dim, cfg.loss == "ce"

    def tokens(n: int) -> torch.Tensor:
        if ce:
            return torch.randint(0, cfg.codebook_size, (b, n), generator=g).to(device)
        return torch.randn(b, n, model.token_embed_dim, generator=g).to(device)

    orders = torch.stack([torch.randperm(length, generator=g) for _ in range(b)]).to(device)
    cls = torch.randn(b, dim, generator=g).to(device)
    batch = ("batch", 1, None)
    paths: dict[str, Path] = {}

    if "ar_backbone" in parts:
        path = out / AR_FILES["ar_backbone"]
        export_module(
            ARBackbone(model),
            (tokens(length - 1), orders, cls),
            path,
            ["tokens", "orders", "class_embedding"],
            ["z"],
            {"tokens": {0: batch}, "orders": {0: batch}, "class_embedding": {0: batch}},
            {**common, KEY_ROLE: "ar_backbone"},
            exporter="dynamo",
        )
        paths["ar_backbone"] = path

    t = 2  # an example past length (not 0 or 1, which torch.export would specialise)
    kv = (model.depth, b, model.num_heads, t, model.head_dim)
    step_args = (
        tokens(1)[:, 0],
        orders[:, t - 1],
        orders[:, t],
        cls,
        torch.tensor([False, True], device=device),
        torch.randn(kv, generator=g).to(device),
        torch.randn(kv, generator=g).to(device),
    )
    past = {1: batch, 3: ("past", 0, length - 1)}
    path = out / AR_FILES["ar_step"]
    if "ar_step" in parts:
        export_module(
            ARStep(model),
            step_args,
            path,
            ["token", "pos", "next_pos", "class_embedding", "first", "past_k", "past_v"],
            ["z", "present_k", "present_v"],
            {
                **{k: {0: batch} for k in ("token", "pos", "next_pos", "class_embedding", "first")},
                "past_k": past,
                "past_v": past,
            },
            {**common, KEY_ROLE: "ar_step"},
            exporter="dynamo",
        )
        paths["ar_step"] = path

    rows = ("rows", 1, None)
    if "head" not in parts:
        pass
    elif ce:
        path = out / AR_FILES["ce_head"]
        args = (torch.randn(4, dim, generator=g).to(device),)
        meta = {**common, KEY_ROLE: "ce_head"}
        export_module(CEHeadLogits(model), args, path, ["z"], "logits", {"z": {0: rows}}, meta)
        paths["ce_head"] = path
    else:
        path = out / AR_FILES["head"]
        c = model.token_embed_dim
        args = (
            torch.randn(4, c, generator=g).to(device),
            torch.tensor([0, 1, 500, 999], device=device),
            torch.randn(4, dim, generator=g).to(device),
        )
        dyn = {"x": {0: rows}, "t": {0: rows}, "c": {0: rows}}
        meta = {**common, KEY_ROLE: "head"}
        export_module(HeadStep(model.diffloss.net, torch.float32), args, path, ["x", "t", "c"], "out", dyn, meta)
        paths["head"] = path
    (out / "ar_export.json").write_text(
        json.dumps(
            {"format_version": FORMAT_VERSION, "architecture": model.architecture, "config": cfg.to_dict()}, indent=1
        )
    )
    return paths


def checkpoint_architecture(path: str | os.PathLike) -> str:
    """The architecture a pretrained folder or a checkpoint file holds ("mar" for official files)."""
    p = Path(path)
    if p.is_dir():
        return read_folder_config(p)[0]
    return str(read_checkpoint(p).get("architecture", MAR.architecture))  # memory-mapped: the weights are not read


def export_ar_from_checkpoint(
    checkpoint: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False
) -> dict[str, Path]:
    """Load a causal AR model from a folder or a training checkpoint and export it."""
    loaded = load_model(checkpoint)
    if not isinstance(loaded.model, CausalAR):
        raise ValueError(f"{checkpoint} holds a {type(loaded.model).__name__}, not a causal AR model")
    return export_ar_onnx(loaded.model, out_dir, overwrite=overwrite)
