"""Host memory of training from a sharded latent cache: does it stay flat as the cache grows?

    python benchmarks/bench_cache_memory.py                        # caches of 1,000 and 20,000 latents
    python benchmarks/bench_cache_memory.py --sizes 1000 20000 80000 --out rss.json
    python benchmarks/bench_cache_memory.py --quick          # 200 and 1,000 latents, one run each

Writes synthetic caches (random moments of the real KL-16 shape at 256 px, [2, 32, 16, 16]
float32 = 64 KiB per item, through the cache writer's Python API), then, each in a fresh
process:
  train   a tiny training run (mar_tiny at 256 px, batch 16) from the cache: peak resident
          memory (VmHWM) of the training process, and of its largest DataLoader worker;
          repeated (--repeats), as the peak varies by ~100 MB from run to run (allocator
          behaviour under the random mask sizes): the median is compared;
  pass    one read of every item: resident memory before and after, read with the
          dataset (pread), with np.load(mmap_mode="r") (a memory map), and loaded whole
          (what the earlier single-file cache did).
The acceptance criterion: the 20,000-latent run's peak within 300 MB of the 1,000-latent run's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from marengine.bench.script import Table, add_common_args, add_count_arg, apply_quick, run_main  # noqa: E402
from marengine.bench.synthetic import write_latent_cache  # noqa: E402
from marengine.bench.timing import Timer, summarize  # noqa: E402

TINY = {
    "img_size": 256,
    "encoder_embed_dim": 32,
    "encoder_depth": 1,
    "encoder_num_heads": 2,
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
    "diffloss_w": 32,
    "diffloss_d": 1,
    "diffusion_batch_mul": 1,
}
QUICK = {"sizes": [200, 1000], "steps": 5, "workers": [0], "repeats": 1, "shard_size": 128, "passes": ["pread"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, device="cpu", threads=1)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000], help="cache sizes (default 1000 20000)")
    p.add_argument("--steps", type=int, default=100, help="training steps per run (batch 16; default 100)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers (default 0 2)")
    add_count_arg(p, "--repeats", 3, "training runs per size and worker count")
    p.add_argument("--shard-size", type=int, default=1024, help="items per cache shard (default 1024)")
    p.add_argument(
        "--passes", nargs="*", default=["pread", "mmap", "whole"], help="read-all passes (default pread mmap whole)"
    )
    p.add_argument("--dir", default=None, help="where to write the caches (default: a temporary folder)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    return apply_quick(p, p.parse_args(argv), QUICK)


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def child_train(cache: str, steps: int, workers: int) -> dict:
    import torch

    from marengine.bench.models import fit
    from marengine.training.config import TrainConfig

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(
            model="mar_tiny",
            model_overrides=TINY,
            data=cache,
            tokenizer="vae",
            batch_size=16,
            max_steps=steps,
            num_workers=workers,
            out_dir=out,
            ckpt_every=10**9,
            log_every=10**9,
            progress=False,
        )
        _, seconds = fit(cfg)
    worker_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # largest finished child, KiB on Linux
    return {
        "peak_rss_mb": rss_mb("VmHWM"),
        "end_rss_mb": rss_mb(),
        "worker_peak_rss_mb": worker_kb / 1024,
        "items_trained": steps * 16,
        "seconds": seconds,
    }


def child_pass(cache: str, how: str) -> dict:
    from marengine.training.latent_dataset import LatentCacheDataset

    ds = LatentCacheDataset(cache)
    before = rss_mb()

    def read_all() -> float:
        total = 0.0
        if how == "pread":
            for i in range(len(ds)):
                total += float(ds.read(i, i % 2)[0][0, 0, 0])
        elif how == "mmap":
            maps = [np.load(path, mmap_mode="r") for path in ds.shards]  # a dataset keeps its maps open
            for arr in maps:
                for j in range(len(arr)):
                    total += float(np.array(arr[j]["moments"][j % 2])[0, 0, 0])
        elif how == "whole":
            whole = np.concatenate([np.load(p)["moments"] for p in ds.shards])
            total = float(whole[:, 0, 0, 0, 0].sum())
        else:
            raise ValueError(how)
        return total

    seconds, total = Timer("cpu")(read_all)
    return {
        "rss_before_mb": before,
        "rss_after_mb": rss_mb(),
        "peak_rss_mb": rss_mb("VmHWM"),
        "seconds": seconds,
        "checksum": total,
    }


def run_child(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True, env=env, cwd=REPO
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def body(ctx, args: argparse.Namespace) -> None:
    table = Table(
        [("items", "items", "", 7), ("cache MiB", "cache_mib", ".0f", 9), ("run", "run", "", 20), "peak_rss_mb"]
        + [("end/after MB", "end_mb", ".0f", 12), ("worker MB", "worker_peak_rss_mb", ".0f", 9)],
        "(train: medians of the runs)",
    )
    rows: list[dict[str, Any]] = []

    def add(row: dict[str, Any], name: str) -> None:
        rows.append(row)
        row["end_mb"] = row.get("end_rss_mb", row.get("rss_after_mb"))
        params = {"items": row["items"], "run": row["run"], "steps": args.steps, "shard_size": args.shard_size}
        metrics = {k: v for k, v in row.items() if k not in ("items", "run")}
        ctx.record(name, params, metrics, {k: "MB" for k in metrics if k.endswith("_mb")})
        table.add(row)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for n in args.sizes:
            cache = Path(tmp) / f"cache-{n}"
            seconds, _ = Timer("cpu")(lambda: write_latent_cache(cache, n, shard_size=args.shard_size))
            size_mb = sum(p.stat().st_size for p in cache.iterdir()) / 2**20
            print(f"wrote {n} latents ({size_mb:.0f} MiB) in {seconds:.1f} s", flush=True)
            for w in args.workers:
                runs = [run_child("train", str(cache), str(args.steps), str(w)) for _ in range(args.repeats)]
                r = {k: summarize([x[k] for x in runs])["p50"] for k in runs[0]}
                r["peak_rss_mb_runs"] = [x["peak_rss_mb"] for x in runs]
                add({"items": n, "cache_mib": size_mb, "run": f"train, {w} workers", **r}, f"n{n}/train/w{w}")
            for how in args.passes:
                r = run_child("pass", str(cache), how)
                add({"items": n, "cache_mib": size_mb, "run": f"read all, {how}", **r}, f"n{n}/read/{how}")
    small, large = min(args.sizes), max(args.sizes)
    for w in args.workers:
        a, b = (next(r for r in rows if r["items"] == n and r["run"] == f"train, {w} workers") for n in (small, large))
        print(
            f"train, {w} workers: median peak RSS {b['peak_rss_mb']:.0f} MB at {large} latents vs "
            f"{a['peak_rss_mb']:.0f} MB at {small}: {b['peak_rss_mb'] - a['peak_rss_mb']:+.0f} MB "
            f"(runs {b['peak_rss_mb_runs']} vs {a['peak_rss_mb_runs']}; criterion: within 300 MB)"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:  # one measurement in this fresh process: its JSON on the last line
        kind, cache, *rest = args.child
        print(
            json.dumps(
                child_train(cache, int(rest[0]), int(rest[1])) if kind == "train" else child_pass(cache, rest[0])
            )
        )
        return 0
    return run_main("cache_memory", args, body)


if __name__ == "__main__":
    sys.exit(main())
