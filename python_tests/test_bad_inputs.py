"""Bad input, tried as a hostile user would, across the Python API, the command line, the
operators and the torch-free deploy sampler: every case must end in a clear error (the
setting named, what it must be) or a documented behaviour, never in a traceback from deep
inside torch/numpy, a crash, or exit code 0 with wrong output.

The silent-output classes (issue: NaN settings, float labels, non-finite weights, lost
runs, empty batches, torn exports, orphan temporaries) each have their own test below the
tables; stale packed weights are tested in test_native_cpu.py (test_caches_never_serve_stale_weights).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL, run_training, small_train_config

from marengine.cli import main as cli_main
from marengine.config import MARConfig
from marengine.diffusion.samplers import DDPM
from marengine.models import MAR, load_model
from marengine.sampling.engine import SampleSettings, generate

NAN, INF = float("nan"), float("inf")


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return MAR.from_config(MARConfig.from_name("mar_tiny", num_sampling_steps="3")).eval()


@pytest.fixture(scope="module")
def export_dir(run_dir, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from marengine.export.onnx import export_from_checkpoint

    out = tmp_path_factory.mktemp("export") / "digits"
    export_from_checkpoint(run_dir / "ema", out, parts=("backbone", "head", "decoder"))
    return out


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run the CLI in this process: (exit code, stderr)."""
    try:
        code = cli_main(argv)
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 1
    err = capsys.readouterr().err
    return code, err


def cli_train(out: Path, capsys, max_steps: int, *extra: str) -> tuple[int, str]:
    """`marengine train` into `out` for `max_steps` steps with `extra` flags: (exit code, stderr)."""
    return cli(["train", "--out-dir", str(out), "--no-progress", "--max-steps", str(max_steps), *extra], capsys)


SMALL_MODEL = ("--model-overrides", json.dumps(SMALL))  # the flags that pick the SMALL digits model


def deploy(argv: list[str], capsys) -> tuple[int, str]:
    from marengine.export import deploy as dep

    try:
        code = dep.main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- the Python API
def _sample(model, **kw):
    args = dict(bsz=2, num_iter=2, cfg=1.0, cfg_schedule="linear", labels=None, temperature=1.0)
    args.update(kw)
    return model.sample_tokens(**args, generator=torch.Generator().manual_seed(0), backend="torch")


API_SAMPLE = [
    ({"cfg": NAN}, ValueError, "cfg must be a finite number"),
    ({"cfg": INF}, ValueError, "cfg must be a finite number"),
    ({"cfg": -INF}, ValueError, "cfg must be a finite number"),
    ({"cfg": "2"}, TypeError, "cfg must be a number"),
    ({"cfg": 0.5}, ValueError, r"cfg must be a finite number in \[1.0, 100.0\]"),
    ({"temperature": NAN}, ValueError, "temperature must be a finite number"),
    ({"temperature": INF}, ValueError, "temperature must be a finite number"),
    ({"temperature": -1.0}, ValueError, r"temperature must be a finite number in \[0.0, 10.0\]"),
    ({"temperature": None}, TypeError, "temperature must be a number"),
    ({"num_iter": 0}, ValueError, "num_iter must be an integer in"),
    ({"num_iter": 17}, ValueError, "at most the 16 tokens"),
    ({"num_iter": 2.5}, TypeError, "num_iter must be an integer"),
    ({"num_iter": True}, TypeError, "num_iter must be an integer"),
    ({"bsz": 0}, ValueError, "batch size must be an integer >= 1"),
    ({"bsz": -3}, ValueError, "batch size must be an integer >= 1"),
    ({"bsz": "2"}, TypeError, "batch size must be an integer"),
    ({"cfg_schedule": "cosine"}, ValueError, "unknown cfg_schedule"),
    ({"cfg_schedule": None}, ValueError, "unknown cfg_schedule"),
    ({"labels": torch.tensor([1.0, 2.0])}, TypeError, "int64 tensor"),
    ({"labels": torch.tensor([1, 10])}, ValueError, r"labels must be in \[0, 10\)"),
    ({"labels": torch.tensor([1, 2, 3])}, ValueError, r"labels must have shape \(2,\)"),
    ({"labels": [1, 2]}, TypeError, "int64 tensor"),
    ({"labels": torch.empty(2, dtype=torch.int64, device="meta")}, ValueError, "meta device"),
]


