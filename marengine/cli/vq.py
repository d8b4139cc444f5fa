"""`marengine train-vq`: train the small VQ tokenizer of the digits (the codes of the
cross-entropy members; `marengine train --loss ce --tokenizer vq --vq-ckpt OUT`)."""

from __future__ import annotations

import argparse

from ..checks import arg, check_float, check_int
from .common import add_overwrite_option, add_threads_option


def cmd_train_vq(args: argparse.Namespace) -> int:
    from ..config import VQConfig
    from ..training.vq import train_vq

    config = VQConfig(codebook_size=args.codebook_size, embed_dim=args.embed_dim, hidden=args.hidden)
    report = train_vq(
        args.out,
        config=config,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=args.progress,
        overwrite=args.overwrite,
    )
    print(report)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..config import VQConfig

    d = VQConfig()
    positive = {name: arg(check_int, name, lo=1) for name in ("--steps", "--batch-size", "--codebook-size")}
    p = sub.add_parser("train-vq", help="train the digits VQ tokenizer (codes for --loss ce)")
    p.add_argument(
        "--out",
        required=True,
        help="output folder (config.json + model.safetensors): new or empty, or an earlier train-vq output "
        "with --overwrite; a folder holding other files is refused",
    )
    add_overwrite_option(p)
    p.add_argument("--steps", type=positive["--steps"], default=3000)
    p.add_argument("--batch-size", type=positive["--batch-size"], default=128)
    p.add_argument("--lr", type=arg(check_float, "--lr", lo=0.0, lo_open=True), default=2e-3)
    p.add_argument("--codebook-size", type=positive["--codebook-size"], default=d.codebook_size)
    p.add_argument("--embed-dim", type=arg(check_int, "--embed-dim", lo=1), default=d.embed_dim)
    p.add_argument("--hidden", type=arg(check_int, "--hidden", lo=1), default=d.hidden)
    p.add_argument("--seed", type=arg(check_int, "--seed", lo=0), default=0)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    add_threads_option(p)
    p.set_defaults(fn=cmd_train_vq)
