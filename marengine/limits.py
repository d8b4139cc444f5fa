"""The caps on every size marengine reads from a file or a setting, written once.

A size read from a file (a model's config.json, tokenizer.json, a latent cache's
index.json, an export's deploy.json) is checked against these caps and against the
weights or shards it describes before anything is allocated, so that a 30-byte edit
cannot make a loader allocate gigabytes or run for hours. The caps are far above
every model the paper trains (MAR-H: width 1280, 20 + 20 blocks, head 1536 x 12) and
far below what would exhaust a machine. Torch-free and numpy-free: the deploy sampler
imports it too.
"""

from __future__ import annotations

# ---------------------------------------------------------------- model configurations
MAX_DEPTH = 256  # transformer blocks of one stack (encoder, decoder, causal AR) and head residual blocks
MAX_WIDTH = 16384  # embedding widths, the head's width, hidden channels
MAX_HEADS = 256  # attention heads
MAX_CHANNELS = 4096  # token channels (vae_embed_dim, VQ embed_dim, image channels)
MAX_IMAGE_SIZE = 4096  # pixels per side
MAX_STRIDE = 256  # tokenizer stride, patch size
MAX_CLASSES = 1_000_000  # class_num
MAX_CODEBOOK = 1_048_576  # codes of a VQ tokenizer
MAX_BUFFER = 4096  # MAR's buffer tokens
MAX_MLP_RATIO = 64.0
MAX_BATCH_MUL = 64  # diffusion_batch_mul
MAX_SEQ_LEN = 65536  # tokens of one image

# the heads `marengine doctor` builds with real weights for its self-checks (MAR-H's head: 1536 x 12)
MAX_CHECK_WIDTH = 4096
MAX_CHECK_DEPTH = 32
MAX_CHECK_CHANNELS = 256

# ---------------------------------------------------------------- sampling settings
# Guidance and temperature far above these make the reverse diffusion overflow (black images);
# the paper samples with cfg <= 10 and temperatures around 1.
MAX_CFG = 100.0
MAX_TEMPERATURE = 10.0
USUAL_CFG, USUAL_TEMPERATURE = 10.0, 2.0  # what a non-finite result's message suggests staying under

# ---------------------------------------------------------------- data
MAX_CACHE_SHARDS = 1_000_000  # shards listed in a latent cache's index.json
MAX_JSON_BYTES = 64 << 20  # a metadata file (config, tokenizer, index, deploy) larger than this is refused
