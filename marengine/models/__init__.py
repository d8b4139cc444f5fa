"""Models: the MAR backbone, Diffusion Loss, the KL-16 VAE, tokenizers and their loading."""

from .checkpoints import load_official, save_pretrained
from .diffloss import DiffLoss
from .head import SimpleMLPAdaLN
from .loading import from_pretrained, load_model, load_weights
from .mar import MAR, MODELS, mar_base, mar_huge, mar_large
from .vae import AutoencoderKL

__all__ = [
    "MAR",
    "MODELS",
    "DiffLoss",
    "SimpleMLPAdaLN",
    "AutoencoderKL",
    "mar_base",
    "mar_large",
    "mar_huge",
    "from_pretrained",
    "load_model",
    "load_weights",
    "load_official",
    "save_pretrained",
]
