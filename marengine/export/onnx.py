"""Export a MAR model to ONNX: backbone, one head step and the detokenizer, plus deploy.json.

Files written to `out_dir` (roles in parentheses, also stored in each file's metadata):
  backbone.onnx        (backbone)        tokens [B, L, C] f32, known_idx [B, K] i64, labels [B] i64,
                                         uncond [B] bool  -> z [B, L, D]
  backbone_embed.onnx  (backbone_embed)  tokens, known_idx, class_embedding [B, D] f32 -> z
  head.onnx            (head)            x [N, C] f32, t [N] i64 (training timestep), c [N, Z] f32 -> out [N, 2C]
  decoder.onnx         (decoder)         latents [B, C, h, w] f32 (scaled as MAR sees them) -> images [B, ch, H, W]
  encoder.onnx         (encoder)         images [B, ch, H, W] f32 in [-1, 1] -> latents [B, C, h, w] (the posterior's
                                         mode, scaled: the known tokens of editing)
  deploy.json          sampling metadata and the float32 diffusion tables
B, K (0 allowed) and N are dynamic axes. Inputs and outputs are float32 in every
precision: with fp16=True the weights and arithmetic inside are fp16 and the graph
casts at its edges. Each .onnx carries `marengine.*` metadata_props: format version,
role, the MARConfig JSON, exporter (dynamo | torchscript), precision.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from ..checks import check_int
from ..config import TRAIN_DIFFUSION_STEPS, MARConfig
from ..diffusion.schedule import DiffusionTables
from ..files import atomic_write_text, building_folder, claim_output_folder
from ..models.checkpoints import non_finite_keys
from ..models.loading import load_model
from ..models.mar import MAR
from ..models.tokenizers import build_tokenizer, describe_tokenizer, tokenizer_spec
from .runtime import (
    DEPLOY_JSON,
    FILES,
    FORMAT_VERSION,
    INSTALL_HINT,
    KEY_CONFIG,
    KEY_EXPORTER,
    KEY_FORMAT,
    KEY_PRECISION,
    KEY_ROLE,
    KEY_TOKENIZER,
    META_PREFIX,
)

log = logging.getLogger("marengine.export")
PARTS = MAR.export_parts  # the family contract: ("backbone", "backbone_embed", "head", "decoder", "encoder")
EXPORT_KIND = "onnx-export"  # the output kind in the folder's manifest (files.claim_output_folder)
MIN_OPSET = 18  # the oldest opset torch's (dynamo) exporter writes
EXTERNAL_DATA_BYTES = 1_500_000_000  # protobuf caps a file at 2 GiB: larger weights go to <name>.onnx.data


def require_export_deps() -> None:
    for mod in ("onnx", "onnxscript"):
        try:
            __import__(mod)
        except ImportError as e:
            raise ImportError(f"ONNX export needs {mod}, which is not installed: {INSTALL_HINT}") from e


# ---------------------------------------------------------------- export wrappers (fp32 in/out)
class _Backbone(nn.Module):
    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def run(self, tokens: torch.Tensor, known_idx: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
        return self.model.backbone(tokens.to(self.dtype), known_idx, ce.to(self.dtype)).float()


class BackboneLabels(_Backbone):
    """class embedding = fake_latent (the null class) where uncond, else class_emb(labels)."""

    def forward(
        self, tokens: torch.Tensor, known_idx: torch.Tensor, labels: torch.Tensor, uncond: torch.Tensor
    ) -> torch.Tensor:
        safe = torch.where(uncond, torch.zeros_like(labels), labels)  # labels of null rows are ignored
        ce = torch.where(uncond.unsqueeze(-1), self.model.fake_latent, self.model.class_emb(safe))  # [B, D]
        return self.run(tokens, known_idx, ce)


class BackboneEmbedding(_Backbone):
    def forward(self, tokens: torch.Tensor, known_idx: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        return self.run(tokens, known_idx, class_embedding)


class HeadStep(nn.Module):
    def __init__(self, net: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.dtype), t, c.to(self.dtype)).float()


class Decoder(nn.Module):
    def __init__(self, tokenizer: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.tokenizer, self.dtype = tokenizer, dtype

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode(latents.to(self.dtype)).float()


class Encoder(Decoder):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.encode(images.to(self.dtype)).mode().float()


# ---------------------------------------------------------------- one module -> one .onnx
def _param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _dynamo_shapes(names: Sequence[str], dynamic: dict) -> dict[str, Any]:
    dims: dict[str, Any] = {}
    shapes: dict[str, Any] = {}
    for name in names:
        spec = {}
        for axis, (dim, lo, hi) in dynamic.get(name, {}).items():
            if dim not in dims:
                dims[dim] = torch.export.Dim(dim, min=lo) if hi is None else torch.export.Dim(dim, min=lo, max=hi)
            spec[axis] = dims[dim]
        shapes[name] = spec or None
    return shapes


# the exporter's own chatter (graph passes, optimizer INFO logs, torchvision notices, deprecations):
# silenced unless marengine's logging is at DEBUG (`marengine -v`)
EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch._export", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def quiet_exporter():
    """Silence torch.onnx / onnxscript / onnx_ir logs and warnings for the duration (they describe the
    exporter's internals, ~350 lines per export); a failure still raises. `-v` keeps them."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch\.onnx|torch\.export|onnxscript)")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_module(*args: Any, **kwargs: Any) -> tuple[str, int]:
    """`_export_module` with the exporter's logs and warnings silenced (quiet_exporter)."""
    with quiet_exporter():
        return _export_module(*args, **kwargs)


def _export_module(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    names: Sequence[str],
    output: str | Sequence[str],
    dynamic: dict[str, dict[int, tuple[str, int, int | None]]],
    metadata: dict[str, str],
    opset: int | None = None,
    exporter: str = "auto",
) -> tuple[str, int]:
    """Export `module(*args)` to `path`; dynamic: input name -> {axis: (dim name, min, max)};
    output: the output's name, or the names of several outputs.

    Uses torch's default (dynamo) exporter; with exporter="auto" falls back to the
    TorchScript exporter only if that fails. Returns (the exporter used, which is also
    written to the metadata; the ONNX opset).
    """
    import onnx

    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"unknown exporter {exporter!r}; choose 'auto', 'dynamo' or 'torchscript'")
    module = module.eval()
    outputs = [output] if isinstance(output, str) else list(output)
    external = _param_bytes(module) > EXTERNAL_DATA_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    if exporter != "torchscript":
        try:
            prog = torch.onnx.export(
                module,
                args,
                None,
                dynamo=True,
                input_names=list(names),
                output_names=outputs,
                opset_version=opset,
                dynamic_shapes=_dynamo_shapes(names, dynamic),
                verbose=False,
                optimize=True,
            )
            prog.model.metadata_props.update({**metadata, KEY_EXPORTER: "dynamo"})
            prog.save(str(path), external_data=external)
            onnx.checker.check_model(str(path))  # by path: works with external data too
            return "dynamo", int(prog.model.opset_imports.get("", 0))
        except Exception as e:  # noqa: BLE001 - any failure of the default exporter -> fall back
            if exporter == "dynamo":
                raise
            log.warning(
                "dynamo ONNX export of %s failed (%s: %s); falling back to the TorchScript exporter",
                path.name,
                type(e).__name__,
                (str(e).splitlines() or [""])[0][:200],
            )
    axes = {name: {axis: dim for axis, (dim, _, _) in dynamic.get(name, {}).items()} for name in names}
    torch.onnx.export(
        module,
        args,
        str(path),
        dynamo=False,
        input_names=list(names),
        output_names=outputs,
        opset_version=opset or 17,
        dynamic_axes=axes,
        do_constant_folding=True,
    )
    model = onnx.load(str(path))
    for k, v in {**metadata, KEY_EXPORTER: "torchscript"}.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path), save_as_external_data=external)
    onnx.checker.check_model(str(path))
    return "torchscript", next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


