"""Models: the MAR backbone, Diffusion Loss, the KL-16 VAE and tokenizers."""
from .diffloss import DiffLoss
from .head import SimpleMLPAdaLN
from .mar import MAR, MODELS, mar_base, mar_huge, mar_large
from .pretrained import from_pretrained, load_official, save_pretrained

__all__ = ["MAR", "MODELS", "DiffLoss", "SimpleMLPAdaLN", "mar_base", "mar_large", "mar_huge",
           "from_pretrained", "load_official", "save_pretrained"]