@pytest.mark.parametrize("kw, exc, match", API_SAMPLE, ids=[f"sample-{i}" for i in range(len(API_SAMPLE))])
def test_api_sample_tokens(tiny, kw, exc, match):
    with pytest.raises(exc, match=match):
        _sample(tiny, **kw)


def test_api_numpy_integers_are_accepted(tiny):
    out = _sample(tiny, bsz=np.int64(2), num_iter=np.int32(2))
    assert out.shape[0] == 2 and torch.isfinite(out).all()


@pytest.mark.parametrize("generator", ["seed", 5, np.random.default_rng(0)])
def test_api_generator_of_the_wrong_type(tiny, generator):
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        tiny.sample_tokens(2, 2, generator=generator)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        tiny.diffloss.sample(torch.randn(3, 64), generator=generator)


def test_api_model_on_the_meta_device():
    with torch.device("meta"):
        model = MAR.from_config(MARConfig.from_name("mar_tiny"))
    with pytest.raises(ValueError, match="meta device"):
        model.sample_tokens(2, 2)
    with pytest.raises(ValueError, match="meta device"):
        model(torch.zeros(2, 16, 4, 4), torch.tensor([0, 1]))


HEAD = [
    (lambda: torch.randn(3, 63), {}, ValueError, r"z must have shape \[\*, 64\]"),
    (lambda: torch.randn(64), {}, ValueError, r"z must have shape \[\*, 64\]"),
    (lambda: torch.ones(3, 64, dtype=torch.int64), {}, TypeError, "z must be a floating-point tensor"),
    (lambda: torch.empty(3, 64, device="meta"), {}, ValueError, "meta device"),
    (lambda: [[0.0] * 64] * 3, {}, TypeError, "z must be a torch.Tensor"),
    (lambda: torch.randn(3, 64), {"cfg": 2.0}, ValueError, "even number of rows"),
    (lambda: torch.randn(3, 64), {"cfg": NAN}, ValueError, "cfg must be a finite number"),
    (lambda: torch.randn(3, 64), {"temperature": INF}, ValueError, "temperature must be a finite number"),
    (lambda: torch.randn(3, 64), {"noise": torch.zeros(2, 16)}, ValueError, r"noise \(x_T\) must have shape"),
    (lambda: torch.randn(3, 64), {"backend": "cuda-magic"}, ValueError, "unknown backend"),
]


@pytest.mark.parametrize("z, kw, exc, match", HEAD, ids=[f"head-{i}" for i in range(len(HEAD))])
def test_api_head_sample(tiny, z, kw, exc, match):
    with pytest.raises(exc, match=match):
        tiny.diffloss.sample(z(), **kw)


def test_api_float64_z_is_accepted(tiny):
    out = tiny.diffloss.sample(torch.randn(3, 64, dtype=torch.float64), temperature=0.0, backend="torch")
    assert out.dtype == torch.float32 and out.shape == (3, 16) and torch.isfinite(out).all()


FORWARD = [
    (lambda: (torch.zeros(0, 16, 4, 4), torch.zeros(0, dtype=torch.int64)), ValueError, "batch is empty"),
    (lambda: (torch.zeros(2, 16, 3, 3), torch.tensor([0, 1])), ValueError, r"imgs \(latents\) must have shape"),
    (lambda: (torch.zeros(2, 16, 4, 4), torch.tensor([0.0, 1.0])), TypeError, "int64 tensor"),
    (lambda: (torch.zeros(2, 16, 4, 4, dtype=torch.int64), torch.tensor([0, 1])), TypeError, "floating-point"),
]


@pytest.mark.parametrize("args, exc, match", FORWARD, ids=[f"forward-{i}" for i in range(len(FORWARD))])
def test_api_training_forward(tiny, args, exc, match):
    with pytest.raises(exc, match=match):
        tiny(*args())


