"""The head's weights as the native kernels take them, and what is derived from the weights alone.

- `collect_weights(net, dtype, device)`: the GEMM weights converted to one dtype (`HeadWeights`),
  cached per (net, dtype, device) and served only while the parameters are the same tensors, at
  the same version, with the same bytes (`content_fingerprint`).
- `weights_frozen()`: a block in which the weights are taken not to change (the MAR loop runs in
  one): bytes fingerprinted once, the checked entry and the time embedding reused.
- `embeddings(net, tables, z)`: the kernels' c_emb and t_emb inputs, fp32.
- `pick_weight_dtype(...)`: the GEMM weight precision of a call (explicit, autocast or the net's).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..diffusion.embedding import timestep_frequencies
from ..diffusion.schedule import DiffusionTables
from .extension import _C, WEIGHT_DTYPES


@dataclass
class HeadWeights:
    """The head's GEMM weights in one dtype, in the order head_sample takes them."""

    in_w: torch.Tensor
    in_b: torch.Tensor
    ln_w: list[torch.Tensor]
    ln_b: list[torch.Tensor]
    mod_w: list[torch.Tensor]
    mod_b: list[torch.Tensor]
    w1: list[torch.Tensor]
    b1: list[torch.Tensor]
    w2: list[torch.Tensor]
    b2: list[torch.Tensor]
    fmod_w: torch.Tensor
    fmod_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        return [t for a in self.args() for t in (a if isinstance(a, list) else [a])]

    def args(self) -> tuple:
        return (
            self.in_w,
            self.in_b,
            self.ln_w,
            self.ln_b,
            self.mod_w,
            self.mod_b,
            self.w1,
            self.b1,
            self.w2,
            self.b2,
            self.fmod_w,
            self.fmod_b,
            self.out_w,
            self.out_b,
        )


# net -> {(dtype, device): (identity, content, HeadWeights)}; entries die with the module.
_WEIGHT_CACHE: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()
_SCOPE = threading.local()  # .frozen: the innermost weights_frozen() block's _Frozen, or None


class _Frozen:
    """What one weights_frozen() block has checked and may reuse, per net (entries die with it)."""

    def __init__(self) -> None:
        # net -> the (dtype, device) cache entries checked in this block (its bytes were fingerprinted)
        self.checked: weakref.WeakKeyDictionary[nn.Module, set] = weakref.WeakKeyDictionary()
        # net -> {device: (tables, t_emb [S, W])}
        self.t_emb: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def _identity(net: nn.Module) -> tuple:
    """Changes when a parameter is replaced or updated through autograd-visible ops
    (optimizer steps, copy_ under no_grad); not when written through `.data` or numpy.
    (`Tensor._version`, the autograd version counter, has no public equivalent.)"""
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in net.parameters())


def content_fingerprint(tensors: list[torch.Tensor]) -> int:
    """A 64-bit fingerprint of the tensors' bytes (csrc/cpu/content_hash.cpp on CPU; the same
    position-keyed sum in integer torch ops elsewhere). Catches every write, also those that
    bypass version counters."""
    if _C is not None and all(t.device.type == "cpu" for t in tensors):
        return int(_C.content_hash([t.detach() for t in tensors]))
    h = 0
    for i, t in enumerate(tensors):
        words = t.detach().contiguous().reshape(-1).view(torch.uint8)
        words = torch.nn.functional.pad(words, (0, (-words.numel()) % 4)).view(torch.int32).to(torch.int64)
        keys = torch.arange(words.numel(), device=words.device, dtype=torch.int64) * 2 + 1  # odd: invertible
        h = hash((h, i, int((words * keys).sum()), int(words.sum())))
    return h


@contextlib.contextmanager
def weights_frozen():
    """Within this block the head weights are taken not to change: their bytes are
    fingerprinted once per net (the first sampling call), not on every call; later calls
    reuse the checked weight entry and the time embedding (per tables) without walking the
    parameters again. The MAR loop runs inside one, so one generation pays one pass over the
    head weights."""
    outer = getattr(_SCOPE, "frozen", None)
    _SCOPE.frozen = _Frozen() if outer is None else outer
    try:
        yield
    finally:
        _SCOPE.frozen = outer


