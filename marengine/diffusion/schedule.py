"""Cosine noise schedule, timestep respacing and the coefficient tables of the
Gaussian diffusion Diffusion Loss uses.

Tables are computed once in float64 (as the official code does with numpy) and
cast to float32 on first use per device; nothing is re-uploaded per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import TRAIN_DIFFUSION_STEPS
from . import samplers
from .samplers import HeadSampler


def cosine_betas(num_steps: int = TRAIN_DIFFUSION_STEPS) -> torch.Tensor:
    """The cosine schedule's betas [num_steps] (float64, CPU)."""
    return torch.tensor(samplers.cosine_betas(num_steps), dtype=torch.float64, device="cpu")


@dataclass
class DiffusionTables:
    """Per-step coefficients of q(x_t|x_0), the posterior q(x_{t-1}|x_t,x_0) and eps->x0.

    All float64 on CPU; `on(device)` gives a float32 copy on a device, cached.
    `timestep_map[i]` is the training timestep the network is told at step i.
    """

    betas: torch.Tensor
    timestep_map: torch.Tensor
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        b = self.betas
        if b.ndim != 1 or not bool(((b > 0) & (b <= 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        self._beta_values = b.tolist()  # host floats for the sampler tables, read once here (never in a loop)
        abar = torch.cumprod(1.0 - b, 0)
        # the reverse update's coefficients come from the one table (samplers.step_table, DDPM
        # columns): training's posterior and every sampling path read the same numbers
        ddpm = torch.tensor(self._sampler_rows(samplers.DDPM), dtype=torch.float64, device="cpu")  # [S, 8]
        self.coefs: dict[str, torch.Tensor] = {
            "sqrt_abar": abar.sqrt(),
            "sqrt_one_minus_abar": (1.0 - abar).sqrt(),
            "sqrt_recip_abar": ddpm[:, 0],
            "sqrt_recipm1_abar": ddpm[:, 1],
            "post_coef1": ddpm[:, 2],
            "post_coef2": ddpm[:, 3],
            "post_logvar": ddpm[:, 5],  # clipped at step 0 to step 1's (step 0 adds no noise)
            "log_betas": ddpm[:, 6],
        }

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])

    def on(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """float32 tables on `device` (and int64 `timestep_map`), computed once per device."""
        key = str(torch.device(device))
        if key not in self._cache:
            t = {k: v.to(device=device, dtype=torch.float32) for k, v in self.coefs.items()}
            t["timestep_map"] = self.timestep_map.to(device)
            self._cache[key] = t
        return self._cache[key]

    def sampler_table(self, sampler: HeadSampler, device: torch.device | str) -> torch.Tensor:
        """[S, 8] float32 coefficients of `sampler` (diffusion/samplers.py) on `device`, computed
        once per (sampler, device): the table the reference loop and the native kernels read."""
        t = self.on(device)
        key = "_sampler:" + sampler.key
        if key not in t:
            rows = self._sampler_rows(sampler)
            t[key] = torch.tensor(rows, dtype=torch.float64).to(device=device, dtype=torch.float32).contiguous()
        return t[key]

    def sampler_flags(self, sampler: HeadSampler) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
        """Per step (index s): whether the update reads the previous x0 (column 4) and whether it
        adds noise (column 7): host booleans, so a loop branches without reading the device."""
        rows = self._sampler_rows(sampler)
        return tuple(r[4] != 0 for r in rows), tuple(r[7] != 0 for r in rows)

    def _sampler_rows(self, sampler: HeadSampler) -> list[list[float]]:
        key = "_rows:" + sampler.key
        if key not in self._cache:
            self._cache[key] = samplers.step_table(self._beta_values, sampler)
        return self._cache[key]


def make_tables(spacing: str | int = "", num_train_steps: int = TRAIN_DIFFUSION_STEPS) -> DiffusionTables:
    """Tables for the cosine schedule, respaced to `spacing` ("" keeps every step)."""
    betas, kept = samplers.respaced(num_train_steps, spacing)
    return DiffusionTables(
        betas=torch.tensor(betas, dtype=torch.float64, device="cpu"),
        timestep_map=torch.tensor(kept, dtype=torch.int64, device="cpu"),
    )


class TableStack:
    """The tables of a few step counts stacked into one, for per-row head steps: table k (of
    `counts[k]` steps) holds rows [firsts[k], firsts[k] + counts[k]) of the stacked coefficient
    table, timestep map and flags, each the concatenation of the tables' own (so the one source
    stays samplers.step_table). A row with n steps walks rows firsts[k] + n - 1 down to firsts[k]
    (row_table gives each row's (first, n)). It answers what the samplers read of a
    DiffusionTables (`on`, `sampler_table`, `sampler_flags`, `num_steps` = the most steps)."""

    def __init__(self, tables: list[DiffusionTables]) -> None:
        if not tables:
            raise ValueError("a table stack needs at least one table")
        counts = [t.num_steps for t in tables]
        if len(set(counts)) != len(counts):
            raise ValueError(f"a table stack takes distinct step counts, got {counts}")
        self.tables = tuple(tables)
        self.counts = tuple(counts)
        self.firsts = tuple(sum(counts[:k]) for k in range(len(counts)))
        self._cache: dict = {}

    @property
    def num_steps(self) -> int:
        """The iterations a call over the stack runs: the most steps of any table."""
        return max(self.counts)

    @property
    def rows(self) -> int:
        return sum(self.counts)

    def on(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """{"timestep_map": [rows] int64} on `device`: every table's map, stacked."""
        key = "on:" + str(torch.device(device))
        if key not in self._cache:
            tmap = torch.cat([t.timestep_map for t in self.tables]).to(device)
            self._cache[key] = {"timestep_map": tmap}
        return self._cache[key]

    def sampler_table(self, sampler: HeadSampler, device: torch.device | str) -> torch.Tensor:
        """[rows, 8] float32: each table's sampler_table, stacked (computed once per device)."""
        key = f"table:{sampler.key}:{torch.device(device)}"
        if key not in self._cache:
            self._cache[key] = torch.cat([t.sampler_table(sampler, device) for t in self.tables]).contiguous()
        return self._cache[key]

    def sampler_flags(self, sampler: HeadSampler) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
        """Per stacked row: (reads the previous x0, adds noise), host booleans."""
        flags = [t.sampler_flags(sampler) for t in self.tables]
        return tuple(f for fl in flags for f in fl[0]), tuple(f for fl in flags for f in fl[1])

    def check_row_steps(self, row_steps: object, rows: int) -> torch.Tensor:
        """row_steps as an int tensor [rows] whose every value is one of `counts` (else a
        ValueError/TypeError saying what is wrong). Reads the values once (a host sync on a GPU)."""
        if not isinstance(row_steps, torch.Tensor):
            raise TypeError(f"row_steps must be an int tensor [{rows}] of step counts, got {type(row_steps).__name__}")
        if row_steps.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"row_steps must be an int32 or int64 tensor, got {row_steps.dtype}")
        if tuple(row_steps.shape) != (rows,):
            got = tuple(row_steps.shape)
            raise ValueError(f"row_steps must have shape [{rows}] (one count per chain row), got {got}")
        allowed = torch.tensor(self.counts, dtype=row_steps.dtype, device=row_steps.device)
        if rows and not bool(torch.isin(row_steps, allowed).all()):
            bad = sorted(set(row_steps[~torch.isin(row_steps, allowed)].tolist()))
            raise ValueError(f"row_steps has step counts {bad} outside the prepared ones {list(self.counts)}")
        return row_steps

    def row_table(self, row_steps: torch.Tensor) -> torch.Tensor:
        """[N, 2] int32 on row_steps' device: per row (its table's first stacked row, its steps),
        by a lookup on the device (no host sync). row_steps must be checked (check_row_steps)."""
        key = f"lut:{row_steps.device}"
        if key not in self._cache:
            lut = torch.zeros(max(self.counts) + 1, dtype=torch.int32)
            for first, count in zip(self.firsts, self.counts):
                lut[count] = first
            self._cache[key] = lut.to(row_steps.device)
        steps = row_steps.to(torch.int32)
        return torch.stack([self._cache[key][row_steps.long()], steps], dim=1).contiguous()
