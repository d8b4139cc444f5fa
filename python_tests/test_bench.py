"""The benchmark suite: `marengine bench --quick` writes well-formed records, report and plots;
bad arguments give clear errors; the official-semantics anchor matches the engine. No
timing assertions: timings belong to the suite's output, not to tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("matplotlib")

from marengine.bench import official  # noqa: E402
from marengine.bench.flops import generation_flops  # noqa: E402
from marengine.bench.machine import MACHINE_FIELDS  # noqa: E402
from marengine.bench.records import Record, validate_record, validate_records, write_records  # noqa: E402
from marengine.bench.timing import PeakMemory, StageClock, interleaved, latency_metrics, percentile, summarize  # noqa: E402
from marengine.cli import main as cli  # noqa: E402
from marengine.config import SAMPLING_PRESETS  # noqa: E402

BENCHMARKS = {"quality", "e2e", "stages", "roofline", "head", "backbone", "presets", "eval", "latency"}
# the batch-1 latency is reported for these presets, those of them that config.py defines
LATENCY_PRESETS = [p for p in ("official", "fast", "turbo") if p in SAMPLING_PRESETS]


# ---------------------------------------------------------------- the quick suite, end to end
@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "marengine", "bench", "--quick", "--device", "cpu", "--threads", "1", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,  # a guard against a hang, not a speed check: the suite has its own per-benchmark limits
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "report:" in proc.stdout
    return out


@pytest.mark.slow  # the whole quick suite: 1-2 min on an idle machine, far more on a busy one
def test_records_are_well_formed(quick_suite):
    records = json.loads((quick_suite / "records.json").read_text())
    assert validate_records(records) == []
    assert {r["benchmark"] for r in records} == BENCHMARKS
    for r in records:
        assert all(k in r["machine"] for k in MACHINE_FIELDS), r["name"]
        assert r["machine"]["device"] == "cpu" and r["machine"]["torch_threads"] == 1
        assert r["params"]  # every record says what was run
    names = [(r["benchmark"], r["name"]) for r in records]
    assert len(names) == len(set(names)), "record names are unique within a benchmark"


@pytest.mark.slow  # the whole quick suite: 1-2 min on an idle machine, far more on a busy one
def test_e2e_compares_every_backend_side_by_side(quick_suite):
    e2e = [r for r in json.loads((quick_suite / "records.json").read_text()) if r["benchmark"] == "e2e"]
    assert {r["params"]["backend"] for r in e2e} == {"official", "engine-torch", "engine-native", "onnx-native"}
    for r in e2e:
        m = r["metrics"]
        assert m["s_per_image_p50"] > 0 and m["images_per_s"] > 0
        assert m["s_per_image_p50"] <= m["s_per_image_p90"] <= m["s_per_image_p99"]
        assert len(m["samples_s"]) == r["params"]["repeats"]
        assert m["speedup_vs_official"] is not None  # the anchor ran in the same run
        assert {"batch", "num_iter", "diffusion_steps", "cfg_on", "precision", "warmup"} <= set(r["params"])


@pytest.mark.slow  # the whole quick suite: 1-2 min on an idle machine, far more on a busy one
def test_stages_sum_to_the_total(quick_suite):
    stages = [r for r in json.loads((quick_suite / "records.json").read_text()) if r["benchmark"] == "stages"]
    assert stages
    for r in stages:
        m = r["metrics"]
        parts = sum(m[f"{s}_s_per_image"] for s in ("backbone", "head", "decode", "other"))
        assert parts == pytest.approx(m["total_s_per_image"], rel=1e-6)
        assert m["backbone_calls"] > 0 and m["head_calls"] > 0 and m["decode_calls"] == 1
        assert m["peak_memory_mb_per_image"] is not None and m["peak_memory_mb_per_image"] >= 0


@pytest.mark.slow  # the whole quick suite
def test_batch1_latency_per_preset(quick_suite):
    rows = [r for r in json.loads((quick_suite / "records.json").read_text()) if r["benchmark"] == "latency"]
    assert rows
    by_model: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_model.setdefault(r["params"]["model"], {})[r["params"]["preset"]] = r
    for model, presets in by_model.items():
        assert sorted(presets) == sorted(LATENCY_PRESETS), model  # every preset config.py has, no other
        for preset, r in presets.items():
            m = r["metrics"]
            assert 0 < m["s_per_image_b1_p50"] <= m["s_per_image_b1_p99"], (model, preset)
            assert len(m["samples_b1_s"]) == m["b1_runs"] == r["params"]["runs"] >= 2
            assert min(m["samples_b1_s"]) <= m["s_per_image_b1_p50"] and m["s_per_image_b1_p99"] <= max(
                m["samples_b1_s"]
            )
            assert m["images_per_s_batch"] > 0 and r["params"]["batch"] > 1
        assert presets["official"]["metrics"]["speedup_b1_vs_official"] == pytest.approx(1.0)
    report = (quick_suite / "report.md").read_text()
    assert "## Batch-1 latency" in report
    for preset in LATENCY_PRESETS:
        assert f"| {preset} |" in report


@pytest.mark.slow  # the whole quick suite
def test_eval_records(quick_suite):
    rows = {r["name"]: r["metrics"] for r in json.loads((quick_suite / "records.json").read_text())
            if r["benchmark"] == "eval"}  # fmt: skip
    assert set(rows) == {"generate", "features-digits", "features-256"}
    assert all(m["images_per_s"] > 0 for m in rows.values())
    shares = rows["generate"]["share_of_total"] + rows["features-digits"]["share_of_total"]
    assert shares == pytest.approx(1.0)


@pytest.mark.slow  # the whole quick suite: 1-2 min on an idle machine, far more on a busy one
def test_quality_and_roofline_records(quick_suite):
    records = json.loads((quick_suite / "records.json").read_text())
    quality = [r for r in records if r["benchmark"] == "quality" and "accuracy" in r["metrics"]]
    assert quality and all(0 <= r["metrics"]["accuracy"] <= 1 for r in quality)
    assert all("trained a few steps" in r["notes"] for r in quality)  # quick models are labelled
    train = [r for r in records if r["benchmark"] == "quality" and r["name"].endswith("/train")]
    assert train and train[0]["metrics"]["train_seconds"] > 0
    roof = [r for r in records if r["benchmark"] == "roofline"]
    kinds = {r["params"]["kind"] for r in roof}
    assert kinds == {"matmul", "head", "backbone"}
    assert all(r["metrics"]["gflops"] > 0 for r in roof)


@pytest.mark.slow  # the whole quick suite: 1-2 min on an idle machine, far more on a busy one
def test_report_and_plots(quick_suite):
    report = (quick_suite / "report.md").read_text()
    for section in ("## Machine", "## Key ratios", "## End to end", "## Per-stage breakdown", "## Speed vs quality"):
        assert section in report
    assert "## Roofline" in report and "## Runs" in report
    plots = sorted((quick_suite / "plots").glob("*.png"))
    assert {p.name for p in plots} >= {"e2e_speedup.png", "stages.png", "quality.png", "roofline.png"}
    for p in plots:
        data = p.read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{p.name}" in report
    for name in BENCHMARKS:
        log = quick_suite / "logs" / f"{name}.log"
        assert log.is_file() and log.stat().st_size > 0


# ---------------------------------------------------------------- bad arguments
def test_unknown_device_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["bench", "--device", "tpu"])
    assert e.value.code == 2
    assert "--device" in capsys.readouterr().err


def test_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert cli(["bench", "--quick", "--device", "cpu", "--out", str(f)]) == 2
    err = capsys.readouterr().err
    assert "marengine bench: error:" in err and "is an existing file" in err


def test_unknown_benchmark_name(tmp_path, capsys):
    assert cli(["bench", "--quick", "--only", "e2e,nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown benchmarks ['nope']" in capsys.readouterr().err


def test_bad_thread_count(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["bench", "--threads", "0"])
    assert e.value.code == 2 and "--threads" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_cuda_without_a_gpu_is_an_error(tmp_path, capsys):
    assert cli(["bench", "--quick", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "marengine bench: error: --device cuda asked for, but torch sees no GPU here: run with --device cpu (or auto)"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("only", ["", ",", "e2e,", " "])
def test_an_empty_benchmark_name_is_an_error(tmp_path, capsys, only):
    assert cli(["bench", "--quick", "--only", only, "--out", str(tmp_path / "o")]) == 2
    assert "--only names no benchmark" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # a marengine bench process
def test_relative_out_is_the_callers(tmp_path):
    """A relative --out is resolved against the caller's working directory: records, logs,
    report and plots all land there (the scripts run from the checkout); the load is recorded."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rel = f"bench-rel-{os.getpid()}"
    cmd = [sys.executable, "-m", "marengine", "bench", "--quick", "--only", "head", "--device", "cpu"]
    proc = subprocess.run(
        [*cmd, "--threads", "1", "--out", rel], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / rel
    for name in ("records.json", "report.md", "records/head.json", "logs/head.log"):
        assert (out / name).is_file(), name
    assert not (REPO / rel).exists()
    assert f"report:  {out / 'report.md'}" in proc.stdout
    for rec in json.loads((out / "records.json").read_text()):
        assert len(rec["machine"]["loadavg_start"]) == len(rec["machine"]["loadavg_end"]) == 3
        assert rec["machine"]["cpu_cores"] == os.cpu_count()
    report = (out / "report.md").read_text()
    assert "before the suite" in report and f"on {os.cpu_count()} cores" in report


def test_load_warning():
    from marengine.bench.machine import load_warning

    assert load_warning(0.9, 2) is None  # 0.9 <= 0.5 x 2
    assert load_warning(2.5, 2, own=2.0) is None  # our own two threads do not count
    line = load_warning(3.0, 2, own=1.0, when="at the end")
    assert line is not None and "busy at the end: load average 3.00 on 2 cores, ~2.0 besides" in line
    assert "besides" not in (load_warning(1.5, 2) or "besides")  # nothing of ours to subtract


def test_missing_benchmarks_folder_is_explained(tmp_path):
    from marengine.bench.suite import benchmarks_dir

    with pytest.raises(FileNotFoundError, match="source checkout"):
        benchmarks_dir(tmp_path)


# ---------------------------------------------------------------- pieces
def test_record_validation_catches_missing_machine_fields(tmp_path):
    machine = {k: 1 for k in MACHINE_FIELDS}
    good = Record("e2e", "x", {"a": 1}, {"t": float("nan")}, machine).to_dict()
    assert validate_record(good) == [] and good["metrics"]["t"] is None  # NaN -> null (strict JSON)
    bad = dict(good, machine={"cpu_model": "x"})
    assert any("machine lacks" in e for e in validate_record(bad))
    with pytest.raises(ValueError, match="malformed"):
        write_records(tmp_path / "r.json", [bad])
    assert json.loads(write_records(tmp_path / "r.json", [good]).read_text())[0]["name"] == "x"


def test_percentiles_and_interleaving():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    s = summarize([3.0, 1.0, 2.0])
    assert (s["p50"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    order: list[str] = []
    times = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, "cpu", warmup=1, repeats=2)
    assert order == ["a", "b", "a", "b", "b", "a"]  # warm-up, then rounds with the order rotated
    assert [len(v) for v in times.values()] == [2, 2]


def test_latency_metrics():
    m = latency_metrics([0.4, 0.1, 0.3, 0.2, 5.0], [2.0, 4.0, 3.0], batch=6)
    # p50 of five: the middle one; p99: 1% of the way back from the largest to the next, 0.96 of the last gap
    assert m["s_per_image_b1_p50"] == pytest.approx(0.3)
    assert m["s_per_image_b1_p99"] == pytest.approx(0.4 + 0.96 * (5.0 - 0.4))
    assert m["s_per_image_b1_mean"] == pytest.approx(1.2)
    assert m["b1_runs"] == 5
    assert m["images_per_s_batch"] == pytest.approx(6 / 3.0) and m["s_per_image_batch_p50"] == pytest.approx(0.5)


def test_stage_clock_and_peak_memory():
    clock = StageClock("cpu")
    f = clock.wrap("work", lambda n: sum(range(n)))
    assert f(1000) == sum(range(1000)) and f(10) == 45
    assert clock.calls == {"work": 2} and clock.totals()["work"] >= 0
    with PeakMemory("cpu") as mem:
        x = np.ones(16 * 2**20 // 8)  # 16 MiB touched
        x += 1
    assert mem.bytes is not None and mem.bytes >= 0 and mem.method


def test_flop_counts_match_the_design_figures():
    from marengine.config import MARConfig

    # DESIGN.md: backbone 11 / 26 / 50 TFLOP, head 3.5 / 7.1 / 15 TFLOP per image (64 iterations, CFG, 100 steps)
    for name, bb, head in (("mar_base", 11, 3.5), ("mar_large", 26, 7.1), ("mar_huge", 50, 15)):
        f = generation_flops(MARConfig.from_name(name).to_dict(), 64, 100, True)
        assert f["backbone"] / 1e12 == pytest.approx(bb, rel=0.05)
        assert f["head"] / 1e12 == pytest.approx(head, rel=0.05)


@pytest.mark.slow  # ~10 s CPU each: the anchor walks every token in Python
@pytest.mark.parametrize("cfg, schedule", [(1.0, "linear"), (3.0, "linear"), (2.0, "constant")])
def test_official_anchor_matches_the_engine(tiny_mar, cfg, schedule):
    """With temperature 0 (and the chain's per-step noise from another generator) the anchor's
    tokens equal the engine's torch-head tokens: same semantics, different per-step work."""
    with torch.no_grad():
        for p in tiny_mar.parameters():
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(p.numel()))
    labels = torch.tensor([1, 2, 3])
    for num_iter in (1, 5):
        ref = tiny_mar.sample_tokens(
            3, num_iter, cfg, schedule, labels, 0.0, generator=torch.Generator().manual_seed(5), backend="torch"
        )
        out = official.sample_tokens(
            tiny_mar,
            3,
            num_iter,
            cfg,
            schedule,
            labels,
            0.0,
            generator=torch.Generator().manual_seed(5),
            step_generator=torch.Generator().manual_seed(9),
        )
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_official_anchor_samples_with_noise(tiny_mar):
    g = torch.Generator().manual_seed(0)
    out = official.sample_tokens(tiny_mar, 2, 4, 3.0, "linear", torch.tensor([0, 1]), 1.0, generator=g)
    assert out.shape == (2, tiny_mar.vae_embed_dim, tiny_mar.seq_h, tiny_mar.seq_w)
    assert torch.isfinite(out).all()


def test_digits16_data_and_judge():
    from marengine.config import MARConfig
    from marengine.evaluation.digits import images_to_features
    from marengine.training.data import DigitsDataset

    small, big = DigitsDataset("heldout"), DigitsDataset("heldout", size=16)
    assert big.images.shape[1:] == (1, 16, 16) and len(big) == len(small)
    to_u8 = lambda x: ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(images_to_features(to_u8(big.images)), images_to_features(to_u8(small.images)))
    assert MARConfig.from_name("mar_digits16").img_size == 16
    with pytest.raises(ValueError, match="size 8 or 16"):
        DigitsDataset("all", size=12)


def test_plot_titles_and_legends_stay_clear(tmp_path, monkeypatch):
    """A long title is wrapped to its axes, the legend sits outside the axes (over no bar or
    label), and the saved PNG holds every artist (bbox_inches='tight')."""
    from marengine.bench import plots

    machine = {"cpu_model": "A CPU with a very long model name, 64-Core Processor, as /proc/cpuinfo gives it"}
    rows = [
        {
            "benchmark": "e2e",
            "params": {"model": "digits8", "backend": b, "sweep": "base"},
            "metrics": {"speedup_vs_official": s},
            "machine": machine,
        }
        for b, s in (("official", 1.0), ("engine-torch", 1.2), ("engine-native", 2.5), ("onnx-native", 2.6))
    ]
    seen = {}
    real_save = plots._save

    def check(fig, path):
        fig.canvas.draw()
        (ax,) = fig.axes
        renderer = fig.canvas.get_renderer()
        seen["title"] = ax.get_title()
        seen["legend_x0"] = ax.get_legend().get_window_extent(renderer).x0
        seen["axes_x1"] = ax.get_window_extent(renderer).x1
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", check)
    path = plots.e2e_speedup(rows, tmp_path)
    assert "\n" in seen["title"] and "64-Core" in seen["title"].replace("\n", " ")
    assert seen["legend_x0"] >= seen["axes_x1"]  # the legend is right of the axes
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
    assert width > 2.6 * 110  # grown past the axes to hold the legend


def test_a_silent_benchmark_is_stopped_at_its_timeout(tmp_path):
    """The timeout holds even when a benchmark prints nothing (a watchdog, not a check per line)."""
    from marengine.bench.suite import Benchmark, _run_one

    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "silent.py").write_text("import time\ntime.sleep(120)\n")
    out = tmp_path / "out"
    for sub in ("records", "logs"):
        (out / sub).mkdir(parents=True)
    bench = Benchmark("silent", "silent.py", common=False, timeout_s={"quick": 2, "full": 2})
    run = _run_one(bench, folder, "quick", "cpu", 1, out, echo=lambda line: None)
    assert run["status"] == "timed out after 2 s"
