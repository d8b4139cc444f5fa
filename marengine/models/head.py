"""The denoising MLP of Diffusion Loss (official `SimpleMLPAdaLN`).

x [N, C] --input_proj--> h [N, W]; y = time_embed(t) + cond_embed(c)
D x ResBlock:   h += gate * MLP(LN(h) * (1 + scale) + shift),  (shift, scale, gate) = Linear(SiLU(y))
FinalLayer:     out = Linear(LN(h) * (1 + scale) + shift)   -> [N, 2C]  (eps, variance values)
Parameter names are the official ones.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..config import LAYERNORM_EPS
from ..diffusion.embedding import FREQ_DIM, timestep_frequencies
from ..schedules import cfg_combine


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = FREQ_DIM) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.frequency_embedding_size = freq_dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # [N] -> [N, W]
        return self.mlp(timestep_frequencies(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.in_ln = nn.LayerNorm(channels, eps=LAYERNORM_EPS)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 3 * channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(channels, elementwise_affine=False, eps=LAYERNORM_EPS)
        self.linear = nn.Linear(channels, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 2 * channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        z_channels: int,
        num_res_blocks: int,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = grad_checkpointing
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.time_embed = TimestepEmbedder(model_channels)
        self.cond_embed = nn.Linear(z_channels, model_channels)
        self.input_proj = nn.Linear(in_channels, model_channels)
        self.res_blocks = nn.ModuleList([ResBlock(model_channels) for _ in range(num_res_blocks)])
        self.final_layer = FinalLayer(model_channels, out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Official init: xavier Linear, N(0, 0.02) time MLP, zero AdaLN and output layers."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        zeroed = [b.adaLN_modulation[-1] for b in self.res_blocks]
        zeroed += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for lin in zeroed:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x [N, C], t [N] (training timesteps), c [N, Z] -> [N, 2C]."""
        y = self.time_embed(t) + self.cond_embed(c)  # [N, W]
        h = self.input_proj(x)
        for block in self.res_blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, y, use_reentrant=False)
            else:
                h = block(h, y)
        return self.final_layer(h, y)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """Classifier-free guidance: rows [:N] conditional, [N:] unconditional; both
        halves are run on x[:N]; eps = uncond + s (cond - uncond) for both halves,
        variance values per half as predicted."""
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half]), t, c)
        eps, rest = out[:, : self.in_channels], out[:, self.in_channels :]
        cond, uncond = eps.chunk(2, dim=0)
        guided = cfg_combine(cond, uncond, cfg_scale)
        return torch.cat([torch.cat([guided, guided]), rest], dim=1)
