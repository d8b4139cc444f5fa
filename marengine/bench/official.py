"""The anchor of every speed-up: MAR sampling as the official code (LTH14/mar) runs it,
re-run eagerly on a marengine `MAR` (same module, same weights, so outputs are comparable).

Written from the official semantics, not from marengine's optimised loop:

- Backbone: tokens are dropped and scattered back with boolean-mask `nonzero` indexing
  (data-dependent shapes, a host sync per call), the buffer is written in place, the mask
  is a float tensor concatenated with the buffer's zeros on every call; with CFG the whole
  batch (tokens, mask, class embedding) is re-concatenated at every iteration.
- Iteration bookkeeping: the cosine mask ratio in numpy, `mask_len` as a one-element device
  tensor clamped with `minimum`/`maximum`, the next mask by a scatter of ones through the
  order (slicing by a device tensor: a host sync), the rows to predict by `logical_xor`,
  the CFG scale of the iteration as a device tensor.
- Head (`DiffLoss.sample` + `p_sample_loop`): with CFG the chain runs on the doubled batch
  (x_T drawn for half the rows and duplicated), the network through `forward_with_cfg`
  (both halves evaluated on the first half of x). Every diffusion step builds its timestep
  tensor from a Python list, maps it through the respacing table copied to the device,
  evaluates the network, splits eps and the variance output, uploads each float64
  coefficient table from the host and indexes it (the learned-range log-variance from the
  clipped posterior log-variance and log beta, the x_0 prediction, the posterior mean and
  variance), draws fresh noise, masks it at t = 0 and takes the step.

The random orders come from `marengine.models.masking.random_orders` and x_T from the
same generator in the same order as the engine, so with temperature 0 (and per-step noise
from another generator) the anchor and the engine give the same tokens up to rounding;
the test suite checks that.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from ..models.masking import random_orders
from ..utils import randn

if TYPE_CHECKING:
    from ..diffusion.schedule import DiffusionTables
    from ..models.mar import MAR


class OfficialDiffusion:
    """A respaced Gaussian diffusion that keeps its tables as float64 numpy arrays on the host
    and moves what a step needs to the device at every step, as the official one does."""

    def __init__(self, tables: DiffusionTables) -> None:
        betas = tables.betas.double().cpu().numpy()  # the respaced betas
        self.timestep_map = [int(t) for t in tables.timestep_map.tolist()]
        self.num_timesteps = len(betas)
        self.betas = betas
        abar = np.cumprod(1.0 - betas)
        abar_prev = np.append(1.0, abar[:-1])
        self.sqrt_recip_abar = np.sqrt(1.0 / abar)
        self.sqrt_recipm1_abar = np.sqrt(1.0 / abar - 1.0)
        self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        var = self.posterior_variance
        self.posterior_log_variance_clipped = np.log(np.append(var[1], var[1:])) if len(var) > 1 else np.zeros(0)
        self.posterior_mean_coef1 = betas * np.sqrt(abar_prev) / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)

    @staticmethod
    def take(table: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] broadcast to `like`'s shape: the whole float64 table goes to t's device first."""
        values = torch.from_numpy(table).to(device=t.device)[t].float()  # [N]
        return values.view(-1, *([1] * (like.ndim - 1))).expand(like.shape)

    def p_mean_variance(self, net_fn, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        c = x.shape[1]
        mapped = torch.tensor(self.timestep_map, device=t.device, dtype=t.dtype)[t]  # respaced -> training step
        out = net_fn(x, mapped)  # [N, 2C]
        eps, var_values = torch.split(out, c, dim=1)
        lo = self.take(self.posterior_log_variance_clipped, t, x)
        hi = self.take(np.log(self.betas), t, x)
        frac = (var_values + 1) / 2
        log_variance = frac * hi + (1 - frac) * lo
        variance = torch.exp(log_variance)
        x0 = self.take(self.sqrt_recip_abar, t, x) * x - self.take(self.sqrt_recipm1_abar, t, x) * eps
        mean = self.take(self.posterior_mean_coef1, t, x) * x0 + self.take(self.posterior_mean_coef2, t, x) * x
        self.take(self.posterior_variance, t, x)  # the posterior's variance terms are computed as well
        self.take(self.posterior_log_variance_clipped, t, x)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": x0}

    def p_sample_loop(
        self, net_fn, x_T: torch.Tensor, temperature: float | torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        x = x_T
        for i in list(range(self.num_timesteps))[::-1]:
            t = torch.tensor([i] * x.shape[0], device=x.device)
            out = self.p_mean_variance(net_fn, x, t)
            noise = randn(tuple(x.shape), generator, x.device, x.dtype)
            keep = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))  # no noise at the last step
            x = out["mean"] + keep * torch.exp(0.5 * out["log_variance"]) * noise * temperature
        return x


