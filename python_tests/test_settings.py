"""marengine/settings.py: the environment knobs, read once, with clear errors; `marengine doctor`
prints them all; the compiled extension takes its knobs from them and reports its own limits."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from marengine import settings
from marengine.config import LAYERNORM_EPS

REPO = Path(__file__).resolve().parents[1]
ENVS = [f.metadata["env"] for f in settings.knobs()]


# variable=value: the words its error must hold
BAD = {"MARENGINE_SELFCHECK=sometimes": "must be one of auto, all, off", "MARENGINE_CPU_ROW_MIN=1.5": "whole number",
       "MARENGINE_HEAD_PATH=fastest": "one of auto, persistent, kernels", "MARENGINE_CPU_MOD_ROWS=0": "at least 1",
       "MARENGINE_CPU_KERNELS=avx1024": "must be one of auto, avx512_amx", "MARENGINE_CPU_WORKSPACE_MB=0": "at least 1",
       "MARENGINE_CPU_WORKSPACE_MB=lots": "a whole number", "MARENGINE_CPU_PACK_CACHE_MB=-5": "at least 0"}  # fmt: skip


@pytest.mark.parametrize("setting", sorted(BAD))
def test_a_bad_value_is_one_clear_error_naming_the_variable(monkeypatch, setting):
    env, value = setting.split("=")
    words = BAD[setting]
    monkeypatch.setenv(env, value)
    with pytest.raises(ValueError) as err:
        settings.reload()
    message = str(err.value)
    assert message.startswith(f"{env} ") and words in message and "default" in message
    assert "\n" not in message


def test_every_knob_has_a_variable_a_default_and_a_doc():
    fields = settings.knobs()
    assert len(fields) == len(set(ENVS)) >= 8
    for f in fields:
        assert f.metadata["env"].isupper() and len(f.metadata["doc"]) > 20
        assert f.default is not dataclasses.MISSING


def test_defaults_where_nothing_is_set():
    s = settings.from_environ({})
    assert (s.selfcheck, s.head_path, s.cpu_kernels) == ("auto", "auto", "auto")
    assert (s.cpu_workspace_mb, s.cpu_pack_cache_mb, s.cpu_row_min, s.cpu_mod_rows) == (128, 2048, 1, 512)
    assert s.mkl_cbwr == "" and not s.blas_strict
    assert {source for _, _, source in s.describe()} == {"default"}
    assert s.native_knobs() == {"MARENGINE_CPU_WORKSPACE_MB": "128", "MARENGINE_CPU_PACK_CACHE_MB": "2048",
                                "MARENGINE_CPU_ROW_MIN": "1", "MARENGINE_CPU_MOD_ROWS": "512"}  # fmt: skip


def test_values_are_parsed_and_their_source_is_env():
    env = {"MARENGINE_SELFCHECK": "0", "MARENGINE_HEAD_PATH": " Persistent ", "MARENGINE_CPU_ROW_MIN": "4",
           "MKL_CBWR": "auto, strict"}  # fmt: skip
    s = settings.from_environ(env)
    assert (s.selfcheck, s.head_path, s.cpu_row_min, s.blas_strict) == ("off", "persistent", 4, True)
    sources = {name: source for name, _, source in s.describe()}
    assert sources["MARENGINE_SELFCHECK"] == sources["MARENGINE_CPU_ROW_MIN"] == "env"
    assert sources["MARENGINE_CPU_MOD_ROWS"] == "default"
    assert s.native_knobs()["MARENGINE_HEAD_PATH"] == "persistent"


def test_read_once_and_a_monkeypatched_variable_is_seen_after_reload(monkeypatch):
    monkeypatch.delenv("MARENGINE_CPU_MOD_ROWS", raising=False)
    first = settings.reload()
    assert settings.settings() is first and first.cpu_mod_rows == 512
    monkeypatch.setenv("MARENGINE_CPU_MOD_ROWS", "77")
    assert settings.settings().cpu_mod_rows == 512  # read once: not on every call
    assert settings.reload().cpu_mod_rows == 77 and settings.settings().cpu_mod_rows == 77


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.settings().cpu_row_min = 3  # type: ignore[misc]


def test_use_swaps_the_settings_and_hands_back_the_old_ones():
    before = settings.settings()
    old = settings.use(dataclasses.replace(before, head_path="kernels"))
    assert old is before and settings.settings().head_path == "kernels"
    settings.use(old)
    assert settings.settings() is before


def test_readme_table_lists_every_knob_with_its_default():
    text = (REPO / "README.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([A-Z_]+)` \| [^|]+ \| ([^|]+) \|", text, re.M)}
    for f in settings.knobs():
        assert f.metadata["env"] in rows, f"README's settings table misses {f.metadata['env']}"
        assert rows[f.metadata["env"]].strip() == (str(f.default) or "unset")


def test_no_module_reads_the_environment_but_settings():
    # the knobs are read in one place: no other module of marengine reads them
    for module in sorted((REPO / "marengine").rglob("*.py")):
        text = module.read_text()
        for env in ENVS if module.name != "settings.py" else ():
            if re.search(rf"environ(\.get\(|\[)[^\n]*{env}|getenv\([^\n]*{env}", text):
                pytest.fail(f"{module.relative_to(REPO)} reads {env} itself; use marengine.settings")
    for source in sorted((REPO / "csrc").rglob("*.c*")):
        assert "getenv" not in source.read_text(), f"{source.relative_to(REPO)} reads the environment"


# ---------------------------------------------------------------------------- marengine doctor
def test_doctor_prints_every_knob_with_its_source(monkeypatch, capsys):
    from marengine.cli import doctor

    monkeypatch.setenv("MARENGINE_CPU_ROW_MIN", "3")
    settings.reload()
    parser = argparse.ArgumentParser()
    doctor.register(parser.add_subparsers())
    args = parser.parse_args(["doctor", "--no-checks"])
    assert args.fn(args) == 0
    out = capsys.readouterr().out
    assert "settings (environment, read once)" in out
    for env, value, source in settings.settings().describe():
        assert re.search(rf"^  {env}\s+{re.escape(value)} \({source}\)$", out, re.M), env
    assert re.search(r"^  MARENGINE_CPU_ROW_MIN\s+3 \(env\)$", out, re.M)


def test_doctor_refuses_a_bad_knob_with_the_cli_error(monkeypatch):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MARENGINE_HEAD_PATH": "warp"}
    res = subprocess.run([sys.executable, "-m", "marengine", "doctor", "--no-checks"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    assert "marengine doctor: error: MARENGINE_HEAD_PATH must be one of auto, persistent, kernels" in res.stderr
    assert "Traceback" not in res.stderr


# ---------------------------------------------------------------------------- the extension
def _native():
    from marengine.ops import native

    if not native.available("cpu"):
        pytest.skip("marengine._C is not built")
    return native


def test_limits_eps_is_the_python_constant():
    import torch

    native = _native()
    limits = native._C.limits()
    # one constant in C++ (csrc/kernel_limits.h, a float) and one in Python (config.py)
    assert limits["layernorm_eps"] == torch.tensor(LAYERNORM_EPS, dtype=torch.float32).item()
    assert set(limits["weight_dtypes"]) == {"float32", "bfloat16", "float16"}
    assert limits["cuda_built"] == native._C.built_with_cuda()
    assert "base" in limits["cpu_kernels_built"].split(",")
    assert native._C.cpu_kernels() in limits["cpu_kernels_built"].split(",")


def test_python_reads_the_limits_from_the_extension():
    native = _native()
    lim = native.LIMITS
    width, depth, channels = 4 * lim["cuda_width_multiple"], 2, 16
    assert native.cuda_unsupported(width, depth, channels) is None
    assert "multiple" in native.cuda_unsupported(width + 1, depth, channels)
    assert "token channels" in native.cuda_unsupported(width, depth, lim["cuda_max_channels"] + 1)
    assert "res blocks" in native.cuda_unsupported(width, lim["cuda_max_depth"] + 1, channels)
    assert native.cuda_unsupported(width, lim["cuda_max_depth"], lim["cuda_max_channels"]) is None


def test_the_extension_gets_its_knobs_from_settings(monkeypatch):
    native = _native()
    monkeypatch.setenv("MARENGINE_CPU_PACK_CACHE_MB", "64")
    monkeypatch.setenv("MARENGINE_HEAD_PATH", "kernels")
    settings.reload()
    native.push_knobs()
    got = native._C.knobs()
    assert got == settings.settings().native_knobs()
    assert got["MARENGINE_CPU_PACK_CACHE_MB"] == "64" and got["MARENGINE_HEAD_PATH"] == "kernels"


def test_the_extension_never_reads_the_environment_itself():
    native = _native()
    best = native._C.cpu_kernels_supported().split(",")[0]
    if best == "base":
        pytest.skip("this CPU runs only the base build: forcing it would change nothing")
    code = "import torch\nfrom marengine import _C\nprint(_C.cpu_kernels())\n"  # _C alone: no settings handed over
    env = {**os.environ, "PYTHONPATH": str(REPO), "MARENGINE_CPU_KERNELS": "base"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == best
