"""Cross-entropy head: a categorical distribution over a VQ tokenizer's codes for each z.

The discrete counterpart of Diffusion Loss in the paper's Table 1: p(code | z) =
softmax(W z / tau). Training minimises the cross-entropy of the true code; sampling
draws from the tempered softmax (Gumbel-max, so all randomness comes from the caller's
generator), with classifier-free guidance on the logits as the CE baselines do
(logits = uncond + s (cond - uncond)).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import check_cfg, check_finite_result, check_temperature
from ..schedules import Iteration, cfg_combine
from ..utils import check_generator, check_tensor, rand


class CEHead(nn.Module):
    """z [N, z_channels] -> logits [N, codebook_size] (one Linear, as a GPT's output layer)."""

    def __init__(self, z_channels: int, codebook_size: int) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.linear = nn.Linear(z_channels, codebook_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [N, Z] -> [N, K]
        return self.linear(z)

    def loss(self, z: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy of codes target [N] given z [N, Z] (over rows with mask=1 if given)."""
        check_tensor("target codes", target, (z.shape[0],), floating=False)
        per_row = F.cross_entropy(self.forward(z).float(), target.long(), reduction="none")  # [N]
        if mask is None:
            return per_row.mean()
        mask = mask.to(per_row.dtype)
        return (per_row * mask).sum() / mask.sum().clamp(min=1)

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        temperature: float = 1.0,
        cfg: float = 1.0,
        *,
        generator: torch.Generator | None = None,
        guided: bool | None = None,
        finite: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Codes [N] (int64) for z [N, Z], or for z [2N, Z] (conditional rows then unconditional
        ones) when guided (default: cfg != 1; a guided call at scale 1 combines the logits as
        the official CFG does). temperature 0 takes the most likely code. Non-finite logits raise a
        ValueError naming cfg and temperature; a loop that may not sync passes `finite` (a 0-d
        bool tensor, and-ed in place with the logits' finiteness) and checks it at its end."""
        temperature = check_temperature("temperature", temperature)
        cfg = check_cfg("cfg", cfg)
        check_generator(generator)
        z = check_tensor("z", z, (None, self.linear.in_features), floating=True)
        logits = self.forward(z.to(self.linear.weight.dtype)).float()  # [M, K]
        if guided if guided is not None else cfg != 1.0:
            if logits.shape[0] % 2:
                raise ValueError(f"with cfg != 1, z needs an even number of rows (cond then uncond), got {z.shape[0]}")
            cond, uncond = logits.chunk(2)
            logits = cfg_combine(cond, uncond, cfg)
        if finite is None:
            check_finite_result(bool(torch.isfinite(logits).all()), "logits", cfg, temperature)
        else:
            finite &= torch.isfinite(logits).all()  # no host sync
        return sample_logits(logits, temperature, generator)


def sample_logits(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Codes [N] from softmax(logits [N, K] / temperature) by Gumbel-max; argmax at temperature 0.

    argmax(l / t + g) with g = -log(-log u), u ~ U(0, 1) is an exact draw from softmax(l / t); the
    uniform noise comes from `generator` (no host sync, the same codes for the same seed)."""
    if temperature == 0.0:
        return logits.argmax(-1)
    u = rand(tuple(logits.shape), generator, logits.device).clamp_(min=1e-20, max=1.0 - 1e-7)
    gumbel = -torch.log(-torch.log(u))
    return (logits / temperature + gumbel).argmax(-1)


def refuse_diffusion_knobs(**knobs: object) -> None:
    """A categorical head has no diffusion chain: a ValueError naming the knobs given for one."""
    given = [name for name, value in knobs.items() if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)} set(s) the diffusion head's chain: a cross-entropy model has none")


class CategoricalTokens:
    """The categorical head's token sampler (models/masked_ar.TokenSampler's draw): tempered
    categorical draws of codes with CFG on the logits, finiteness gathered without a host sync
    (`finite`, checked by the loop at its end). MAR-CE's CodeTokens adds the code embedding and
    editing; the causal loop uses it as it is."""

    def __init__(self, head: CEHead, temperature: float, generator: torch.Generator | None) -> None:
        self.head, self.temperature, self.generator = head, temperature, generator
        self.finite = torch.ones((), dtype=torch.bool, device=head.linear.weight.device)

    def prepare(self, *state: object) -> None:
        """The loop's state before a call: a categorical head needs none of it."""

    def __call__(self, z: torch.Tensor, z_null: torch.Tensor | None, it: Iteration) -> torch.Tensor:
        """Codes [P] for z [P, D] (z_null [P, D]: their null-class rows, guided at it.cfg)."""
        zs = z if z_null is None else torch.cat([z, z_null])  # [P(x2), D]
        return self.head.sample(
            zs, self.temperature, it.cfg, generator=self.generator, guided=z_null is not None, finite=self.finite
        )  # [P]
