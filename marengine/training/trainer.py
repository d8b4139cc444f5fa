"""The training engine: one loop for one CPU or many GPUs (torchrun + DDP),
mixed precision that skips non-finite steps, EMA, atomic checkpoints and
exact resume. Batches come from a DataLoader (`loader.py`) whose data do not
depend on the number of workers, so resume stays exact with workers too."""

from __future__ import annotations

import copy
import csv
import io
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from ..files import (
    OutputRefused,
    atomic_write_text,
    claim_output_folder,
    read_manifest,
    record_outputs,
    remove_outputs,
    remove_stale_temporaries,
)
from ..models.checkpoints import (
    CONFIG_NAME,
    PRETRAINED_KIND,
    TOKENIZER_NAME,
    WEIGHTS_NAME,
    load_strict,
    non_finite_keys,
)
from ..models.loading import load_weights
from ..models.tokenizers import build_tokenizer, tokenizer_spec
from ..utils import resolve_device
from .checkpoint import LAST, load_checkpoint, restore_rng, rng_state, run_files, save_checkpoint
from .config import TrainConfig
from .distributed import all_reduce_mean, barrier, init_distributed, shutdown
from .ema import EMA
from .factory import autocast_dtype, build_dataset, build_model, param_groups, resolve_precision
from .loader import StepLoader

log = logging.getLogger("marengine.train")
RUN_KIND = "training-run"  # the output kind in the run folder's manifest (files.claim_output_folder)


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


@dataclass
class EvalHook:
    """Online evaluation (built by the caller: training does not import evaluation): every `every`
    steps and at the end, the main process calls fn(step, ema_model, tokenizer) -> {column: value}
    and writes the values into metrics.csv under `columns`."""

    fn: Callable[[int, Any, Any], dict[str, float]]
    every: int
    columns: tuple[str, ...]