def official_head_sample(
    model: MAR,
    diffusion: OfficialDiffusion,
    z: torch.Tensor,
    temperature: float,
    cfg: float | torch.Tensor,
    generator: torch.Generator | None,
    step_generator: torch.Generator | None,
) -> torch.Tensor:
    """`DiffLoss.sample` of the official code: z [M, Z] -> tokens [M, C] (with CFG both halves
    of the chain are returned, the caller keeps the first)."""
    net, channels = model.diffloss.net, model.diffloss.in_channels
    if bool(cfg != 1.0):  # a one-element tensor in the official loop: this test syncs with the device
        half = randn((z.shape[0] // 2, channels), generator, z.device, torch.float32)
        x_T = torch.cat([half, half], dim=0)
        fn = lambda x, t: net.forward_with_cfg(x, t, z, cfg)
    else:
        x_T = randn((z.shape[0], channels), generator, z.device, torch.float32)
        fn = lambda x, t: net(x, t, z)
    return diffusion.p_sample_loop(fn, x_T, temperature, step_generator)


def official_encoder(model: MAR, x: torch.Tensor, mask: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
    """tokens [B, L, C], mask [B, L] (1 = unknown) -> encoder output [B, buffer + K, D]."""
    x = model.z_proj(x)
    bsz, _, dim = x.shape
    buf = model.buffer_size
    x = torch.cat([torch.zeros(bsz, buf, dim, device=x.device, dtype=x.dtype), x], dim=1)
    keep = torch.cat([torch.zeros(bsz, buf, device=x.device), mask], dim=1)  # [B, buffer + L], 1 = dropped
    x[:, :buf] = class_embedding.unsqueeze(1).to(x.dtype)
    x = model.z_proj_ln(x + model.encoder_pos_embed_learned)
    x = x[(1 - keep).nonzero(as_tuple=True)].reshape(bsz, -1, dim)  # drop the unknown tokens
    for block in model.encoder_blocks:
        x = block(x)
    return model.encoder_norm(x)


def official_decoder(model: MAR, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """encoder output [B, buffer + K, D] -> z [B, L, D_dec] (mask tokens at the unknown positions)."""
    x = model.decoder_embed(x)
    bsz, buf = x.shape[0], model.buffer_size
    keep = torch.cat([torch.zeros(bsz, buf, device=x.device), mask], dim=1)
    padded = model.mask_token.repeat(bsz, keep.shape[1], 1).to(x.dtype).clone()
    padded[(1 - keep).nonzero(as_tuple=True)] = x.reshape(-1, x.shape[2])
    x = padded + model.decoder_pos_embed_learned
    for block in model.decoder_blocks:
        x = block(x)
    x = model.decoder_norm(x)
    return x[:, buf:] + model.diffusion_pos_embed_learned


def _next_mask(mask_len: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: True at the first mask_len (a one-element device tensor) positions of each order."""
    bsz, seq_len = orders.shape
    out = torch.zeros(bsz, seq_len, device=orders.device)
    ones = torch.ones(bsz, seq_len, device=orders.device)
    return out.scatter(-1, orders[:, : int(mask_len.long())], ones).bool()


@torch.no_grad()
def sample_tokens(
    model: MAR,
    bsz: int,
    num_iter: int = 64,
    cfg: float = 1.0,
    cfg_schedule: str = "linear",
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    *,
    generator: torch.Generator | None = None,
    step_generator: torch.Generator | None = None,
    wrap: Callable[[str, Callable[..., Any]], Callable[..., Any]] | None = None,
) -> torch.Tensor:
    """Latents [bsz, C, h, w], sampled with the official loop's semantics and per-step work.

    generator: the orders and each call's x_T (drawn as the engine draws them);
    step_generator: the per-step noise of the diffusion chain (default: `generator`);
    wrap(stage, fn): wraps the "backbone" and "head" calls (e.g. a StageClock's timers)."""
    if cfg_schedule not in ("linear", "constant"):
        raise ValueError(f"unknown cfg_schedule {cfg_schedule!r}; choose 'linear' or 'constant'")
    step_generator = step_generator if step_generator is not None else generator
    wrap = wrap or (lambda stage, fn: fn)
    backbone = wrap("backbone", lambda x, m, ce: official_decoder(model, official_encoder(model, x, m, ce), m))
    head = wrap("head", official_head_sample)
    device = model.fake_latent.device
    seq_len = model.seq_len
    diffusion = OfficialDiffusion(model.diffloss.gen_tables)
    mask = torch.ones(bsz, seq_len, device=device)
    tokens = torch.zeros(bsz, seq_len, model.token_embed_dim, device=device)
    orders = random_orders(bsz, seq_len, generator, device)
    guided = not cfg == 1.0
    for step in range(num_iter):
        current = tokens.clone()
        if labels is not None:
            class_embedding = model.class_emb(labels.to(device))
        else:
            class_embedding = model.fake_latent.repeat(bsz, 1)
        if guided:
            tokens = torch.cat([tokens, tokens], dim=0)
            class_embedding = torch.cat([class_embedding, model.fake_latent.repeat(bsz, 1)], dim=0)
            mask = torch.cat([mask, mask], dim=0)
        z = backbone(tokens, mask, class_embedding)  # [B(x2), L, D]

        ratio = np.cos(math.pi / 2.0 * (step + 1) / num_iter)
        mask_len = torch.tensor([np.floor(seq_len * ratio)], device=device, dtype=torch.float32)
        remaining = torch.sum(mask, dim=-1, keepdim=True) - 1
        mask_len = torch.maximum(torch.tensor([1.0], device=device), torch.minimum(remaining, mask_len))
        mask_next = _next_mask(mask_len[0], orders)
        if step >= num_iter - 1:
            to_predict = mask[:bsz].bool()
        else:
            to_predict = torch.logical_xor(mask[:bsz].bool(), mask_next)
        mask = mask_next
        if guided:
            to_predict = torch.cat([to_predict, to_predict], dim=0)

        z = z[to_predict.nonzero(as_tuple=True)]  # [P(x2), D]
        if cfg_schedule == "linear":
            cfg_iter = 1 + (cfg - 1) * (seq_len - mask_len[0]) / seq_len  # a device tensor
        else:
            cfg_iter = cfg
        sampled = head(model, diffusion, z, temperature, cfg_iter, generator, step_generator)
        if guided:
            sampled, _ = sampled.chunk(2, dim=0)  # the null-class half only guided the chain
            to_predict, _ = to_predict.chunk(2, dim=0)
        current[to_predict.nonzero(as_tuple=True)] = sampled.to(current.dtype)
        tokens = current.clone()
    return model.unpatchify(tokens)
