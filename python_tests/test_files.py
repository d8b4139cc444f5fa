"""marengine.files: what the atomic writers publish (content and permissions)."""

from __future__ import annotations

import os
import stat

import pytest

from marengine.files import atomic_copy, atomic_write_text, replace_folder, temporary_folder


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield 0o022
    finally:
        os.umask(old)


def test_published_files_and_folders_get_the_usual_permissions(tmp_path, umask_022):
    """Temporaries are private (0600 / 0700); what is published is 0644 / 0755 under umask 022, as
    open() and mkdir() would make it; a file replaced keeps the mode it had."""
    from marengine import files

    if files._UMASK != umask_022:
        pytest.skip(f"the process umask is {files._UMASK:o}, not 022")
    new = atomic_write_text(tmp_path / "a.json", "{}")
    assert new.read_text() == "{}" and _mode(new) == 0o644
    os.chmod(new, 0o600)  # the user's choice for an existing file is kept
    atomic_write_text(new, "[]")
    assert new.read_text() == "[]" and _mode(new) == 0o600
    copy = atomic_copy(tmp_path / "a.json", tmp_path / "b.json")
    assert copy.read_text() == "[]" and _mode(copy) == 0o600  # a copy of a private file stays private
    assert _mode(new) == 0o600  # and the source is untouched (the copy may be a hard link)

    built = temporary_folder(tmp_path / "export")
    assert _mode(built) == 0o700  # private while it is being written
    (built / "x.onnx").write_bytes(b"x")
    out = replace_folder(built, tmp_path / "export")
    assert _mode(out) == 0o755 and (out / "x.onnx").read_bytes() == b"x"


def test_a_published_folder_gives_its_files_the_usual_permissions(tmp_path, umask_022, tiny_mar):
    """save_pretrained builds its folder from files libraries write privately (safetensors: 0600):
    published, each gets the mode open() would give, as the folder gets mkdir()'s."""
    out = tiny_mar.save_pretrained(tmp_path / "m")
    assert _mode(out) == 0o755
    assert {p.name: _mode(p) for p in out.iterdir()} == {
        n: 0o644 for n in (".marengine-outputs.json", "config.json", "model.safetensors")
    }
