"""Writing files and folders so that they appear whole or not at all, and only where
marengine may write (torch-free).

`atomic_write` writes through a temporary file in the same folder, fsyncs it and
renames it over the target: a crash at any point leaves either the old content or
the new, never a torn file. `atomic_copy` publishes a second name for a finished file
the same way, and `publish_folder` moves a finished folder into place whole. What they
publish gets the permissions a plain `open`/`mkdir` would give (0666 / 0777 less the
umask; a replaced file keeps its own), not the private 0600 / 0700 of the temporaries.

The one rule for output paths: a command writes into a path that is new or empty, or
that holds only what marengine wrote there, and replaces only its own files. A folder
marengine writes holds a manifest (`.marengine-outputs.json`: the kind of output and the
names it wrote); `claim_output_folder` refuses, before any work, a folder that holds
anything else, or another kind of output, or (without `overwrite`) an earlier output of
the same kind. Temporaries are named `.NAME.marengine-XXXXXXXX.tmp`, a name only
marengine makes; `remove_stale_temporaries` deletes those (and nothing else) that a
killed writer left behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

TMP_SUFFIX = ".tmp"
TMP_TAG = ".marengine-"  # every temporary's name: f".{target name}{TMP_TAG}{8 random chars or 'old'}{TMP_SUFFIX}"
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.marengine-(?:[a-z0-9_]{8}|old)\.tmp")
MANIFEST = ".marengine-outputs.json"
MANIFEST_FORMAT = "marengine-outputs-v1"


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_TAG}", suffix=TMP_SUFFIX, dir=path.parent)
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
    (`.NAME.marengine-old.tmp`), then `built` is renamed into place, then the old one is deleted. A
    crash between the two renames leaves no `target` (and the old folder aside, which
    `remove_stale_temporaries` cleans), never a half-written one."""
    built, target = Path(built), Path(target)
    aside = target.parent / f".{target.name}{TMP_TAG}old{TMP_SUFFIX}"
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
    return Path(tempfile.mkdtemp(prefix=f".{target.name}{TMP_TAG}", suffix=TMP_SUFFIX, dir=target.parent))


def is_temporary(name: str, target: str | None = None) -> bool:
    """Whether `name` is a temporary marengine made (for the output named `target`, if given)."""
    m = _TEMPORARY.fullmatch(name)
    return m is not None and (target is None or m.group("name") == target)


def remove_stale_temporaries(folder: str | os.PathLike, target: str | None = None) -> list[Path]:
    """Delete the temporaries a killed marengine writer left in `folder` (only those of the
    output named `target`, if given); nothing else is touched. Call it only where no other
    process is writing; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if is_temporary(p.name, target):
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


# ------------------------------------------------------------------ the output rule
class OutputRefused(FileExistsError):
    """An output path that holds what marengine may not replace; nothing was written."""


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a folder marengine wrote ({"kind", "files"}), or None when it has none
    (or one that is not ours: then the folder counts as the user's)."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    files = data.get("files")
    if not isinstance(data.get("kind"), str) or not isinstance(files, list) or not all(_plain(f) for f in files):
        return None
    return {"kind": data["kind"], "files": sorted(set(files))}


def _plain(name: Any) -> bool:
    """A name directly inside its folder: no separator, no '.', '..' or empty name."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def write_manifest(folder: str | os.PathLike, kind: str, files: list[str]) -> Path:
    for f in files:
        if not _plain(f) or f == MANIFEST:
            raise ValueError(f"not a file name inside the output folder: {f!r}")
    text = json.dumps({"format": MANIFEST_FORMAT, "kind": kind, "files": sorted(set(files))}, indent=1)
    return atomic_write_text(Path(folder) / MANIFEST, text + "\n")


def record_outputs(folder: str | os.PathLike, kind: str, names: list[str]) -> Path:
    """Add `names` to `folder`'s manifest (made if new) before they are written, so that a
    kill between the two never leaves a file marengine cannot recognise as its own."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    old = read_manifest(folder)
    have = set(old["files"]) if old and old["kind"] == kind else set()
    if set(names) <= have:
        return folder / MANIFEST
    return write_manifest(folder, kind, sorted(have | set(names)))


def _entries(folder: Path) -> list[str]:
    """What a folder holds, less marengine's temporaries."""
    return sorted(p.name for p in folder.iterdir() if not is_temporary(p.name))


