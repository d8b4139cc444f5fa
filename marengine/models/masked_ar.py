"""MAR's masked-autoregressive sampling loop (`MAR.sample_tokens`).

Step k: the backbone predicts z for every position from the known tokens;
the head samples the tokens the cosine schedule releases at this step, in a
random order per image. With CFG the batch is doubled with the null class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from ..checks import check_sampling
from ..ops.dispatch import weights_frozen
from ..schedules import CFG_SCHEDULES, cfg_at, next_mask_len
from ..utils import check_generator
from .masking import mask_by_order, random_orders

if TYPE_CHECKING:
    from .mar import MAR


def check_sampling_args(
    model: MAR, bsz: Any, num_iter: Any, cfg: Any, cfg_schedule: Any, labels: torch.Tensor | None, temperature: Any
) -> tuple[int, int, float, str, float]:
    """The checked (bsz, num_iter, cfg, cfg_schedule, temperature); labels must be [bsz] class indices."""
    out = check_sampling(model.seq_len, bsz, num_iter, cfg, cfg_schedule, temperature, CFG_SCHEDULES)
    if labels is not None:
        model._check_labels(labels, out[0])
    return out


def sample_tokens(
    model: MAR,
    bsz: int,
    num_iter: int,
    cfg: float,
    cfg_schedule: str,
    labels: torch.Tensor | None,
    temperature: float,
    progress: bool = False,
    *,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    backbone: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    clip_denoised: bool = False,
) -> torch.Tensor:
    """Latents [bsz, C, h, w]; randomness (orders, noise) only from `generator`.

    `backbone(tokens, known_idx, class_embedding) -> z` replaces `model.backbone`
    (e.g. `marengine.export.runtime.OnnxBackboneModule`)."""
    backbone = backbone or model.backbone
    model.check_weights()
    check_generator(generator)
    bsz, num_iter, cfg, cfg_schedule, temperature = check_sampling_args(
        model, bsz, num_iter, cfg, cfg_schedule, labels, temperature
    )
    device = model.fake_latent.device
    seq_len = model.seq_len
    tokens = torch.zeros(bsz, seq_len, model.token_embed_dim, device=device)
    mask = torch.ones(bsz, seq_len, dtype=torch.bool, device=device)
    orders = random_orders(bsz, seq_len, generator, device)
    guided = cfg != 1.0
    null = model.fake_latent.expand(bsz, -1)
    class_embedding = model.class_emb(labels.to(device)) if labels is not None else null
    if guided:
        class_embedding = torch.cat([class_embedding, null])

    with weights_frozen():  # the head's weights are fingerprinted once for the whole loop
        steps = range(num_iter)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="sampling")
        num_masked = seq_len
        for step in steps:
            known_idx = model.known_indices(mask)  # [B, K]
            x_in, idx_in = (tokens, known_idx)
            if guided:
                x_in, idx_in = torch.cat([tokens, tokens]), torch.cat([known_idx, known_idx])
            z = backbone(x_in.to(class_embedding.dtype), idx_in, class_embedding)  # [B(x2), L, D]

            mask_len = next_mask_len(step, num_iter, seq_len, num_masked)
            mask_next = mask_by_order(mask_len, orders)
            to_pred = mask if step >= num_iter - 1 else mask & ~mask_next  # [B, L]
            pred_idx = to_pred.nonzero(as_tuple=True)
            zs = z[:bsz][pred_idx]  # [P, D] row-major, as the official nonzero order
            if guided:
                zs = torch.cat([zs, z[bsz:][pred_idx]])
            scale = cfg_at(cfg, cfg_schedule, seq_len, mask_len)
            sampled = model.diffloss.sample(
                zs, temperature, scale, generator=generator, backend=backend, clip_denoised=clip_denoised
            )
            if guided:
                sampled = sampled[: zs.shape[0] // 2]  # the null-class rows only guided the chain
            tokens = tokens.clone()
            tokens[pred_idx] = sampled.to(tokens.dtype)
            mask = mask_next
            num_masked = mask_len
    return model.unpatchify(tokens)
