"""--threads on every command that computes: one shared option, checked, applied before the work."""

from __future__ import annotations

import argparse

import pytest
import torch

from marengine.cli import build_parser
from marengine.cli.common import apply_threads

COMPUTING = (
    "train",
    "demo",
    "sample",
    "edit",
    "cache-latents",
    "check-data",
    "export-onnx",
    "bench",
    "doctor",
    "train-vq",
)


@pytest.mark.parametrize("cmd", COMPUTING)
def test_every_computing_command_takes_threads(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([cmd, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--threads THREADS" in text and "default:" in text and "other jobs share" in text


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_a_bad_thread_count_is_an_argparse_error(bad, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["doctor", "--threads", bad])
    assert e.value.code == 2 and "--threads" in capsys.readouterr().err


def test_apply_threads_sets_torch():
    before = torch.get_num_threads()
    try:
        apply_threads(argparse.Namespace(threads=1))
        assert torch.get_num_threads() == 1
        apply_threads(argparse.Namespace(threads=None))  # no flag: torch's own setting stays
        assert torch.get_num_threads() == 1
        apply_threads(argparse.Namespace())  # a command without the flag
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_main_applies_threads_before_the_command(monkeypatch):
    from marengine import cli

    seen: list[int] = []
    monkeypatch.setattr(cli.doctor, "cmd_doctor", lambda args: seen.append(torch.get_num_threads()) or 0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert cli.main(["doctor", "--threads", "1"]) == 0  # main builds the parser: it binds the patched command
        assert seen == [1]
    finally:
        torch.set_num_threads(before)
