"""Cross-iteration caching of the MAR backbone (LazyMAR-style, training-free).

Between two autoregressive iterations only a few tokens change (those predicted in the
previous one), and the features of the others move little. A `CachePolicy` runs the
backbone in full on some iterations (the first `warmup`, then every `refresh_every`-th)
and, on the others, reuses what the last iterations computed:

- token cache: the encoder computes only the tokens that became known since the previous
  iteration (their keys/values join the cache; the other known tokens keep theirs and
  their outputs), and the decoder computes only those same rows plus the positions this
  iteration predicts; every other position attends with the keys/values it last had.
- CFG cache: with guidance, a cached iteration runs the conditional half only and takes
  the unconditional prediction as cond - (cond - uncond) of the last full iteration.

This is a mechanism of the backbone, not a copy of it: full iterations are the model's own
pass (MAR.backbone) whose attention hooks (layers.KVHook) record the keys/values, and cached
iterations run the model's own blocks on the changed rows with a hook that updates and reads
that cache. With no policy the MAR loop never calls this module, so sampling without caching
is bitwise what it was. Keys/values are kept per
position ([rows, heads, buffer + L, head_dim] per layer), so gathers need no bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..checks import check_bool, check_int
from .layers import KVHook


@dataclass(frozen=True)
class CachePolicy:
    """Which iterations reuse the backbone's features, and which reuses are on."""

    refresh_every: int = 3  # a full pass every n-th iteration after the warm-up (1: every iteration)
    warmup: int = 2  # the first iterations always run in full (few known tokens: features move most)
    tokens: bool = True  # cached iterations recompute only changed / predicted rows
    cfg: bool = True  # cached iterations with guidance run the conditional half only

    def __post_init__(self) -> None:
        object.__setattr__(self, "refresh_every", check_int("cache refresh_every", self.refresh_every, lo=1))
        object.__setattr__(self, "warmup", check_int("cache warmup", self.warmup, lo=1, hint="the first is full"))
        object.__setattr__(self, "tokens", check_bool("cache tokens", self.tokens))
        object.__setattr__(self, "cfg", check_bool("cache cfg", self.cfg))

    def is_full(self, iteration: int) -> bool:
        return iteration < self.warmup or (iteration - self.warmup) % self.refresh_every == 0

    @classmethod
    def parse(cls, text: str | CachePolicy | None) -> CachePolicy | None:
        """None/'off', or 'refresh=3,warmup=2,tokens=1,cfg=1' (any subset of the fields)."""
        if text is None or isinstance(text, CachePolicy):
            return text
        if not isinstance(text, str):
            raise TypeError(f"a cache policy is 'off' or 'refresh=N,warmup=N,tokens=0|1,cfg=0|1', got {text!r}")
        if text.strip() in ("", "off", "none"):
            return None
        names = {"refresh": "refresh_every", "refresh_every": "refresh_every", "warmup": "warmup",
                 "tokens": "tokens", "cfg": "cfg"}  # fmt: skip
        kw: dict[str, object] = {}
        for part in text.split(","):
            key, _, value = part.partition("=")
            key, value = key.strip(), value.strip()
            flag = names.get(key) in ("tokens", "cfg")
            if key not in names or not value.lstrip("-").isdigit() or (flag and value not in ("0", "1")):
                raise ValueError(
                    f"bad cache setting {part!r} in {text!r}: use refresh=N, warmup=N, tokens=0|1, cfg=0|1"
                )
            field = names[key]
            if field in kw:
                raise ValueError(f"cache setting {key!r} is given twice in {text!r}")
            kw[field] = value == "1" if flag else int(value)
        return cls(**kw)


