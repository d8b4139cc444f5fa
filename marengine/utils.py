"""Small shared torch helpers: seeded noise on any device, and the checks of tensors and
generators that API entry points make before any work (errors that say what to fix)."""

from __future__ import annotations

from typing import Sequence

import torch


def resolve_device(name: object) -> torch.device:
    """ "auto" (a GPU when torch sees one, else the CPU) or a device name that exists here."""
    if not isinstance(name, (str, torch.device)):
        raise TypeError(f"device must be a name such as 'cpu', 'cuda' or 'auto', got {type(name).__name__}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but torch sees no GPU here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"device {name!r} is not supported; use cpu, cuda, cuda:N or auto")
    return dev


def check_generator(generator: object) -> torch.Generator | None:
    """`generator` if it is None or a torch.Generator, else a TypeError."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, "
            f"got {type(generator).__name__}"
        )
    return generator


def check_tensor(
    name: str, x: object, shape: Sequence[int | None] | None = None, *, floating: bool | None = None
) -> torch.Tensor:
    """`x` if it is a tensor with data (not on the meta device) of `shape` (None: any size
    in that dimension) and, with floating=True/False, of a floating / integer dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_meta:
        raise ValueError(
            f"{name} is on the meta device (shapes only, no data): load the weights "
            "(load_state_dict(..., assign=True) or from_pretrained) and move the data to a real device"
        )
    if shape is not None and (x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape))):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(x.shape)}")
    if floating is True and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if floating is False and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")
    return x


def randn(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise drawn from `generator` (on the generator's device) and moved to `device`."""
    gen_device = generator.device if generator is not None else device
    noise = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)


def rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """Uniform [0, 1) noise drawn from `generator` and moved to `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)
