"""The HTTP API's request bodies, checked: OpenAI's images shape, MAR's knobs.

    POST /v1/images/generations  {"prompt": "7" | 7 | "seven", "n": 1, "seed": 0,
                                  "response_format": "b64_json" | "png", "stream": false,
                                  "preview_every": 1, "timeout": 30, "size": "8x8",
                                  "num_iter": .., "cfg": .., "cfg_schedule": .., "temperature": ..,
                                  "preset": .., "sampler": .., "steps": ..}
    POST /v1/images/edits        the same, with "image" (base64 PNG of the model's size) and
                                 "mask" (base64 PNG: pixels to fill are transparent, alpha 0,
                                 as OpenAI's edits take them; without alpha, the white ones)

Every problem is a `BadRequest` (status 400, 413 or 422) with one line saying what to fix.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RESPONSE_FORMATS = ("b64_json", "png")
# the sampling knobs a request may set (SampleSettings fields); seed and batch size are the server's
KNOBS = (
    "num_iter", "cfg", "cfg_schedule", "temperature", "preset", "sampler", "steps", "cache", "order", "precision",
    "token_steps",
)  # fmt: skip
FIELDS = {"prompt", "n", "seed", "response_format", "stream", "preview_every", "timeout", "size", "user", "model"}
EDIT_FIELDS = {"image", "mask"}
MAX_SEED = 2**63 - 1


class BadRequest(ValueError):
    """A request the server refuses: HTTP `status` and one line for the client."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Limits:
    """What one request may ask for (the server's flags)."""

    max_n: int
    max_rows: int  # the engine's max_batch_rows: n x 2 with CFG must fit
    request_timeout: float
    image_size: int
    image_channels: int
    num_classes: int
    seq_len: int  # tokens of an image: the most iterations a request may ask for
    class_names: list[str] = field(default_factory=list)


@dataclass
class ImageRequest:
    labels: list[int]  # one per image (the prompt's class, n times)
    seed: int
    knobs: dict[str, Any]
    response_format: str
    stream: bool
    preview_every: int
    timeout: float
    image: np.ndarray | None = None  # uint8 [H, W, C] (edits)
    mask: np.ndarray | None = None  # bool [H, W], True = fill (edits)


def parse_json(body: bytes) -> dict[str, Any]:
    """A JSON object; NaN and Infinity are refused (they are not JSON)."""

    def no_constants(name: str) -> None:
        raise BadRequest(f"{name} is not a JSON number: send finite numbers")

    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=no_constants)
    except BadRequest:
        raise
    except RecursionError:
        raise BadRequest("the body nests too deeply to be a request") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"the body is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(obj).__name__}")
    return obj


def parse_request(obj: dict[str, Any], limits: Limits, *, edit: bool, default_seed: int) -> ImageRequest:
    """The checked request (knobs are checked again, with the model, by the engine's submit)."""
    allowed = FIELDS | set(KNOBS) | (EDIT_FIELDS if edit else set())
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    if "prompt" not in obj:
        raise BadRequest("'prompt' is required: a class label (0..) or a class name")
    label = parse_label(obj["prompt"], limits)
    n = _int(obj, "n", 1, 1, limits.max_n)
    seed = _int(obj, "seed", default_seed, 0, MAX_SEED)  # absent: the server's --seed
    fmt = obj.get("response_format", "b64_json")
    if fmt not in RESPONSE_FORMATS:
        raise BadRequest(f"response_format must be one of {list(RESPONSE_FORMATS)}, got {fmt!r}")
    stream = obj.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be true or false, got {stream!r}")
    if fmt == "png" and (n != 1 or stream):
        raise BadRequest("response_format 'png' returns one image: use n=1 without stream, or b64_json")
    preview_every = _int(obj, "preview_every", 1, 0, 10_000) if stream else 0  # previews only go to streams
    timeout = _number(obj, "timeout", limits.request_timeout, 0.001, limits.request_timeout)
    size = obj.get("size")
    want = f"{limits.image_size}x{limits.image_size}"
    if size is not None and size != want:
        raise BadRequest(f"size must be {want!r} (the model's), got {size!r}")
    knobs = {k: obj[k] for k in KNOBS if k in obj and obj[k] is not None}
    if "num_iter" in knobs:  # bounded before the settings build a per-iteration schedule
        knobs["num_iter"] = _int(obj, "num_iter", 1, 1, limits.seq_len)
    for k, v in knobs.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise BadRequest(f"{k} must be finite, got {v}")
    out = ImageRequest([label] * n, seed, knobs, fmt, stream, preview_every, timeout)
    if edit:
        out.image = decode_png(obj, "image", limits)
        out.mask = fill_mask(decode_png(obj, "mask", limits, mask=True))
    return out


