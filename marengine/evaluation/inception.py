"""The FID Inception-v3 (the 2015-12-05 TensorFlow graph, as torch-fidelity and pytorch-fid
port it) in plain torch: 2048-d pool features and 1008 logits for uint8 images of any size.

Conventions kept so that the numbers agree with torch-fidelity's `FeatureExtractorInceptionV3`:
- uint8 [N, 3, H, W] -> float32 -> TF1 bilinear resize to 299x299 (align_corners=False,
  half_pixel_centers=False; an image already 299x299 goes through it unchanged) -> (x - 128) / 128;
- conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU in every block;
- the TF variants of the blocks: average pools that leave the zero padding out of the count, and
  max (not average) pooling in the pool branch of the last block (Mixed_7c);
- "logits_unbiased" (for the Inception Score) = pool features @ fc.weight^T, without fc.bias.

The weights are the user's file (`weights-inception-2015-12-05-6726825d.pth`, or pytorch-fid's
`pt_inception-2015-12-05-*.pth`, same keys), loaded with `weights_only=True` and checked key by key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 299  # the network's input side
POOL_DIM = 2048  # FID features
NUM_LOGITS = 1008  # the TF graph's 1008 classes (1000 + unused)
WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding: Any = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average that, like TensorFlow's, divides by the in-image taps only."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([a, b, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """`max_pool`: the TF graph's last block (Mixed_7c) max-pools its pool branch; Mixed_7b averages."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([a, b, c, self.branch_pool(pooled)], 1)


def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """float [N, C, H, W] -> [N, C, size, size], TensorFlow 1.x `resize_bilinear` (align_corners=False,
    no half-pixel centers): output pixel i samples the input at i * (in / out), clamped at the far
    edge. The coordinates and weights are float32, in torch-fidelity's order of operations."""
    _, _, h, w = x.shape

    def axis(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(n_in / size, dtype=torch.float32)  # the ratio rounded to float32 first
        pos = torch.arange(size, dtype=x.dtype, device=x.device) * scale.to(x.device)  # [size]
        lo = pos.long()
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, pos - lo.to(pos.dtype)

    ylo, yhi, dy = axis(h)
    xlo, xhi, dx = axis(w)
    top, bottom = x[:, :, ylo, :], x[:, :, yhi, :]  # [N, C, size, W]
    dx = dx.view(1, 1, 1, size)
    row0 = top[..., xlo] + (top[..., xhi] - top[..., xlo]) * dx  # [N, C, size, size]
    row1 = bottom[..., xlo] + (bottom[..., xhi] - bottom[..., xlo]) * dx
    return row0 + (row1 - row0) * dy.view(1, 1, size, 1)


class InceptionV3FID(nn.Module):
    """The FID Inception-v3. forward(uint8 images) -> (pool features [N, 2048], unbiased logits [N, 1008]),
    both float32; the device is the module's."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.AvgPool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(POOL_DIM, NUM_LOGITS)
        self.requires_grad_(False)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.fc.weight.device

    @torch.no_grad()
    def forward(self, images: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images -> (pool [N, 2048], unbiased logits [N, 1008]); on a GPU the convolutions run in
        true float32 (cuDNN's TF32 default, ~1e-3 relative error, is switched off here)."""
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
            return self._forward(images)

    def _forward(self, images: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = as_uint8_nchw(images).to(self.device)  # [N, 3, H, W] uint8
        x = resize_bilinear_tf1(x.to(torch.float32), INPUT_SIZE)  # [N, 3, 299, 299]
        x = (x - 128) / 128
        x = self.MaxPool_1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))  # [N, 64, 73, 73]
        x = self.MaxPool_2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))  # [N, 192, 35, 35]
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a):
            x = block(x)  # -> [N, 768, 17, 17]
        for block in (self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a):
            x = block(x)  # -> [N, 1280, 8, 8]
        x = self.Mixed_7c(self.Mixed_7b(x))  # [N, 2048, 8, 8]
        pool = torch.flatten(self.AvgPool(x), 1)  # [N, 2048]
        logits = pool.mm(self.fc.weight.T)  # [N, 1008], no bias (torch-fidelity's "logits_unbiased")
        return pool, logits


def as_uint8_nchw(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 [N, 3, H, W] tensor, or uint8 [N, H, W, 3] numpy array -> uint8 [N, 3, H, W] tensor;
    anything else is refused with what was wrong."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 in [0, 255], got a {images.dtype} array: convert with "
                "round(clip(x * 255, 0, 255)) for images in [0, 1]"
            )
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"image arrays must be [N, H, W, 3] (RGB), got shape {list(images.shape)}")
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a uint8 tensor or numpy array, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 in [0, 255], got {images.dtype}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"image tensors must be [N, 3, H, W] (RGB), got shape {list(images.shape)}")
    return images


def _check_state_dict(model: nn.Module, state: Any, path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors, or one error naming the keys that are missing, unexpected or mis-shaped."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors: give the Inception file {WEIGHTS_NAME}")
    expected = model.state_dict()
    # BatchNorm's num_batches_tracked counters are optional (files converted from TensorFlow lack them)
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {list(state[k].shape)} (expected {list(expected[k].shape)})"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

        parts = [
            f"{len(missing)} missing keys ({few(missing)})" if missing else "",
            f"{len(unexpected)} unexpected keys ({few(unexpected)})" if unexpected else "",
            f"wrong shapes: {few(shapes)}" if shapes else "",
        ]
        raise ValueError(
            f"{path} is not the FID Inception-v3 ({WEIGHTS_NAME} layout): " + "; ".join(p for p in parts if p)
        )
    return state


def load_inception(path: str | os.PathLike, device: torch.device | str = "cpu") -> InceptionV3FID:
    """The FID Inception-v3 with the weights of `path` (torch-fidelity's or pytorch-fid's file), on `device`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights {path} not found: download {WEIGHTS_NAME} from "
            "torch-fidelity's GitHub release v0.2.0 and pass its path"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors of a file that is not a weights file
        raise ValueError(
            f"{path} could not be read as a torch weights file ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}): give the Inception file {WEIGHTS_NAME}"
        ) from e
    model = InceptionV3FID()
    state = _check_state_dict(model, state, path)
    model.load_state_dict(state, strict=False)  # the check above is the strict one
    return model.to(device)
