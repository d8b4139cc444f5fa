"""Writing files and folders so that they appear whole or not at all (torch-free).

`atomic_write` writes through a temporary file in the same folder, fsyncs it and
renames it over the target: a crash at any point leaves either the old content or
the new, never a torn file. `atomic_copy` publishes a second name for a finished file
the same way, and `replace_folder` moves a finished folder into place whole. What they
publish gets the permissions a plain `open`/`mkdir` would give (0666 / 0777 less the
umask; a replaced file keeps its own), not the private 0600 / 0700 of the temporaries.
Temporaries are named `.NAME.*.tmp`; `remove_stale_temporaries` deletes what a
killed writer left behind.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable

TMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    mask = os.umask(0o022)  # read once at import: os.umask can only be read by setting it
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _publish_mode(tmp: str | os.PathLike, target: Path, folder: bool = False, mode: int | None = None) -> None:
    """Give the temporary `mode`, else the mode `target` has (when it exists), else the one a new
    file/folder would get."""
    if mode is None and target.exists():
        mode = stat.S_IMODE(target.stat().st_mode)
    elif mode is None:
        mode = (0o777 if folder else 0o666) & ~_UMASK
    if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
        os.chmod(tmp, mode)


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any], mode: int | None = None) -> Path:
    """Call `write(tmp_path)`, fsync the result, then rename it over `path` (with `mode`, else the
    mode `path` had, else a new file's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _publish_mode(tmp, path, mode=mode)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """`dst` becomes a copy of the finished file `src`, whole or not at all (a hard link where
    the filesystem has them, so no second write)."""
    src, dst = Path(src), Path(dst)

    def write(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here (some network and FAT filesystems)
            shutil.copyfile(src, tmp)

    return atomic_write(dst, write, mode=stat.S_IMODE(src.stat().st_mode))  # the source's, as a link shares it


def replace_folder(built: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the finished folder `built` to `target`, replacing what was there.

    `target` is never a mix of old and new files: the old folder is first renamed aside
    (`.NAME.old.tmp`), then `built` is renamed into place, then the old one is deleted. A
    crash between the two renames leaves no `target` (and the old folder aside, which
    `remove_stale_temporaries` cleans), never a half-written one."""
    built, target = Path(built), Path(target)
    aside = target.parent / f".{target.name}.old{TMP_SUFFIX}"
    if aside.exists():
        shutil.rmtree(aside)
    _publish_mode(built, target, folder=True)
    if target.exists():
        os.replace(target, aside)
    os.replace(built, target)
    _fsync_dir(target.parent)
    if aside.exists():
        shutil.rmtree(aside, ignore_errors=True)
    return target


def temporary_folder(target: str | os.PathLike) -> Path:
    """A new empty folder beside `target` to build it in (then `replace_folder`)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent))


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the `.NAME.*.tmp` files and folders a killed writer left in `folder` (call it
    only where no other process is writing); returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output_folder(path: str | os.PathLike) -> Path:
    """Fail before any work when `path` cannot become a folder we can write: it is an
    existing file, or the nearest existing folder above it is not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output {path} is an existing file, not a folder: choose another output path")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"output {path} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"output {path} cannot be written: {parent} is not writable; choose another output path")
    return path


def check_output_file(path: str | os.PathLike) -> Path:
    """Like `check_output_folder` for a file path: its folder must be writable, and the path
    must not be an existing folder."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"output {path} is an existing folder; give a file path")
    check_output_folder(path.parent)
    return path