class Trainer:
    def __init__(self, cfg: TrainConfig, eval_hook: EvalHook | None = None) -> None:
        self.cfg = cfg
        self.eval_hook = eval_hook
        device = resolve_device(cfg.device)
        self.dist = init_distributed(device.type)
        self.device = torch.device("cuda", self.dist.local_rank) if device.type == "cuda" else device
        self.precision = resolve_precision(cfg.precision, self.device)
        if self.precision == "tf32":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.out_dir = Path(cfg.out_dir)
        resume = load_checkpoint(cfg.resume) if cfg.resume else None  # fail before any work
        if self.dist.is_main:
            prepare_out_dir(self.out_dir, resume_from=cfg.resume if resume else None, overwrite=cfg.overwrite)
        self.written: Path | None = None  # the newest checkpoint this run wrote

        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
        self.model = build_model(cfg)
        self.model_cfg = self.model.config
        self.tok_spec = tokenizer_spec(
            cfg.tokenizer, self.model_cfg, cfg.vq_ckpt if cfg.tokenizer == "vq" else cfg.vae_ckpt
        )
        self.dataset, self.cached = build_dataset(cfg, self.model_cfg)
        if self.dataset.num_classes > self.model_cfg.class_num:
            raise ValueError(
                f"the data has {self.dataset.num_classes} classes but the model's class_num is "
                f"{self.model_cfg.class_num}; set model_overrides class_num"
            )
        self.tokenizer = None if self.cached else build_tokenizer(self.tok_spec).to(self.device)
        self.global_batch = cfg.batch_size * self.dist.world_size
        # page-locked batches only help copies to a GPU
        self.loader = StepLoader(
            self.dataset,
            cfg.batch_size,
            cfg.seed,
            cfg.max_steps,
            self.dist.rank,
            self.dist.world_size,
            cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.steps_per_epoch = self.loader.steps_per_epoch
        if cfg.init_from and not resume:
            load_weights(self.model, cfg.init_from, key="model")
        self.model.to(self.device)
        self.ema = EMA(self.model, cfg.ema_rate, cfg.ema_warmup)
        self.base_lr = cfg.lr if cfg.lr is not None else cfg.blr * self.global_batch / 256
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=self.base_lr, betas=cfg.betas)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed * 1000 + self.dist.rank)
        torch.manual_seed(cfg.seed * 1000 + self.dist.rank)
        self.step, self.skipped, self.bad_run = 0, 0, 0
        if resume:
            self._restore(resume)
        self.ddp = (
            DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.dist.enabled
            else self.model
        )

    # ------------------------------------------------------------ state
    def _restore(self, ckpt: dict[str, Any]) -> None:
        if ckpt["config"] != self.model_cfg.to_dict():
            raise ValueError(
                "the resume checkpoint was trained with another model configuration: "
                f"{ckpt['config']} vs {self.model_cfg.to_dict()}"
            )
        load_strict(self.model, ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.skipped = int(ckpt["step"]), int(ckpt["skipped"])
        bad = ckpt.get("bad_inputs", [])
        self.loader.bad.count = int(bad[self.dist.rank]) if len(bad) == self.dist.world_size else 0
        rngs = ckpt["rng"]
        if len(rngs) != self.dist.world_size:
            log.warning(
                "resuming %d-process run on %d processes: RNG streams are re-seeded", len(rngs), self.dist.world_size
            )
            self.gen.manual_seed(self.cfg.seed * 1000 + self.dist.rank + 7919 * self.step)
        else:
            restore_rng(rngs[self.dist.rank], self.gen)

    def _state(self) -> dict[str, Any]:
        rng, bad = [rng_state(self.gen)], [self.loader.bad.count]
        if self.dist.enabled:
            rng, bad = [None] * self.dist.world_size, [None] * self.dist.world_size
            dist.all_gather_object(rng, rng_state(self.gen))
            dist.all_gather_object(bad, self.loader.bad.count)
        return {
            "model": self.model.state_dict(),
            "model_ema": self.ema.state_dict_for(self.model),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "skipped": self.skipped,
            "bad_inputs": bad,
            "rng": rng,
            "config": self.model_cfg.to_dict(),
            "architecture": self.model.architecture,
            "tokenizer": self.tok_spec,
            "train_config": self.cfg.to_dict(),
        }

    def save(self) -> Path | None:
        """Write last.pth (and step-N.pth every save_every steps) unless the weights are not
        finite: a checkpoint is never written from a diverged model."""
        state = self._state()  # every rank joins the RNG gather
        bad = first_non_finite(self.model.state_dict()) or first_non_finite(
            state["model_ema"]
        )  # the same on every rank
        if bad:
            log.warning("step %d: not saving a checkpoint, %s is not finite", self.step, bad)
            return None
        self.written = self.out_dir / LAST
        if not self.dist.is_main:
            return None
        if self.cfg.save_every and self.step % self.cfg.save_every == 0:
            step_file = f"step-{self.step}.pth"
            record_outputs(self.out_dir, RUN_KIND, [step_file, LAST])
            return save_checkpoint(self.out_dir / step_file, state, also=self.written)
        record_outputs(self.out_dir, RUN_KIND, [LAST])
        return save_checkpoint(self.written, state)

    def export_ema(self, folder: Path) -> Path:
        """A pretrained folder (config, EMA weights, tokenizer) for `marengine sample`, written
        beside `folder` and moved into place whole (replacing this run's earlier one)."""
        state = self.ema.state_dict_for(self.model)
        bad = first_non_finite(state)
        if bad:
            raise TrainingDiverged(f"the EMA weights are not finite ({bad}): no {folder} written")
        record_outputs(folder.parent, RUN_KIND, [folder.name])
        return self.model.save_pretrained(folder, state=state, tokenizer=self.tok_spec, overwrite=True)

    def ema_model(self):
        model = copy.deepcopy(self.model).eval()
        model.load_state_dict(self.ema.state_dict_for(self.model))
        return model

    # ------------------------------------------------------------ data
    def batch_indices(self, step: int) -> torch.Tensor:
        """This rank's sample indices at `step`: a fresh permutation per epoch, drop-last."""
        return torch.tensor([k.index for k in self.loader.sampler.keys(step)], dtype=torch.int64)

    def load_batch(self, step: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The batch of `step` on the device, without its unreadable items; (None, None) when none was readable."""
        b = self.loader.batch(step)
        if b.x is None:
            return None, None
        return b.x.to(self.device, non_blocking=True), b.y.to(self.device, non_blocking=True)

    def data_status(self, x: torch.Tensor | None) -> tuple[bool, int]:
        """(every rank has a batch, unreadable items met so far on all ranks)."""
        if not self.dist.enabled:
            return x is not None, self.loader.bad.count
        t = torch.tensor([float(x is None), float(self.loader.bad.count)], device=self.device)
        dist.all_reduce(t)
        return bool(t[0] == 0), int(t[1])

    def skip_step(self) -> dict[str, float]:
        """A step whose batch (on some rank) held no readable item: no update, the schedule moves on."""
        log.warning("step %d: no readable item in the batch; step skipped", self.step)
        lr = self.lr_at(self.step)
        self.step += 1
        self.skipped += 1
        return {"loss": float("nan"), "grad_norm": float("nan"), "lr": lr, "finite": False}

    # ------------------------------------------------------------ loop
    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return self.base_lr * (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            frac = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
            return cfg.min_lr + (self.base_lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        if cfg.lr_schedule != "constant":
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {cfg.lr_schedule!r}")
        return self.base_lr

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One optimizer step; a non-finite loss or gradient skips the update."""
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step)
        dtype = autocast_dtype(self.precision)
        with torch.no_grad():
            latents = x if self.cached else self.tokenizer.encode(x).sample(self.gen)
        self.ddp.train()
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = self.ddp(latents, y, generator=self.gen)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        loss_avg = all_reduce_mean(loss.detach().float(), self.dist)
        finite = bool(torch.isfinite(gnorm)) and bool(torch.isfinite(loss_avg))
        if finite:
            self.scaler.step(self.opt)
            self.ema.update(self.model)
            self.bad_run = 0
        else:
            self.skipped += 1
            self.bad_run += 1
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return {
            "loss": float(loss_avg),
            "grad_norm": float(gnorm),
            "lr": self.opt.param_groups[0]["lr"],
            "finite": finite,
        }

    def fit(self) -> dict[str, Any]:
        cfg, main = self.cfg, self.dist.is_main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        hook = self.eval_hook
        extra = hook.columns if hook else ()
        metrics = MetricsWriter(
            self.out_dir, enabled=main, resumed_at=self.step if self.cfg.resume else None, extra=extra
        )
        bar = _progress(cfg.max_steps, self.step, enabled=main and cfg.progress)
        history: list[float] = []
        try:
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                x, y = self.load_batch(self.step)
                have_data, bad_inputs = self.data_status(x)
                out = self.train_step(x, y) if have_data else self.skip_step()
                out["imgs_per_s"] = self.global_batch / (time.perf_counter() - t0)
                out["bad_inputs"] = bad_inputs
                if out["finite"]:
                    history.append(out["loss"])
                elif have_data and self.bad_run >= cfg.max_bad_steps:
                    raise TrainingDiverged(
                        f"{self.bad_run} consecutive steps had a non-finite loss or gradient (step {self.step}, "
                        f"{self.skipped} skipped in all). The last good checkpoint is kept at {self.out_dir / LAST}. "
                        "Lower the learning rate, or train with --precision bf16 or fp32."
                    )
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{out['loss']:.4f}",
                        lr=f"{out['lr']:.2e}",
                        img_s=f"{out['imgs_per_s']:.0f}",
                        skipped=self.skipped,
                        bad=bad_inputs,
                    )
                evaluate = hook is not None and (self.step % hook.every == 0 or self.step == cfg.max_steps)
                if evaluate and main:
                    out.update(hook.fn(self.step, self.ema_model(), self.tokenizer or build_tokenizer(self.tok_spec)))
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps or evaluate:
                    metrics.write(self.step, out, self.skipped)
                if cfg.sample_every and self.step % cfg.sample_every == 0 and main:
                    record_outputs(self.out_dir, RUN_KIND, [f"samples-{self.step}"])
                    self.write_sample_grid(self.out_dir / f"samples-{self.step}")
                if (self.step % cfg.ckpt_every == 0 or self.step == cfg.max_steps) and self.bad_run == 0:
                    self.save()  # never during a run of skipped steps: the last good one stays
        finally:
            self.loader.close()
            if bar is not None:
                bar.close()
            metrics.close()
        barrier(self.dist)
        if self.written is None and self.step >= cfg.max_steps and self.bad_run == 0:
            self.save()  # resumed from the final checkpoint (a run killed after it): finish what was left
        saved_last = self.written is not None and self.bad_run == 0
        if not saved_last or first_non_finite(self.model.state_dict()):
            last = self.out_dir / LAST
            kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written"
            raise TrainingDiverged(
                f"training ended at step {self.step} without finite weights to save ({self.skipped} non-finite "
                f"steps skipped in all); {kept}. Lower the learning rate, or train with --precision bf16 or fp32."
            )
        ema = self.export_ema(self.out_dir / "ema") if main else None
        return {
            "step": self.step,
            "skipped": self.skipped,
            "bad_inputs": self.loader.bad.count,
            "losses": history,
            "checkpoint": self.written,
            "ema": ema,
        }

    def write_sample_grid(self, out: Path, per_class: int = 4) -> None:
        from ..imageio import save_samples
        from ..sampling.engine import SampleSettings, generate

        labels = [c for c in range(self.dataset.num_classes) for _ in range(per_class)][:64]
        # a causal member predicts one token per step: all L of them (the family contract's `causal`)
        steps = self.model.seq_len if self.model.causal else min(16, self.model.seq_len)
        images = generate(self.ema_model(), self.tokenizer, labels, SampleSettings(num_iter=steps, seed=0))
        save_samples(out, images, labels, ncols=per_class)

    def close(self) -> None:
        self.loader.close()
        shutdown(self.dist)


