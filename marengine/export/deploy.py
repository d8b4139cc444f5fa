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
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import imageio
from ..checks import arg, check_int, check_labels, check_sampling
from ..files import check_output_folder
from ..options import ArgumentParser, add_sampling_options
from ..schedules import CFG_SCHEDULES, cfg_at, cfg_combine, next_mask_len
from .runtime import (
    DEPLOY_JSON,
    FORMAT_VERSION,
    OnnxBackbone,
    OnnxDecoder,
    OnnxHead,
    config_mismatch,
    default_providers,
)

# noise(step, rows) -> (x_T [rows, C], step_noise [S, rows, C] or None): the noise of one MAR step
NoiseFn = Callable[[int, int], "tuple[np.ndarray, np.ndarray | None]"]


# ---------------------------------------------------------------- the exported model
@dataclass
class DeployedMAR:
    meta: dict[str, Any]
    backbone: OnnxBackbone
    head: OnnxHead
    decoder: OnnxDecoder | None
    tables: dict[str, np.ndarray]  # float32 columns [S] and int64 timestep_map [S]

    @property
    def seq_len(self) -> int:
        return self.meta["sampling"]["seq_len"]

    @property
    def channels(self) -> int:
        return self.meta["sampling"]["token_embed_dim"]

    @property
    def num_steps(self) -> int:
        return len(self.tables["timestep_map"])

    @classmethod
    def load(cls, folder: str | os.PathLike, providers: Sequence[str] | None = None) -> DeployedMAR:
        """Open an export folder; every .onnx must carry the config deploy.json has."""
        folder = Path(folder)
        meta_path = folder / DEPLOY_JSON
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: give a folder written by `marengine export-onnx`")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path} is not valid JSON: {e}") from e
        if int(meta.get("format_version", -1)) > FORMAT_VERSION or "config" not in meta:
            raise ValueError(
                f"{meta_path} has format version {meta.get('format_version')!r}; "
                f"this marengine reads versions <= {FORMAT_VERSION}"
            )
        files = meta.get("files", {})
        for role in ("backbone", "head"):
            if role not in files:
                raise ValueError(f"{meta_path} lists no {role} file: the sampler needs backbone.onnx and head.onnx")
        providers = list(providers) if providers is not None else default_providers()
        backbone = OnnxBackbone(folder / files["backbone"], providers)
        if not backbone.takes_labels:
            raise ValueError(f"{files['backbone']} is the class-embedding variant; the sampler needs backbone.onnx")
        head = OnnxHead(folder / files["head"], providers)
        decoder = OnnxDecoder(folder / files["decoder"], providers) if files.get("decoder") else None
        for part in (backbone, head, decoder):
            if part is None:
                continue
            diff = config_mismatch(part.config, meta["config"])
            if diff:
                raise ValueError(
                    f"{part.path} was exported from a different model configuration than {meta_path} "
                    f"({'; '.join(diff[:6])}): re-export the whole folder from one checkpoint"
                )
        diff = meta["diffusion"]
        tables = {k: np.asarray(v, dtype=np.float32) for k, v in diff["columns"].items()}
        tables["timestep_map"] = np.asarray(diff["timestep_map"], dtype=np.int64)
        return cls(meta, backbone, head, decoder, tables)


# ---------------------------------------------------------------- orders
def random_orders(rng: np.random.Generator, bsz: int, seq_len: int) -> np.ndarray:
    """[B, L] int64: a uniformly random permutation per row."""
    return np.argsort(rng.random((bsz, seq_len)), axis=1, kind="stable").astype(np.int64)


# ---------------------------------------------------------------- the head's reverse diffusion
def p_sample_loop(
    dm: DeployedMAR, z: np.ndarray, x_T: np.ndarray, temperature: float, cfg: float, step_noise: np.ndarray | None
) -> np.ndarray:
    """Tokens [N, C] from z [N, Z] (or [2N, Z]: cond then uncond when cfg != 1); step_noise[i]
    is used at step S-1-i; step 0 adds no noise (as marengine.diffusion.gaussian.p_sample_loop)."""
    tab, c = dm.tables, dm.channels
    x = np.asarray(x_T, dtype=np.float32)
    n = x.shape[0]
    guided = cfg != 1.0
    steps = dm.num_steps
    for i, step in enumerate(range(steps - 1, -1, -1)):
        t = np.full((2 * n if guided else n,), tab["timestep_map"][step], dtype=np.int64)
        out = dm.head(np.concatenate([x, x]) if guided else x, t, z).astype(np.float32, copy=False)
        if guided:
            cond, uncond = out[:n], out[n:]
            eps = cfg_combine(cond[:, :c], uncond[:, :c], np.float32(cfg))
            var_values = cond[:, c:]
        else:
            eps, var_values = out[:, :c], out[:, c:]
        frac = (var_values + np.float32(1)) / np.float32(2)
        logvar = frac * tab["log_betas"][step] + (np.float32(1) - frac) * tab["post_logvar"][step]
        x0 = tab["sqrt_recip_abar"][step] * x - tab["sqrt_recipm1_abar"][step] * eps
        mean = tab["post_coef1"][step] * x0 + tab["post_coef2"][step] * x
        if step > 0 and temperature > 0 and step_noise is not None:
            x = mean + np.exp(np.float32(0.5) * logvar) * step_noise[i] * np.float32(temperature)
        else:
            x = mean
    return x.astype(np.float32, copy=False)


# ---------------------------------------------------------------- the MAR loop
def default_noise(rng: np.random.Generator, channels: int, num_steps: int, temperature: float) -> NoiseFn:
    def fn(step: int, rows: int) -> tuple[np.ndarray, np.ndarray | None]:
        x_T = rng.standard_normal((rows, channels), dtype=np.float32)
        sn = rng.standard_normal((num_steps, rows, channels), dtype=np.float32) if temperature > 0 else None
        return x_T, sn

    return fn


