"""One reverse diffusion of the Diffusion-Loss head, as every implementation takes it.

`HeadJob` bundles what the head sampler needs: the head network, its diffusion tables, the
conditions z, the start noise x_T, temperature, CFG scale, per-step noise, the sampler and
clip_denoised. The reference (reference.py), the native kernels (native.py), the self-check
(selfcheck.py) and the dispatcher (dispatch.py) all pass one around instead of each restating
the nine arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..diffusion.samplers import DDPM, HeadSampler
from ..diffusion.schedule import DiffusionTables, TableStack


@dataclass(frozen=True)
class HeadJob:
    """Reverse diffusion of N tokens -> x_0 [N, C] (float32).

    z [N, Z], or [2N, Z] with cfg != 1 (conditional rows, then unconditional); x_T [N, C];
    step_noise [S, N, C] or None (no noise at temperature 0 or for a deterministic sampler);
    `sampler` picks the per-step coefficients (diffusion/samplers.py). row_steps [N]: a step
    count per chain row, each one of the TableStack `tables`' counts (S: the most); rows with
    fewer steps finish early, keeping their value."""

    net: nn.Module
    tables: DiffusionTables | TableStack
    z: torch.Tensor
    x_T: torch.Tensor
    temperature: float
    cfg: float
    step_noise: torch.Tensor | None
    sampler: HeadSampler = DDPM
    clip_denoised: bool = False
    row_steps: torch.Tensor | None = None

    def row_table(self) -> torch.Tensor | None:
        """[N, 2] int32 (each row's start in the stacked tables, its step count) on z's device,
        the row_steps checked; None without per-row steps."""
        if self.row_steps is None:
            return None
        if not isinstance(self.tables, TableStack):
            raise ValueError("row_steps [N] (a step count per row) needs a TableStack of their tables")
        steps = self.tables.check_row_steps(self.row_steps, self.x_T.shape[0])
        return self.tables.row_table(steps.to(self.z.device))

    @property
    def guided(self) -> bool:
        """CFG is on: the network runs on 2N rows."""
        return self.cfg != 1.0

    def check_rows(self) -> None:
        """z has N rows, or 2N with CFG, for x_T's N rows: else a ValueError that says so."""
        n = self.x_T.shape[0]
        want = 2 * n if self.guided else n
        if self.z.ndim != 2 or self.z.shape[0] != want:
            what = "2N (conditional rows, then unconditional) with cfg != 1" if self.guided else "N"
            raise ValueError(
                f"z must have {what} = {want} rows for x_T with N = {n} rows, got shape {tuple(self.z.shape)}"
            )
