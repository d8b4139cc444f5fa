"""The torch-free MAR sampler: numpy + onnxruntime only (pillow for the PNG grid).

    python -m marengine.export.deploy --model DIR --labels 1 2 3 --num-iter 16 --cfg 2.0 \\
        --temperature 1.0 --seed 0 --out OUTDIR        # -> OUTDIR/grid.png, OUTDIR/samples.npz

DIR is a folder written by `marengine export-onnx` (backbone.onnx, head.onnx,
decoder.onnx, deploy.json). The loop is MAR's: a random generation order per image,
the cosine mask schedule, CFG by doubling the batch with the null class (linear or
constant guidance schedule); the head runs the reverse diffusion one .onnx step at a
time with the posterior update in numpy float32. Randomness comes from
`numpy.random.Generator(PCG64(seed))`; orders and noise can be injected instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import editing, imageio
from ..checks import arg, check_int, check_labels, json_object, path_inside, read_json_file
from ..config import ARCH_MAR
from ..diffusion.samplers import HeadSampler
from ..files import claim_output_folder, record_outputs, remove_outputs
from ..options import ArgumentParser, add_sampling_options, add_speed_options, resolve_speed
from ..schedules import step_schedule
from .deploy_loop import NoiseFn, random_orders, sample_tokens  # noqa: F401  (the sampler's API)
from .runtime import (
    DEPLOY_JSON,
    FORMAT_VERSION,
    OnnxBackbone,
    OnnxDecoder,
    OnnxEncoder,
    OnnxHead,
    check_tokenizer_info,
    checked_config,
    config_mismatch,
    default_providers,
)

# ---------------------------------------------------------------- the exported model
# fields of deploy.json's "sampling" that repeat the model configuration's
SAMPLING_FROM_CONFIG = (
    "patch_size",
    "img_size",
    "class_num",
    "buffer_size",
    "vae_stride",
    "vae_embed_dim",
    "encoder_embed_dim",
    "decoder_embed_dim",
)


@dataclass
class DeployedMAR:
    meta: dict[str, Any]
    backbone: OnnxBackbone
    head: OnnxHead
    decoder: OnnxDecoder | None
    encoder: OnnxEncoder | None = None  # editing: images -> the known tokens
    head_tables: dict = field(default_factory=dict)  # (steps, sampler) -> (coefficients, timesteps)

    @property
    def seq_len(self) -> int:
        return self.meta["sampling"]["seq_len"]

    @property
    def channels(self) -> int:
        return self.meta["sampling"]["token_embed_dim"]

    @property
    def bounded(self) -> bool:
        """Pixel tokens lie in [-1, 1]: sampling clips the x_0 predictions by default."""
        return (self.meta.get("tokenizer") or {}).get("kind") == "pixel"

    @classmethod
    def load(cls, folder: str | os.PathLike, providers: Sequence[str] | None = None) -> DeployedMAR:
        """Open an export folder; every .onnx must carry the config deploy.json has."""
        folder = Path(folder)
        meta_path = folder / DEPLOY_JSON
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: give a folder written by `marengine export-onnx`")
        meta = check_deploy_metadata(read_json_file(meta_path, "deployment description"), meta_path)
        files = meta["files"]
        paths = {role: path_inside(folder, name, meta_path) for role, name in files.items() if name}
        providers = list(providers) if providers is not None else default_providers()
        backbone = OnnxBackbone(paths["backbone"], providers)
        if not backbone.takes_labels:
            raise ValueError(f"{files['backbone']} is the class-embedding variant; the sampler needs backbone.onnx")
        head = OnnxHead(paths["head"], providers)
        decoder = OnnxDecoder(paths["decoder"], providers) if "decoder" in paths else None
        encoder = OnnxEncoder(paths["encoder"], providers) if "encoder" in paths else None
        for part in (backbone, head, decoder, encoder):
            if part is None:
                continue
            diff = config_mismatch(part.config, meta["config"])
            if diff:
                raise ValueError(
                    f"{part.path} was exported from a different model configuration than {meta_path} "
                    f"({'; '.join(diff[:6])}): re-export the whole folder from one checkpoint"
                )
        return cls(meta, backbone, head, decoder, encoder)


def check_deploy_metadata(meta: Any, meta_path: Path) -> dict[str, Any]:
    """deploy.json, checked before any size is taken from it: its format, its model configuration
    (sizes within marengine.limits), the sampling sizes (derived from the configuration, so they
    must agree with it), the tokenizer (fits the model) and the file names (plain names)."""
    meta = json_object(meta, meta_path, "an export's description")
    version = meta.get("format_version", -1)
    if not isinstance(version, int) or version > FORMAT_VERSION or "config" not in meta:
        raise ValueError(
            f"{meta_path} has format version {version!r}; this marengine reads versions <= {FORMAT_VERSION}"
        )
    config = checked_config(meta["config"], ARCH_MAR, f"{meta_path} (config)")
    sampling = json_object(meta.get("sampling"), f"{meta_path} (sampling)", "the sampling sizes")
    side = config["img_size"] // config["vae_stride"] // config["patch_size"]
    derived = {
        "seq_len": side * side,
        "seq_h": side,
        "seq_w": side,
        "token_embed_dim": config["vae_embed_dim"] * config["patch_size"] ** 2,
        **{k: config[k] for k in SAMPLING_FROM_CONFIG},
    }
    for name, value in derived.items():
        if sampling.get(name) != value:
            raise ValueError(
                f"{meta_path}: field 'sampling.{name}' is {sampling.get(name)!r} but its model configuration "
                f"gives {value}: the file was edited or is damaged; re-export the folder"
            )
    tok = meta.get("tokenizer")
    if tok is not None:
        check_tokenizer_info(tok, config, f"{meta_path} (tokenizer)")
    files = json_object(meta.get("files", {}), f"{meta_path} (files)", "file names by role")
    for role in ("backbone", "head"):
        if role not in files:
            raise ValueError(f"{meta_path} lists no {role} file: the sampler needs backbone.onnx and head.onnx")
    return {**meta, "config": config, "sampling": sampling, "files": files}


def tokens_to_latents(dm: DeployedMAR, tokens: np.ndarray) -> np.ndarray:
    """[B, L, C p p] -> [B, C, seq_h p, seq_w p] (MAR.unpatchify)."""
    s = dm.meta["sampling"]
    b, p, c, h, w = tokens.shape[0], s["patch_size"], s["vae_embed_dim"], s["seq_h"], s["seq_w"]
    x = tokens.reshape(b, h, w, c, p, p).transpose(0, 3, 1, 4, 2, 5)
    return np.ascontiguousarray(x.reshape(b, c, h * p, w * p))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[B, ch, H, W] in [-1, 1] -> uint8 [B, H, W, ch]."""
    x = np.round((np.clip(images.astype(np.float32), -1, 1) + 1) * np.float32(127.5)).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def decode(dm: DeployedMAR, tokens: np.ndarray) -> np.ndarray:
    if dm.decoder is None:
        raise ValueError("this export has no decoder.onnx (exported without a tokenizer): only latents are available")
    return to_uint8(dm.decoder(tokens_to_latents(dm, tokens)))


