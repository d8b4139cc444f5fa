"""`marengine export-onnx`: backbone, head step and decoder to ONNX, plus deploy.json."""

from __future__ import annotations

import argparse

from ..checks import arg, check_int
from .common import add_overwrite_option, add_threads_option


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from ..export.ar_onnx import checkpoint_architecture, export_ar_from_checkpoint
    from ..export.onnx import export_from_checkpoint
    from ..models.family import member_class

    member = member_class(checkpoint_architecture(args.checkpoint))  # the family contract says what exports
    if not member.export_parts:
        raise ValueError(
            f"a {member.__name__} ({member.architecture!r}) is not exported to ONNX: the exporter deploys MAR "
            "with Diffusion Loss and the causal AR members (both losses)"
        )
    if member.causal:
        if args.fp16 or args.opset or args.vae or args.tokenizer != "auto" or args.config:
            raise ValueError("a causal AR model exports in fp32 at the default opset: drop --fp16/--opset/--vae/...")
        paths = export_ar_from_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
        for name, path in paths.items():
            print(f"{name}: {path}")
        return 0
    paths = export_from_checkpoint(
        args.checkpoint,
        args.out,
        fp16=args.fp16,
        opset=args.opset,
        config=args.config,
        vae=args.vae,
        tokenizer=args.tokenizer,
        overwrite=args.overwrite,
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-onnx", help="export backbone, head step and decoder to ONNX")
    p.add_argument("--checkpoint", required=True, help="pretrained folder, training .pth, or official .pth")
    p.add_argument(
        "--out",
        required=True,
        help="output folder, published whole when the export is complete: new or empty, or an earlier "
        "export with --overwrite; a folder holding other files is refused",
    )
    add_overwrite_option(p)
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--opset", type=arg(check_int, "--opset", lo=1), default=None, help="ONNX opset (18 or newer)")
    p.add_argument("--config", default=None, help="preset name or JSON config, required for an official .pth")
    p.add_argument("--vae", default=None, help="kl16.ckpt: export the VAE decoder")
    p.add_argument("--tokenizer", choices=("auto", "vae", "pixel", "none"), default="auto")
    add_threads_option(p)
    p.set_defaults(fn=cmd_export_onnx)
