"""Resumable work: the images of an evaluation are cut into shards of consecutive indices; each
finished shard's results (features, or images for the digits judge) are written atomically as
`shard-START-STOP.npz` in a work folder whose `manifest.json` records what the run computes. A
killed run started again with the same arguments skips the shards already written, so it ends
with the same numbers; a work folder of another run is refused, never mixed in."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write_text, remove_stale_temporaries
from ..imageio import save_npz

MANIFEST = "manifest.json"


def shard_ranges(n: int, shard_size: int, align: int) -> list[tuple[int, int]]:
    """[(start, stop)] covering n images; the shard size is rounded up to a multiple of `align`
    (the generation block) so that no block is split between shards."""
    size = -(-max(shard_size, 1) // align) * align
    return [(s, min(s + size, n)) for s in range(0, n, size)]


class ShardStore:
    def __init__(self, folder: str | os.PathLike, manifest: dict[str, Any], create: bool) -> None:
        """create: this process writes the manifest (rank 0); the others only check it."""
        self.folder = Path(folder)
        text = json.dumps(manifest, sort_keys=True, indent=1, default=str)
        path = self.folder / MANIFEST
        if path.is_file():
            if json.loads(path.read_text()) != json.loads(text):
                raise ValueError(
                    f"work folder {self.folder} holds the shards of a different evaluation "
                    "(other images, model, settings or weights): remove it or give another --work-dir"
                )
        elif create:
            if self.folder.exists() and any(self.folder.iterdir()):
                raise ValueError(
                    f"work folder {self.folder} exists and is not an evaluation's: give another --work-dir"
                )
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
        if create:
            remove_stale_temporaries(self.folder)

    def path(self, start: int, stop: int) -> Path:
        return self.folder / f"shard-{start:09d}-{stop:09d}.npz"

    def done(self, start: int, stop: int) -> bool:
        return self.path(start, stop).is_file()

    def save(self, start: int, stop: int, **arrays: np.ndarray) -> None:
        save_npz(self.path(start, stop), **arrays)

    def load(self, start: int, stop: int) -> dict[str, np.ndarray]:
        with np.load(self.path(start, stop), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def remove(self) -> None:
        """Delete the work folder after a finished run (its report holds the results)."""
        for p in self.folder.iterdir():  # only what this store wrote: a file someone added stays
            if p.is_file() and (p.name == MANIFEST or (p.name.startswith("shard-") and p.name.endswith(".npz"))):
                p.unlink()
        try:
            self.folder.rmdir()
        except OSError:
            pass
