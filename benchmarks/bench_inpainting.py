"""Inpainting on the demo model: the judge's figures and the README's picture.

Held-out real digits (scikit-learn's odd indices, never trained on) with the right half or
the bottom half masked are completed by `MARPipeline.inpaint`, once with their true label and
once with a wrong one ((label + 5) mod 10). The judge (marengine.evaluation.digits) reports
how often it recognises the true label, and how often it follows the wrong label, next to how
often it recognises that label on images generated from scratch (nothing known): known pixels
that contradict the label make the judge follow it less often.

    marengine demo --out-dir runs/demo
    python benchmarks/bench_inpainting.py --checkpoint runs/demo/ema --figure docs/images/inpainting.png
    python benchmarks/bench_inpainting.py --checkpoint runs/demo/ema --quick --out inpainting.json   # 30 digits
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.bench.script import Table, add_common_args, apply_quick, run_main  # noqa: E402
from marengine.evaluation.digits import evaluate  # noqa: E402
from marengine.files import atomic_write  # noqa: E402
from marengine.pipeline import MARPipeline  # noqa: E402
from marengine.sampling.engine import SampleSettings  # noqa: E402
from marengine.training.data import DigitsDataset  # noqa: E402

MASKS = {"right half": (slice(None), slice(4, None)), "bottom half": (slice(4, None), slice(None))}
QUICK = {"per_class": 3, "num_iter": 4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, threads=1)
    p.add_argument("--checkpoint", required=True, help="the demo model (runs/demo/ema), any 8x8 digits model")
    p.add_argument(
        "--per-class", type=int, default=30, help="held-out digits per class (default 30: 300 images; quick 3)"
    )
    p.add_argument("--num-iter", type=int, default=16, help="masked-AR iterations (default 16; quick 4)")
    p.add_argument("--cfg", type=float, default=2.0, help="guidance scale (default 2.0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--figure", type=Path, default=None, help="write the picture here (PNG; default: none)")
    return apply_quick(p, p.parse_args(argv), QUICK)


def heldout(per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 8, 8, 1] and labels [N]: the first `per_class` held-out digits of each class."""
    ds = DigitsDataset("heldout")
    labels = ds.labels.numpy()
    idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    images = np.round((ds.images[idx].numpy() + 1.0) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    return images, labels[idx]


def figure(path: Path, rows: list[tuple[str, np.ndarray]], scale: int = 6) -> None:
    """One row per entry (title, uint8 [n, 8, 8, 1]), each digit scaled up `scale`x, titles at the left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rows[0][1].shape[0]
    fig, axes = plt.subplots(len(rows), 1, figsize=(n * 0.55 + 2.2, len(rows) * 0.62))
    for ax, (title, imgs) in zip(axes, rows):
        strip = np.concatenate([np.pad(im[..., 0], 1, constant_values=255) for im in imgs], axis=1)
        ax.imshow(np.kron(strip, np.ones((scale, scale))), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_yticks([])
        ax.set_xticks([])
        ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def body(ctx, args: argparse.Namespace) -> None:
    images, labels = heldout(args.per_class)
    settings = SampleSettings(num_iter=args.num_iter, cfg=args.cfg, batch_size=len(images))
    pipe = MARPipeline.from_pretrained(args.checkpoint, device=ctx.device, settings=settings)
    if pipe.image_size != 8 or pipe.image_channels != 1:
        raise SystemExit(f"bench_inpainting needs an 8x8 one-channel digits model, got {args.checkpoint}")
    wrong = (labels + 5) % 10
    print(f"{len(images)} held-out digits; the judge recognises {evaluate(images, labels).accuracy:.1%} of them")
    table = Table(
        [("mask", "mask", "", 12), ("true label", "true_label_accuracy", ".1%", 10)]
        + [("wrong label followed", "wrong_label_followed", ".1%", 21), ("from scratch", "from_scratch", ".1%", 13)]
    )
    shown: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    scratch = evaluate(pipe(wrong, seed=args.seed, progress=False).array, wrong).accuracy
    for name, region in MASKS.items():
        mask = np.zeros((8, 8), bool)
        mask[region] = True
        true = pipe.inpaint(images, mask, labels, seed=args.seed, progress=False).array
        other = pipe.inpaint(images, mask, wrong, seed=args.seed, progress=False).array
        row = {
            "true_label_accuracy": evaluate(true, labels).accuracy,
            "wrong_label_followed": evaluate(other, wrong).accuracy,
            "from_scratch": scratch,
        }
        params = {"mask": name, "images": len(images), "num_iter": args.num_iter, "cfg": args.cfg, "seed": args.seed}
        ctx.record(name.replace(" ", "-"), {**params, "checkpoint": str(args.checkpoint)}, row)
        table.add({"mask": name, **row})
        shown[name] = (mask, true, other)
    if args.figure is not None:
        pick = np.array([np.flatnonzero(labels == c)[0] for c in range(10)])  # one digit per class
        mask, true, other = shown["right half"]
        given = images[pick].copy()
        given[:, mask] = 127
        rows = [
            ("held-out digit", images[pick]),
            ("given (grey: masked)", given),
            ("completed, true label", true[pick]),
            ("completed, label + 5", other[pick]),
        ]
        figure(args.figure, rows)
        print(f"wrote {args.figure}")


def main(argv: list[str] | None = None) -> int:
    return run_main("inpainting", parse_args(argv), body)


if __name__ == "__main__":
    sys.exit(main())
