"""Training the small VQ tokenizer of the digits (`marengine train-vq`): the codes the
cross-entropy members model.

Loss: reconstruction MSE + the quantizer's codebook and commitment terms, gradients
through the straight-through estimator. The codebook starts from encoder outputs (so no
code starts far from the data) and codes unused for `restart_every` steps are moved to
random encoder outputs (dead-code restarts), so the whole codebook stays in use.
Writes a pretrained folder (config.json, model.safetensors) that `--vq-ckpt` takes.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checks import check_float, check_int
from ..config import VQConfig
from ..files import claim_output_folder
from ..models.checkpoints import PRETRAINED_KIND
from ..models.vq import DigitsVQ
from .data import DigitsDataset

log = logging.getLogger("marengine.train_vq")


@dataclass
class VQReport:
    folder: Path
    steps: int
    heldout_mse: float  # reconstruction MSE on the held-out digits, images in [-1, 1]
    codes_used: int  # distinct codes the training digits use
    codebook_size: int

    def __str__(self) -> str:
        return (
            f"VQ tokenizer {self.folder}: {self.steps} steps, held-out reconstruction MSE {self.heldout_mse:.4f}, "
            f"{self.codes_used}/{self.codebook_size} codes in use"
        )


def _encode(model: DigitsVQ, x: torch.Tensor) -> torch.Tensor:
    """Encoder outputs [N, e] (one row per latent position) of images x."""
    z = model.quant_conv(model.encoder(x))
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def train_vq(
    out: str | os.PathLike,
    *,
    config: VQConfig | None = None,
    steps: int = 3000,
    batch_size: int = 128,
    lr: float = 2e-3,
    restart_every: int = 100,
    seed: int = 0,
    progress: bool = False,
    overwrite: bool = False,
) -> VQReport:
    """Train a DigitsVQ on the even-indexed half of the digits; write it to the folder `out`
    (new or empty, or an earlier pretrained folder of marengine's when `overwrite`)."""
    steps = check_int("steps", steps, lo=1)
    batch_size = check_int("batch_size", batch_size, lo=1)
    restart_every = check_int("restart_every", restart_every, lo=1)
    lr = check_float("lr", lr, lo=0.0, lo_open=True)
    out = claim_output_folder(out, PRETRAINED_KIND, overwrite=overwrite)  # before any work
    config = config or VQConfig()
    train, held = DigitsDataset("train").images, DigitsDataset("heldout").images  # [N, 1, 8, 8] in [-1, 1]
    if (config.channels, config.img_size) != (1, 8):
        raise ValueError(f"the digits are 1-channel 8x8 images; the VQ config says {config.channels}x{config.img_size}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DigitsVQ.from_config(config)
    with torch.no_grad():  # codebook from encoder outputs
        z = _encode(model, train)
        model.quantize.embedding.weight.copy_(z[torch.randperm(len(z), generator=gen)[: config.codebook_size]])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    used = torch.zeros(config.codebook_size, dtype=torch.bool)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="train-vq")
    for step in range(steps):
        for g in opt.param_groups:  # cosine decay to 10%
            g["lr"] = lr * (0.55 + 0.45 * math.cos(math.pi * step / steps))
        x = train[torch.randint(0, len(train), (batch_size,), generator=gen)]
        rec, codes, qloss = model(x)
        loss = F.mse_loss(rec, x) + qloss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        used[codes.flatten()] = True
        if (step + 1) % restart_every == 0 and step + 1 < steps:
            _restart_dead_codes(model, train, used, gen)
            used.zero_()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.4f}")
    if bar is not None:
        bar.close()
    model.eval()
    with torch.no_grad():
        heldout_mse = float(F.mse_loss(model.decode_codes(model.encode_codes(held)).clamp(-1, 1), held))
        codes_used = int(model.encode_codes(train).unique().numel())
    model.save_pretrained(out, overwrite=overwrite)
    report = VQReport(out, steps, heldout_mse, codes_used, config.codebook_size)
    log.info("%s", report)
    return report


@torch.no_grad()
def _restart_dead_codes(model: DigitsVQ, data: torch.Tensor, used: torch.Tensor, gen: torch.Generator) -> None:
    """Move the codes no batch used since the last restart onto random encoder outputs."""
    dead = (~used).nonzero()[:, 0]
    if len(dead) == 0:
        return
    z = _encode(model, data[torch.randint(0, len(data), (max(64, len(dead)),), generator=gen)])
    pick = torch.randint(0, len(z), (len(dead),), generator=gen)
    model.quantize.embedding.weight[dead] = z[pick]