class BackboneCache:
    """The cached state of one generation (one batch through the MAR loop).

    `z(...)` returns the backbone's z [R, L, D] for an iteration (on a cached iteration only
    the rows at `to_pred` are meaningful). R = B rows, 2B with guidance (cond then uncond).
    """

    def __init__(self, model: nn.Module, policy: CachePolicy, guided: bool) -> None:
        self.m, self.policy, self.guided = model, policy, guided
        self.enc_kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: [R', H, T, hd] each
        self.dec_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.delta: torch.Tensor | None = None  # [B, L, D] z_cond - z_uncond of the last full iteration
        self.prev_known: torch.Tensor | None = None  # [B, L] bool: known at the previous iteration

    def z(
        self,
        full: bool,
        tokens: torch.Tensor,
        known: torch.Tensor,
        to_pred: torch.Tensor,
        class_embedding: torch.Tensor,
    ) -> torch.Tensor:
        """tokens [B, L, C], known/to_pred [B, L] bool, class_embedding [R, D] -> z [R, L, D];
        `full`: the plan's refresh (a full pass) for this iteration."""
        bsz = tokens.shape[0]
        reusable = self.policy.tokens or (self.guided and self.policy.cfg)
        if not reusable or full or self.prev_known is None:
            z = self._full(tokens, known, class_embedding)
        else:
            rows = bsz if (self.guided and self.policy.cfg) else class_embedding.shape[0]
            x = tokens if rows == bsz else torch.cat([tokens, tokens])
            if self.policy.tokens:
                z = self._partial(x, known, to_pred, rows)
            else:  # the CFG cache alone: a plain backbone pass on the conditional half
                z = self.m.backbone(x, self.m.known_indices(~known[:rows]), class_embedding[:rows])
            if rows < class_embedding.shape[0]:  # the unconditional half from the cached difference
                z = torch.cat([z, z - self.delta])
        self.prev_known = known.clone()
        return z

    # ---------------------------------------------------------------- full iterations
    def _full(self, tokens: torch.Tensor, known: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        m, bsz = self.m, tokens.shape[0]
        rows_all = class_embedding.shape[0]
        x = tokens if rows_all == bsz else torch.cat([tokens, tokens])
        known_idx = m.known_indices(~known)
        if rows_all != bsz:
            known_idx = torch.cat([known_idx, known_idx])
        keep = bsz if (self.guided and self.policy.cfg) else rows_all  # rows cached iterations will compute
        if not self.policy.tokens:
            z = m.backbone(x, known_idx, class_embedding)
        else:
            z = self._recorded(x, known_idx, class_embedding, keep)
        if rows_all != bsz:
            self.delta = z[:bsz] - z[bsz:]
        return z

    def _recorded(self, x: torch.Tensor, known_idx: torch.Tensor, ce: torch.Tensor, keep: int) -> torch.Tensor:
        """The model's own backbone pass, its attention hooks recording per-position K/V of the
        first `keep` rows (encoder: scattered to position-indexed [R', H, T, hd] slabs)."""
        m = self.m
        T = m.seq_len + m.buffer_size
        idx = m._with_buffer(known_idx)  # [R, buffer + K] positions
        self.enc_kv, self.dec_kv = [], []

        def enc(layer: int) -> KVHook:
            def record(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                self.enc_kv.append(_scatter_kv(k[:keep], v[:keep], idx[:keep], T))
                return k, v

            return record

        def dec(layer: int) -> KVHook:
            def record(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                self.dec_kv.append((k[:keep].contiguous(), v[:keep].contiguous()))
                return k, v

            return record

        return m.backbone(x, known_idx, ce, kv=(enc, dec))

    # ---------------------------------------------------------------- cached iterations
    def _partial(self, x: torch.Tensor, known: torch.Tensor, to_pred: torch.Tensor, rows: int) -> torch.Tensor:
        m = self.m
        bsz, L = known.shape
        buf = m.buffer_size
        prev = self.prev_known
        if rows != bsz:  # token cache without the CFG cache: both halves share the positions
            known, to_pred, prev = known.repeat(2, 1), to_pred.repeat(2, 1), prev.repeat(2, 1)
        new = known & ~prev  # [R, L] tokens predicted in the previous iteration
        new_idx = new.nonzero()[:, 1].reshape(rows, -1) + buf  # [R, n] positions
        known_pos = m._with_buffer(m.known_indices(~known))  # [R, buffer + K]
        # encoder: only the new tokens are computed; they attend to every known position
        h = m.z_proj(x.gather(1, (new_idx - buf).unsqueeze(-1).expand(-1, -1, x.shape[-1])))
        pos = m.encoder_pos_embed_learned.expand(rows, -1, -1)
        h = m.z_proj_ln(h + pos.gather(1, new_idx.unsqueeze(-1).expand(-1, -1, h.shape[-1])))
        for layer, blk in enumerate(m.encoder_blocks):
            h = blk(h, kv=_update(*self.enc_kv[layer], new_idx, known_pos))
        h = m.encoder_norm(h)
        # decoder: the new tokens' rows and the rows to predict; every other position keeps its K/V
        pred_idx = to_pred.nonzero()[:, 1].reshape(rows, -1) + buf  # [R, p]
        q_idx = torch.cat([new_idx, pred_idx], dim=1)
        d_new = m.decoder_embed(h)
        ddim = d_new.shape[-1]
        d_pred = m.mask_token.to(d_new.dtype).expand(rows, pred_idx.shape[1], ddim)
        dpos = m.decoder_pos_embed_learned.expand(rows, -1, -1)
        d = torch.cat([d_new, d_pred], dim=1) + dpos.gather(1, q_idx.unsqueeze(-1).expand(-1, -1, ddim))
        for layer, blk in enumerate(m.decoder_blocks):
            d = blk(d, kv=_update(*self.dec_kv[layer], q_idx, None))
        d = m.decoder_norm(d[:, new_idx.shape[1] :])  # [R, p, D] at the predicted positions
        z = d.new_zeros(rows, L, ddim)
        tok = pred_idx - buf
        z.scatter_(1, tok.unsqueeze(-1).expand(-1, -1, ddim), d)
        diff_pos = m.diffusion_pos_embed_learned.expand(rows, -1, -1)
        return z + diff_pos  # rows outside to_pred are not used by the caller


def _scatter_kv(k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K, V [R, H, n, hd] at positions idx [R, n] -> position-indexed [R, H, T, hd]."""
    r, hh, _, hd = k.shape
    where = idx.view(r, 1, -1, 1).expand(-1, hh, -1, hd)
    return (k.new_zeros(r, hh, T, hd).scatter(2, where, k), v.new_zeros(r, hh, T, hd).scatter(2, where, v))


def _update(k_all: torch.Tensor, v_all: torch.Tensor, pos: torch.Tensor, keys_at: torch.Tensor | None) -> KVHook:
    """The attention hook of a cached iteration: the rows' fresh K/V [R, H, n, hd] are written
    into the position-indexed cache K_all/V_all [R, H, T, hd] at `pos` [R, n] (in place), and
    the rows attend to every cached position, or to the `keys_at` [R, m] positions only."""

    def hook(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r, heads, n, hd = k.shape
        where = pos.view(r, 1, n, 1).expand(-1, heads, -1, hd)
        k_all.scatter_(2, where, k)
        v_all.scatter_(2, where, v)
        if keys_at is None:
            return k_all, v_all
        sel = keys_at.view(r, 1, -1, 1).expand(-1, heads, -1, hd)
        return k_all.gather(2, sel), v_all.gather(2, sel)

    return hook
