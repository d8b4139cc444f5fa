"""Host memory of training from a sharded latent cache: does it stay flat as the cache grows?

    python benchmarks/bench_cache_memory.py                        # caches of 1,000 and 20,000 latents
    python benchmarks/bench_cache_memory.py --sizes 1000 20000 80000 --out rss.json

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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MOMENTS = (2, 32, 16, 16)  # [image/mirror, 2C, h, w] of KL-16 at 256 px
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


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def write_cache(folder: Path, n: int, shard_size: int) -> None:
    from marengine.config import VAE_LATENT_SCALE
    from marengine.training.latent_cache import LatentCacheWriter

    settings = {
        "synthetic": True,
        "scale": VAE_LATENT_SCALE,
        "moments_shape": list(MOMENTS),
        "dtype": "float32",
        "num_classes": 10,
        "class_names": [str(c) for c in range(10)],
        "num_items": n,
        "shard_size": shard_size,
    }
    w = LatentCacheWriter(folder, settings)
    if w.prepare():
        return
    rng = np.random.default_rng(0)
    for i in w.pending():
        k = len(w.item_range(i))
        moments = rng.standard_normal((k, *MOMENTS), dtype=np.float32)
        moments[:, :, MOMENTS[1] // 2 :] = -4.0  # log-variances of a confident posterior
        w.write(i, rng.integers(0, 10, k), moments)
    w.finalize()


def child_train(cache: str, steps: int, workers: int) -> dict:
    import torch

    from marengine.training.config import TrainConfig
    from marengine.training.trainer import Trainer

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
        t0 = time.perf_counter()
        trainer = Trainer(cfg)
        try:
            trainer.fit()
        finally:
            trainer.close()
        seconds = time.perf_counter() - t0
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
    t0 = time.perf_counter()
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
    return {
        "rss_before_mb": before,
        "rss_after_mb": rss_mb(),
        "peak_rss_mb": rss_mb("VmHWM"),
        "seconds": time.perf_counter() - t0,
        "checksum": total,
    }


def run_child(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True, env=env, cwd=REPO
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    ap.add_argument("--steps", type=int, default=100, help="training steps per run (batch 16)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeats", type=int, default=3, help="training runs per size and worker count")
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--passes", nargs="*", default=["pread", "mmap", "whole"])
    ap.add_argument("--dir", default=None, help="where to write the caches (default: a temporary folder)")
    ap.add_argument("--out", default=None, help="write the results as JSON")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, cache, *rest = args.child
        res = child_train(cache, int(rest[0]), int(rest[1])) if kind == "train" else child_pass(cache, rest[0])
        print(json.dumps(res))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = []
        for n in args.sizes:
            cache = Path(tmp) / f"cache-{n}"
            t0 = time.perf_counter()
            write_cache(cache, n, args.shard_size)
            size_mb = sum(p.stat().st_size for p in cache.iterdir()) / 2**20
            print(f"wrote {n} latents ({size_mb:.0f} MiB) in {time.perf_counter() - t0:.1f} s", flush=True)
            for w in args.workers:
                runs = [run_child("train", str(cache), str(args.steps), str(w)) for _ in range(args.repeats)]
                r = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
                r["peak_rss_mb_runs"] = [x["peak_rss_mb"] for x in runs]
                rows.append({"items": n, "cache_mib": size_mb, "run": f"train, {w} workers", **r})
                print(
                    f"  train {w} workers: peak {r['peak_rss_mb_runs']} MB, worker peak "
                    f"{r['worker_peak_rss_mb']:.0f} MB",
                    flush=True,
                )
            for how in args.passes:
                r = run_child("pass", str(cache), how)
                rows.append({"items": n, "cache_mib": size_mb, "run": f"read all, {how}", **r})
                print(f"  read all ({how}): rss {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} MB", flush=True)
    print(
        f"\n{'items':>7} {'cache MiB':>9}  {'run':<20} {'peak RSS MB':>11} {'end/after MB':>12} {'worker MB':>9}"
        "  (train: medians)"
    )
    for r in rows:
        end = r.get("end_rss_mb", r.get("rss_after_mb"))
        worker = f"{r['worker_peak_rss_mb']:9.0f}" if "worker_peak_rss_mb" in r else f"{'-':>9}"
        print(f"{r['items']:>7} {r['cache_mib']:>9.0f}  {r['run']:<20} {r['peak_rss_mb']:>11.0f} {end:>12.0f} {worker}")
    small, large = min(args.sizes), max(args.sizes)
    for w in args.workers:
        a, b = (next(r for r in rows if r["items"] == n and r["run"] == f"train, {w} workers") for n in (small, large))
        print(
            f"train, {w} workers: median peak RSS {b['peak_rss_mb']:.0f} MB at {large} latents vs "
            f"{a['peak_rss_mb']:.0f} MB at {small}: {b['peak_rss_mb'] - a['peak_rss_mb']:+.0f} MB "
            f"(runs {b['peak_rss_mb_runs']} vs {a['peak_rss_mb_runs']}; criterion: within 300 MB)"
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps({"rows": rows, "argv": sys.argv[1:], "loadavg": os.getloadavg()}, indent=2)
        )


if __name__ == "__main__":
    main()
