"""The README runs as written: every ```python block is executed (on a demo model trained with
a short recipe under runs/demo of a scratch folder, the path the README uses), and every
command the ```bash blocks name answers --help.

A block preceded by `<!-- readme-test: skip (REASON) -->` is skipped with that reason (only for
what needs files the user downloads, such as the official checkpoints)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
SKIP = re.compile(r"<!-- readme-test: skip \((?P<reason>[^)]+)\) -->\s*$")
FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```$", re.M | re.S)


def blocks(lang: str) -> list[tuple[int, str, str | None]]:
    """(line number, code, skip reason or None) of every ```lang block of the README."""
    out = []
    for m in FENCE.finditer(README):
        if m.group("lang") != lang:
            continue
        before = README[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.match(before)
        out.append((README.count("\n", 0, m.start()) + 1, m.group("body"), skip.group("reason") if skip else None))
    return out


PYTHON = blocks("python")


def test_the_readme_has_python_blocks_and_few_skips():
    assert len(PYTHON) >= 3
    skipped = [line for line, _, reason in PYTHON if reason]
    assert len(skipped) <= 1, f"README python blocks skipped at lines {skipped}: make them runnable"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def workdir(short_demo_root) -> Path:
    """A scratch folder holding runs/demo from `marengine demo` (short recipe)."""
    return short_demo_root


@pytest.mark.parametrize("line, code, reason", PYTHON, ids=[f"line{b[0]}" for b in PYTHON])
@pytest.mark.slow  # the README's own sampling, as written
def test_python_block_runs(workdir, monkeypatch, line, code, reason):
    if reason:
        pytest.skip(f"README line {line}: {reason}")
    monkeypatch.chdir(workdir)
    namespace: dict = {"__name__": f"readme_line{line}"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102 - the README's own code


# ---------------------------------------------------------------- the shell blocks' commands
def shell_commands() -> list[list[str]]:
    """Every command line of the ```bash blocks, continuation lines joined, comments dropped."""
    out = []
    for _, code, _ in blocks("bash"):
        for cmd in code.replace("\\\n", " ").splitlines():
            for part in cmd.split("&&"):
                words = shlex.split(part, comments=True)
                if words:
                    out.append(words)
    return out


def help_targets() -> list[tuple[str, ...]]:
    """What each command runs, as (kind, name): marengine sub-commands (also under torchrun -m),
    python -m modules and python scripts of the checkout."""
    targets: dict[tuple[str, ...], None] = {}
    for words in shell_commands():
        if words[0] == "torchrun":
            words = words[words.index("-m") :] if "-m" in words else []
            words = ["python", *words]
        if words[:1] == ["marengine"] and len(words) > 1:
            targets[("marengine", words[1])] = None
        elif words[:3] == ["python", "-m", "marengine"] and len(words) > 3:
            targets[("marengine", words[3])] = None
        elif words[:2] == ["python", "-m"] and len(words) > 2 and words[2].startswith("marengine."):
            targets[("module", words[2])] = None
        elif words[:1] == ["python"] and len(words) > 1 and words[1].endswith(".py"):
            targets[("script", words[1])] = None
    for name in re.findall(r"`(?:python -m )?marengine ([a-z][a-z-]*)", README):  # named in the prose too
        targets[("marengine", name)] = None
    for script in re.findall(r"`python (benchmarks/\w+\.py)", README):
        targets[("script", script)] = None
    return list(targets)


TARGETS = help_targets()


def test_the_readme_names_the_commands():
    subs = {name for kind, name in TARGETS if kind == "marengine"}
    assert {"demo", "train", "sample", "edit", "export-onnx", "bench", "cache-latents", "train-vq", "doctor"} <= subs


# marengine's own sub-commands answer in this process; a module or script starts an interpreter (slow)
@pytest.mark.parametrize(
    "target",
    [t if t[0] == "marengine" else pytest.param(t, marks=pytest.mark.slow) for t in TARGETS],
    ids=["/".join(t) for t in TARGETS],
)
def test_readme_command_answers_help(target, capsys):
    kind, name = target
    if kind == "marengine":
        from marengine.cli import main

        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0, f"marengine {name} --help"
        assert "usage: marengine" in capsys.readouterr().out
        return
    cmd = [sys.executable, "-m", name] if kind == "module" else [sys.executable, str(REPO / name)]
    assert kind == "module" or (REPO / name).is_file(), f"the README names {name}, which does not exist"
    proc = subprocess.run([*cmd, "--help"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]
