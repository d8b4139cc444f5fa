"""Every flag of every `marengine` command says what it takes and its default in --help, and
`marengine train --help` names the model presets and the forms of --data."""

from __future__ import annotations

import argparse

import pytest

from marengine.cli import build_parser
from marengine.config import AR_PRESETS, PRESETS


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


COMMANDS = _commands()


def _options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def _help(p: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text of one option as --help prints it (defaults filled in), on one line."""
    formatter = p._get_formatter()
    return " ".join(formatter._expand_help(action).split()) if action.help else ""


def _shown(default: object) -> list[str]:
    """The ways a default may be written: as %(default)s writes it, or a float as %g does."""
    forms = [str(default)]
    if isinstance(default, float):
        forms.append(f"{default:g}")
    if isinstance(default, (tuple, list)):
        forms.append(" ".join(str(v) for v in default))
    return forms


def test_the_walk_sees_every_command():
    assert {"train", "demo", "sample", "evaluate", "edit", "serve", "export-onnx", "train-vq", "bench"} <= set(COMMANDS)
    assert all(_options(p) for p in COMMANDS.values())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_showing_its_default(name):
    p = COMMANDS[name]
    empty, hidden = [], []
    for action in _options(p):
        flag = "/".join(action.option_strings)
        text = _help(p, action)
        if not text.strip():
            empty.append(flag)
            continue
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS:
            continue  # nothing to show (an off switch, or no default)
        if not any(form in text for form in _shown(default)):
            hidden.append(f"{flag} (default {default!r}): {text}")
    assert not empty, f"marengine {name}: options without help: {empty}"
    assert not hidden, f"marengine {name}: options whose help does not show the default:\n" + "\n".join(hidden)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_prints(name, capsys):
    from marengine.cli import main

    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: marengine {name}")
    assert "(default: %" not in out  # every %(default)s was filled in


def test_train_help_names_every_preset_and_the_data_forms(capsys):
    from marengine.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    out = out.replace("- ", "-")  # argparse may break a line after a hyphen (cache-latents)
    missing = [name for name in (*PRESETS, *AR_PRESETS) if name not in out]
    assert not missing, f"train --help does not name the presets {missing}"
    for form in ("digits", "image folder", "latent cache", "cache-latents"):
        assert form in out, f"train --help does not name the --data form {form!r}"


def test_a_help_without_a_default_is_caught():
    """The check above can fail: an option whose help hides its default is reported."""
    from marengine.cli.common import HelpFormatter

    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--n", type=int, default=7, help="a count; default is the usual")  # says 'default', not 7
    p.add_argument("--m", type=int, default=3, help="another count")  # the formatter appends it
    n, m = _options(p)
    assert not any(form in _help(p, n) for form in _shown(7))
    assert "(default: 3)" in _help(p, m)


@pytest.mark.parametrize("extra", [["--fp16"], ["--opset", "18"], ["--tokenizer", "pixel"], ["--config", "mar_tiny"]])
def test_export_of_a_causal_model_refuses_the_mar_exporter_knobs(extra, tmp_path, capsys):
    """export-onnx's knobs (fp16, opset, config, vae, tokenizer) are the MAR exporter's: a causal
    AR model given any of them is refused in one line, before anything is written."""
    from marengine.cli import main
    from marengine.models.family import make_model

    make_model("ar_raster_tiny").save_pretrained(tmp_path / "m")
    assert main(["export-onnx", "--checkpoint", str(tmp_path / "m"), "--out", str(tmp_path / "x"), *extra]) == 2
    assert "a causal AR model exports in fp32" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
