"""Causal sampling (`CausalAR.sample_tokens`): one token per step, with a kv-cache.

Step i (0 <= i < L) feeds one input per row (the class token at i = 0, else the token
sampled at step i-1) through the blocks, attending over the cached keys/values of the
earlier inputs, and the head samples the token at position orders[:, i] from z.
Classifier-free guidance doubles the rows: the conditional rows, then the same tokens
under the null class (`fake_latent`); the head mixes them (Diffusion Loss: on the
predicted noise; cross-entropy: on the logits) with the scale of `cfg_schedule`.

The cache is allocated once before the loop; inside it nothing reads a value back to
the host (no .item(), nonzero or data-dependent shapes): indices are Python ints and
positions are gathered on the device. `use_cache=False` recomputes the whole prefix
with the causal backbone at every step: the reference the cached loop is tested
against (same seed, same draws in the same order).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from ..checks import check_finite_result, check_int
from ..diffusion.samplers import DDPM, HeadSampler
from ..ops.dispatch import weights_frozen
from ..schedules import cfg_at, step_schedule
from .kv_cache import KVCache
from .sample_args import SampleArgs

if TYPE_CHECKING:
    from .ar import CausalAR


def check_num_iter(model: CausalAR, num_iter: Any) -> int:
    """A causal model predicts one token per step: num_iter is its L tokens (None: L)."""
    if num_iter is None:
        return model.seq_len
    num_iter = check_int("num_iter", num_iter, lo=1)
    if num_iter != model.seq_len:
        raise ValueError(
            f"a causal AR model generates one token per step: num_iter must be its {model.seq_len} tokens "
            f"(or None), got {num_iter}; fewer steps with several tokens each is what MAR does"
        )
    return num_iter


def sample_tokens(
    model: CausalAR,
    args: SampleArgs,
    *,
    backbone: Any = None,
    orders: torch.Tensor | None = None,
    use_cache: bool = True,
    kv_cache: KVCache | None = None,
    sampler: str | HeadSampler | None = None,
    steps: int | str | list[int] | None = None,
) -> torch.Tensor:
    """Latents [bsz, C, h, w] (diffusion) or codes [bsz, h, w] (ce); randomness only from `args.generator`."""
    if backbone is not None:
        raise ValueError("a causal AR model samples through its kv-cache: a stand-in backbone is not supported")
    num_iter = check_num_iter(model, args.num_iter)
    a = dataclasses.replace(args, num_iter=num_iter).checked(model)
    bsz, cfg, cfg_schedule, labels, temperature = a.bsz, a.cfg, a.cfg_schedule, a.labels, a.temperature
    generator, backend, clip_denoised, progress = a.generator, a.backend, a.clip_denoised, a.progress
    if model.loss == "ce" and (sampler is not None or steps is not None):
        raise ValueError("sampler and steps set the diffusion head's chain: a cross-entropy model has none")
    head_sampler = HeadSampler.parse(DDPM if sampler is None else sampler)
    per_step = step_schedule(steps, num_iter)  # diffusion steps of the head at each token
    device, seq_len = model.fake_latent.device, model.seq_len
    orders = model.sample_orders(bsz, generator) if orders is None else model.check_orders(orders.to(device), bsz)
    guided = cfg != 1.0
    null = model.fake_latent.expand(bsz, -1)
    class_embedding = model.class_emb(labels.to(device)) if labels is not None else null
    if guided:
        class_embedding = torch.cat([class_embedding, null])  # [2B, D]
    rows = class_embedding.shape[0]
    if use_cache:
        if kv_cache is None:
            kv_cache = model.allocate_cache(rows, class_embedding.dtype)
        kv_cache.check(model.depth, rows, model.num_heads, seq_len, model.head_dim, guided)
    elif kv_cache is not None:
        raise ValueError("use_cache=False recomputes the prefix at every step: do not pass a kv_cache")
    row_orders = torch.cat([orders, orders]) if guided else orders  # [R, L]

    ce = model.loss == "ce"
    out = torch.zeros((bsz, seq_len) if ce else (bsz, seq_len, model.token_embed_dim), device=device)
    out = out.long() if ce else out  # tokens in generation order
    finite = torch.ones((), dtype=torch.bool, device=device)  # the CE head's logits, checked after the loop
    steps = range(seq_len)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="sampling")
    with weights_frozen():
        for i in steps:
            if use_cache:
                prev = None if i == 0 else _rows(out[:, i - 1], guided)
                pos = None if i == 0 else row_orders[:, i - 1]
                x = model.step_input(prev, pos, row_orders[:, i], class_embedding)  # [R, 1, D]
                z = model.step(x, row_orders[:, i], kv_cache, i)  # [R, D]
            else:
                prefix = _rows(out[:, :i], guided)
                z = model.backbone(prefix, row_orders[:, : i + 1], class_embedding)[:, -1]  # [R, D]
            scale = cfg_at(cfg, cfg_schedule, seq_len, seq_len - i - 1)
            if not guided or scale == 1.0:
                z, scale = z[:bsz], 1.0  # no guidance at this step: the conditional rows alone
            head = {"sampler": head_sampler, "steps": per_step[i]}
            out[:, i] = _sample_head(model, z, temperature, scale, generator, backend, clip_denoised, head, finite)
    image_order = model.scatter_ordered(out, orders)
    if ce:  # after the loop: one host sync
        check_finite_result(bool(finite), "logits", cfg, temperature)
    else:
        check_finite_result(bool(torch.isfinite(out).all()), "latents", cfg, temperature)
    if ce:
        return image_order.reshape(bsz, model.seq_h, model.seq_w)
    return model.unpatchify(image_order)


def _rows(x: torch.Tensor, guided: bool) -> torch.Tensor:
    """The tokens of the batch for every row of the backbone (twice under CFG)."""
    return torch.cat([x, x]) if guided else x


def _sample_head(
    model: CausalAR,
    z: torch.Tensor,
    temperature: float,
    cfg: float,
    generator: torch.Generator | None,
    backend: str,
    clip_denoised: bool,
    head: dict[str, Any],
    finite: torch.Tensor,
) -> torch.Tensor:
    """The next token of each image [B, C] (code [B]) from z [R, D] (R = 2B when cfg != 1);
    head: the diffusion head's sampler and steps."""
    if model.loss == "ce":
        return model.ce_head.sample(z, temperature, cfg, generator=generator, finite=finite)
    sampled = model.diffloss.sample(
        z,
        temperature,
        cfg,
        generator=generator,
        backend=backend,
        clip_denoised=clip_denoised,
        check_finite=False,
        **head,
    )  # [R, C]; the null-class rows only guided the chain
    return sampled[: z.shape[0] // 2] if cfg != 1.0 else sampled
