"""Image sets to score: a folder of PNG/JPEG files (torch-fidelity's listing: the top folder only,
extensions png/jpg/jpeg in any case, sorted full paths, decoded as RGB) or an ADM-layout npz
(`arr_0` uint8 [N, H, W, 3], optional `labels`), read image by image so that a 50,000-image
archive is never held in memory. Writing: PNGs and the ADM npz, streamed."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..files import atomic_write

EXTENSIONS = ("png", "jpg", "jpeg")


def list_image_files(folder: Path) -> list[Path]:
    files = [
        Path(os.path.realpath(folder / name))
        for name in os.listdir(folder)
        if os.path.splitext(name)[1].lower().lstrip(".") in EXTENSIONS and (folder / name).is_file()
    ]
    return sorted(files, key=str)


class FolderImages(Dataset):
    """Image files, each -> uint8 [3, H, W] (RGB); a file that cannot be decoded is named in the error."""

    def __init__(self, folder: Path) -> None:
        self.files = list_image_files(folder)
        if not self.files:
            raise ValueError(f"{folder} holds no .png/.jpg/.jpeg files (subfolders are not searched)")
        self.labels = None
        self.check_headers()

    def check_headers(self) -> None:
        """Open every file's header now (cheap): unreadable files are all named before any work."""
        from PIL import Image, UnidentifiedImageError

        bad = []
        for f in self.files:
            try:
                with Image.open(f) as im:
                    im.size  # noqa: B018 (the header is read)
            except (OSError, UnidentifiedImageError, ValueError):
                bad.append(f.name)
        if bad:
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise ValueError(
                f"{len(bad)} unreadable image files in {self.files[0].parent}: "
                f"{', '.join(bad[:5])}{more}; remove or replace them"
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                arr = np.asarray(im.convert("RGB"))  # [H, W, 3]
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot decode image file {self.files[i]}: {e}") from None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # [3, H, W]


class NpzImages(Dataset):
    """`arr_0` of an npz, read one image at a time from the (uncompressed) archive member."""

    def __init__(self, path: Path, channels: tuple[int, ...] = (3,)) -> None:
        self.path = path
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
                if "arr_0.npy" not in names:
                    raise ValueError(
                        f"{path} has no arr_0 (it has {sorted(n[:-4] for n in names)}): "
                        "the ADM layout is arr_0 = uint8 [N, H, W, 3]"
                    )
                info = z.getinfo("arr_0.npy")
                with z.open(info) as f:
                    shape, fortran, dtype = _read_npy_header(f, path)
                    header_len = f.tell()
                self.labels = self._labels(z, names)
        except zipfile.BadZipFile as e:
            raise ValueError(f"{path} is not an npz archive: {e}") from None
        if dtype != np.uint8:
            raise ValueError(
                f"{path}: arr_0 is {dtype}, images must be uint8 in [0, 255]: convert with "
                "round(clip(x * 255, 0, 255)) for images in [0, 1]"
            )
        if len(shape) != 4 or shape[-1] not in channels:
            want = " or ".join(str(c) for c in channels)
            raise ValueError(f"{path}: arr_0 has shape {list(shape)}, images must be [N, H, W, {want}]")
        if fortran:
            raise ValueError(f"{path}: arr_0 is stored in Fortran order; save it C-ordered (np.ascontiguousarray)")
        self.shape = tuple(shape)
        # a stored (np.savez) member is mapped in place; a compressed one is read whole when first used
        self.offset = None if info.compress_type != zipfile.ZIP_STORED else _data_offset(path, info) + header_len
        self._array: np.ndarray | None = None
        if self.labels is not None and len(self.labels) != shape[0]:
            raise ValueError(f"{path}: {len(self.labels)} labels for {shape[0]} images")

    @staticmethod
    def _labels(z: zipfile.ZipFile, names: set[str]) -> np.ndarray | None:
        for key in ("labels", "arr_1"):
            if f"{key}.npy" in names:
                with z.open(f"{key}.npy") as f:
                    return np.lib.format.read_array(f, allow_pickle=False).astype(np.int64).reshape(-1)
        return None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._array is None:  # made lazily, so each DataLoader worker maps the file itself
            if self.offset is None:
                with np.load(self.path) as z:
                    self._array = z["arr_0"]
            else:
                self._array = np.memmap(self.path, np.uint8, "r", offset=self.offset, shape=self.shape)
        return torch.from_numpy(np.array(self._array[i])).permute(2, 0, 1)  # [C, H, W]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def all(self) -> np.ndarray:
        """The whole array [N, H, W, C] (small sets: the digits judge)."""
        with np.load(self.path) as z:
            return z["arr_0"]


def _read_npy_header(f, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"{path}: arr_0 uses .npy format {version}; save it with np.savez")


def _data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start in the archive (after its local file header)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


def open_images(path: str | os.PathLike, channels: tuple[int, ...] = (3,)) -> FolderImages | NpzImages:
    """A folder of image files or an npz with arr_0 = uint8 [N, H, W, C], checked before any work."""
    p = Path(path)
    if p.is_dir():
        return FolderImages(p)
    if p.is_file():
        return NpzImages(p, channels)
    raise FileNotFoundError(f"images {p} not found: give a folder of PNG/JPEG files or an .npz with arr_0")


def save_png(path: Path, image: np.ndarray) -> None:
    """uint8 [H, W, C] -> PNG, whole or not at all."""
    from PIL import Image

    picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def write_adm_npz(path: Path, images: Iterable[np.ndarray], shape: tuple[int, ...], labels: np.ndarray) -> Path:
    """An npz with arr_0 = uint8 `shape` [N, H, W, C] (from `images`, chunks [n, H, W, C] in order)
    and `labels` [N], streamed into the archive (the whole set is never in memory)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            with z.open("arr_0.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(f, header)
                n = 0
                for chunk in images:
                    f.write(np.ascontiguousarray(chunk, np.uint8).tobytes())
                    n += len(chunk)
                if n != shape[0]:
                    raise RuntimeError(f"wrote {n} images, expected {shape[0]}")
            with z.open("labels.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(labels, np.int64))

    return atomic_write(path, write)
