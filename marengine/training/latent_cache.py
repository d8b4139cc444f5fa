"""The sharded VAE latent cache: written once by `marengine cache-latents`, read by training.

Layout of a cache folder:
    settings.json                     what the cache is made from (written first)
    shard-00000-of-00042.npy, ...     one numpy record array per shard: label (int64) and the
                                      VAE posterior moments of the image and of its mirror
                                      [2, 2C, h, w] (float32 or float16)
    index.json                        settings + shard names and item counts (written last:
                                      its presence means the cache is complete)

Every file is written atomically (temporary file, fsync, rename), so a shard
file that exists is complete: a rerun after a kill keeps those and encodes the
rest. Under torchrun, rank r encodes shards i with i % world_size == r.

Training reads a cache with `latent_dataset.LatentCacheDataset`. The files are
plain .npy: `np.load(path, mmap_mode="r")` reads them too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..checks import read_json_file
from ..files import atomic_write, claim_output_folder, read_manifest, record_outputs, remove_stale_temporaries
from .data import BadItem, ImageFolderDataset, ItemView, collate_items

log = logging.getLogger("marengine.data")

FORMAT = "marengine-latent-cache/1"
INDEX = "index.json"
SETTINGS = "settings.json"
CACHE_KIND = "latent-cache"  # the output kind in the folder's manifest (files.claim_output_folder)
DTYPES = ("float32", "float16")


def shard_name(i: int, num_shards: int) -> str:
    return f"shard-{i:05d}-of-{num_shards:05d}.npy"


def record_dtype(moments_shape: Sequence[int], dtype: str) -> np.dtype:
    """One cached item: its label and the moments of (image, mirror) [2, 2C, h, w]."""
    return np.dtype([("label", "<i8"), ("moments", np.dtype(dtype).newbyteorder("<"), tuple(moments_shape))])


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def folder_fingerprint(dataset: ImageFolderDataset) -> str:
    """sha256 over the file names and labels: a rerun must see the same files in the same order."""
    h = hashlib.sha256()
    for name, label in zip(dataset.names, dataset.labels):
        h.update(bytes(name) + b"\0" + str(int(label)).encode() + b"\n")
    return h.hexdigest()


def _write_shared(path: Path, write: Callable[[str], None]) -> None:
    """`atomic_write`, leaving the file readable by others as the umask allows (a cache is often shared)."""
    mask = os.umask(0)
    os.umask(mask)

    def write_readable(tmp: str) -> None:
        write(tmp)
        os.chmod(tmp, 0o666 & ~mask)

    atomic_write(path, write_readable)


def _settings_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def read_npy_header(f) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) of an open .npy file."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    if fortran:
        raise ValueError("a fortran-ordered shard")
    return shape, dtype, f.tell()


class LatentCacheWriter:
    """Writes the shards of one cache; several ranks may write one cache together.

    settings: JSON-able description of what is cached; it must include
    "num_items", "shard_size", "moments_shape" ([2, 2C, h, w]) and "dtype"."""

    def __init__(
        self, out_dir: str | os.PathLike, settings: dict[str, Any], rank: int = 0, world_size: int = 1
    ) -> None:
        if settings.get("dtype") not in DTYPES:
            raise ValueError(f"cache dtype must be one of {DTYPES}, got {settings.get('dtype')!r}")
        if int(settings["shard_size"]) < 1:
            raise ValueError(f"shard size must be >= 1, got {settings['shard_size']}")
        self.out = Path(out_dir)
        if self.out.suffix == ".safetensors" or self.out.is_file():
            raise ValueError(
                f"{self.out}: the latent cache is now a folder (index.json + shards); pass a folder "
                "name to --out (existing single-file .safetensors caches can still be trained from)"
            )
        n, size = int(settings["num_items"]), int(settings["shard_size"])
        self.settings = {**json.loads(json.dumps(settings)), "num_shards": -(-n // size)}
        self.rank, self.world_size = rank, world_size
        self.num_shards, self.shard_size, self.num_items = self.settings["num_shards"], size, n
        self.dtype = record_dtype(settings["moments_shape"], settings["dtype"])

    # ------------------------------------------------------------ plan
    def item_range(self, i: int) -> range:
        return range(i * self.shard_size, min((i + 1) * self.shard_size, self.num_items))

    def shard_path(self, i: int) -> Path:
        return self.out / shard_name(i, self.num_shards)

    def prepare(self) -> bool:
        """Check the folder and claim it; True when the cache is already complete.

        A folder made with other settings, or holding files marengine did not write there, is
        refused (files.claim_output_folder). Rank 0 writes settings.json; every rank removes
        the temporary files its own shards left behind."""
        names = [SETTINGS, INDEX] + [shard_name(i, self.num_shards) for i in range(self.num_shards)]
        if self.out.is_dir() and read_manifest(self.out) is None and {p.name for p in self.out.iterdir()} <= set(names):
            record_outputs(self.out, CACHE_KIND, names)  # a cache written before manifests existed
        claim_output_folder(self.out, CACHE_KIND, reuse=True)  # a rerun finishes the cache
        for name in (INDEX, SETTINGS):
            path = self.out / name
            if path.is_file():
                found = read_json_file(path, "latent cache index" if name == INDEX else "latent cache settings")
                if not isinstance(found, dict):
                    raise ValueError(f"{path} must hold a JSON object: not a latent cache of marengine")
                found = found.get("settings", {}) if name == INDEX else found
                if found != self.settings:
                    diff = "; ".join(_settings_diff(found, self.settings)[:6])
                    raise ValueError(
                        f"{self.out} holds a latent cache made with other settings ({diff}); "
                        "write to another --out folder, or delete this one to start over"
                    )
                if name == INDEX:
                    return True
        self.out.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            record_outputs(self.out, CACHE_KIND, names)
        if self.rank == 0 and not (self.out / SETTINGS).is_file():
            _write_shared(self.out / SETTINGS, lambda tmp: Path(tmp).write_text(json.dumps(self.settings, indent=1)))
        for i in range(self.rank, self.num_shards, self.world_size):
            remove_stale_temporaries(self.out, shard_name(i, self.num_shards))  # left by a killed run
        return False

    def shard_count(self, i: int) -> int | None:
        """Items in shard i when its file is complete and of this cache's layout, else None."""
        try:
            with open(self.shard_path(i), "rb") as f:
                shape, dtype, offset = read_npy_header(f)
                size = os.fstat(f.fileno()).st_size
        except (OSError, ValueError):
            return None
        if dtype != self.dtype or len(shape) != 1 or size != offset + shape[0] * dtype.itemsize:
            return None
        return shape[0]

    def pending(self) -> list[int]:
        """This rank's shards that are not written yet."""
        return [i for i in range(self.rank, self.num_shards, self.world_size) if self.shard_count(i) is None]

    # ------------------------------------------------------------ write
    def write(self, i: int, labels: np.ndarray, moments: np.ndarray) -> Path:
        """Write shard i: labels [n] and moments [n, 2, 2C, h, w], atomically."""
        rec = np.empty(len(labels), dtype=self.dtype)
        rec["label"] = labels
        rec["moments"] = moments
        path = self.shard_path(i)

        def save(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, rec)

        _write_shared(path, save)
        return path

    def finalize(self) -> dict[str, Any]:
        """Write index.json once every shard is there (rank 0, after all ranks finished)."""
        shards = []
        for i in range(self.num_shards):
            count = self.shard_count(i)
            if count is None:
                raise RuntimeError(
                    f"shard {self.shard_path(i)} is missing or incomplete; run cache-latents again "
                    "with the same arguments to finish the cache"
                )
            shards.append({"name": shard_name(i, self.num_shards), "count": count})
        total = sum(s["count"] for s in shards)
        index = {
            "format": FORMAT,
            "settings": self.settings,
            "num_items": total,
            "num_skipped": self.num_items - total,
            "shards": shards,
        }
        _write_shared(self.out / INDEX, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1)))
        return index