def check_args(
    dm: DeployedMAR,
    labels: Sequence[int] | np.ndarray | None,
    bsz: int,
    num_iter: int,
    cfg: float,
    cfg_schedule: str,
    temperature: float,
) -> tuple[np.ndarray | None, int, int, float, str, float]:
    """The checked (labels [B] int64 or None, bsz, num_iter, cfg, cfg_schedule, temperature)."""
    if labels is not None:
        labels = np.asarray(check_labels(labels, dm.meta["sampling"]["class_num"]), dtype=np.int64)
        bsz = len(labels)
    checked = check_sampling(dm.seq_len, bsz, num_iter, cfg, cfg_schedule, temperature, CFG_SCHEDULES)
    return (labels, *checked)


def sample_tokens(
    dm: DeployedMAR,
    labels: Sequence[int] | np.ndarray | None,
    num_iter: int,
    cfg: float = 1.0,
    cfg_schedule: str = "linear",
    temperature: float = 1.0,
    *,
    seed: int = 0,
    bsz: int | None = None,
    orders: np.ndarray | None = None,
    noise: NoiseFn | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Tokens [B, L, C] float32 for class `labels` (None: the null class, `bsz` images).

    orders [B, L] and noise (see NoiseFn) default to draws from PCG64(seed): orders first,
    then per MAR step x_T and the per-step noise of the conditional rows.
    """
    labels, bsz, num_iter, cfg, cfg_schedule, temperature = check_args(
        dm, labels, 1 if bsz is None else bsz, num_iter, cfg, cfg_schedule, temperature
    )
    L, C = dm.seq_len, dm.channels
    rng = np.random.Generator(np.random.PCG64(seed))
    orders = random_orders(rng, bsz, L) if orders is None else np.asarray(orders, dtype=np.int64)
    if orders.shape != (bsz, L) or not (np.sort(orders, 1) == np.arange(L)).all():
        raise ValueError(f"orders must be [{bsz}, {L}] permutations of 0..{L - 1}, got shape {orders.shape}")
    noise = noise or default_noise(rng, C, dm.num_steps, temperature)
    guided = cfg != 1.0
    lab = labels if labels is not None else np.zeros(bsz, np.int64)
    unc = np.full(bsz, labels is None)
    if guided:
        lab, unc = np.concatenate([lab, np.zeros(bsz, np.int64)]), np.concatenate([unc, np.ones(bsz, bool)])

    tokens = np.zeros((bsz, L, C), np.float32)
    mask = np.ones((bsz, L), bool)  # True = still unknown
    num_masked = L
    for step in range(num_iter):
        known_idx = np.nonzero(~mask)[1].reshape(bsz, L - num_masked).astype(np.int64)  # [B, K] sorted
        x_in, idx_in = (
            (np.concatenate([tokens, tokens]), np.concatenate([known_idx, known_idx]))
            if guided
            else (tokens, known_idx)
        )
        z = dm.backbone(x_in, idx_in, lab, unc)  # [B(x2), L, D]
        mask_len = next_mask_len(step, num_iter, L, num_masked)
        mask_next = np.zeros((bsz, L), bool)
        np.put_along_axis(mask_next, orders[:, :mask_len], True, axis=1)
        to_pred = mask if step >= num_iter - 1 else mask & ~mask_next
        rows, cols = np.nonzero(to_pred)  # row-major, as the torch engine's nonzero
        zs = z[:bsz][rows, cols]
        if guided:
            zs = np.concatenate([zs, z[bsz:][rows, cols]])
        x_T, step_noise = noise(step, len(rows))
        scale = cfg_at(cfg, cfg_schedule, L, mask_len)
        tokens = tokens.copy()
        tokens[rows, cols] = p_sample_loop(dm, zs, x_T, temperature, scale, step_noise)
        mask, num_masked = mask_next, mask_len
        if progress:
            print(f"step {step + 1}/{num_iter}: {len(rows)} tokens", file=sys.stderr)
    return tokens


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
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="onnxruntime provider")
    p.add_argument("--out", required=True, help="output folder: grid.png and samples.npz")
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
    out = check_output_folder(a.out)  # before any work
    dm = DeployedMAR.load(a.model, providers)
    labels = np.asarray(check_labels(a.labels or [], dm.meta["sampling"]["class_num"], "--labels"), np.int64)
    n = len(labels) if a.labels else (a.num_images or 1)
    num_iter = a.num_iter
    if num_iter > dm.seq_len:  # as `marengine sample` does: the official default 64 on a small model
        print(
            f"warning: --num-iter {num_iter} exceeds the {dm.seq_len} tokens of an image: using {dm.seq_len}",
            file=sys.stderr,
        )
        num_iter = dm.seq_len
    toks = []
    bs = a.sample_batch_size
    for i, start in enumerate(range(0, n, bs)):
        lab = labels[start : start + bs] if a.labels else None
        bsz = min(bs, n - start)
        toks.append(
            sample_tokens(
                dm,
                lab,
                num_iter,
                a.cfg,
                a.cfg_schedule,
                a.temperature,
                seed=a.sample_seed + i,
                bsz=bsz,
                progress=a.progress,
            )
        )
    tokens = np.concatenate(toks)
    saved_labels = labels if a.labels else np.full(n, -1, np.int64)
    if dm.decoder is None:
        latents = tokens_to_latents(dm, tokens)
        imageio.save_npz(out / "samples.npz", latents=latents, labels=saved_labels)
        print(f"no decoder in {a.model}: wrote latents to {out / 'samples.npz'} (no grid.png)")
        return 0
    paths = imageio.save_samples(out, decode(dm, tokens), saved_labels)
    print(" ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
