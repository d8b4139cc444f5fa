"""Iteration-level continuous batching of MAR's masked loop.

A `LoopState` is one request's copy of the state `models.masked_ar.sample_tokens` keeps
(tokens, mask, order, iteration, its own generator), stepped by `batched_step` together
with other requests that may be at other iterations, with other numbers of known tokens
and other sampling knobs:

- encoder: one call per group of rows with the same number of known tokens K (the
  encoder sees only the known tokens), CFG rows next to their conditional rows;
- decoder: one call over all rows (it always sees every position);
- head: one reverse diffusion over the concatenated rows to predict of all requests that
  share (temperature, diffusion steps, sampler, clipping, backend); the torch head takes a
  guidance scale per row, the native head one per call (rows grouped by scale too).

Each request draws its order and its noise from its own generator in the same sequence as
the plain loop run for it alone, so its tokens equal the plain loop's bit for bit wherever
the kernels give a row the same result whatever the other rows (batch-invariant kernels:
on the CPU, MKL's strict conditional-reproducibility mode, `batch_invariant_blas()`).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..diffusion.gaussian import sample_loop
from ..diffusion.samplers import HeadSampler, scales_start_noise
from ..models.masked_ar import check_known, check_sampling_args
from ..models.masking import mask_by_order
from ..models.orders import generation_orders
from ..ops import dispatch
from ..schedules import Iteration, cfg_combine, generation_plan, step_schedule
from ..settings import settings
from ..utils import randn

# MKL's conditional numerical reproducibility: AUTO code path, STRICT (a GEMM row's result
# does not depend on the number of rows); mkl_service.h's MKL_CBWR_AUTO | MKL_CBWR_STRICT
_MKL_CBWR_AUTO_STRICT = 2 | 0x10000


def batch_invariant_blas() -> bool:
    """Ask MKL (torch's CPU BLAS) for strict reproducibility, so that a matrix product gives a
    row the same bits whatever the other rows. It works only before the process's first MKL
    call (the server calls it at start); MKL_CBWR=AUTO,STRICT in the environment does the
    same. True when the mode is on (or MKL is not torch's BLAS: nothing to do)."""
    if settings().blas_strict:
        return True
    lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        setter = ctypes.CDLL(lib).mkl_serv_cbwr_set
    except (OSError, AttributeError):
        return "BLAS_INFO=mkl" not in torch.__config__.show()
    return setter(_MKL_CBWR_AUTO_STRICT) == 0


def check_engine_model(model: Any) -> None:
    """The engine steps MAR's masked loop: other families are refused with a clear error."""
    if getattr(model, "architecture", None) != "mar" or getattr(model, "causal", True):
        raise ValueError(
            f"continuous batching serves MAR models (masked, Diffusion Loss); this is a "
            f"{type(model).__name__}: sample it with MARPipeline.__call__"
        )


@dataclass
class LoopState:
    """One request's masked loop: bsz images of one settings, stepped by batched_step."""

    model: Any
    bsz: int
    num_iter: int
    cfg: float
    cfg_schedule: str
    temperature: float
    generator: torch.Generator
    backend: str
    clip_denoised: bool
    sampler: HeadSampler
    steps: Any  # the head's step schedule (schedules.step_schedule), checked
    labels: torch.Tensor
    tokens: torch.Tensor = field(init=False)  # [B, L, C]
    mask: torch.Tensor = field(init=False)  # [B, L] True = unknown
    orders: torch.Tensor = field(init=False)  # [B, L]
    class_embedding: torch.Tensor = field(init=False)  # [B or 2B, D]
    plan: list[Iteration] = field(init=False, default_factory=list)  # schedules.generation_plan
    step: int = field(init=False, default=0)
    num_masked: int = field(init=False, default=0)
    iterations_done: int = field(init=False, default=0)

    @property
    def guided(self) -> bool:
        return self.cfg != 1.0

    @property
    def rows(self) -> int:
        """Backbone rows this request takes (CFG doubles them)."""
        return self.bsz * (2 if self.guided else 1)

    @property
    def done(self) -> bool:
        return self.num_masked == 0 or self.step >= self.num_iter

    @property
    def total_iterations(self) -> int:
        """Iterations this request runs in all (editing starts part-way through the schedule)."""
        return self.iterations_done + (0 if self.done else self.num_iter - self.step)

    def latents(self) -> torch.Tensor:
        """[B, C, h, w] from the current tokens (unknown positions are 0 until done)."""
        return self.model.unpatchify(self.tokens).float()


def start_loop(
    model: Any,
    labels: list[int],
    num_iter: int,
    cfg: float,
    cfg_schedule: str,
    temperature: float,
    generator: torch.Generator,
    *,
    backend: str,
    clip_denoised: bool,
    sampler: str | HeadSampler,
    steps: Any,
    known_tokens: torch.Tensor | None = None,
    known_mask: torch.Tensor | None = None,
    order: str = "random",
) -> LoopState:
    """The state masked_ar.sample_tokens sets up before its first iteration, with the same
    checks and the same draws from `generator` (the order). The knobs continuous batching
    cannot apply (backbone reuse, per-token steps, bf16) are refused by the engine before this
    (engine.refuse_unbatchable), so they are not arguments here."""
    check_engine_model(model)
    device = model.fake_latent.device
    label_t = torch.tensor(labels, dtype=torch.int64, device=device)
    bsz, num_iter, cfg, cfg_schedule, temperature = check_sampling_args(
        model, len(labels), num_iter, cfg, cfg_schedule, label_t, temperature, generator
    )
    if backend not in ("auto", "torch", "native"):
        raise ValueError(f"unknown backend {backend!r}; choose one of auto, torch, native")
    s = LoopState(
        model,
        bsz,
        num_iter,
        cfg,
        cfg_schedule,
        temperature,
        generator,
        backend,
        bool(clip_denoised),
        HeadSampler.parse(sampler),
        steps,
        label_t,
    )
    step_schedule(steps, num_iter)  # checked before any work
    known_tokens, known_mask = check_known(model, bsz, known_tokens, known_mask)
    L = model.seq_len
    if known_tokens is None:
        s.tokens = torch.zeros(bsz, L, model.token_embed_dim, device=device)
        s.mask = torch.ones(bsz, L, dtype=torch.bool, device=device)
    else:
        known_mask = known_mask.to(device)
        s.tokens = torch.where(known_mask.unsqueeze(-1), known_tokens.to(device).float(), 0.0)
        s.mask = ~known_mask
    s.orders = generation_orders(order, model.seq_h, model.seq_w, bsz, generator, device, known_mask)
    s.num_masked = int(s.mask[0].sum()) if bsz else L
    null = model.fake_latent.expand(bsz, -1)
    s.class_embedding = model.class_emb(label_t)
    if s.guided:
        s.class_embedding = torch.cat([s.class_embedding, null])
    if s.num_masked:
        s.plan = generation_plan(L, num_iter, s.num_masked, cfg, cfg_schedule, steps)  # the plain loop's plan
        s.step = s.plan[0].step
    return s


@dataclass
class _Plan:
    """One request's part of one engine step."""

    state: LoopState
    it: Iteration  # this iteration of the request's plan
    mask_next: torch.Tensor  # [B, L]
    to_pred: torch.Tensor  # [B, L]
    known_idx: torch.Tensor  # [B, K]


def _plan(s: LoopState) -> _Plan:
    it = s.plan[s.step - s.plan[0].step]
    mask_next = mask_by_order(it.mask_len, s.orders)
    to_pred = s.mask if it.last else s.mask & ~mask_next  # [B, L]
    return _Plan(s, it, mask_next, to_pred, s.model.known_indices(s.mask))


def _backbone(model: Any, plans: list[_Plan]) -> list[torch.Tensor]:
    """z [rows, L, D] per plan: the encoder once per number of known tokens, the decoder once
    (the ops of MAR.encode_known / decode_known, on the concatenated rows)."""
    by_k: dict[int, list[int]] = {}
    for i, p in enumerate(plans):
        by_k.setdefault(p.known_idx.shape[1], []).append(i)
    dec_in: list[torch.Tensor | None] = [None] * len(plans)
    for members in by_k.values():
        xs, idxs, ces = [], [], []
        for i in members:
            s, idx = plans[i].state, plans[i].known_idx
            ces.append(s.class_embedding)
            xs.append(torch.cat([s.tokens, s.tokens]) if s.guided else s.tokens)
            idxs.append(torch.cat([idx, idx]) if s.guided else idx)
        ce = torch.cat(ces)
        idx = torch.cat(idxs)  # [R, K]
        enc = model.encode_known(torch.cat(xs).to(ce.dtype), idx, ce)  # [R, buffer + K, D]
        x = model.decoder_embed(enc)
        rows, _, dim = x.shape
        full = model.mask_token.to(x.dtype).expand(rows, model.seq_len + model.buffer_size, dim)
        pos = model._with_buffer(idx)
        x = full.scatter(1, pos.unsqueeze(-1).expand(-1, -1, dim), x) + model.decoder_pos_embed_learned
        start = 0
        for i in members:
            r = plans[i].state.rows
            dec_in[i] = x[start : start + r]
            start += r
    x = torch.cat(dec_in)  # [R_all, buffer + L, D_dec]
    x = model.decoder_norm(model._blocks(model.decoder_blocks, x))
    z = x[:, model.buffer_size :] + model.diffusion_pos_embed_learned
    out, start = [], 0
    for p in plans:
        out.append(z[start : start + p.state.rows])
        start += p.state.rows
    return out


@dataclass
class _HeadUnit:
    """One request's rows for the head, with the noise the plain loop draws for them."""

    zc: torch.Tensor  # [N, Z] the chains' conditioning
    zu: torch.Tensor | None  # [N, Z] the null class's (guided), else None
    x_T: torch.Tensor  # [N, C]
    step_noise: torch.Tensor | None  # [S, N, C]
    scale: float
    n_pred: int  # the first n_pred chain outputs are the new tokens


def _head_unit(p: _Plan, z: torch.Tensor) -> tuple[_HeadUnit, tuple]:
    """DiffLoss.sample's preparation for this request's rows (same checks, same draws)."""
    s = p.state
    head = s.model.diffloss
    pred_idx = p.to_pred.nonzero(as_tuple=True)
    zs = z[: s.bsz][pred_idx]  # [P, D]
    if s.guided:
        zs = torch.cat([zs, z[s.bsz :][pred_idx]])
    scale = p.it.cfg
    zs = head.check_z(zs)
    guided = scale != 1.0
    n = zs.shape[0] // 2 if guided else zs.shape[0]
    noise = randn((n, head.in_channels), s.generator, zs.device, torch.float32)
    tables = head.tables(p.it.head_steps)
    x_T = noise.float() * s.temperature if scales_start_noise(s.sampler) else noise.float()
    step_noise = None
    if s.temperature > 0 and not s.sampler.deterministic:
        step_noise = randn((tables.num_steps, n, head.in_channels), s.generator, zs.device, torch.float32)
    unit = _HeadUnit(zs[:n], zs[n:] if guided else None, x_T, step_noise, scale, len(pred_idx[0]))
    key = (float(s.temperature), p.it.head_steps, s.sampler, s.clip_denoised, s.backend)
    return unit, key


def _per_row_guided_eps(net: Any, tmap: torch.Tensor, units: list[_HeadUnit]):
    """reference.guided_eps_fn with a guidance scale per chain: eps_fn(x [N, C], step [N])."""
    c = net.in_channels
    zc = torch.cat([u.zc for u in units])
    g_rows, zu, scales, start = [], [], [], 0
    for u in units:
        if u.zu is not None:
            g_rows.append(torch.arange(start, start + u.x_T.shape[0], device=zc.device))
            zu.append(u.zu)
            scales.append(torch.full((u.x_T.shape[0], 1), u.scale, dtype=torch.float32, device=zc.device))
        start += u.x_T.shape[0]
    if not g_rows:
        return lambda x, step: net(x.to(zc.dtype), tmap[step], zc)
    gi = torch.cat(g_rows)
    z_all = torch.cat([zc, *zu])
    scale = torch.cat(scales)  # [G, 1]

    def fn(x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        t = tmap[step]
        n = x.shape[0]
        out = net(torch.cat([x, x[gi]]).to(z_all.dtype), torch.cat([t, t[gi]]), z_all).float()
        cond, uncond = out[:n], out[n:]
        eps = cond[:, :c].clone()
        eps[gi] = cfg_combine(cond[gi, :c], uncond[:, :c], scale)
        return torch.cat([eps, cond[:, c:]], dim=1)

    return fn


def _run_head(model: Any, key: tuple, units: list[_HeadUnit]) -> list[torch.Tensor]:
    """The new tokens [n_pred, C] of each unit, one reverse diffusion per call group."""
    temperature, steps, sampler, clip, backend = key
    head = model.diffloss
    tables = head.tables(steps)
    device = units[0].zc.device
    use_native = backend != "torch" and dispatch.native_unsupported(head.net, device) is None
    calls: dict[Any, list[int]] = {}
    for i, u in enumerate(units):  # the native kernel takes one scale per call
        calls.setdefault((u.scale, u.zu is not None) if use_native else None, []).append(i)
    out: list[torch.Tensor | None] = [None] * len(units)
    for members in calls.values():
        group = [units[i] for i in members]
        x_T = torch.cat([u.x_T for u in group])
        noise = None if group[0].step_noise is None else torch.cat([u.step_noise for u in group], dim=1)
        if use_native:
            z = torch.cat([u.zc for u in group] + ([u.zu for u in group] if group[0].zu is not None else []))
            scale = group[0].scale if group[0].zu is not None else 1.0
            res = dispatch.sample_head(head.net, tables, z, x_T, temperature, scale, noise, backend, clip, sampler)
        else:
            tmap = tables.on(device)["timestep_map"]
            table = tables.sampler_table(sampler, device)
            eps_fn = _per_row_guided_eps(head.net, tmap, group)
            res = sample_loop(table, eps_fn, x_T, temperature, noise, clip, tables.sampler_flags(sampler))
        start = 0
        for i, u in zip(members, group):
            out[i] = res[start : start + u.n_pred]
            start += u.x_T.shape[0]
    return out


@torch.no_grad()
def batched_step(states: list[LoopState]) -> None:
    """One masked-loop iteration for every state (none may be done), in place."""
    if not states:
        return
    model = states[0].model
    plans = [_plan(s) for s in states]
    zs = _backbone(model, plans)
    units, keys = zip(*[_head_unit(p, z) for p, z in zip(plans, zs)])
    by_key: dict[tuple, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    new: list[torch.Tensor | None] = [None] * len(states)
    with dispatch.weights_frozen():
        for k, members in by_key.items():
            for i, tok in zip(members, _run_head(model, k, [units[i] for i in members])):
                new[i] = tok
    for p, tok in zip(plans, new):
        s = p.state
        s.tokens = s.tokens.clone()
        s.tokens[p.to_pred.nonzero(as_tuple=True)] = tok.to(s.tokens.dtype)
        s.mask = p.mask_next
        s.num_masked = p.it.mask_len
        s.step += 1
        s.iterations_done += 1
        if s.step >= s.num_iter:
            s.num_masked = 0
