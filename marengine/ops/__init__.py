"""Operators of the Diffusion-Loss head: pure PyTorch reference and native kernels."""

from .dispatch import native_available  # noqa: F401
