"""The one rule for output paths: every command that writes refuses a folder holding files it
did not write, replaces its own earlier output only with --overwrite, cleans only its own
temporaries, and a run killed at any moment resumes to the end (marengine/files.py)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from conftest import SMALL, run_training, small_train_config

from marengine.cli import main as cli_main
from marengine.files import (
    MANIFEST,
    OutputRefused,
    building_folder,
    claim_output_folder,
    is_temporary,
    read_manifest,
    record_outputs,
    remove_stale_temporaries,
)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (relative path -> bytes): what a refused command must leave."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def users_folder(path: Path) -> Path:
    """A folder of the user's own: photos, notes and a file that looks like a temporary."""
    path.mkdir(parents=True)
    (path / "holiday.png").write_bytes(b"\x89PNG not really")
    (path / "notes.txt").write_text("mine")
    (path / ".draft.tmp").write_text("also mine")
    (path / ".model.safetensors.1234.tmp").write_text("mine too")
    return path


def cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = cli_main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- the rule itself
def test_claim_accepts_new_and_empty_folders(tmp_path):
    assert claim_output_folder(tmp_path / "new", "samples") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    claim_output_folder(tmp_path / "empty", "samples")
    (tmp_path / "only_tmp").mkdir()
    (tmp_path / "only_tmp" / ".grid.png.marengine-ab12cd34.tmp").write_bytes(b"")  # a killed writer's
    claim_output_folder(tmp_path / "only_tmp", "samples")


def test_claim_refuses_what_marengine_did_not_write(tmp_path):
    folder = users_folder(tmp_path / "mine")
    before = snapshot(folder)
    for overwrite in (False, True):
        with pytest.raises(OutputRefused, match="did not write.*holiday.png"):
            claim_output_folder(folder, "samples", overwrite=overwrite)
    record_outputs(tmp_path / "ours", "samples", ["grid.png"])
    (tmp_path / "ours" / "grid.png").write_bytes(b"old")
    (tmp_path / "ours" / "photo.jpg").write_bytes(b"the user's")  # added later by the user
    with pytest.raises(OutputRefused, match="did not write.*photo.jpg"):
        claim_output_folder(tmp_path / "ours", "samples", overwrite=True)
    assert snapshot(folder) == before


def test_claim_own_output_needs_overwrite_and_the_same_kind(tmp_path):
    out = tmp_path / "out"
    record_outputs(out, "samples", ["grid.png"])
    (out / "grid.png").write_bytes(b"old")
    with pytest.raises(OutputRefused, match="already holds a samples output.*--overwrite"):
        claim_output_folder(out, "samples")
    with pytest.raises(OutputRefused, match="samples output, not a onnx-export"):
        claim_output_folder(out, "onnx-export", overwrite=True)
    assert claim_output_folder(out, "samples", overwrite=True) == out
    assert claim_output_folder(out, "samples", reuse=True) == out


@pytest.mark.parametrize(
    "text", ["not json", '{"format": "marengine-outputs-v1", "kind": "samples", "files": ["../escape"]}', "[1, 2]"]
)
def test_a_forged_or_broken_manifest_makes_the_folder_the_users(tmp_path, text):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / MANIFEST).write_text(text)
    (tmp_path / "f" / "x.png").write_bytes(b"")
    assert read_manifest(tmp_path / "f") is None
    with pytest.raises(OutputRefused, match="did not write"):
        claim_output_folder(tmp_path / "f", "samples", overwrite=True)


