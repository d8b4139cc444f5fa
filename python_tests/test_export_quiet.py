"""`export-onnx` is quiet: the exporter's internal logs and warnings (hundreds of lines per
export) are silenced unless marengine logs at DEBUG (`marengine -v`)."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

pytest.importorskip("onnxscript")

from marengine.export.onnx import EXPORTER_LOGGERS, export_module  # noqa: E402


def _export(tmp_path, caplog) -> tuple[list[logging.LogRecord], list[warnings.WarningMessage]]:
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_module(
            torch.nn.Linear(4, 3),
            (torch.randn(2, 4),),
            tmp_path / "lin.onnx",
            ["x"],
            "y",
            {"x": {0: ("batch", 1, None)}},
            {"marengine.test": "1"},
        )
    noise = [r for r in caplog.records if r.name.split(".")[0] in {n.split(".")[0] for n in EXPORTER_LOGGERS}]
    return noise, list(caught)


def test_the_exporter_is_silent_by_default(tmp_path, caplog):
    caplog.set_level(logging.INFO)  # what the CLI sets without -v
    before = [logging.getLogger(n).level for n in EXPORTER_LOGGERS]
    noise, caught = _export(tmp_path, caplog)
    assert noise == [] and caught == [], [r.getMessage() for r in noise] + [str(w.message) for w in caught]
    assert (tmp_path / "lin.onnx").stat().st_size > 0
    assert [logging.getLogger(n).level for n in EXPORTER_LOGGERS] == before  # levels restored


def test_verbose_keeps_the_exporter_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # marengine -v
    noise, _ = _export(tmp_path, caplog)
    assert noise, "the exporter logs nothing at DEBUG: this test could not see the silencing work"