# ---------------------------------------------------------------- encoding
def cache_settings(
    dataset: ImageFolderDataset,
    *,
    vae_sha256: str,
    vae_config: dict[str, Any],
    moments_shape: Sequence[int],
    scale: float,
    dtype: str,
    shard_size: int,
) -> dict[str, Any]:
    """Everything a cache depends on; a rerun into the same folder must give the same."""
    return {
        "img_size": dataset.size,
        "crop": dataset.crop,
        "vae_sha256": vae_sha256,
        "vae_config": vae_config,
        "scale": scale,
        "moments_shape": list(moments_shape),
        "dtype": dtype,
        "num_classes": dataset.num_classes,
        "class_names": list(dataset.classes),
        "num_items": len(dataset),
        "files_sha256": folder_fingerprint(dataset),
        "shard_size": shard_size,
    }


@torch.no_grad()
def encode_pending(
    writer: LatentCacheWriter,
    dataset: ImageFolderDataset,
    encode: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[BadItem]:
    """Encode this rank's pending shards and write them; returns the unreadable images met.

    encode: images [B, 3, H, W] in [-1, 1] -> posterior moments [B, 2C, h, w]. A
    shard's batches always start at its first item, so a rerun computes exactly
    what an uninterrupted run would have."""
    if dataset.flip:
        raise ValueError("encode the dataset with flip=False (the mirror image is cached beside each image)")
    pending = writer.pending()
    log.info(
        "rank %d: %d of its shards to encode (%d shards of up to %d images in all)",
        writer.rank,
        len(pending),
        writer.num_shards,
        writer.shard_size,
    )
    batches = [
        list(r[s : s + batch_size])
        for i in pending
        for r in [writer.item_range(i)]
        for s in range(0, len(r), batch_size)
    ]
    loader = DataLoader(
        ItemView(dataset, "get"),  # the dataset has flip=False: the mirror is encoded separately
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate_items,
        pin_memory=torch.device(device).type == "cuda",
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=sum(len(writer.item_range(i)) for i in pending),
            desc=f"cache rank {writer.rank}",
            unit="img",
            dynamic_ncols=True,
        )
    shard_of = iter(i for i in pending for _ in range(-(-len(writer.item_range(i)) // batch_size)))
    bad: list[BadItem] = []
    current, labels, moments = None, [], []
    for batch in loader:
        i = next(shard_of)
        if i != current:
            if current is not None:
                writer.write(current, np.concatenate(labels), np.concatenate(moments))
            current = i
            labels = [np.zeros(0, np.int64)]
            moments = [np.zeros((0, *writer.settings["moments_shape"]), np.float32)]
        for it in batch.bad:
            log.warning("skipped unreadable image %s (%s)", it.path, it.reason)
        bad += batch.bad
        if batch.x is not None:
            x = batch.x.to(device, non_blocking=True)
            both = torch.stack([encode(x), encode(x.flip(-1))], 1)  # [B, 2, 2C, h, w]
            moments.append(both.float().cpu().numpy())
            labels.append(batch.y.numpy())
        if bar is not None:
            bar.update(len(batch.bad) + (0 if batch.x is None else len(batch.x)))
    if current is not None:
        writer.write(current, np.concatenate(labels), np.concatenate(moments))
    if bar is not None:
        bar.close()
    return bad


def build_latent_cache(
    dataset: ImageFolderDataset,
    vae: torch.nn.Module,
    out_dir: str | os.PathLike,
    *,
    vae_sha256: str,
    vae_config: dict[str, Any],
    scale: float,
    shard_size: int = 1024,
    dtype: str = "float32",
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    progress: bool = False,
) -> dict[str, Any] | None:
    """Encode an image folder into a sharded cache (or finish one); returns the index on rank 0.

    vae: `encode(x).moments` gives [B, 2C, h, w]. All ranks call this with the
    same arguments; `barrier` synchronises them (torch.distributed.barrier)."""
    ds = vae.downsample_factor
    if dataset.size % ds:
        raise ValueError(f"image size {dataset.size} is not a multiple of the VAE's downsampling factor {ds}")
    side = dataset.size // ds
    settings = cache_settings(
        dataset,
        vae_sha256=vae_sha256,
        vae_config=vae_config,
        moments_shape=(2, 2 * vae.embed_dim, side, side),
        scale=scale,
        dtype=dtype,
        shard_size=shard_size,
    )
    writer = LatentCacheWriter(out_dir, settings, rank, world_size)
    done = writer.prepare()
    barrier()  # settings.json exists before any rank writes a shard
    if done:
        log.info("%s is already a complete latent cache with these settings", out_dir)
        return json.loads((writer.out / INDEX).read_text()) if rank == 0 else None
    bad = encode_pending(writer, dataset, lambda x: vae.encode(x).moments, batch_size, num_workers, device, progress)
    if bad:
        log.warning(
            "rank %d: %d unreadable image(s) skipped (listed above); `marengine check-data` lists them all",
            rank,
            len(bad),
        )
    barrier()  # every shard is written
    return writer.finalize() if rank == 0 else None
