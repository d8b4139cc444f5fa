"""marengine: a fast engine for MAR (masked autoregressive image generation with Diffusion Loss)."""

__version__ = "0.1.0"