def _convert(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous `dtype` copy, or the tensor itself when it already is one."""
    return t.detach().to(dtype).contiguous()


def collect_weights(net: nn.Module, dtype: torch.dtype, device: torch.device) -> HeadWeights:
    """The head's weights as `dtype` on `device`; converted copies are cached per (net, dtype, device).

    A cached entry is served only while the parameters are the same tensors, at the same
    version, with the same bytes (the byte fingerprint is skipped for a net already checked
    inside `weights_frozen()`): stale packed weights are never used."""
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight dtype must be one of {WEIGHT_DTYPES}, got {dtype}")
    per_net = _WEIGHT_CACHE.setdefault(net, {})
    hit = per_net.get((dtype, device))
    frozen: _Frozen | None = getattr(_SCOPE, "frozen", None)
    checked = frozen.checked.setdefault(net, set()) if frozen is not None else None
    if checked is not None and hit is not None and (dtype, device) in checked:
        return hit[2]  # checked earlier in this block, and the weights are taken not to change
    ident = _identity(net)
    trusted = bool(checked)  # the bytes were fingerprinted earlier in this block (for another entry)
    content = None if trusted and hit is not None and hit[0] == ident else content_fingerprint(list(net.parameters()))
    if checked is not None:
        checked.add((dtype, device))
    if hit is not None and hit[0] == ident and (content is None or hit[1] == content):
        return hit[2]
    if hit is not None:
        _forget_packed(hit[2])
    # Normal tensors even under inference_mode: they carry a version counter, which lets
    # the kernel keep their packed form between calls.
    with torch.inference_mode(False), torch.no_grad():
        w = _gather(net, dtype, device)
    per_net[(dtype, device)] = (ident, content, w)
    return w


def _gather(net: nn.Module, dtype: torch.dtype, device: torch.device) -> HeadWeights:
    cv = lambda t: _convert(t.to(device), dtype)  # noqa: E731
    lin = lambda m: (cv(m.weight), cv(m.bias))  # noqa: E731
    blocks = list(net.res_blocks)
    pairs = (
        [lin(b.adaLN_modulation[-1]) for b in blocks],
        [lin(b.mlp[0]) for b in blocks],
        [lin(b.mlp[2]) for b in blocks],
    )
    in_w, in_b = lin(net.input_proj)
    fmod_w, fmod_b = lin(net.final_layer.adaLN_modulation[-1])
    out_w, out_b = lin(net.final_layer.linear)
    ln_f32 = lambda t: t.detach().to(device=device, dtype=torch.float32).contiguous()  # noqa: E731
    return HeadWeights(
        in_w=in_w,
        in_b=in_b,
        ln_w=[ln_f32(b.in_ln.weight) for b in blocks],
        ln_b=[ln_f32(b.in_ln.bias) for b in blocks],
        mod_w=[p[0] for p in pairs[0]],
        mod_b=[p[1] for p in pairs[0]],
        w1=[p[0] for p in pairs[1]],
        b1=[p[1] for p in pairs[1]],
        w2=[p[0] for p in pairs[2]],
        b2=[p[1] for p in pairs[2]],
        fmod_w=fmod_w,
        fmod_b=fmod_b,
        out_w=out_w,
        out_b=out_b,
    )


def pick_weight_dtype(net: nn.Module, device: torch.device, weight_dtype: torch.dtype | None) -> torch.dtype:
    """Explicit choice, else the autocast dtype when autocast is on for the device, else the net's dtype."""
    if weight_dtype is not None:
        return weight_dtype
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    dtype = net.input_proj.weight.dtype
    return dtype if dtype in WEIGHT_DTYPES else torch.float32


# ---------------------------------------------------------------------------- embeddings
def _linear32(m: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x.float(), m.weight.float(), m.bias.float())


def embeddings(net: nn.Module, tables: DiffusionTables, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c_emb = cond_embed(z) [R, W] and t_emb = time_embed(timestep_map) [S, W], fp32. Inside
    weights_frozen() t_emb, which depends on the weights and the tables only, is computed once
    per (net, tables, device)."""
    frozen: _Frozen | None = getattr(_SCOPE, "frozen", None)
    kept = frozen.t_emb.setdefault(net, {}) if frozen is not None else {}
    with torch.autocast(z.device.type, enabled=False):
        c_emb = _linear32(net.cond_embed, z)
        hit = kept.get(z.device)
        if hit is not None and hit[0] is tables:
            return c_emb.contiguous(), hit[1]
        tmap = tables.on(z.device)["timestep_map"]
        freqs = timestep_frequencies(tmap, net.time_embed.frequency_embedding_size)
        mlp = net.time_embed.mlp
        t_emb = _linear32(mlp[2], torch.nn.functional.silu(_linear32(mlp[0], freqs))).contiguous()
    kept[z.device] = (tables, t_emb)  # outside a block: a throwaway dict
    return c_emb.contiguous(), t_emb


def release_weight_cache() -> None:
    """Drop every converted-weight entry (ops/native.py `release_caches` also frees the kernels' own)."""
    _WEIGHT_CACHE.clear()


def _forget_packed(w: HeadWeights) -> None:
    """Drop the CPU kernel's packed copies of these weights (kept between calls, csrc/cpu/pack_cache.cpp)."""
    cpu = [t for t in w.tensors() if t.device.type == "cpu"]
    if cpu and _C is not None:
        _C.forget_packed(cpu)


def forget(net: nn.Module) -> None:
    """Drop the net's converted-weight entries and the CPU kernel's packed copies of them."""
    for _, _, w in _WEIGHT_CACHE.pop(net, {}).values():
        _forget_packed(w)
