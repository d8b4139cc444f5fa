"""Diffusion Loss: the per-token denoising head, its training loss and its sampler."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..checks import check_cfg, check_finite_result, check_temperature
from ..diffusion.gaussian import training_losses
from ..diffusion.samplers import DDPM, HeadSampler, scales_start_noise
from ..diffusion.schedule import DiffusionTables, TableStack, make_tables
from ..ops import dispatch
from ..utils import check_generator, check_tensor, randn
from .head import SimpleMLPAdaLN


class DiffLoss(nn.Module):
    """Diffusion Loss (official arguments). `net` is the official `SimpleMLPAdaLN`."""

    def __init__(
        self,
        target_channels: int,
        z_channels: int,
        depth: int,
        width: int,
        num_sampling_steps: str | int,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = target_channels
        self.net = SimpleMLPAdaLN(target_channels, width, target_channels * 2, z_channels, depth, grad_checkpointing)
        self.train_tables = make_tables("")
        self.gen_tables = make_tables(str(num_sampling_steps))
        self._tables: dict[str, DiffusionTables] = {}  # other step counts (DiSA-style schedules), on demand
        self._stacks: dict[tuple[int, ...], TableStack] = {}  # per-row step counts, on demand

    def tables(self, steps: int | str | None = None) -> DiffusionTables:
        """The sampling tables for `steps` diffusion steps (an int or a respacing string; None:
        the model's num_sampling_steps), made once per value."""
        if steps is None:
            return self.gen_tables
        key = str(steps).strip()
        if key not in self._tables:
            if len(self._tables) >= 64:  # a bounded cache: step schedules use a few dozen counts at most
                self._tables.clear()
            self._tables[key] = make_tables(key)
        return self._tables[key]

    def table_stack(self, counts: tuple[int, ...]) -> TableStack:
        """The tables of these step counts stacked (per-row steps), made once per set."""
        key = tuple(sorted(set(counts)))
        if key not in self._stacks:
            if len(self._stacks) >= 64:
                self._stacks.clear()
            self._stacks[key] = TableStack([self.tables(k) for k in key])
        return self._stacks[key]

    def check_z(self, z: object) -> torch.Tensor:
        """z [rows, z_channels] as the head's dtype (any floating dtype is accepted)."""
        z = check_tensor("z", z, (None, self.net.cond_embed.in_features), floating=True)
        return z.to(self.net.cond_embed.weight.dtype) if not torch.is_autocast_enabled(z.device.type) else z

    def loss_terms(
        self, target: torch.Tensor, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-row `loss`, `mse`, `vb` for given timesteps t [N] and noise [N, C]."""
        tab = self.train_tables.on(target.device)
        return training_losses(tab, lambda xt, tt: self.net(xt, tt, z), target, t, noise)

    def forward(
        self,
        target: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean loss over rows (over rows with mask=1 when a mask is given).

        target [N, C], z [N, Z]; t and noise are drawn (from `generator`) unless given.
        """
        _check_rows(target, z, self.in_channels)
        n = target.shape[0]
        if t is None:
            t = torch.randint(
                0,
                self.train_tables.num_steps,
                (n,),
                generator=generator,
                device=generator.device if generator is not None else target.device,
            ).to(target.device)
        if noise is None:
            noise = randn((n, self.in_channels), generator, target.device, target.dtype)
        loss = self.loss_terms(target, z, t, noise)["loss"]
        if mask is not None:
            mask = mask.to(loss.dtype)
            return (loss * mask).sum() / mask.sum().clamp(min=1)
        return loss.mean()

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        temperature: float = 1.0,
        cfg: float = 1.0,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        backend: str = "auto",
        clip_denoised: bool = False,
        sampler: str | HeadSampler = DDPM,
        steps: int | str | None = None,
        check_finite: bool = True,
        row_steps: torch.Tensor | None = None,
        step_counts: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """Reverse diffusion for each row of z [M, Z] -> tokens [M, C].

        With cfg != 1, z holds M = 2N rows (conditional first, unconditional
        second); the chain runs on N rows and the result is returned twice, as
        the official sampler returns it. `noise` is x_T with N rows; per-step
        noise is drawn from `generator`. backend: "auto" | "torch" | "native".
        clip_denoised clamps x_0 predictions to [-1, 1] (bounded data such as pixels).
        sampler: "ddpm" (official), "ddim[:eta]" or "dpm++2m" (diffusion/samplers.py);
        steps: diffusion steps of this call, an int or a respacing string (default: the
        model's num_sampling_steps). A deterministic sampler (DDIM with eta 0, DPM-Solver++)
        injects no noise along the chain: the temperature then scales x_T instead.
        check_finite: raise a ValueError naming cfg and temperature when the tokens are not
        finite (one host sync; the sampling loops check once at their end instead).
        row_steps: an int tensor [N] of diffusion steps per chain row (instead of `steps`): each row
        walks its own table, rows with fewer steps finish early (GtR-style per-token steps);
        step_counts: the counts row_steps may hold (default: its distinct values, a host read).
        """
        temperature = check_temperature("temperature", temperature)
        cfg = check_cfg("cfg", cfg)
        z = self.check_z(z)
        check_generator(generator)
        guided = cfg != 1.0
        if guided and z.shape[0] % 2:
            raise ValueError(f"with cfg != 1, z needs an even number of rows (cond then uncond), got {z.shape[0]}")
        n = z.shape[0] // 2 if guided else z.shape[0]
        if noise is None:
            noise = randn((n, self.in_channels), generator, z.device, torch.float32)
        else:
            check_tensor("noise (x_T)", noise, (n, self.in_channels), floating=True)
        sampler = HeadSampler.parse(sampler)
        if row_steps is not None:
            if steps is not None:
                raise ValueError("give steps (one count for every row) or row_steps (one per row), not both")
            if step_counts is None and isinstance(row_steps, torch.Tensor):
                step_counts = tuple(int(v) for v in torch.unique(row_steps).tolist())
            tables = self.table_stack(tuple(_step_count(v) for v in step_counts or ()))
        else:
            tables = self.tables(steps)
        x_T = noise.float() * temperature if scales_start_noise(sampler) else noise.float()
        step_noise = None
        if temperature > 0 and not sampler.deterministic:
            step_noise = randn((tables.num_steps, n, self.in_channels), generator, z.device, torch.float32)
        out = dispatch.sample_head(
            self.net,
            tables,
            z,
            x_T,
            float(temperature),
            float(cfg),
            step_noise,
            backend,
            clip_denoised,
            sampler,
            row_steps,
        )  # [N, C]
        if check_finite:
            check_finite_result(bool(torch.isfinite(out).all()), "tokens", cfg, temperature)
        return torch.cat([out, out]) if guided else out


def _check_rows(target: torch.Tensor, z: torch.Tensor, channels: int) -> None:
    if target.ndim != 2 or target.shape[1] != channels:
        raise ValueError(f"target must be [rows, {channels}], got shape {tuple(target.shape)}")
    if z.ndim != 2 or z.shape[0] != target.shape[0]:
        raise ValueError(f"z must be [rows, z_channels] with {target.shape[0]} rows, got {tuple(z.shape)}")


def _step_count(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1000:
        raise ValueError(f"per-row step counts must be ints in [1, 1000], got {v!r}")
    return v
