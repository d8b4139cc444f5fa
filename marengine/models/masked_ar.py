"""MAR's masked-autoregressive sampling loop (`MAR.sample_tokens`).

Iteration k: the backbone predicts z for every position from the known tokens; the head
samples the tokens the cosine schedule releases at this iteration, in a random order per
image. With CFG the batch is doubled with the null class.

The policies the loop applies come in as plain arguments, defined in the layers below:
the head sampler and its diffusion steps per iteration (diffusion/samplers.py,
schedules.step_schedule), backbone caching (backbone_cache.CachePolicy), and known
tokens (editing: inpainting, outpainting, completion). With none of them the loop is
the official one, bit for bit what it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import torch

from ..checks import check_finite_result
from ..diffusion.samplers import DDPM, HeadSampler
from ..ops.dispatch import weights_frozen
from ..schedules import Iteration, TokenSteps, generation_plan, step_schedule
from ..utils import check_tensor
from .backbone_cache import BackboneCache, CachePolicy
from .masking import mask_by_order
from .orders import generation_orders
from .sample_args import SampleArgs, check_sampling_args  # noqa: F401 (check_sampling_args: pipeline.batching)
from .token_steps import token_row_steps

if TYPE_CHECKING:
    from .mar import MAR

Backbone = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def check_known(
    model: MAR, bsz: int, known_tokens: torch.Tensor | None, known_mask: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """known_tokens [B, L, C] float and known_mask [B, L] bool (True = given), both or neither;
    every image must have the same number of known tokens (the backbone batches them)."""
    if (known_tokens is None) != (known_mask is None):
        raise ValueError("give known_tokens and known_mask together (or neither)")
    if known_tokens is None:
        return None, None
    L, C = model.seq_len, model.token_embed_dim
    check_tensor("known_tokens", known_tokens, (bsz, L, C), floating=True)
    check_tensor("known_mask", known_mask, (bsz, L))
    if known_mask.dtype != torch.bool:
        raise TypeError(f"known_mask must be a bool tensor (True = the token is given), got {known_mask.dtype}")
    counts = known_mask.sum(1)
    if bsz and bool((counts != counts[0]).any()):
        raise ValueError(
            f"every image must have the same number of known tokens, got {sorted(set(counts.tolist()))}; "
            "sample images with different masks in separate calls (the pipeline groups them)"
        )
    if not torch.isfinite(known_tokens[known_mask]).all():
        raise ValueError("known_tokens are not finite (NaN or inf) at known positions")
    return known_tokens, known_mask


class TokenSampler(Protocol):
    """What the masked loop asks of a head: draw the tokens at the positions it predicts.

    `__call__(z, z_null, it)`: z [P, D] of the positions to predict, z_null [P, D] their
    null-class rows when guided (else None), and the plan of this iteration (its CFG scale and
    head steps: schedules.Iteration) -> the sampled values [P, ...]. `embed`: None when those
    values are the tokens themselves (Diffusion Loss), else a map from values to the tokens
    [P, C] the backbone reads back (the code embedding of a categorical head)."""

    embed: Callable[[torch.Tensor], torch.Tensor] | None

    def __call__(self, z: torch.Tensor, z_null: torch.Tensor | None, it: Iteration) -> torch.Tensor: ...

    def prepare(
        self, tokens: torch.Tensor, known: torch.Tensor, to_pred: torch.Tensor, pred_idx: tuple[torch.Tensor, ...]
    ) -> None:
        """The loop's state before a call: tokens [B, L, C], known [B, L], to_pred [B, L] and its
        nonzero indices (the rows of the next call); a head that needs none of it ignores it."""
        ...

    def known_inputs(self, known: torch.Tensor | None) -> torch.Tensor | None:
        """The known values the caller gave (editing) -> the known tokens [B, L, C] of the loop."""
        ...

    def finish(
        self, tokens: torch.Tensor, values: torch.Tensor | None, known_mask: torch.Tensor | None, cfg: float
    ) -> torch.Tensor:
        """The loop's (tokens [B, L, C], values [B, L] or None) -> what sample_tokens returns,
        after checking the result is finite."""
        ...


class DiffusionTokens:
    """MAR's token sampler: the Diffusion-Loss head's reverse diffusion for each row, with its
    sampler and diffusion steps per iteration; guided rows run as chains of their own.
    token_steps (schedules.TokenSteps): diffusion steps per token, from the known neighbours the
    loop shows it before each call (`prepare`; models/token_steps.py)."""

    embed = None

    def __init__(
        self,
        diffloss: torch.nn.Module,
        args: SampleArgs,
        sampler: str | HeadSampler | None,
        unpatchify: Callable[[torch.Tensor], torch.Tensor],
        token_steps: TokenSteps | None = None,
        grid: tuple[int, int] = (0, 0),
    ) -> None:
        self.diffloss, self.temperature = diffloss, args.temperature
        self.sampler = HeadSampler.parse(DDPM if sampler is None else sampler)  # the official DDPM by default
        self.token_steps, self.grid = token_steps, grid  # per-token steps and the token grid (h, w)
        self._context: tuple | None = None
        # the head's options for every call: randomness, kernels, clamping
        self.options = dict(generator=args.generator, backend=args.backend, clip_denoised=args.clip_denoised)
        self.unpatchify = unpatchify  # tokens [B, L, C] -> latents [B, C, h, w]

    def prepare(
        self, tokens: torch.Tensor, known: torch.Tensor, to_pred: torch.Tensor, pred_idx: tuple[torch.Tensor, ...]
    ) -> None:
        self._context = (tokens, known, to_pred, pred_idx) if self.token_steps is not None else None

    def _row_steps(self, it: Iteration) -> tuple[torch.Tensor | None, tuple[int, ...] | None]:
        if self.token_steps is None or self._context is None:
            return None, None
        default = self.diffloss.gen_tables.num_steps
        return token_row_steps(self.token_steps, it, default, *self._context, self.grid)

    def known_inputs(self, known: torch.Tensor | None) -> torch.Tensor | None:
        return known  # the known tokens themselves

    def finish(
        self, tokens: torch.Tensor, values: torch.Tensor | None, known_mask: torch.Tensor | None, cfg: float
    ) -> torch.Tensor:
        check_finite_result(bool(torch.isfinite(tokens).all()), "latents", cfg, self.temperature)
        return self.unpatchify(tokens)  # [B, C, h, w]

    def __call__(self, z: torch.Tensor, z_null: torch.Tensor | None, it: Iteration) -> torch.Tensor:
        zs = z if z_null is None else torch.cat([z, z_null])  # [P(x2), D]
        row_steps, counts = self._row_steps(it)
        # finiteness is checked once, at the end of the loop: no host sync per iteration
        sampled = self.diffloss.sample(
            zs,
            self.temperature,
            it.cfg,
            sampler=self.sampler,
            steps=it.head_steps if row_steps is None else None,
            check_finite=False,
            row_steps=row_steps,
            step_counts=counts,
            **self.options,
        )
        return sampled if z_null is None else sampled[: z.shape[0]]  # the null-class rows only guided the chain


def sample_tokens(
    model: MAR,
    args: SampleArgs,
    *,
    backbone: Backbone | None = None,
    sampler: str | HeadSampler | None = None,
    steps: int | str | Sequence[int] | None = None,
    cache: str | CachePolicy | None = None,
    known_tokens: torch.Tensor | None = None,
    known_mask: torch.Tensor | None = None,
    order: str = "random",
    token_steps: str | TokenSteps | None = None,
) -> torch.Tensor:
    """What a masked member samples (MAR: latents [bsz, C, h, w]; MAR-CE: codes [bsz, h, w]);
    randomness (orders, noise) only from `args.generator`. The member's `token_sampler` is the
    head (args.backend and args.clip_denoised concern a diffusion head).

    `backbone(tokens, known_idx, class_embedding) -> z` replaces `model.backbone` (e.g.
    `marengine.export.runtime.OnnxBackboneModule`; not with `cache`). sampler / steps: the
    diffusion head's sampler and its diffusion steps per iteration (see schedules.step_schedule;
    a categorical head has none).
    cache: a CachePolicy (or its string form) for cross-iteration reuse in the backbone;
    known_tokens (MAR: [B, L, C] tokens; MAR-CE: codes [B, h, w] or [B, L]) with known_mask
    [B, L] (True = given): those are kept exactly, the order covers only the others, and the
    schedule starts where the cosine schedule has that many tokens known. order: the
    generation order (models/orders.py: "random", the official one, "halton" or "lattice").
    token_steps: per-token head steps of a diffusion head (schedules.TokenSteps, e.g.
    "hf:boost=16,frac=0.25": the iteration's steps for most tokens, more for those whose known
    neighbours vary most)."""
    a = args.checked(model)
    step_schedule(steps, a.num_iter)  # checked before any work
    head = model.token_sampler(a, sampler, steps, TokenSteps.parse(token_steps))
    tokens, values = masked_loop(
        model,
        head,
        a.bsz,
        a.num_iter,
        a.cfg,
        a.cfg_schedule,
        a.labels,
        a.progress,
        a.generator,
        backbone,
        cache,
        head.known_inputs(known_tokens),
        known_mask,
        steps=steps,
        order=order,
    )
    return head.finish(tokens, values, known_mask, a.cfg)


def masked_loop(
    model: MAR,
    head: TokenSampler,
    bsz: int,
    num_iter: int,
    cfg: float,
    cfg_schedule: str,
    labels: torch.Tensor | None,
    progress: bool,
    generator: torch.Generator | None,
    backbone: Backbone | None,
    cache: str | CachePolicy | None,
    known_tokens: torch.Tensor | None,
    known_mask: torch.Tensor | None,
    steps: int | str | Sequence[int] | None = None,
    order: str = "random",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The masked-autoregressive loop, written once for every masked member (MAR, MAR-CE),
    generation and editing, running the plan of schedules.generation_plan: (tokens [B, L, C],
    the head's values [B, L] or None when the tokens are the values). Arguments are checked by
    the caller (check_sampling_args); `steps` is the head's step schedule, `order` the
    generation order (models/orders.py)."""
    policy = CachePolicy.parse(cache)
    if policy is not None and backbone is not None:
        raise ValueError("cache works on the model's own backbone; drop backbone= or cache=")
    known_tokens, known_mask = check_known(model, bsz, known_tokens, known_mask)
    backbone = backbone or model.backbone
    device = model.fake_latent.device
    seq_len = model.seq_len
    if known_tokens is None:
        tokens = torch.zeros(bsz, seq_len, model.token_embed_dim, device=device)
        mask = torch.ones(bsz, seq_len, dtype=torch.bool, device=device)
    else:
        known_mask = known_mask.to(device)
        tokens = torch.where(known_mask.unsqueeze(-1), known_tokens.to(device).float(), 0.0)
        mask = ~known_mask
    orders = generation_orders(order, model.seq_h, model.seq_w, bsz, generator, device, known_mask)
    values = None if head.embed is None else torch.zeros(bsz, seq_len, dtype=torch.long, device=device)
    num_masked = int(mask[0].sum()) if bsz else seq_len
    if num_masked == 0:  # nothing to generate: the given tokens are the image
        return tokens, values
    guided = cfg != 1.0
    null = model.fake_latent.expand(bsz, -1)
    class_embedding = model.class_emb(labels.to(device)) if labels is not None else null
    if guided:
        class_embedding = torch.cat([class_embedding, null])
    lazy = BackboneCache(model, policy, guided) if policy is not None else None

    plan = generation_plan(
        seq_len, num_iter, num_masked, cfg, cfg_schedule, steps, policy.is_full if policy is not None else None
    )
    if progress:
        from tqdm.auto import tqdm

        plan = tqdm(plan, desc="sampling")
    with weights_frozen():  # the head's weights are fingerprinted once for the whole loop
        for it in plan:
            mask_next = mask_by_order(it.mask_len, orders)
            to_pred = mask if it.last else mask & ~mask_next  # [B, L]
            if lazy is not None:
                z = lazy.z(it.refresh, tokens, ~mask, to_pred, class_embedding)
            else:
                known_idx = model.known_indices(mask)  # [B, K]
                x_in, idx_in = tokens, known_idx
                if guided:
                    x_in, idx_in = torch.cat([tokens, tokens]), torch.cat([known_idx, known_idx])
                z = backbone(x_in.to(class_embedding.dtype), idx_in, class_embedding)  # [B(x2), L, D]

            pred_idx = to_pred.nonzero(as_tuple=True)
            zs = z[:bsz][pred_idx]  # [P, D] row-major, as the official nonzero order
            z_null = z[bsz:][pred_idx] if guided else None
            head.prepare(tokens, ~mask, to_pred, pred_idx)
            new = head(zs, z_null, it)
            if values is not None:
                values[pred_idx] = new
                new = head.embed(new)
            tokens = tokens.clone()
            tokens[pred_idx] = new.to(tokens.dtype)
            mask = mask_next
    return tokens, values