def parse_label(prompt: Any, limits: Limits) -> int:
    """A class index from an int, a string of one, or a class name."""
    if isinstance(prompt, bool):
        raise BadRequest("prompt must be a class label or a class name, got a boolean")
    if isinstance(prompt, int):
        label = prompt
    elif isinstance(prompt, str) and prompt.strip().lstrip("-").isdigit() and len(prompt) < 20:
        label = int(prompt.strip())
    elif isinstance(prompt, str) and prompt.strip().lower() in [c.lower() for c in limits.class_names]:
        return [c.lower() for c in limits.class_names].index(prompt.strip().lower())
    else:
        shown = repr(prompt)[:60]
        names = f" or one of {limits.class_names[:10]}" if limits.class_names else ""
        raise BadRequest(f"unknown class {shown}: give a class label in [0, {limits.num_classes}){names}")
    if not 0 <= label < limits.num_classes:
        raise BadRequest(f"unknown class {label}: class labels are in [0, {limits.num_classes})")
    return label


def decode_png(obj: dict[str, Any], name: str, limits: Limits, mask: bool = False) -> np.ndarray:
    """uint8 [H, W, C] of a base64 PNG (or other PIL-readable image) of the model's size.
    Images keep the model's channels; masks keep an alpha channel if they have one."""
    from PIL import Image, UnidentifiedImageError

    if name not in obj or not isinstance(obj[name], str):
        raise BadRequest(f"'{name}' is required: a base64-encoded PNG of {limits.image_size}x{limits.image_size}")
    try:
        raw = base64.b64decode(obj[name], validate=True)
        img = Image.open(io.BytesIO(raw))
        side = limits.image_size
        if img.size != (side, side):
            raise BadRequest(
                f"'{name}' must be {side}x{side} pixels (the model's size), got {img.size[0]}x{img.size[1]}"
            )
        if mask:
            img = img.convert("RGBA" if "A" in img.getbands() else "L")
        else:
            img = img.convert("L" if limits.image_channels == 1 else "RGB")
        arr = np.asarray(img)
    except BadRequest:
        raise
    except (binascii.Error, ValueError, OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise BadRequest(f"'{name}' is not a readable base64 image ({type(e).__name__})") from None
    return arr[..., None] if arr.ndim == 2 else arr


def fill_mask(arr: np.ndarray) -> np.ndarray:
    """bool [H, W], True where to generate: transparent pixels (alpha 0) if the mask has alpha,
    else white ones (> 127)."""
    fill = arr[..., 3] == 0 if arr.shape[-1] == 4 else arr[..., 0] > 127
    if not fill.any():
        raise BadRequest("the mask marks no pixel to fill (transparent, or white without alpha)")
    return fill


def _int(obj: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    v = obj.get(name, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(f"{name} must be an integer, got {v!r}"[:200])
    if not lo <= v <= hi:
        raise BadRequest(f"{name} must be in [{lo}, {hi}], got {v}")
    return v


def _number(obj: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    v = obj.get(name, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise BadRequest(f"{name} must be a finite number, got {v!r}"[:200])
    if not lo <= v <= hi:
        raise BadRequest(f"{name} must be in [{lo}, {hi}] seconds, got {v}")
    return float(v)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG of one uint8 [H, W, C] image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def b64_images(images: np.ndarray) -> list[dict[str, str]]:
    """OpenAI's data list: [{"b64_json": base64 PNG}, ...] for uint8 [N, H, W, C]."""
    return [{"b64_json": base64.b64encode(png_bytes(a)).decode("ascii")} for a in images]