# ---------------------------------------------------------------- the deployment folder
def deploy_metadata(model: nn.Module, tok: dict[str, Any] | None) -> dict[str, Any]:
    cfg: MARConfig = model.config
    tables: DiffusionTables = model.diffloss.gen_tables
    return {
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "sampling": {
            "seq_len": model.seq_len,
            "seq_h": model.seq_h,
            "seq_w": model.seq_w,
            "token_embed_dim": model.token_embed_dim,
            "patch_size": cfg.patch_size,
            "img_size": cfg.img_size,
            "class_num": cfg.class_num,
            "buffer_size": cfg.buffer_size,
            "vae_stride": cfg.vae_stride,
            "vae_embed_dim": cfg.vae_embed_dim,
            "encoder_embed_dim": cfg.encoder_embed_dim,
            "decoder_embed_dim": cfg.decoder_embed_dim,
        },
        "tokenizer": tok,
        # the deploy sampler makes its coefficient tables from these (diffusion/samplers.py)
        "diffusion": {
            "num_train_steps": TRAIN_DIFFUSION_STEPS,
            "num_sampling_steps": cfg.num_sampling_steps,
            "timestep_map": [int(t) for t in tables.timestep_map.tolist()],
        },
    }


def export_onnx(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    tokenizer: nn.Module | None = None,
    fp16: bool = False,
    opset: int | None = None,
    parts: Sequence[str] = PARTS,
    fp16_head: bool = False,
    exporter: str = "auto",
    overwrite: bool = False,
) -> dict[str, Path]:
    """Export `model` (a MAR) for deployment; returns {role: path} plus "deploy" -> deploy.json.

    fp16 applies to the backbone and the decoder; the head stays fp32 unless fp16_head
    (its first reverse step amplifies eps errors ~300x). The decoder is exported only when
    a tokenizer is given. The files are written to a temporary folder beside `out_dir`
    that takes its place only when the export is complete: `out_dir` is always one whole
    export. `out_dir` must be new or empty, or hold an earlier export (replaced only when
    `overwrite`); a folder holding anything else is refused before any work.
    """
    require_export_deps()
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose among {PARTS}")
    opset = check_opset(opset)
    bad = non_finite_keys(model.state_dict())
    if bad:
        raise ValueError(f"the model's weights are not finite (NaN or inf) in {', '.join(bad[:5])}: nothing exported")
    out = claim_output_folder(out_dir, EXPORT_KIND, overwrite=overwrite)  # before any work
    modes = [(m, m.training) for m in (model, tokenizer) if m is not None]
    try:
        with building_folder(out, EXPORT_KIND, overwrite=overwrite) as built:
            paths = _export_all(model, built, tokenizer, fp16, opset, parts, fp16_head, exporter)
        return {role: out / p.name for role, p in paths.items()}
    finally:  # the wrappers' eval() must not leave the caller's modules in eval mode
        for m, training in modes:
            m.train(training)


