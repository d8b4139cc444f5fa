"""MAR backbone latency: torch eager vs torch.compile vs onnxruntime, side by side.

For each batch size B and number of known tokens K (0 = the first sampling step, L/2,
L-1 = the last), times `MAR.backbone(tokens [B, L, C], known_idx [B, K], class_embedding)`
on random weights:
  eager     torch, inference mode
  compile   torch.compile(dynamic=True) of the same call (one compile serves all B, K)
  ort-cpu   the exported backbone_embed.onnx on onnxruntime's CPU provider (OnnxBackbone:
            numpy in/out, input validation included)
  ort-cuda  the same file on the CUDA provider with IO binding (torch CUDA tensors in
            place), when onnxruntime-gpu and a GPU are present
Prints a table (median ms per call, speedups vs eager) and writes JSON with --json.

    python benchmarks/bench_backbone.py                      # small default, ~1-2 min on 2 cores
    python benchmarks/bench_backbone.py --preset mar_base --img-size 256 --no-compile --json out.json
    python benchmarks/bench_backbone.py --quick --out backbone.json   # tiny; records for the suite
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.config import MARConfig  # noqa: E402
from marengine.models import MAR  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="mar_digits", help="MARConfig preset (default mar_digits)")
    p.add_argument(
        "--img-size",
        type=int,
        default=32,
        help="image size: sets L = (img/vae_stride/patch)^2 (default 32 -> 256 tokens with mar_digits)",
    )
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument(
        "--known", nargs="+", default=["0", "half", "last"], help="K values: integers, 'half' (L/2) or 'last' (L-1)"
    )
    p.add_argument("--repeats", type=int, default=12, help="timed calls per backend and shape")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before each block of timed calls")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch and ORT CPU threads")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile on few cores)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="device of the torch runs")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--out", default=None, help="write benchmark records here (marengine bench format)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="tiny shapes (unless given)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="the defaults above")
    p.set_defaults(mode="full")
    args = p.parse_args()
    if args.mode == "quick":  # tiny shapes, for the options left at their defaults
        for key, value in QUICK.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    return args


QUICK = {"img_size": 8, "batch": [2], "known": ["0", "half"], "repeats": 3, "no_compile": True}


def write_records(path: str, info: dict, args: argparse.Namespace) -> None:
    """One record per (B, K, backend) in the suite's format (marengine.bench.records)."""
    from marengine.bench.machine import finish_info, machine_info
    from marengine.bench.records import Record
    from marengine.bench.records import write_records as write

    machine = finish_info(machine_info(info["device"]))  # taken at the end: start and end loads alike
    recs = []
    for r in info["results"]:
        for key in ("eager_ms", "compiled_ms", "ort_cpu_ms", "ort_cuda_ms"):
            if key not in r:
                continue
            backend = key.removesuffix("_ms")
            params = {"mode": args.mode, "device": info["device"], "preset": info["preset"], "img_size": args.img_size}
            params |= {"seq_len": info["seq_len"], "batch": r["B"], "known": r["K"], "backend": backend}
            params |= {"threads": info["threads"], "exporter": info["exporter"]}
            metrics = {"ms": r[key], "speedup_vs_eager": r["eager_ms"] / r[key]}
            if backend == "ort_cpu":
                metrics["max_rel_err_vs_eager"] = r["ort_cpu_max_rel_err"]
            name = f"{info['preset']}/img{args.img_size}/B{r['B']}/K{r['K']}/{backend}"
            recs.append(Record("backbone", name, params, metrics, machine, {"ms": "ms"}))
    write(path, recs)
    print(f"wrote {len(recs)} records to {path}")


