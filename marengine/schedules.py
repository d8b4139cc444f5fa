"""Torch-free schedules: the one implementation that both the torch engine and the
torch-free deploy sampler (marengine.export.deploy) import.

- `space_timesteps`: which of the training diffusion steps a respaced sampler keeps
  (the official `diffusion/respace.py` semantics, float stride accumulated per step).
- The cosine masking schedule of MAR sampling: how many tokens stay unknown after
  each autoregressive iteration (`next_mask_len`, `mask_lengths`, `tokens_per_step`).
- The head's diffusion steps per iteration (`step_schedule`: DiSA-style annealing) and per
  token (`TokenSteps`: more steps for the tokens a high-frequency score flags, GtR-style).
- Classifier-free guidance: the per-iteration scale (`cfg_at`) and the combination of
  conditional and unconditional predictions (`cfg_combine`), written with arithmetic
  operators only so that it serves torch tensors and numpy arrays alike.
- `generation_plan`: all of the above for one generation, computed once (per iteration:
  tokens left unknown, CFG scale, head steps, backbone refresh), the plan both loops run.

Only the Python standard library is used here (no numpy, no torch).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

CFG_SCHEDULES = ("linear", "constant")
T = TypeVar("T")


# ---------------------------------------------------------------- diffusion respacing
def space_timesteps(num_steps: int, spacing: str | int) -> list[int]:
    """The training timesteps (sorted, ascending) a sampler with `spacing` keeps.

    `spacing` is an int or a comma-separated string of step counts, one per equal
    section of [0, num_steps) ("100", "10,20,30"), or "ddimN" for the one integer
    stride that gives exactly N steps, or "" for every step. Within a section the
    positions are walked with a float stride that is accumulated step by step and
    each position is rounded, exactly as the official code does (so that, e.g.,
    "5" keeps 749 and not round(3 * 249.75) = 749.25 -> 749 by chance only).
    """
    if isinstance(spacing, bool) or not isinstance(spacing, (int, str)):
        raise TypeError(
            f"num_sampling_steps must be an int or a string such as '100' or '10,20', got {type(spacing).__name__}"
        )
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"the number of training diffusion steps must be a positive int, got {num_steps!r}")
    text = str(spacing).strip()
    if text == "":
        return list(range(num_steps))
    if text.startswith("ddim"):
        return _ddim_stride(num_steps, text)
    try:
        counts = [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(
            f"num_sampling_steps must be an int, comma-separated ints or 'ddimN', got {spacing!r}"
        ) from None
    if len(counts) > num_steps:
        raise ValueError(f"{len(counts)} sections do not fit in {num_steps} diffusion steps")
    size, extra = divmod(num_steps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        section = size + (1 if i < extra else 0)
        if not 1 <= count <= section:
            raise ValueError(
                f"cannot take {count} steps out of a section of {section} diffusion steps "
                f"(num_sampling_steps={spacing!r}); each count must be in [1, {section}]"
            )
        stride = (section - 1) / (count - 1) if count > 1 else 1.0
        pos = 0.0
        for _ in range(count):
            kept.append(start + round(pos))
            pos += stride
        start += section
    return sorted(set(kept))


def _ddim_stride(num_steps: int, text: str) -> list[int]:
    try:
        want = int(text[len("ddim") :])
    except ValueError:
        raise ValueError(f"'ddimN' needs an integer N, got {text!r}") from None
    for stride in range(1, num_steps):
        if len(range(0, num_steps, stride)) == want:
            return list(range(0, num_steps, stride))
    raise ValueError(f"cannot take exactly {want} equally strided steps out of {num_steps} ({text!r})")


# ---------------------------------------------------------------- masking schedule
def next_mask_len(step: int, num_iter: int, seq_len: int, num_masked: int) -> int:
    """Tokens still unknown after iteration `step` (0-based): floor(L cos(pi/2 (step+1)/T)),
    clamped to [1, num_masked - 1] so that every iteration predicts at least one token."""
    target = math.floor(seq_len * math.cos(math.pi / 2.0 * (step + 1) / num_iter))
    return max(1, min(num_masked - 1, target))


def first_iteration(seq_len: int, num_iter: int, num_unknown: int) -> int:
    """The iteration at which the cosine schedule reaches `num_unknown` unknown tokens.

    Generation from scratch starts at 0. With some tokens given (editing) the schedule
    starts part-way: at the first iteration whose target count is below `num_unknown`,
    as if the given tokens had been generated by the iterations before it."""
    step = 0
    while step < num_iter - 1 and math.floor(seq_len * math.cos(math.pi / 2.0 * (step + 1) / num_iter)) >= num_unknown:
        step += 1
    return step


def mask_lengths(seq_len: int, num_iter: int, num_unknown: int | None = None) -> list[int]:
    """Tokens still unknown after each iteration that runs (the last is 0).

    From scratch (`num_unknown` None or `seq_len`) that is `num_iter` iterations; with
    fewer unknown tokens the list starts at `first_iteration(...)` and is shorter."""
    masked = seq_len if num_unknown is None else num_unknown
    if masked <= 0:
        return []
    lengths = []
    for step in range(first_iteration(seq_len, num_iter, masked), num_iter):
        masked = 0 if step >= num_iter - 1 else next_mask_len(step, num_iter, seq_len, masked)
        lengths.append(masked)
    return lengths


def tokens_per_step(seq_len: int, num_iter: int) -> list[int]:
    """How many tokens each of the `num_iter` iterations predicts (the last takes the rest)."""
    before = [seq_len] + mask_lengths(seq_len, num_iter)[:-1]
    return [b - a for b, a in zip(before, mask_lengths(seq_len, num_iter))]


# ---------------------------------------------------------------- classifier-free guidance
def cfg_at(cfg: float, schedule: str, seq_len: int, mask_len: int) -> float:
    """Guidance scale of one iteration: `linear` ramps from 1 as tokens become known
    (Muse, as the official code), `constant` is `cfg` throughout."""
    if schedule == "linear":
        return 1.0 + (cfg - 1.0) * (seq_len - mask_len) / seq_len
    if schedule == "constant":
        return cfg
    raise ValueError(f"unknown cfg_schedule {schedule!r}; choose one of {CFG_SCHEDULES}")


def cfg_combine(cond: T, uncond: T, scale: float) -> T:
    """Guided prediction uncond + scale (cond - uncond), for tensors or arrays alike."""
    return uncond + scale * (cond - uncond)


# ---------------------------------------------------------------- diffusion steps per iteration
@dataclass(frozen=True)
class Iteration:
    """One iteration of a masked generation, as the plan fixes it before any work."""

    step: int  # 0-based index in [0, num_iter)
    mask_len: int  # tokens left unknown after it (the official count; the last one reveals them all)
    last: bool  # predicts every token still unknown
    cfg: float  # the guidance scale (cfg_at)
    head_steps: int | None  # the head's diffusion steps (None: the model's own count)
    refresh: bool  # the backbone runs a full pass (no cross-iteration reuse)


def generation_plan(
    seq_len: int,
    num_iter: int,
    num_unknown: int,
    cfg: float,
    cfg_schedule: str,
    steps: int | str | Sequence[int] | None = None,
    refresh: Callable[[int], bool] | None = None,
) -> list[Iteration]:
    """The plan of a masked generation of `seq_len` tokens of which `num_unknown` are unknown
    (editing starts part-way, first_iteration): per iteration, how many tokens stay unknown,
    the CFG scale, the head's steps (step_schedule) and whether the backbone refreshes its
    cache (`refresh(step)`, a cache policy's test; None: every pass is full). The torch loop
    and the torch-free deploy loop both run this plan."""
    per_iter = step_schedule(steps, num_iter)
    start = first_iteration(seq_len, num_iter, num_unknown) if num_unknown < seq_len else 0
    plan, unknown = [], num_unknown
    for step in range(start, num_iter):
        mask_len = next_mask_len(step, num_iter, seq_len, unknown)
        plan.append(
            Iteration(
                step=step,
                mask_len=mask_len,
                last=step >= num_iter - 1,
                cfg=cfg_at(cfg, cfg_schedule, seq_len, mask_len),
                head_steps=per_iter[step],
                refresh=True if refresh is None else bool(refresh(step)),
            )
        )
        unknown = mask_len
    return plan


def step_schedule(spec: int | str | Sequence[int] | None, num_iter: int) -> list[int | None]:
    """Diffusion steps of the head at each of the `num_iter` autoregressive iterations.

    None: the model's own count everywhere (official). An int n: n everywhere. A list: one
    count per iteration (it may not be longer than the iterations; a shorter list repeats
    its last entry). "A-B": from A at the first iteration to B at the last, linearly
    (DiSA's step annealing: many steps while few tokens are known, few at the end);
    "A-B:cos" anneals along a cosine instead; "N" is the int N."""
    if spec is None:
        return [None] * num_iter
    if isinstance(spec, bool):
        raise TypeError(f"diffusion steps must be an int, 'A-B' or a list of ints, got {spec!r}")
    if isinstance(spec, int):
        return [_steps(spec)] * num_iter
    if isinstance(spec, str):
        text = spec.strip()
        if text.isdigit():
            return [_steps(int(text))] * num_iter
        body, _, curve = text.partition(":")
        upper, sep, lower = body.partition("-")
        if not sep or not upper.strip().isdigit() or not lower.strip().isdigit() or curve not in ("", "lin", "cos"):
            raise ValueError(f"a diffusion-step schedule is an int, 'A-B' or 'A-B:cos' (e.g. '50-5'), got {spec!r}")
        hi, lo = _steps(int(upper)), _steps(int(lower))
        out = []
        for k in range(num_iter):
            frac = k / (num_iter - 1) if num_iter > 1 else 1.0
            if curve == "cos":
                frac = 1.0 - math.cos(math.pi / 2.0 * frac)
            out.append(max(1, round(hi + (lo - hi) * frac)))
        return out
    if not isinstance(spec, (list, tuple)):
        raise TypeError(f"diffusion steps must be an int, 'A-B' or a list of ints, got {type(spec).__name__} {spec!r}")
    counts = [_steps(_entry(v)) for v in spec]
    if not counts:
        raise ValueError("a diffusion-step schedule list needs at least one entry")
    if len(counts) > num_iter:
        raise ValueError(
            f"the diffusion-step schedule has {len(counts)} entries but there are only {num_iter} iterations"
        )
    return counts + [counts[-1]] * (num_iter - len(counts))


def _steps(n: int) -> int:
    if not 1 <= n <= 1000:
        raise ValueError(f"diffusion steps must be in [1, 1000] (the training steps), got {n}")
    return n


def _entry(v: object) -> int:
    """One entry of a step-schedule list: an int (or a whole float such as 5.0)."""
    if not isinstance(v, bool):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        try:
            return operator.index(v)  # int, numpy integers
        except TypeError:
            pass
    raise TypeError(f"diffusion steps must be integers, got {v!r}")


# ---------------------------------------------------------------- diffusion steps per token
TOKEN_STEP_KINDS = ("hf",)


@dataclass(frozen=True)
class TokenSteps:
    """Per-token head steps (GtR-style): at each iteration most tokens get `base` diffusion steps
    (None: the iteration's count from the step schedule) and the fraction `frac` of the tokens
    with the highest high-frequency score (the local variance of their known neighbours; a token
    with fewer than two known neighbours scores highest) gets `boost`; the first `early`
    iterations give every token `boost`. Written "hf:base=8,boost=16,frac=0.25,early=2"
    (every field optional but boost); parsed by `parse`, the one place."""

    kind: str = "hf"
    boost: int = 16
    base: int | None = None
    frac: float = 0.25
    early: int = 0

    @classmethod
    def parse(cls, spec: str | TokenSteps | None) -> TokenSteps | None:
        """None/"" /"off": no per-token steps; else "hf:boost=B[,base=A][,frac=F][,early=K]"."""
        if spec is None or isinstance(spec, TokenSteps):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"token_steps must be a string such as 'hf:boost=16,frac=0.25', got {spec!r}")
        text = spec.strip()
        if text in ("", "off", "none"):
            return None
        kind, _, body = text.partition(":")
        if kind not in TOKEN_STEP_KINDS:
            raise ValueError(f"token_steps {spec!r}: unknown kind {kind!r}; write e.g. 'hf:base=8,boost=16,frac=0.25'")
        fields: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in body.split(","))):
            key, eq, value = part.partition("=")
            if not eq or key not in ("base", "boost", "frac", "early") or key in fields:
                raise ValueError(
                    f"token_steps {spec!r}: {part!r} is not one of base=N, boost=N, frac=F, early=K (each once)"
                )
            fields[key] = value.strip()
        if "boost" not in fields:
            raise ValueError(f"token_steps {spec!r}: boost=N (the flagged tokens' diffusion steps) is required")
        try:
            boost = _steps(int(fields["boost"]))
            base = _steps(int(fields["base"])) if "base" in fields else None
            frac = float(fields.get("frac", "0.25"))
            early = int(fields.get("early", "0"))
        except ValueError as e:
            raise ValueError(f"token_steps {spec!r}: {e}") from None
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"token_steps {spec!r}: frac must be in [0, 1], got {frac}")
        if early < 0:
            raise ValueError(f"token_steps {spec!r}: early must be >= 0, got {early}")
        return cls(kind, boost, base, frac, early)

    def counts(self, it: Iteration, default: int) -> tuple[int, int]:
        """(base, boost) steps at iteration `it`; `default` stands for the model's own count
        where neither base nor the step schedule gives one. The boost never lowers a count."""
        base = self.base if self.base is not None else (it.head_steps if it.head_steps is not None else default)
        return base, max(base, self.boost)

    def boosted(self, it: Iteration, rows: int) -> int:
        """How many of an image's `rows` predicted tokens get the boost at iteration `it`."""
        if it.step < self.early:
            return rows
        return min(rows, math.ceil(self.frac * rows - 1e-9))
