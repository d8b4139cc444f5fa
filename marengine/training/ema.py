"""Exponential moving average of every parameter (official rate 0.9999)."""

from __future__ import annotations

import torch
import torch.nn as nn


class EMA:
    """ema = rate * ema + (1 - rate) * param after each optimizer step.

    warmup=True uses min(rate, (1 + n) / (10 + n)) at update n, so short runs
    (the digits demo) are not dominated by the initial weights."""

    def __init__(self, model: nn.Module, rate: float = 0.9999, warmup: bool = False) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"EMA rate must be in [0, 1), got {rate}")
        self.rate, self.warmup, self.updates = rate, warmup, 0
        self.shadow = {k: p.detach().clone().float() for k, p in model.named_parameters()}

    def current_rate(self) -> float:
        if self.warmup:
            return min(self.rate, (1 + self.updates) / (10 + self.updates))
        return self.rate

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        rate = self.current_rate()
        for k, p in model.named_parameters():
            self.shadow[k].lerp_(p.detach().float(), 1.0 - rate)
        self.updates += 1

    def state_dict_for(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with EMA values in place of its parameters."""
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for k, v in self.shadow.items():
            sd[k] = v.to(sd[k].dtype)
        return sd

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates, "rate": self.rate, "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state does not match the model: differing keys {sorted(missing)[:10]}")
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
        self.updates = int(state["updates"])