def first_non_finite(state: dict[str, torch.Tensor]) -> str | None:
    bad = non_finite_keys(state)
    return bad[0] if bad else None


def prepare_out_dir(out_dir: Path, resume_from: str | None, overwrite: bool) -> None:
    """Before any work: the output folder is new or empty, or holds this run (resuming from a
    checkpoint in it), or an earlier run marengine wrote that `overwrite` replaces; anything
    else (another run's folder when resuming, files marengine did not write) is refused.
    What killed writers left behind (marengine's temporaries only) is deleted."""
    if resume_from is not None:
        source = Path(resume_from)
        source = source if source.is_dir() else source.parent
        if out_dir.exists() and out_dir.resolve() == source.resolve():
            _adopt_legacy_run(out_dir)
            claim_output_folder(out_dir, RUN_KIND, reuse=True)
        elif out_dir.exists() and any(out_dir.iterdir()):
            raise OutputRefused(
                f"--resume {resume_from} continues the run in {source}, but --out-dir {out_dir} holds other "
                "files (another run?): nothing was changed. Resume into the checkpoint's own folder, or give a "
                "new or empty --out-dir"
            )
    else:
        hint = (
            f"continue it with --resume {out_dir / LAST}, start over with --overwrite (its checkpoints are "
            "replaced), or choose another --out-dir"
        )
        claim_output_folder(out_dir, RUN_KIND, overwrite=overwrite, hint=hint)
        for name in remove_outputs(out_dir, RUN_KIND) if out_dir.exists() else []:
            log.info("--overwrite: removed %s of the earlier run", out_dir / name)
    for p in remove_stale_temporaries(out_dir):
        log.info("removed %s, left by an interrupted write", p)
    out_dir.mkdir(parents=True, exist_ok=True)
    record_outputs(out_dir, RUN_KIND, [])


