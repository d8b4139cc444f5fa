"""Dependencies inside marengine point one way, lowest layer first (../shared/DESIGN.md).

Every `import` and `from ... import` of every module under marengine/ is parsed
(inside functions too, and under TYPE_CHECKING): a module may import modules of its
own package and of lower layers only. Packages that share a rank (training, export)
may not import each other. The torch-free modules may not import torch at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "marengine"

ARCHITECTURE = PKG.parent / "docs" / "ARCHITECTURE.md"


def read_layers(doc: Path = ARCHITECTURE) -> list[tuple[str, ...]]:
    """The layers, lowest first, from the `layers` block of docs/ARCHITECTURE.md (the one
    picture of the design): each line names the modules of one rank, then says what they do
    (two spaces or more separate names from words)."""
    text = doc.read_text()
    start = text.index("```layers\n") + len("```layers\n")
    block = text[start : text.index("```", start)]
    layers = []
    for line in block.splitlines():
        names = line.split("  ")[0].split()
        if names:
            layers.append(tuple(names))
    return layers


LAYERS: list[tuple[str, ...]] = read_layers()
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
# importing these never imports torch (export/runtime.py imports it inside the functions that
# receive torch tensors; the deploy sampler's test runs it with torch made unimportable)
TORCH_FREE = (
    "limits.py",
    "settings.py",
    "config.py",
    "files.py",
    "checks.py",
    "schedules.py",
    "diffusion/samplers.py",
    "imageio.py",
    "options.py",
    "editing.py",
    "export/deploy.py",
    "export/runtime.py",
)


def top_level(module: Path, pkg: Path = PKG) -> str:
    rel = module.relative_to(pkg)
    return rel.parts[0].removesuffix(".py")


def imported_names(module: Path, pkg: Path = PKG) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in `module` (relative ones resolved)."""
    tree = ast.parse(module.read_text(), filename=str(module))
    package = list(module.relative_to(pkg.parent).parts[:-1])  # e.g. ["marengine", "models"]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from . import x, y
                    out += [(node.lineno, f"{name}.{a.name}") for a in node.names]
                    continue
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def violations(pkg: Path = PKG) -> list[str]:
    bad = []
    for module in sorted(pkg.rglob("*.py")):
        if module == pkg / "__init__.py":
            continue  # the package root only names the version
        own = top_level(module, pkg)
        if own not in RANK:
            bad.append(f"{module.relative_to(pkg)}: {own!r} has no layer in the layers block of docs/ARCHITECTURE.md")
            continue
        for line, name in imported_names(module, pkg):
            parts = name.split(".")
            if parts[0] != "marengine" or len(parts) < 2 or parts[1] == own:
                continue
            other = parts[1]
            if other not in RANK:
                bad.append(f"{module.relative_to(pkg)}:{line} imports unknown marengine.{other}")
            elif RANK[other] > RANK[own] or (RANK[other] == RANK[own] and other != own):
                bad.append(
                    f"{module.relative_to(pkg)}:{line} imports marengine.{other} "
                    f"(layer {RANK[other]}) from {own} (layer {RANK[own]})"
                )
    return bad


def test_imports_point_one_way():
    assert violations() == []


def module_level_imports(module: Path) -> list[str]:
    """Names imported when the module is imported: statements outside functions and classes."""
    names, todo = [], list(ast.parse(module.read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.append(node.module or "")
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.ExceptHandler)):
            todo += [n for n in ast.iter_child_nodes(node) if isinstance(n, (ast.stmt, ast.ExceptHandler))]
    return names


def test_torch_free_modules_do_not_import_torch():
    for rel in TORCH_FREE:
        names = module_level_imports(PKG / rel)
        assert not [n for n in names if n.split(".")[0] == "torch"], f"{rel} imports torch at import time"


def test_the_check_catches_a_backward_import(tmp_path):
    # a copy of the package with one backward import added must fail
    import shutil

    copy = tmp_path / "marengine"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    target = copy / "models" / "mar.py"
    target.write_text(target.read_text() + "\n\ndef _late():\n    from ..sampling import engine  # noqa\n")
    found = violations(copy)
    assert any("models/mar.py" in v and "marengine.sampling" in v for v in found), found


@pytest.mark.parametrize("name", sorted(RANK))
def test_every_layer_name_exists_or_is_planned(name):
    # names in LAYERS are real modules/packages, or layers this design reserves
    planned = {"pipeline", "bench", "_C"}
    assert name in planned or (PKG / name).is_dir() or (PKG / f"{name}.py").is_file()
