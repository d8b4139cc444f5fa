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
Prints a table (median ms per call, speedups vs eager) and writes the records with --out.

    python benchmarks/bench_backbone.py                      # small default, ~1-2 min on 2 cores
    python benchmarks/bench_backbone.py --preset mar_base --img-size 256 --no-compile --out out.json
    python benchmarks/bench_backbone.py --quick --out backbone.json   # tiny; records for the suite
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.bench.models import random_model  # noqa: E402
from marengine.bench.script import Table, add_common_args, add_rounds_args, apply_quick, run_main  # noqa: E402
from marengine.bench.timing import Timer, interleaved, summarize  # noqa: E402

QUICK = {"img_size": 8, "batch": [2], "known": ["0", "half"], "repeats": 3, "no_compile": True}
BACKENDS = {"eager": "eager", "compiled": "compile", "ort_cpu": "ort-cpu", "ort_cuda": "ort-cuda"}  # key -> column


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--preset", default="mar_digits", help="MARConfig preset (default mar_digits)")
    p.add_argument(
        "--img-size",
        type=int,
        default=32,
        help="image size: sets L = (img/vae_stride/patch)^2 (default 32 -> 256 tokens with mar_digits)",
    )
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32], help="batch sizes B (default 1 8 32)")
    p.add_argument(
        "--known",
        nargs="+",
        default=["0", "half", "last"],
        help="K values: integers, 'half' (L/2) or 'last' (L-1) (default 0 half last)",
    )
    add_rounds_args(p, warmup=1, repeats=12, what="per backend and shape (the warm-up before each block of calls)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile on few cores)")
    return apply_quick(p, p.parse_args(argv), QUICK)


def k_values(spec: list[str], L: int) -> list[int]:
    out = [L // 2 if s == "half" else L - 1 if s == "last" else int(s) for s in spec]
    if any(not 0 <= k <= L for k in out):
        raise SystemExit(f"K values must be in [0, {L}], got {out}")
    return out


def body(ctx, a: argparse.Namespace) -> None:
    device = ctx.device
    model = random_model(a.preset, "cpu", img_size=a.img_size)  # N(0, 0.02) weights
    cfg = model.config
    L, C, D = model.seq_len, model.token_embed_dim, cfg.encoder_embed_dim
    ks = k_values(a.known, L)

    from marengine.export.onnx import export_onnx
    from marengine.export.runtime import OnnxBackbone, import_onnxruntime

    ort = import_onnxruntime()
    tmp = tempfile.mkdtemp(prefix="bench_backbone_")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # MAR-B's export is ~0.7 GB: do not leave it behind
    export_s, paths = Timer("cpu")(lambda: export_onnx(model, tmp, parts=("backbone_embed",)))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = ctx.threads
    ort_cpu = OnnxBackbone(paths["backbone_embed"], ["CPUExecutionProvider"], opts)
    ort_cuda = None
    if "CUDAExecutionProvider" in ort.get_available_providers() and device.type == "cuda":
        ort_cuda = OnnxBackbone(paths["backbone_embed"], ["CUDAExecutionProvider", "CPUExecutionProvider"])
    model = model.to(device)
    compiled = None if a.no_compile else torch.compile(model.backbone, dynamic=True)
    compile_s = None
    timer = Timer(device)
    table = Table(
        [("B", "B", "", 4), ("K", "K", "", 5)]
        + [(col, f"{key}_ms", ".3f", 9) for key, col in BACKENDS.items()]
        + [(f"eager/{col}", f"x_{key}", ".2f", 14) for key, col in list(BACKENDS.items())[1:]]
        + [("max rel err", "ort_cpu_max_rel_err", ".2e", 12)]
    )
    for b in a.batch:
        for k in ks:
            gen = torch.Generator().manual_seed(b * 1000 + k)
            tokens = torch.randn(b, L, C, generator=gen)  # [B, L, C]
            idx = torch.stack([torch.randperm(L, generator=gen)[:k].sort().values for _ in range(b)]).reshape(b, k)
            ce = torch.randn(b, D, generator=gen)  # [B, D]
            td, id_, cd = tokens.to(device), idx.to(device), ce.to(device)
            tn, in_, cn = tokens.numpy(), idx.numpy(), ce.numpy()
            r: dict[str, Any] = {"B": b, "K": k}
            with torch.inference_mode():
                ref = model.backbone(td, id_, cd).float().cpu().numpy()
                fns: dict[str, Callable[[], object]] = {"eager": lambda: model.backbone(td, id_, cd)}
                if compiled is not None:
                    first, _ = timer(lambda: compiled(td, id_, cd))  # compiles (or recompiles for a new shape class)
                    compile_s = first if compile_s is None else compile_s
                    r["compile_first_call_s"] = round(first, 3)
                    fns["compiled"] = lambda: compiled(td, id_, cd)
                fns["ort_cpu"] = lambda: ort_cpu(tn, in_, cn)
                if ort_cuda is not None:
                    fns["ort_cuda"] = lambda: ort_cuda(td, id_, cd)
                times = interleaved(fns, device, warmup=a.warmup, repeats=a.repeats, block=max(1, -(-a.repeats // 3)))
            r |= {f"{key}_ms": 1e3 * summarize(t)["p50"] for key, t in times.items()}
            r["ort_cpu_max_rel_err"] = float(np.abs(ort_cpu(tn, in_, cn) - ref).max() / np.abs(ref).max())
            for key in times:
                r[f"x_{key}"] = r["eager_ms"] / r[f"{key}_ms"]
                params = {"preset": a.preset, "img_size": a.img_size, "seq_len": L, "batch": b, "known": k}
                params |= {"backend": key, "threads": ctx.threads, "exporter": ort_cpu.exporter}
                metrics = {"ms": r[f"{key}_ms"], "speedup_vs_eager": r[f"x_{key}"]}
                if key == "ort_cpu":
                    metrics["max_rel_err_vs_eager"] = r["ort_cpu_max_rel_err"]
                if key == "compiled":
                    metrics["compile_first_call_s"] = r["compile_first_call_s"]
                ctx.record(f"{a.preset}/img{a.img_size}/B{b}/K{k}/{key}", params, metrics, {"ms": "ms"})
            table.add(r)
    print(
        f"\n{a.preset} img {a.img_size}: L={L}, C={C}, D={D}, {cfg.encoder_depth}+{cfg.decoder_depth} blocks; "
        f"torch {torch.__version__} on {device}, onnxruntime {ort.__version__}, {ctx.threads} threads; "
        f"export {export_s:.1f}s ({ort_cpu.exporter})"
        + (f", first torch.compile {compile_s:.1f}s" if compile_s is not None else "")
    )


def main(argv: list[str] | None = None) -> int:
    return run_main("backbone", parse_args(argv), body)


if __name__ == "__main__":
    sys.exit(main())
