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
from ..diffusion.samplers import HeadSampler
from ..ops.dispatch import weights_frozen
from ..schedules import Iteration, cfg_at, step_schedule
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
    generator, progress = a.generator, a.progress
    head = model.token_sampler(a, sampler, steps)  # the token-sampler policy the masked loop uses too
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
            left = seq_len - i - 1
            scale = cfg_at(cfg, cfg_schedule, seq_len, left)
            # no guidance at this step (scale 1): the conditional rows alone
            z_null = z[bsz:] if guided and scale != 1.0 else None
            it = Iteration(i, left, left == 0, scale if z_null is not None else 1.0, per_step[i], True)
            out[:, i] = head(z[:bsz], z_null, it)
    image_order = model.scatter_ordered(out, orders)
    if ce:  # after the loop: one host sync
        check_finite_result(bool(head.finite), "logits", cfg, temperature)
    else:
        check_finite_result(bool(torch.isfinite(out).all()), "latents", cfg, temperature)
    if ce:
        return image_order.reshape(bsz, model.seq_h, model.seq_w)
    return model.unpatchify(image_order)


def _rows(x: torch.Tensor, guided: bool) -> torch.Tensor:
    """The tokens of the batch for every row of the backbone (twice under CFG)."""
    return torch.cat([x, x]) if guided else x