def test_only_marengine_temporaries_are_cleaned(tmp_path):
    mine = [".a.tmp", ".last.pth.abc123.tmp", ".ema.old.tmp", ".x.marengine-toolong12.tmp", "y.marengine-abcd1234.tmp"]
    ours = [".last.pth.marengine-abcd1234.tmp", ".ema.marengine-old.tmp"]
    for name in mine + ours:
        (tmp_path / name).write_bytes(b"")
    assert [is_temporary(n) for n in mine] == [False] * len(mine)
    assert sorted(p.name for p in remove_stale_temporaries(tmp_path, "ema")) == [".ema.marengine-old.tmp"]
    assert sorted(p.name for p in remove_stale_temporaries(tmp_path)) == [".last.pth.marengine-abcd1234.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(mine)


def test_a_failed_build_leaves_the_target_as_it_was(tmp_path):
    out = tmp_path / "exp"
    with building_folder(out, "onnx-export") as built:
        (built / "a.onnx").write_bytes(b"first")
    before = snapshot(out)
    with pytest.raises(RuntimeError, match="midway"):
        with building_folder(out, "onnx-export", overwrite=True) as built:
            (built / "a.onnx").write_bytes(b"second")
            raise RuntimeError("midway")
    assert snapshot(out) == before and read_manifest(out) == {"kind": "onnx-export", "files": ["a.onnx"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


def test_a_file_that_appears_during_the_build_is_never_replaced(tmp_path):
    out = tmp_path / "exp"
    with pytest.raises(OutputRefused, match="late.txt"):
        with building_folder(out, "onnx-export") as built:
            (built / "a.onnx").write_bytes(b"x")
            out.mkdir()
            (out / "late.txt").write_text("the user's")  # written while we were building
    assert (out / "late.txt").read_text() == "the user's" and sorted(p.name for p in out.iterdir()) == ["late.txt"]


# ---------------------------------------------------------------- every command that writes
def test_export_onnx_never_replaces_a_users_folder(run_dir, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    targets = [
        users_folder(tmp_path / "photos"),
        run_dir / "ema",  # the checkpoint's own folder (model.safetensors)
        run_dir,  # a training run (last.pth)
    ]
    for target in targets:
        before = snapshot(target)
        for extra in ([], ["--overwrite"]):
            code, err = cli(["export-onnx", "--checkpoint", str(run_dir / "ema"), "--out", str(target), *extra], capsys)
            assert code == 2 and "nothing was changed" in err, err
            assert err.count("\n") == 1
            assert snapshot(target) == before
    photos = tmp_path / "photos"
    assert (photos / ".draft.tmp").exists() and (photos / ".model.safetensors.1234.tmp").exists()


@pytest.mark.slow
def test_export_onnx_replaces_its_own_export_only_with_overwrite(run_dir, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    out = tmp_path / "exp"
    argv = ["export-onnx", "--checkpoint", str(run_dir / "ema"), "--out", str(out)]
    (tmp_path / ".notes.tmp").write_text("the user's, beside the output")
    assert cli(argv, capsys)[0] == 0
    first = snapshot(out)
    assert "deploy.json" in first and MANIFEST in first
    code, err = cli(argv, capsys)
    assert code == 2 and "already holds a onnx-export output" in err and snapshot(out) == first
    assert cli([*argv, "--overwrite"], capsys)[0] == 0
    assert set(snapshot(out)) == set(first)
    assert (tmp_path / ".notes.tmp").read_text() == "the user's, beside the output"


def test_train_vq_never_replaces_a_users_folder(tmp_path, capsys):
    target = users_folder(tmp_path / "photos")
    before = snapshot(target)
    for extra in ([], ["--overwrite"]):
        code, err = cli(["train-vq", "--out", str(target), "--steps", "1", "--no-progress", *extra], capsys)
        assert code == 2 and "holiday.png" in err, err
    assert snapshot(target) == before


def test_train_vq_overwrites_its_own_output_only_when_asked(tmp_path, capsys):
    out = tmp_path / "vq"
    argv = ["train-vq", "--out", str(out), "--steps", "2", "--batch-size", "8", "--no-progress"]
    assert cli(argv, capsys)[0] == 0
    first = snapshot(out)
    code, err = cli(argv, capsys)
    assert code == 2 and "--overwrite" in err and snapshot(out) == first
    assert cli([*argv, "--overwrite", "--seed", "1"], capsys)[0] == 0
    assert snapshot(out)["model.safetensors"] != first["model.safetensors"]


def test_resume_into_another_runs_folder_is_refused(run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    before = snapshot(other)
    argv = ["train", "--resume", str(run_dir / "last.pth"), "--out-dir", str(other), "--max-steps", "3"]
    for extra in ([], ["--overwrite"]):
        code, err = cli([*argv, "--no-progress", "--model-overrides", json.dumps(SMALL), *extra], capsys)
        assert code == 2 and "another run" in err, err
    assert snapshot(other) == before


def test_train_refuses_a_users_folder_and_keeps_its_temporaries(tmp_path, capsys):
    target = users_folder(tmp_path / "photos")
    before = snapshot(target)
    for extra in ([], ["--overwrite"]):
        code, err = cli(
            ["train", "--out-dir", str(target), "--max-steps", "1", "--no-progress", *extra]
            + ["--model-overrides", json.dumps(SMALL)],
            capsys,
        )
        assert code == 2 and "did not write" in err, err
    assert snapshot(target) == before


def test_train_overwrite_replaces_only_the_earlier_run(run_dir, tmp_path, capsys):
    out = tmp_path / "again"
    shutil.copytree(run_dir, out)
    argv = ["train", "--out-dir", str(out), "--no-progress", "--max-steps", "1", "--overwrite", "--batch-size", "16"]
    argv += ["--model-overrides", json.dumps(SMALL)]
    (out / ".user.tmp").write_text("a file named like a temporary, not ours")
    before = snapshot(out)
    code, err = cli(argv, capsys)
    assert code == 2 and ".user.tmp" in err and snapshot(out) == before  # --overwrite never touches it
    (out / ".user.tmp").unlink()
    (out / "step-2.pth").write_bytes((out / "last.pth").read_bytes())  # an earlier run's extra file
    record_outputs(out, "training-run", ["step-2.pth"])
    code, err = cli(argv, capsys)
    assert code == 0, err
    assert not (out / "step-2.pth").exists()  # the earlier run is gone whole, not mixed with this one
    assert [r.split(",")[0] for r in (out / "metrics.csv").read_text().splitlines()] == ["step", "1"]


def test_sample_edit_and_save_pretrained_refuse_a_users_folder(run_dir, tmp_path, capsys):
    from marengine.pipeline import MARPipeline

    target = users_folder(tmp_path / "photos")
    before = snapshot(target)
    sample = ["sample", "--checkpoint", str(run_dir / "ema"), "--labels", "1", "--num-iter", "2", "--out", str(target)]
    for extra in ([], ["--overwrite"]):
        code, err = cli([*sample, *extra], capsys)
        assert code == 2 and "did not write" in err, err
    pipe = MARPipeline.from_pretrained(run_dir / "ema")
    with pytest.raises(OutputRefused, match="did not write"):
        pipe.save_pretrained(target, overwrite=True)
    assert snapshot(target) == before


def test_sample_into_its_own_output_needs_overwrite(run_dir, tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["sample", "--checkpoint", str(run_dir / "ema"), "--labels", "1", "2", "--num-iter", "2", "--out", str(out)]
    assert cli(argv, capsys)[0] == 0
    first = snapshot(out)
    code, err = cli(argv, capsys)
    assert code == 2 and "--overwrite" in err and snapshot(out) == first
    assert cli([*argv, "--overwrite", "--seed", "3"], capsys)[0] == 0
    assert set(snapshot(out)) == set(first) and snapshot(out)["samples.npz"] != first["samples.npz"]


# ---------------------------------------------------------------- resume after a kill at any moment
def _finished_run(folder: Path) -> Path:
    run_training(small_train_config(folder, max_steps=4, ckpt_every=2))
    return folder


@pytest.mark.parametrize("killed", ["after the last checkpoint", "during the EMA export"])
def test_resume_finishes_a_run_killed_at_its_end(tmp_path, killed):
    ref = _finished_run(tmp_path / "ref")
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    if killed == "after the last checkpoint":
        shutil.rmtree(run / "ema")  # last.pth written, the EMA folder not yet
    else:  # the old EMA folder renamed aside, the new one not yet in place (files.replace_folder)
        (run / "ema").rename(run / ".ema.marengine-old.tmp")
    cfg = small_train_config(run, max_steps=4, ckpt_every=2, resume=str(run / "last.pth"))
    t = run_training(cfg)
    assert t.step == 4
    assert snapshot(run / "ema") == snapshot(ref / "ema")  # bitwise the uninterrupted run's
    assert not [p.name for p in run.iterdir() if is_temporary(p.name)]


def test_resume_drops_the_metrics_of_steps_it_redoes(tmp_path):
    run = tmp_path / "run"
    run_training(small_train_config(run, max_steps=4, ckpt_every=2))
    rows = (run / "metrics.csv").read_text().splitlines()
    from marengine.training.checkpoint import load_checkpoint, save_checkpoint

    # as if killed after step 4 was logged but before its checkpoint: last.pth is still step 2's
    mid = tmp_path / "mid"
    run_training(small_train_config(mid, max_steps=2, ckpt_every=2))
    state = load_checkpoint(mid / "last.pth")
    state["train_config"] = dataclasses.asdict(small_train_config(run, max_steps=4, ckpt_every=2))
    save_checkpoint(run / "last.pth", {k: v for k, v in state.items() if k != "format"})
    run_training(small_train_config(run, max_steps=4, ckpt_every=2, resume=str(run / "last.pth")))
    again = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in again] == [r.split(",")[0] for r in rows] == ["step", "1", "2", "3", "4"]