def _adopt_legacy_run(out_dir: Path) -> None:
    """A run folder written before manifests existed: take its run files as marengine's own."""
    if read_manifest(out_dir) is not None:
        return
    names = run_files(out_dir)
    record_outputs(out_dir, RUN_KIND, names + [n for n in ("tb",) if (out_dir / n).is_dir()])
    ema = out_dir / "ema"
    if ema.is_dir() and read_manifest(ema) is None:
        held = sorted(p.name for p in ema.iterdir())
        if set(held) <= {CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME}:
            record_outputs(ema, PRETRAINED_KIND, held)


class MetricsWriter:
    """metrics.csv, plus TensorBoard where it is installed."""

    FIELDS = ("step", "loss", "grad_norm", "lr", "imgs_per_s", "skipped", "bad_inputs")

    def __init__(
        self, out_dir: Path, enabled: bool, resumed_at: int | None = None, extra: tuple[str, ...] = ()
    ) -> None:
        """A new metrics.csv, or (resumed_at: the step a resumed run starts from) the run's own,
        with its columns, less the rows of steps after that checkpoint (a killed run logged them,
        then lost them). extra: the online evaluation's columns."""
        self.enabled, self.tb = enabled, None
        self.fields = self.FIELDS + tuple(extra)  # extra: the online evaluation's columns
        if not enabled:
            return
        record_outputs(out_dir, RUN_KIND, ["metrics.csv", "tb"])
        path = out_dir / "metrics.csv"
        header, rows = _rows_until(path, resumed_at) if resumed_at is not None else (None, [])
        if header is not None:  # a resumed run keeps the columns its file has
            self.fields = header
        text = io.StringIO()
        csv.writer(text).writerows([self.fields, *rows])
        atomic_write_text(path, text.getvalue())  # a kill here leaves the old file or the new, whole
        self.file = open(path, "a", newline="")
        self.csv = csv.writer(self.file)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"))
        except Exception:  # tensorboard not installed
            self.tb = None

    def write(self, step: int, out: dict[str, float], skipped: int) -> None:
        if not self.enabled:
            return
        row = {"bad_inputs": 0, **out, "step": step, "skipped": skipped}
        self.csv.writerow([row.get(k, "") for k in self.fields])
        self.file.flush()
        if self.tb is not None:
            for k in ("loss", "grad_norm", "lr", "imgs_per_s"):
                self.tb.add_scalar(f"train/{k}", row[k], step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def _rows_until(path: Path, step: int) -> tuple[tuple[str, ...] | None, list[list[str]]]:
    """(header, data rows up to `step`) of an earlier metrics.csv; (None, []) if it is missing or not ours."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None, []
    if not rows or tuple(rows[0][: len(MetricsWriter.FIELDS)]) != MetricsWriter.FIELDS:
        return None, []
    return tuple(rows[0]), [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]


def _progress(total: int, start: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)


def train(cfg: TrainConfig) -> dict[str, Any]:
    trainer = Trainer(cfg)
    try:
        return trainer.fit()
    finally:
        trainer.close()
