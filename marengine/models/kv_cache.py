"""The key/value cache of causal sampling, and the transformer blocks run one token at a time.

Causal attention lets token i see tokens 0..i only, so the keys and values of earlier
tokens never change: a step computes q, k, v for its one new token, stores k and v in
the cache and attends over the cached prefix. The cache is preallocated once for the
whole sequence, one slab per layer: k and v [depth, rows, heads, length, head_dim],
with rows = 2 x batch under classifier-free guidance (conditional rows, then the null
class). Steps index it with Python ints (no host syncs).

A block takes the old keys and values through its attention's hook (layers.KVHook), so the
one Block serves the plain pass, the in-place preallocated cache (`KVCache.writer`), the
functional past/present form of the ONNX step (`concat_kv`) and MAR's backbone reuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .layers import KVHook

# (new k, new v [R, H, 1, hd]) -> (all keys, all values [R, H, T + 1, hd]) of the layer
KVWriter = KVHook


@dataclass
class KVCache:
    """Preallocated keys and values [depth, rows, heads, length, head_dim] of every layer."""

    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def allocate(
        cls,
        depth: int,
        rows: int,
        heads: int,
        length: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> KVCache:
        shape = (depth, rows, heads, length, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.k.shape)

    def check(self, depth: int, rows: int, heads: int, length: int, head_dim: int, guided: bool) -> None:
        """A clear error when this cache does not fit the model and the batch."""
        want = (depth, rows, heads, length, head_dim)
        if not isinstance(self.k, torch.Tensor) or not isinstance(self.v, torch.Tensor):
            raise TypeError("a KVCache holds two tensors k and v")
        if self.shape != want or tuple(self.v.shape) != want:
            rows_text = f"{rows} rows ({'2 x batch: CFG doubles the rows' if guided else 'the batch'})"
            raise ValueError(
                f"the kv-cache has shape k {list(self.k.shape)} / v {list(self.v.shape)}; this model and batch need "
                f"[depth, rows, heads, length, head_dim] = {list(want)}: {depth} layers, {rows_text}, {heads} heads, "
                f"{length} positions (the class token and the first {length - 1} tokens), head_dim {head_dim}. "
                "Allocate it with model.allocate_cache(rows) or pass none"
            )
        if self.k.dtype != self.v.dtype or not self.k.is_floating_point():
            raise TypeError(f"the kv-cache must hold floating tensors of one dtype, got {self.k.dtype}/{self.v.dtype}")
        for name, t in (("k", self.k), ("v", self.v)):
            if self_overlapping(t):
                raise ValueError(
                    f"the kv-cache's {name} has elements that share memory (strides {list(t.stride())} for shape "
                    f"{list(t.shape)}, e.g. from .expand()): every position must have its own storage, or the "
                    "writes of one sequence overwrite another's. Allocate it with model.allocate_cache(rows) "
                    "(or .contiguous() it)"
                )
        if overlap(self.k, self.v):
            raise ValueError(
                "the kv-cache's k and v share memory: the values would overwrite the keys. Allocate it with "
                "model.allocate_cache(rows)"
            )

    def writer(self, layer: int, index: int) -> KVWriter:
        """Store the new k, v of `layer` at position `index`; return the keys, values 0..index."""

        def write(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            self.k[layer, :, :, index] = k[:, :, 0]
            self.v[layer, :, :, index] = v[:, :, 0]
            return self.k[layer, :, :, : index + 1], self.v[layer, :, :, : index + 1]

        return write


def self_overlapping(t: torch.Tensor) -> bool:
    """Whether two indices of `t` may address the same element (a stride 0 from .expand(), or
    strides that interleave): sorted by stride, each dim must step over the whole extent of
    the smaller ones. Dims of size 1 do not matter."""
    dims = sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz > 1)
    extent = 1  # elements spanned by the dims seen so far
    for stride, size in dims:
        if stride < extent:
            return True
        extent = stride * (size - 1) + extent
    return False


def overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory ranges of a and b intersect (same storage, overlapping byte spans)."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False

    def span(t: torch.Tensor) -> tuple[int, int]:
        start = t.storage_offset() * t.element_size()
        last = sum((sz - 1) * st for sz, st in zip(t.shape, t.stride())) * t.element_size()
        return start, start + last + t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def concat_kv(past_k: torch.Tensor, past_v: torch.Tensor, out: list[torch.Tensor]) -> KVWriter:
    """The functional form: keys = cat(past, new); the present keys/values are appended to `out`."""

    def write(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # [R, H, T + 1, hd]
        out.extend((keys, values))
        return keys, values

    return write


def blocks_step(blocks: nn.ModuleList, x: torch.Tensor, cache: KVCache, index: int) -> torch.Tensor:
    """Every block for the token at position `index` of the sequence, x [R, 1, D] -> [R, 1, D]."""
    for layer, blk in enumerate(blocks):
        x = blk(x, kv=cache.writer(layer, index))  # eval mode: Block.forward with the cache's hook
    return x
