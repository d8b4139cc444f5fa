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
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..checks import check_float, file_field, json_object, path_inside, read_json_file
from ..limits import MAX_CACHE_SHARDS, MAX_CHANNELS, MAX_CLASSES, MAX_IMAGE_SIZE
from .latent_cache import DTYPES, FORMAT, INDEX, SETTINGS, read_npy_header, record_dtype

log = logging.getLogger("marengine.data")

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # the VAE posterior's clamp


def sample_posterior(moments: torch.Tensor, generator: torch.Generator | None, scale: float) -> torch.Tensor:
    """mean + std * eps from moments [2C, h, w] -> scaled latents [C, h, w] (what the VAE tokenizer gives)."""
    mean, logvar = moments.float().chunk(2, dim=0)
    eps = torch.randn(mean.shape, generator=generator)
    return (mean + torch.exp(0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)) * eps) * scale


def check_cache_settings(settings: Any, index_path: Path) -> dict[str, Any]:
    """The settings of a cache index, checked: scale, class count and moments shape within the caps."""
    where = f"{index_path} settings"
    settings = json_object(settings, where, "the cache's settings")
    try:
        check_float(f"{where}: field 'scale'", settings.get("scale"), lo=0.0, lo_open=True)
    except TypeError as e:
        raise ValueError(str(e)) from None
    file_field(where, settings, "num_classes", lo=1, hi=MAX_CLASSES)
    if settings.get("dtype") not in DTYPES:
        raise ValueError(f"{where}: field 'dtype' must be one of {DTYPES}, got {settings.get('dtype')!r}")
    shape = settings.get("moments_shape")
    if not isinstance(shape, list) or len(shape) != 4:
        raise ValueError(f"{where}: field 'moments_shape' must be [2, 2C, h, w], got {shape!r}")
    dims = dict(zip(("views", "2C", "h", "w"), shape))
    file_field(where + " moments_shape", dims, "views", lo=2, hi=2)
    file_field(where + " moments_shape", dims, "2C", lo=2, hi=2 * MAX_CHANNELS)
    for side in ("h", "w"):
        file_field(where + " moments_shape", dims, side, lo=1, hi=MAX_IMAGE_SIZE)
    if dims["2C"] % 2:
        raise ValueError(f"{where}: field 'moments_shape' must hold 2C (mean and log-variance), got {dims['2C']}")
    return settings


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
        index = json_object(read_json_file(index_path, "latent cache index"), index_path, "a latent cache index")
        if index.get("format") != FORMAT:
            raise ValueError(f"{index_path} is not a {FORMAT} index (format {index.get('format')!r})")
        self.settings = check_cache_settings(index.get("settings"), index_path)
        self.scale = float(self.settings["scale"])
        self.num_classes = int(self.settings["num_classes"])
        self.classes: list[str] = list(self.settings.get("class_names", []))
        self.moments_shape = tuple(self.settings["moments_shape"])  # [2, 2C, h, w]
        self.dtype = record_dtype(self.moments_shape, self.settings["dtype"])
        # every shard's name stays inside the folder and its count is what its file holds, before
        # anything is sized from the counts (a sampler's permutation of len(self) items)
        shards = index.get("shards")
        if not isinstance(shards, list) or len(shards) > MAX_CACHE_SHARDS:
            raise ValueError(f"{index_path}: field 'shards' must be a list of at most {MAX_CACHE_SHARDS} shards")
        self.shards, counts, self._offsets = [], [], {}
        for i, entry in enumerate(shards):
            where = f"{index_path} shards[{i}]"
            entry = json_object(entry, where, "a shard's name and count")
            path = path_inside(self.folder, entry.get("name"), where)
            count = file_field(where, entry, "count", lo=0)
            self._offsets[i] = self._check_shard(path, count, index_path)
            self.shards.append(path)
            counts.append(count)
        if "num_items" in index and file_field(index_path, index, "num_items", lo=0) != sum(counts):
            raise ValueError(f"{index_path}: field 'num_items' is {index['num_items']}, its shards hold {sum(counts)}")
        if sum(counts) == 0:
            raise ValueError(f"{index_path}: the cache holds no items (every shard's count is 0); re-run cache-latents")
        self.ends = np.cumsum(np.asarray(counts, dtype=np.int64))  # [num_shards]
        self.max_open = max_open
        self._fds: OrderedDict[int, int] = OrderedDict()  # shard -> open descriptor, least recently used first
        self._pid = os.getpid()

    def _check_shard(self, path: Path, count: int, index_path: Path) -> int:
        """The data offset of a shard file whose header and size hold `count` records of this cache."""
        if not path.is_file():
            raise FileNotFoundError(
                f"latent cache {self.folder} lacks its shard {path.name}; copy the whole folder, "
                "or re-run cache-latents"
            )
        try:
            with open(path, "rb") as f:
                shape, dtype, offset = read_npy_header(f)
                size = os.fstat(f.fileno()).st_size
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"shard {path} is not a readable .npy file ({e}); re-run cache-latents") from None
        if dtype != self.dtype or shape != (count,) or size != offset + count * dtype.itemsize:
            raise ValueError(
                f"shard {path} does not match {index_path}: the index says {count} items of this cache's layout, "
                f"the file holds {shape} items in {size} bytes (truncated or edited?); re-run cache-latents"
            )
        return offset

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
        expected = int(self.ends[s] - (self.ends[s - 1] if s else 0))
        if os.fstat(fd).st_size != self._offsets[s] + expected * self.dtype.itemsize:  # changed since it was opened
            os.close(fd)
            raise ValueError(f"shard {path} changed size since the cache was opened; re-run cache-latents")
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