def check_opset(opset: int | None) -> int | None:
    """None (the exporter's default) or an opset the installed onnx and torch's exporter support."""
    if opset is None:
        return None
    import onnx

    opset = check_int("opset", opset)
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(
            f"opset {opset} is not supported: torch's ONNX exporter writes opset {MIN_OPSET} or newer, and the "
            f"installed onnx knows up to {newest}; choose one in [{MIN_OPSET}, {newest}] or leave it out"
        )
    return opset


def _export_all(
    model: nn.Module,
    out: Path,
    tokenizer: nn.Module | None,
    fp16: bool,
    opset: int | None,
    parts: Sequence[str],
    fp16_head: bool,
    exporter: str,
) -> dict[str, Path]:
    if next(model.parameters()).dtype != torch.float32:
        log.info("exporting from a float32 copy of the %s model", next(model.parameters()).dtype)
        model = copy.deepcopy(model).float()
    cfg: MARConfig = model.config
    out.mkdir(parents=True, exist_ok=True)
    tok = describe_tokenizer(tokenizer, cfg) if tokenizer is not None else None
    device = model.fake_latent.device
    need_half = fp16 and bool({"backbone", "backbone_embed"} & set(parts) or (fp16_head and "head" in parts))
    half = copy.deepcopy(model).half().eval() if need_half else None
    L, C, D = model.seq_len, model.token_embed_dim, cfg.encoder_embed_dim
    common = {KEY_FORMAT: str(FORMAT_VERSION), KEY_CONFIG: cfg.to_json()}
    b = 2  # example sizes are not 0 or 1, which torch.export would specialise
    k = max(2, L // 2) if L >= 3 else L
    batch = ("batch", 1, None)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(b, L, C, generator=gen).to(device)
    known = torch.stack([torch.randperm(L, generator=gen)[:k].sort().values for _ in range(b)]).to(device)
    paths: dict[str, Path] = {}
    exporters: dict[str, str] = {}
    precisions: dict[str, str] = {}
    opsets: dict[str, int] = {}

    def one(
        role: str,
        module: nn.Module,
        args: tuple,
        names: list[str],
        output: str,
        dynamic: dict,
        precision: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        meta = {**common, KEY_ROLE: role, KEY_PRECISION: precision, **(extra or {})}
        path = out / FILES[role]
        exporters[role], opsets[role] = export_module(module, args, path, names, output, dynamic, meta, opset, exporter)
        if opset is not None and opsets[role] != opset:
            raise ValueError(
                f"{role}: the {exporters[role]} exporter wrote opset {opsets[role]}, not the {opset} asked for; "
                "choose another --opset or leave it out"
            )
        paths[role], precisions[role] = path, precision
        log.info("exported %s (%s, %s exporter)", path, precision, exporters[role])

    bb_model, bb_dtype = (half, torch.float16) if fp16 else (model, torch.float32)
    prec = "fp16" if fp16 else "fp32"
    bb_dyn = {"tokens": {0: batch}, "known_idx": {0: batch, 1: ("known", 0, L)}}
    if "backbone" in parts:
        labels = torch.arange(b, device=device) % cfg.class_num
        uncond = torch.tensor([False, True][:b], device=device)
        one(
            "backbone",
            BackboneLabels(bb_model, bb_dtype),
            (tokens, known, labels, uncond),
            ["tokens", "known_idx", "labels", "uncond"],
            "z",
            {**bb_dyn, "labels": {0: batch}, "uncond": {0: batch}},
            prec,
        )
    if "backbone_embed" in parts:
        ce = torch.randn(b, D, generator=gen).to(device)
        one(
            "backbone_embed",
            BackboneEmbedding(bb_model, bb_dtype),
            (tokens, known, ce),
            ["tokens", "known_idx", "class_embedding"],
            "z",
            {**bb_dyn, "class_embedding": {0: batch}},
            prec,
        )
    if "head" in parts:
        net, dt = (half.diffloss.net, torch.float16) if fp16 and fp16_head else (model.diffloss.net, torch.float32)
        n = 4
        args = (
            torch.randn(n, C, generator=gen).to(device),
            torch.tensor([0, 1, 500, 999], device=device),
            torch.randn(n, cfg.decoder_embed_dim, generator=gen).to(device),
        )
        rows = ("rows", 1, None)
        one(
            "head",
            HeadStep(net, dt),
            args,
            ["x", "t", "c"],
            "out",
            {"x": {0: rows}, "t": {0: rows}, "c": {0: rows}},
            "fp16" if dt == torch.float16 else "fp32",
            {META_PREFIX + "train_steps": str(len(model.diffloss.train_tables.timestep_map))},
        )
    if "decoder" in parts and tokenizer is not None:
        dec_tok, dt = (
            (copy.deepcopy(tokenizer).half().eval(), torch.float16)
            if fp16 and tok["kind"] == "vae"
            else (tokenizer.eval(), torch.float32)
        )
        side = cfg.img_size // cfg.vae_stride
        lat = torch.randn(b, cfg.vae_embed_dim, side, side, generator=gen).to(device)
        one(
            "decoder",
            Decoder(dec_tok, dt),
            (lat,),
            ["latents"],
            "images",
            {"latents": {0: batch}},
            "fp16" if dt == torch.float16 else "fp32",
            {KEY_TOKENIZER: json.dumps(tok)},
        )
    if "encoder" in parts and tokenizer is not None:
        enc_tok, dt = (tokenizer.eval(), torch.float32)  # editing keeps the encoded tokens: full precision
        images = torch.rand(b, tok["image_channels"], cfg.img_size, cfg.img_size, generator=gen).to(device) * 2 - 1
        one(
            "encoder",
            Encoder(enc_tok, dt),
            (images,),
            ["images"],
            "latents",
            {"images": {0: batch}},
            "fp32",
            {KEY_TOKENIZER: json.dumps(tok)},
        )
    if {"decoder", "encoder"} & set(parts) and tokenizer is None:
        log.warning("no tokenizer given: no decoder or encoder exported; the deployment yields latents, not images")

    meta = deploy_metadata(model, tok)
    meta["files"] = {role: p.name for role, p in paths.items()}
    meta["exporter"] = exporters
    meta["precision"] = precisions
    meta["opset"] = opsets
    meta["torch_version"] = torch.__version__
    deploy = atomic_write_text(out / DEPLOY_JSON, json.dumps(meta, indent=1))
    paths["deploy"] = deploy
    return paths


# ---------------------------------------------------------------- the CLI's entry point
def export_from_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    fp16: bool = False,
    opset: int | None = None,
    *,
    config: str | os.PathLike | None = None,
    vae: str | os.PathLike | None = None,
    tokenizer: str = "auto",
    parts: Sequence[str] = PARTS,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Load a model and export it. tokenizer: "auto" (the VAE if `vae` is given, else the pixel
    tokenizer when the latent channels fit it, else none), "vae", "pixel" or "none"."""
    if tokenizer not in ("auto", "vae", "pixel", "none"):
        raise ValueError(f"unknown tokenizer {tokenizer!r}; choose auto, vae, pixel or none")
    if tokenizer == "vae" and vae is None:
        raise ValueError("tokenizer 'vae' needs the VAE checkpoint (--vae kl16.ckpt)")
    loaded = load_model(checkpoint, config=config, vae_ckpt=vae)
    cfg: MARConfig = loaded.model.config
    spec = None
    if tokenizer == "auto":
        spec = loaded.tokenizer_spec
        if spec is not None and spec["kind"] == "vae" and not spec.get("ckpt"):
            log.warning("no VAE weights given (--vae kl16.ckpt): no decoder exported; the deployment yields latents")
            spec = None
    elif tokenizer != "none":
        spec = tokenizer_spec(tokenizer, cfg, vae)
    tok = build_tokenizer(spec) if spec is not None else None
    return export_onnx(loaded.model, out_dir, tokenizer=tok, fp16=fp16, opset=opset, parts=parts, overwrite=overwrite)


__all__ = ["export_onnx", "export_from_checkpoint", "export_module", "PARTS"]