def interleaved_ms(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int, sync: Callable[[], None], rounds: int = 3
) -> dict[str, float]:
    """Median ms per call of each function, over `rounds` rounds that time each function in
    turn (a block of calls each), so that load from other processes on a shared machine
    hits all of them alike; blocks rather than single calls, so that one runtime's idle
    spinning threads do not land in another's timing."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    per_round = max(1, -(-repeats // rounds))
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(warmup):
                fn()
            sync()
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def k_values(spec: list[str], L: int) -> list[int]:
    out = []
    for s in spec:
        out.append(L // 2 if s == "half" else L - 1 if s == "last" else int(s))
    if any(not 0 <= k <= L for k in out):
        raise SystemExit(f"K values must be in [0, {L}], got {out}")
    return out


def main() -> int:
    a = parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    cfg = MARConfig.from_name(a.preset, img_size=a.img_size, attn_dropout=0.0, proj_dropout=0.0)
    torch.manual_seed(0)
    model = MAR.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    L, C, D = model.seq_len, model.token_embed_dim, cfg.encoder_embed_dim
    ks = k_values(a.known, L)

    from marengine.export.onnx import export_onnx
    from marengine.export.runtime import OnnxBackbone, import_onnxruntime

    ort = import_onnxruntime()
    tmp = tempfile.mkdtemp(prefix="bench_backbone_")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # MAR-B's export is ~0.7 GB: do not leave it behind
    t0 = time.perf_counter()
    paths = export_onnx(model, tmp, parts=("backbone_embed",))
    export_s = time.perf_counter() - t0
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    ort_cpu = OnnxBackbone(paths["backbone_embed"], ["CPUExecutionProvider"], opts)
    ort_cuda = None
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        ort_cuda = OnnxBackbone(paths["backbone_embed"], ["CUDAExecutionProvider", "CPUExecutionProvider"])
    model = model.to(device)

    compiled, compile_s = None, None
    if not a.no_compile:
        compiled = torch.compile(model.backbone, dynamic=True)

    rows = []
    header = (
        f"{'B':>4} {'K':>5} {'eager':>9} {'compile':>9} {'ort-cpu':>9} {'ort-cuda':>9}"
        f" {'eager/compile':>14} {'eager/ort-cpu':>14} {'eager/ort-cuda':>15} {'max rel err':>12}"
    )
    lines = []
    for b in a.batch:
        for k in ks:
            gen = torch.Generator().manual_seed(b * 1000 + k)
            tokens = torch.randn(b, L, C, generator=gen)
            idx = torch.stack([torch.randperm(L, generator=gen)[:k].sort().values for _ in range(b)]).reshape(b, k)
            ce = torch.randn(b, D, generator=gen)
            td, id_, cd = tokens.to(device), idx.to(device), ce.to(device)
            tn, in_, cn = tokens.numpy(), idx.numpy(), ce.numpy()
            r: dict[str, float] = {"B": b, "K": k}
            with torch.inference_mode():
                ref = model.backbone(td, id_, cd).float().cpu().numpy()
                fns: dict[str, Callable[[], object]] = {"eager_ms": lambda: model.backbone(td, id_, cd)}
                if compiled is not None:
                    t0 = time.perf_counter()
                    compiled(td, id_, cd)  # compiles (or recompiles for a new shape class)
                    sync()
                    first = time.perf_counter() - t0
                    compile_s = first if compile_s is None else compile_s
                    r["compile_first_call_s"] = round(first, 3)
                    fns["compiled_ms"] = lambda: compiled(td, id_, cd)
                fns["ort_cpu_ms"] = lambda: ort_cpu(tn, in_, cn)
                if ort_cuda is not None:
                    fns["ort_cuda_ms"] = lambda: ort_cuda(td, id_, cd)
                r.update(interleaved_ms(fns, a.repeats, a.warmup, sync))
            err = float(np.abs(ort_cpu(tn, in_, cn) - ref).max() / np.abs(ref).max())
            r["ort_cpu_max_rel_err"] = err
            rows.append(r)

            def fmt(key: str) -> str:
                return f"{r[key]:9.3f}" if key in r else f"{'-':>9}"

            def ratio(key: str, width: int) -> str:
                return f"{r['eager_ms'] / r[key]:{width}.2f}x" if key in r else f"{'-':>{width + 1}}"

            lines.append(
                f"{b:>4} {k:>5} {fmt('eager_ms')} {fmt('compiled_ms')} {fmt('ort_cpu_ms')} "
                f"{fmt('ort_cuda_ms')} {ratio('compiled_ms', 13)} {ratio('ort_cpu_ms', 13)} "
                f"{ratio('ort_cuda_ms', 14)} {err:12.2e}"
            )
            print(lines[-1] if len(lines) > 1 else header + "\n" + lines[-1], flush=True)

    info = {
        "preset": a.preset,
        "config": cfg.to_dict(),
        "seq_len": L,
        "token_dim": C,
        "embed_dim": D,
        "device": str(device),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "exporter": ort_cpu.exporter,
        "threads": a.threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "export_s": round(export_s, 2),
        "first_compile_s": compile_s,
        "repeats": a.repeats,
        "unit": "median ms per call",
        "results": rows,
    }
    print(
        f"\n{a.preset} img {a.img_size}: L={L}, C={C}, D={D}, {cfg.encoder_depth}+{cfg.decoder_depth} blocks; "
        f"torch {torch.__version__} on {device}, onnxruntime {ort.__version__}, {a.threads} threads; "
        f"export {export_s:.1f}s ({ort_cpu.exporter})"
        + (f", first torch.compile {compile_s:.1f}s" if compile_s is not None else "")
    )
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(info, indent=1))
        print(f"wrote {a.json}")
    if a.out:
        write_records(a.out, info, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