GENERATE = [
    ({"labels": [1.9, 2.7]}, TypeError, r"labels\[0\] must be an integer, got float 1.9"),
    ({"labels": np.array([1.0, 2.0])}, TypeError, "must be integers"),
    ({"labels": [3, 12]}, ValueError, r"class indices in \[0, 10\)"),
    ({"labels": "0123"}, TypeError, "sequence of class indices"),
    ({"settings": {"batch_size": 0}}, ValueError, "batch_size must be an integer >= 1"),
    ({"settings": {"batch_size": -2}}, ValueError, "batch_size must be an integer >= 1"),
    ({"settings": {"num_iter": NAN}}, TypeError, "num_iter must be an integer"),
    ({"settings": {"cfg": NAN}}, ValueError, "cfg must be a finite number"),
    ({"settings": {"seed": -1}}, ValueError, "seed must be an integer"),
    ({"settings": {"backend": "gpu"}}, ValueError, "unknown sampling setting backend"),
    ({"settings": {"clip_denoised": "yes"}}, TypeError, "clip_denoised must be true or false"),
]


@pytest.mark.parametrize("kw, exc, match", GENERATE, ids=[f"generate-{i}" for i in range(len(GENERATE))])
def test_api_generate(tiny, kw, exc, match):
    from marengine.models.tokenizers import PixelTokenizer

    with pytest.raises(exc, match=match):
        settings = SampleSettings(**{"num_iter": 2, **kw.get("settings", {})})
        generate(tiny, PixelTokenizer(1, 4), kw.get("labels", [1, 2]), settings)


CONFIGS = [
    ({"img_size": "256"}, TypeError, "img_size must be an integer"),
    ({"vae_stride": 0}, ValueError, r"vae_stride must be an integer in \[1, "),
    ({"patch_size": -1}, ValueError, r"patch_size must be an integer in \[1, "),
    ({"encoder_depth": 2.5}, TypeError, "encoder_depth must be an integer"),
    ({"mlp_ratio": NAN}, ValueError, "mlp_ratio must be a finite number"),
    ({"label_drop_prob": 1.5}, ValueError, "label_drop_prob must be a finite number in"),
    ({"num_sampling_steps": "fast"}, ValueError, "num_sampling_steps must be"),
    ({"num_sampling_steps": "0"}, ValueError, "cannot take 0 steps"),
    ({"grad_checkpointing": "no"}, TypeError, "grad_checkpointing must be true or false"),
    ({"not_a_field": 1}, ValueError, "unknown MAR config keys"),
]


@pytest.mark.parametrize("d, exc, match", CONFIGS, ids=[f"config-{i}" for i in range(len(CONFIGS))])
def test_api_model_config(d, exc, match):
    with pytest.raises(exc, match=match):
        MARConfig.from_dict({**MARConfig.from_name("mar_tiny").to_dict(), **d})


def test_api_bad_config_json_in_a_folder(tmp_path, tiny):
    folder = tiny.save_pretrained(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "vae_stride": 0}))
    with pytest.raises(ValueError, match=r"vae_stride must be an integer in \[1, "):
        load_model(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "encoder_depth": "two"}))
    with pytest.raises(TypeError, match="encoder_depth must be an integer"):
        load_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(folder)