def latents_to_tokens(dm: DeployedMAR, latents: np.ndarray) -> np.ndarray:
    """[B, C, seq_h p, seq_w p] -> [B, L, C p p] (MAR.patchify)."""
    s = dm.meta["sampling"]
    b, p, c, h, w = latents.shape[0], s["patch_size"], s["vae_embed_dim"], s["seq_h"], s["seq_w"]
    x = latents.reshape(b, c, h, p, w, p).transpose(0, 2, 4, 1, 3, 5)
    return np.ascontiguousarray(x.reshape(b, h * w, c * p * p))


def known_from_images(dm: DeployedMAR, images: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(known tokens [N, L, C], known mask [N, L]) of uint8 images [N, H, W, C] whose pixels
    `mask` [N, H, W] (True) are to be generated; through encoder.onnx."""
    if dm.encoder is None:
        raise ValueError("this export has no encoder.onnx: re-export it (export-onnx writes one with a tokenizer)")
    latents = dm.encoder(editing.to_unit_range(images))
    patch = dm.meta["tokenizer"]["stride"] * dm.meta["sampling"]["patch_size"]
    return latents_to_tokens(dm, latents), editing.token_mask(mask, patch)


# ---------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python -m marengine.export.deploy",
        description="Sample images from an exported MAR model with numpy + onnxruntime.",
    )
    p.add_argument("--model", required=True, help="folder written by `marengine export-onnx`")
    p.add_argument("--labels", type=int, nargs="*", default=None, help="class labels, one image each")
    p.add_argument(
        "--num-images",
        type=arg(check_int, "--num-images", lo=1),
        default=None,
        help="without --labels: images of the null class",
    )
    add_sampling_options(p, {"batch_size": 16}, seed_flag="--seed", batch_flag="--batch-size")
    add_speed_options(p, cache=False)
    editing.add_edit_options(p)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="onnxruntime provider")
    p.add_argument(
        "--out",
        required=True,
        help="output folder: grid.png and samples.npz (new or empty, or earlier samples with --overwrite)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace earlier samples marengine wrote in --out (default: refuse); other files are never touched",
    )
    p.add_argument("--progress", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        return run(a)
    except (OSError, ValueError, TypeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(a: argparse.Namespace) -> int:
    providers = {
        "auto": None,
        "cpu": ["CPUExecutionProvider"],
        "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    }[a.device]
    if a.device == "cuda" and "CUDAExecutionProvider" not in default_providers():
        raise ImportError(
            "--device cuda: this onnxruntime has no CUDAExecutionProvider; "
            "`pip install 'marengine[onnx-gpu]'` (onnxruntime-gpu, without the CPU onnxruntime)"
        )
    if a.labels is not None and a.num_images is not None:
        raise ValueError("give either --labels or --num-images, not both")
    out = claim_output_folder(a.out, imageio.SAMPLES_KIND, overwrite=a.overwrite)  # before any work
    speed = resolve_speed(a)
    sampler = HeadSampler.parse(speed.sampler)
    step_schedule(speed.steps, a.num_iter)  # a bad --steps fails here, before the model is read
    if speed.cache is not None:
        print(
            f"note: preset {a.preset!r} caches the backbone, which the deploy sampler cannot (one ONNX graph); "
            "sampling without it",
            file=sys.stderr,
        )
    if speed.token_steps is not None:
        print(
            f"note: preset {a.preset!r} gives tokens their own head steps; the deploy sampler does not", file=sys.stderr
        )
    if speed.precision != "fp32":
        print(f"note: preset {a.preset!r} runs bf16 where it can; the deploy sampler runs fp32 graphs", file=sys.stderr)
    dm = DeployedMAR.load(a.model, providers)
    labels = np.asarray(check_labels(a.labels or [], dm.meta["sampling"]["class_num"], "--labels"), np.int64)
    n = len(labels) if a.labels else (a.num_images or 1)
    edit = editing.edit_inputs(
        a, (dm.meta.get("tokenizer") or {}).get("image_channels", 3), dm.meta["config"]["img_size"]
    )
    known_tokens = known_mask = None
    if edit is not None:
        if len(labels) != len(edit[0]):
            raise ValueError(f"{len(edit[0])} images to edit but {len(labels)} --labels: give one label per image")
        known_tokens, known_mask = known_from_images(dm, *edit)
    num_iter = a.num_iter
    if num_iter > dm.seq_len:  # as `marengine sample` does: the official default 64 on a small model
        print(
            f"warning: --num-iter {num_iter} exceeds the {dm.seq_len} tokens of an image: using {dm.seq_len}",
            file=sys.stderr,
        )
        num_iter = dm.seq_len
    tokens = np.zeros((n, dm.seq_len, dm.channels), np.float32)
    for i, idx in enumerate(editing.batches(known_mask, n, a.sample_batch_size)):
        kw = {} if known_mask is None else {"known_tokens": known_tokens[idx], "known_mask": known_mask[idx]}
        tokens[idx] = sample_tokens(
            dm,
            labels[idx] if a.labels else None,
            num_iter,
            a.cfg,
            a.cfg_schedule,
            a.temperature,
            seed=a.sample_seed + i,
            bsz=len(idx),
            progress=a.progress,
            sampler=sampler,
            steps=speed.steps,
            clip_denoised=a.clip_denoised,
            **kw,
        )
    saved_labels = labels if a.labels else np.full(n, -1, np.int64)
    if dm.decoder is None:
        latents = tokens_to_latents(dm, tokens)
        if a.overwrite:
            remove_outputs(out, imageio.SAMPLES_KIND)
        record_outputs(out, imageio.SAMPLES_KIND, ["samples.npz"])
        imageio.save_npz(out / "samples.npz", latents=latents, labels=saved_labels)
        print(f"no decoder in {a.model}: wrote latents to {out / 'samples.npz'} (no grid.png)")
        return 0
    paths = imageio.save_samples(out, decode(dm, tokens), saved_labels, replace=a.overwrite)
    print(" ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