def _short(names: list[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def claim_output_folder(
    path: str | os.PathLike, kind: str, overwrite: bool = False, reuse: bool = False, hint: str | None = None
) -> Path:
    """Check, before any work, that marengine may write its `kind` output into folder `path`.

    Allowed: a new or empty folder; a folder holding only marengine's own earlier `kind`
    output (per its manifest) when `overwrite` (replace it) or `reuse` (continue it, e.g. a
    resumed run) is set. Refused with one line (OutputRefused), with nothing changed: a
    folder holding any file marengine did not write there, or another kind of output, or an
    earlier output of the same kind without `overwrite`/`reuse` (`hint` then says what to do
    instead of the default "pass --overwrite to replace it")."""
    path = check_output_folder(path)
    if not path.exists():
        return path
    entries = _entries(path)
    if not entries:
        return path
    manifest = read_manifest(path)
    if manifest is None:
        raise OutputRefused(
            f"{path} holds files marengine did not write ({_short(entries)}); nothing was changed: "
            "marengine writes only into a new or empty folder, or one holding its own earlier output. "
            "Choose another output path"
        )
    foreign = [e for e in entries if e != MANIFEST and e not in manifest["files"]]
    if foreign:
        raise OutputRefused(
            f"{path} holds files marengine did not write ({_short(foreign)}); nothing was changed. "
            "Move them, or choose another output path"
        )
    if manifest["kind"] != kind:
        raise OutputRefused(
            f"{path} holds marengine's {manifest['kind']} output, not a {kind} output; nothing was changed. "
            "Choose another output path"
        )
    if not (overwrite or reuse):
        own = [e for e in entries if e != MANIFEST]
        hint = hint or "pass --overwrite to replace it, or choose another output path"
        raise OutputRefused(f"{path} already holds a {kind} output ({_short(own) or 'empty'}): {hint}")
    return path


def publish_folder(built: str | os.PathLike, target: str | os.PathLike, kind: str, overwrite: bool = False) -> Path:
    """Write the manifest of the finished folder `built` (listing all it holds), then move it to
    `target` whole (replace_folder), after checking `target` again as `claim_output_folder`
    does: what appeared there since the first check is never replaced."""
    built = Path(built)
    write_manifest(built, kind, [e for e in _entries(built) if e != MANIFEST])
    for p in built.rglob("*"):  # files a library made private (safetensors writes 0600) get a new file's mode
        if p.is_file() and not p.is_symlink():
            os.chmod(p, 0o666 & ~_UMASK)
    claim_output_folder(target, kind, overwrite=overwrite)
    return replace_folder(built, target)


@contextmanager
def building_folder(target: str | os.PathLike, kind: str, overwrite: bool = False) -> Iterator[Path]:
    """Claim `target` for a `kind` output, yield an empty temporary folder beside it to build
    the output in, and publish it whole when the block ends without an error (else `target`
    keeps what it had and the temporary is deleted)."""
    target = claim_output_folder(target, kind, overwrite=overwrite)
    remove_stale_temporaries(target.parent, target.name)
    built = temporary_folder(target)
    try:
        yield built
        publish_folder(built, target, kind, overwrite=overwrite)
    finally:
        shutil.rmtree(built, ignore_errors=True)


def remove_outputs(folder: str | os.PathLike, kind: str, keep: tuple[str, ...] = ()) -> list[str]:
    """Delete marengine's own `kind` output from `folder` (the names its manifest lists, less
    `keep`), e.g. the earlier run an explicit --overwrite replaces; other files stay."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or manifest["kind"] != kind:
        return []
    gone = [n for n in manifest["files"] if n not in keep]
    for name in gone:
        p = folder / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    write_manifest(folder, kind, [n for n in manifest["files"] if n in keep])
    return gone