def test_api_bad_files(tmp_path, tiny):
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(ValueError, match="holds a Tensor, not a checkpoint dictionary"):
        load_model(tensor_file, config="mar_tiny")
    no_model = tmp_path / "no_model.pth"
    torch.save({"optimizer": {}, "epoch": 3}, no_model)
    with pytest.raises(ValueError, match="no model weights found"):
        load_model(no_model, config="mar_tiny")
    folder = tiny.save_pretrained(tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.pth", config="mar_tiny")


# ---------------------------------------------------------------- operators
def test_operator_errors_name_the_argument(tiny):
    from marengine.ops import native

    if not native.available("cpu"):
        pytest.skip("native kernels not built")
    net, tables = tiny.diffloss.net, tiny.diffloss.gen_tables
    w = native.collect_weights(net, torch.float32, torch.device("cpu"))
    x = torch.randn(3, 16)
    c_emb, t_emb = native.embeddings(net, tables, torch.randn(3, 64))
    coefs = tables.sampler_table(DDPM, "cpu")

    def call(**kw):
        a = dict(x_T=x, c_emb=c_emb, t_emb=t_emb, coefs=coefs, cfg=1.0, temperature=0.0)
        a.update(kw)
        return torch.ops.marengine.head_sample(
            a["x_T"], a["c_emb"], a["t_emb"], *w.args(), a["coefs"], a["cfg"], a["temperature"], None, 0, 0
        )

    cases = [
        ({"c_emb": torch.randn(3, 95)}, "c_emb must have the head width W = 96"),
        ({"t_emb": torch.randn(3, 95)}, "t_emb must have the head width W = 96"),
        ({"c_emb": torch.randn(4, 96)}, "c_emb must have N"),
        ({"x_T": torch.randn(3, 16, dtype=torch.float64)}, "x_T must be Float"),
        ({"coefs": torch.randn(3, 5)}, "coefs"),
        ({"temperature": NAN}, "temperature must be finite"),
        ({"cfg": INF}, "cfg must be finite"),
    ]
    for kw, match in cases:
        with pytest.raises(RuntimeError, match=match):
            call(**kw)


# ---------------------------------------------------------------- the command line
CLI_SAMPLE = [
    (["--cfg", "nan"], "--cfg must be a finite number"),
    (["--cfg", "inf"], "--cfg must be a finite number"),
    (["--cfg", "0.5"], r"--cfg must be a finite number in \[1.0, 100.0\]"),
    (["--cfg", "two"], "--cfg must be a number"),
    (["--temperature", "-1"], r"--temperature must be a finite number in \[0.0, 10.0\]"),
    (["--temperature", "nan"], "--temperature must be a finite number"),
    (["--num-iter", "0"], "--num-iter must be an integer >= 1"),
    (["--num-iter", "2.5"], "--num-iter must be a number"),
    (["--sample-batch-size", "0"], "--sample-batch-size must be an integer >= 1"),
    (["--sample-batch-size", "-4"], "--sample-batch-size must be an integer >= 1"),
    (["--seed", "-1"], "--seed must be an integer"),
    (["--labels", "1.5"], "invalid int value"),
    (["--labels", "3", "99"], r"--labels must be class indices in \[0, 10\)"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "GPU"),
    (["--device", "tpu7"], "device"),
    (["--backend", "gpu"], "invalid choice"),
    (["--cfg-schedule", "cosine"], "invalid choice"),
]


@pytest.mark.parametrize("extra, match", CLI_SAMPLE, ids=[f"cli-sample-{i}" for i in range(len(CLI_SAMPLE))])
def test_cli_sample(run_dir, tmp_path, capsys, extra, match):
    out = tmp_path / "out"
    code, err = cli(
        ["sample", "--checkpoint", str(run_dir / "ema"), "--out", str(out), "--num-iter", "2", *extra], capsys
    )
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    assert re.search(match, err), err
    assert not (out / "grid.png").exists()  # nothing written


def test_cli_sample_outputs_checked_before_the_work(run_dir, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    code, err = cli(["sample", "--checkpoint", str(run_dir / "ema"), "--out", str(a_file)], capsys)
    assert code == 2 and "is an existing file, not a folder" in err
    code, err = cli(["sample", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "does not exist" in err
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(2), tensor_file)
    code, err = cli(
        ["sample", "--checkpoint", str(tensor_file), "--model", "mar_tiny", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "not a checkpoint dictionary" in err


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes anywhere")
def test_cli_read_only_output(run_dir, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    code, err = cli(["sample", "--checkpoint", str(run_dir / "ema"), "--out", str(ro / "x")], capsys)
    assert code == 2 and "not writable" in err


CLI_TRAIN = [
    (["--batch-size", "0"], "batch_size must be an integer >= 1"),
    (["--ckpt-every", "0"], "ckpt_every must be an integer >= 1"),
    (["--log-every", "0"], "log_every must be an integer >= 1"),
    (["--max-steps", "0"], "max_steps must be an integer >= 1"),
    (["--max-steps", "-5"], "max_steps must be an integer >= 1"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--blr", "0"], "blr must be a finite number > 0"),
    (["--ema-rate", "1.5"], "ema_rate must be a finite number in"),
    (["--model-overrides", "{bad"], "not valid JSON"),
    (["--model-overrides", "[1, 2]"], "must be a JSON object"),
    (["--model-overrides", '{"no_such_key": 1}'], "unknown MAR config keys"),
    (["--model", "mar_gigantic"], "unknown training setting model"),
    (["--precision", "fp8"], "unknown training setting precision"),
    (["--num-workers", "-1"], "num_workers must be an integer >= 0"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "GPU"),
    (["--data", "/no/such/folder"], "does not exist"),
    (["--resume", "/no/such/last.pth"], "does not exist"),
]


@pytest.mark.parametrize("extra, match", CLI_TRAIN, ids=[f"cli-train-{i}" for i in range(len(CLI_TRAIN))])
def test_cli_train(tmp_path, capsys, extra, match):
    out = tmp_path / "run"
    code, err = cli_train(out, capsys, 1, *extra)
    assert code == 2, err
    assert "Traceback" not in err and re.search(match, err), err
    assert not (out / "last.pth").exists()


def test_cli_demo_per_class_checked_before_training(tmp_path, capsys):
    code, err = cli(["demo", "--out-dir", str(tmp_path / "d"), "--per-class", "0"], capsys)
    assert code == 2 and "--per-class must be an integer >= 1" in err
    assert not (tmp_path / "d").exists()  # failed at parse time, before any training


def test_cli_export_and_data(run_dir, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    for extra, match in [
        (["--opset", "7"], "opset 7 is not supported"),
        (["--opset", "999"], "opset 999 is not supported"),
        (["--opset", "x"], "--opset must be a number"),
    ]:
        code, err = cli(
            ["export-onnx", "--checkpoint", str(run_dir / "ema"), "--out", str(tmp_path / "e"), *extra], capsys
        )
        assert code == 2 and match in err, err
    a_file = tmp_path / "f"
    a_file.write_text("x")
    code, err = cli(["export-onnx", "--checkpoint", str(run_dir / "ema"), "--out", str(a_file)], capsys)
    assert code == 2 and "existing file" in err
    code, err = cli(["check-data", "--data", str(tmp_path), "--img-size", "0"], capsys)
    assert code == 2 and "--img-size must be an integer >= 1" in err
    code, err = cli(
        ["cache-latents", "--data", str(tmp_path), "--vae-ckpt", "x", "--out", "o", "--shard-size", "0"], capsys
    )
    assert code == 2 and "--shard-size must be an integer >= 1" in err


def test_cli_full_disk_is_one_line(monkeypatch, run_dir, tmp_path, capsys):
    import errno

    from marengine import imageio

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "grid.png"))

    monkeypatch.setattr(imageio, "atomic_write", full)
    code, err = cli(
        [
            "sample",
            "--checkpoint",
            str(run_dir / "ema"),
            "--out",
            str(tmp_path / "o"),
            "--num-iter",
            "2",
            "--labels",
            "1",
        ],
        capsys,
    )
    last = err.strip().splitlines()[-1]  # (the progress bar writes to stderr before it)
    assert code == 2 and last.startswith("marengine sample: error: no space left on the device"), err
    assert "Traceback" not in err
    assert not any(p.stat().st_size == 0 for p in (tmp_path / "o").glob("*"))


# ---------------------------------------------------------------- the deploy sampler
DEPLOY = [
    (["--cfg", "nan"], "--cfg must be a finite number"),
    (["--temperature", "inf"], "--temperature must be a finite number"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--num-images", "0"], "--num-images must be an integer >= 1"),
    (["--labels", "4", "99"], r"--labels must be class indices in \[0, 10\)"),
    (["--num-iter", "-2"], "--num-iter must be an integer >= 1"),
]


@pytest.mark.parametrize("extra, match", DEPLOY, ids=[f"deploy-{i}" for i in range(len(DEPLOY))])
@pytest.mark.slow  # an ONNX export (module fixture)
def test_deploy_cli(export_dir, tmp_path, capsys, extra, match):
    code, err = deploy(["--model", str(export_dir), "--out", str(tmp_path / "o"), *extra], capsys)
    assert code == 2 and re.search(match, err), err
    assert not (tmp_path / "o" / "grid.png").exists()


@pytest.mark.slow  # an ONNX export (module fixture)
def test_deploy_bad_folder(export_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(export_dir, broken)
    text = (broken / "deploy.json").read_text()
    (broken / "deploy.json").write_text(text[: len(text) // 2])
    code, err = deploy(["--model", str(broken), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "deploy.json is not valid JSON" in err
    code, err = deploy(["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "not found" in err


@pytest.mark.slow  # an ONNX export (module fixture)
def test_deploy_api_nan_settings(export_dir):
    from marengine.export.deploy import DeployedMAR, sample_tokens

    dm = DeployedMAR.load(export_dir, ["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="cfg must be a finite number"):
        sample_tokens(dm, [1], 2, cfg=NAN)
    with pytest.raises(TypeError, match=r"labels\[0\] must be an integer"):
        sample_tokens(dm, [1.5], 2)


# ---------------------------------------------------------------- silent-output classes
def test_non_finite_checkpoint_is_refused_on_load_and_export(run_dir, tmp_path):
    from marengine.export.onnx import export_onnx

    loaded = load_model(run_dir / "ema").model
    with torch.no_grad():
        loaded.diffloss.net.final_layer.linear.weight[0, 0] = NAN
    folder = loaded.save_pretrained(tmp_path / "nan")
    with pytest.raises(ValueError, match="not finite"):
        load_model(folder)
    pytest.importorskip("onnxscript")
    with pytest.raises(ValueError, match="not finite"):
        export_onnx(loaded, tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_diverging_training_exits_non_zero_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "div"
    code, err = cli_train(out, capsys, 3, "--lr", "1e30", *SMALL_MODEL, "--batch-size", "16", "--max-bad-steps", "50")
    assert code == 2, err
    assert "without finite weights" in err and "no checkpoint was written" in err
    assert not (out / "last.pth").exists() and not (out / "ema").exists()


def test_existing_run_is_not_replaced(run_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "again"
    shutil.copytree(run_dir, out)
    before = (out / "last.pth").read_bytes()
    code, err = cli_train(out, capsys, 1, *SMALL_MODEL)
    assert code == 2 and "--resume" in err and "--overwrite" in err
    assert (out / "last.pth").read_bytes() == before
    code, err = cli_train(out, capsys, 1, "--overwrite", *SMALL_MODEL, "--batch-size", "16")
    assert code == 0, err
    assert (out / "last.pth").read_bytes() != before
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step") and len(rows) == 2  # a fresh log, not appended to the old one


@pytest.mark.slow  # two ONNX exports
def test_interrupted_export_leaves_the_previous_one_whole(run_dir, tmp_path, monkeypatch):
    pytest.importorskip("onnxscript")
    from marengine.export import onnx as exp

    out = tmp_path / "exp"
    exp.export_from_checkpoint(run_dir / "ema", out, parts=("head",))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = exp.export_module
    calls = []

    def dies_after_one(*a, **k):
        if calls:
            raise KeyboardInterrupt  # as a Ctrl-C or a kill would stop it midway
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(exp, "export_module", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        exp.export_from_checkpoint(run_dir / "ema", out, parts=("backbone", "head"), overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing left beside it


def test_orphan_temporaries_are_removed_and_step_files_are_whole(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    orphan = out / ".last.pth.marengine-abc12345.tmp"  # the name marengine's writers give their temporaries
    orphan.write_bytes(b"x" * 1000)
    t = run_training(small_train_config(out, max_steps=4, ckpt_every=2, save_every=2))
    assert not orphan.exists()
    assert t.step == 4
    from marengine.training.checkpoint import load_checkpoint

    for name in ("step-2.pth", "step-4.pth", "last.pth"):
        assert load_checkpoint(out / name)["step"] in (2, 4)
    assert load_checkpoint(out / "last.pth")["step"] == 4
    assert not list(out.glob(".*.tmp"))
