"""`marengine train-vq`: train the small VQ tokenizer of the digits (the codes of the
cross-entropy members; `marengine train --loss ce --tokenizer vq --vq-ckpt OUT`)."""

from __future__ import annotations

import argparse

from ..checks import check_float, check_int
from .common import add_checked, add_command, add_output_options, add_switch


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
    p = add_command(sub, "train-vq", "train the digits VQ tokenizer (codes for --loss ce)", cmd_train_vq)
    add_output_options(
        p,
        "output folder (config.json + model.safetensors): new or empty, or an earlier train-vq output "
        "with --overwrite; a folder holding other files is refused",
    )
    add_checked(p, "--steps", check_int, 3000, "training steps", lo=1)
    add_checked(p, "--batch-size", check_int, 128, "digit images per step", lo=1)
    add_checked(p, "--lr", check_float, 2e-3, "Adam learning rate", lo=0.0, lo_open=True)
    add_checked(p, "--codebook-size", check_int, d.codebook_size, "codes in the codebook", lo=1)
    add_checked(p, "--embed-dim", check_int, d.embed_dim, "channels of a code vector", lo=1)
    add_checked(p, "--hidden", check_int, d.hidden, "channels of the encoder and decoder convolutions", lo=1)
    add_checked(p, "--seed", check_int, 0, "seed of the initial weights and the batches", lo=0)
    add_switch(p, "--progress", True, "show a progress bar")
