"""Reading latent caches for training: the sharded cache of `latent_cache.py`, and
the earlier single-file .safetensors cache.

`LatentCacheDataset` opens shards lazily and reads each item with `os.pread`
at its offset in the .npy file. Unlike a memory map, whose touched pages stay in
the process's resident set, this keeps host memory flat however much of the
cache an epoch reads (the OS page cache still caches the files; see
benchmarks/bench_cache_memory.py), and `pread` has no file position to share,
so it is safe in forked DataLoader workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .latent_cache import FORMAT, INDEX, SETTINGS, read_npy_header, record_dtype

log = logging.getLogger("marengine.data")

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # the VAE posterior's clamp


def sample_posterior(moments: torch.Tensor, generator: torch.Generator | None, scale: float) -> torch.Tensor:
    """mean + std * eps from moments [2C, h, w] -> scaled latents [C, h, w] (what the VAE tokenizer gives)."""
    mean, logvar = moments.float().chunk(2, dim=0)
    eps = torch.randn(mean.shape, generator=generator)
    return (mean + torch.exp(0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)) * eps) * scale


class LatentCacheDataset(Dataset):
    """Items of a sharded cache: each picks the image or its mirror at random and samples the posterior.

    Shards are opened on first use in each process; nothing is loaded up front
    except the index. At most `max_open` shard files stay open per process (an
    ImageNet cache has ~1,250 shards, more than the usual limit of 1,024 open files)."""

    def __init__(self, folder: str | os.PathLike, max_open: int = 64) -> None:
        self.folder = Path(folder)
        index_path = self.folder / INDEX
        if not index_path.is_file():
            if (self.folder / SETTINGS).is_file():
                raise ValueError(
                    f"latent cache {self.folder} is incomplete (no {INDEX}): run the same "
                    "`marengine cache-latents` command again to finish it"
                )
            raise FileNotFoundError(f"latent cache {self.folder} not found (no {INDEX}): run `marengine cache-latents`")
        index = json.loads(index_path.read_text())
        if index.get("format") != FORMAT:
            raise ValueError(f"{index_path} is not a {FORMAT} index (format {index.get('format')!r})")
        self.settings: dict[str, Any] = index["settings"]
        self.shards = [self.folder / s["name"] for s in index["shards"]]
        missing = [p.name for p in self.shards if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"latent cache {self.folder} lacks {len(missing)} shard(s) "
                f"({', '.join(missing[:3])}); copy the whole folder, or re-run cache-latents"
            )
        self.ends = np.cumsum([s["count"] for s in index["shards"]])  # [num_shards]
        self.scale = float(self.settings["scale"])
        self.num_classes = int(self.settings["num_classes"])
        self.classes: list[str] = list(self.settings.get("class_names", []))
        self.moments_shape = tuple(self.settings["moments_shape"])  # [2, 2C, h, w]
        self.dtype = record_dtype(self.moments_shape, self.settings["dtype"])
        self.max_open = max_open
        self._fds: OrderedDict[int, int] = OrderedDict()  # shard -> open descriptor, least recently used first
        self._offsets: dict[int, int] = {}  # shard -> offset of its data (header checked)
        self._pid = os.getpid()

    @property
    def latent_shape(self) -> tuple[int, int, int]:  # [C, h, w]
        c2, h, w = self.moments_shape[1:]
        return c2 // 2, h, w

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getstate__(self) -> dict[str, Any]:  # spawned workers open their own descriptors
        return {**self.__dict__, "_fds": OrderedDict()}

    def _shard(self, s: int) -> tuple[int, int]:
        """(descriptor, data offset) of shard s, opened in this process."""
        if os.getpid() != self._pid:  # a forked worker: keep descriptors of its own (pread needs no lock, but
            self._fds, self._pid = OrderedDict(), os.getpid()  # closing the parent's would close them for it)
        if s in self._fds:
            self._fds.move_to_end(s)
            return self._fds[s], self._offsets[s]
        path = self.shards[s]
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        if s not in self._offsets:
            with open(path, "rb") as f:
                shape, dtype, offset = read_npy_header(f)
            expected = int(self.ends[s] - (self.ends[s - 1] if s else 0))
            size = os.fstat(fd).st_size
            if dtype != self.dtype or shape != (expected,) or size != offset + expected * dtype.itemsize:
                os.close(fd)
                raise ValueError(
                    f"shard {path} does not match {self.folder / INDEX} (or is truncated); "
                    "re-run cache-latents into a new folder"
                )
            self._offsets[s] = offset
        self._fds[s] = fd
        if len(self._fds) > self.max_open:
            os.close(self._fds.popitem(last=False)[1])
        return fd, self._offsets[s]

    def _read(self, fd: int, out: np.ndarray, offset: int) -> np.ndarray:
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [out], offset)
        else:
            if hasattr(os, "pread"):  # no preadv (older macOS): pread a copy
                data = os.pread(fd, out.nbytes, offset)
            else:  # Windows: no pread, but spawned workers never share a descriptor
                os.lseek(fd, offset, os.SEEK_SET)
                data = os.read(fd, out.nbytes)
            n = len(data)
            if n == out.nbytes:
                out[...] = np.frombuffer(data, dtype=out.dtype).reshape(out.shape)
        if n != out.nbytes:
            raise ValueError(f"short read in latent cache {self.folder}: a shard is truncated")
        return out

    def read(self, i: int, view: int) -> tuple[np.ndarray, int]:
        """Moments [2C, h, w] of item i (view 0: image, 1: mirror) and its label."""
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} of a {len(self)}-item cache")
        s = int(np.searchsorted(self.ends, i, side="right"))
        fd, offset = self._shard(s)
        base = offset + (i - (int(self.ends[s - 1]) if s else 0)) * self.dtype.itemsize
        mdt, moff = self.dtype.fields["moments"][:2]
        sub = mdt.base
        moments = np.empty(self.moments_shape[1:], dtype=sub)
        self._read(fd, moments, base + moff + view * moments.nbytes)
        label = self._read(fd, np.empty(1, dtype="<i8"), base + self.dtype.fields["label"][1])
        return moments, int(label[0])

    def get(self, i: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        view = int(torch.rand((), generator=generator) < 0.5)
        moments, label = self.read(i, view)
        return sample_posterior(torch.from_numpy(moments), generator, self.scale), label  # [C, h, w]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.get(i)

    def close(self) -> None:
        """Close the shard files this process opened."""
        if getattr(self, "_pid", None) == os.getpid():
            for fd in getattr(self, "_fds", {}).values():
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds = OrderedDict()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown module globals may be gone
            self.close()


class SafetensorsLatentsDataset(Dataset):
    """The earlier single-file cache (moments [N, 2, 2C, h, w], labels, num_classes), loaded whole.

    Still readable; it needs host memory for the whole file in every process, so
    re-run `marengine cache-latents --out DIR` for a sharded cache."""

    def __init__(self, path: str | os.PathLike, scale: float) -> None:
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"latent cache {path} not found: run `marengine cache-latents` first")
        d = load_file(path)
        self.moments, self.labels, self.scale = d["moments"], d["labels"], scale
        self.num_classes = int(d["num_classes"])
        log.warning(
            "%s is a single-file latent cache, loaded whole into memory (%.2f GB); run "
            "`marengine cache-latents --out DIR` for a sharded cache read from disk",
            path,
            self.moments.nbytes / 1e9,
        )

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c2, h, w = self.moments.shape[2:]
        return c2 // 2, h, w

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, i: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        view = int(torch.rand((), generator=generator) < 0.5)
        return sample_posterior(self.moments[i, view], generator, self.scale), int(self.labels[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.get(i)


def open_latents(path: str | os.PathLike, scale: float) -> LatentCacheDataset | SafetensorsLatentsDataset:
    """A cache folder (index.json) or an earlier single .safetensors file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return SafetensorsLatentsDataset(path, scale)
    return LatentCacheDataset(path)


def is_latent_cache(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.suffix == ".safetensors" or (path / INDEX).is_file() or (path / SETTINGS).is_file()
