"""`marengine export-onnx`: backbone, head step and decoder to ONNX, plus deploy.json."""

from __future__ import annotations

import argparse

from ..checks import check_int
from .common import add_checked, add_command, add_output_options

# the MAR exporter's knobs (export.onnx.export_from_checkpoint) and their defaults; a causal AR
# model takes none of them
KNOBS = {"fp16": False, "opset": None, "config": None, "vae": None, "tokenizer": "auto"}


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
    knobs = {name: getattr(args, name) for name in KNOBS}
    if member.causal:
        if knobs != KNOBS:
            raise ValueError("a causal AR model exports in fp32 at the default opset: drop --fp16/--opset/--vae/...")
        paths = export_ar_from_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
    else:
        paths = export_from_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite, **knobs)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "export-onnx", "export backbone, head step and decoder to ONNX", cmd_export_onnx)
    p.add_argument("--checkpoint", required=True, help="pretrained folder, training .pth, or official .pth")
    add_output_options(
        p,
        "output folder, published whole when the export is complete: new or empty, or an earlier "
        "export with --overwrite; a folder holding other files is refused",
    )
    p.add_argument("--fp16", action="store_true", help="export the weights in float16 (default: float32)")
    add_checked(p, "--opset", check_int, KNOBS["opset"], "ONNX opset, 18 or newer (default: the exporter's)", lo=1)
    p.add_argument(
        "--config", default=KNOBS["config"], help="preset name or JSON config, required for an official .pth"
    )
    p.add_argument("--vae", default=KNOBS["vae"], help="kl16.ckpt: export the VAE decoder (default: none)")
    p.add_argument(
        "--tokenizer",
        choices=("auto", "vae", "pixel", "none"),
        default=KNOBS["tokenizer"],
        help="the decoder to export: auto (the VAE when --vae is given, else the pixel tokenizer where the "
        "latent channels fit it, else none), vae, pixel or none",
    )
