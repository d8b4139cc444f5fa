"""`marengine train` and `marengine demo` (the main job: train on the bundled digits, sample,
write images)."""

from __future__ import annotations

import argparse
import time

from ..checks import check_float, check_int
from ..config import AR_PRESETS, LOSSES, PRESETS, SAMPLE_DEFAULTS
from ..models.tokenizers import TOKENIZER_KINDS
from ..training.config import DEMO, LR_SCHEDULES, PRECISIONS, TrainConfig
from ..training.factory import DIGITS_SIZES
from .common import (
    add_checked,
    add_command,
    add_dataclass_flags,
    add_settings_options,
    add_switch,
    add_threads_option,
    dataclass_from,
    sample_settings,
)

DEMO_SAMPLING = {"num_iter": 16, "cfg": 2.0, "temperature": 1.0}


def _names(names: object) -> str:
    return ", ".join(str(n) for n in names)  # type: ignore[attr-defined]


# the help of each TrainConfig field's flag (its default is TrainConfig's, shown after it)
TRAIN_HELP: dict[str, str] = {
    "model": f"the family member and its size, a preset: MAR {_names(PRESETS)}; causal AR {_names(AR_PRESETS)}",
    "loss": f"the token loss: {_names(LOSSES)} (diffusion: Diffusion Loss on continuous tokens; ce: "
    "cross-entropy over the codes of a VQ tokenizer, with --tokenizer vq)",
    "model_overrides": "fields of the preset's model configuration to change, e.g. '{\"encoder_depth\": 2}'",
    "init_from": "an official checkpoint-last.pth or a pretrained folder to fine-tune from (default: random init)",
    "data": f"what to train on: {_names(DIGITS_SIZES)} (the bundled digits at "
    f"{_names(f'{s}x{s}' for s in DIGITS_SIZES.values())}), an image folder root/<class>/<images>, or a "
    "latent cache folder written by marengine cache-latents (an older single .safetensors cache also works)",
    "tokenizer": f"how images become tokens: {_names(TOKENIZER_KINDS)} (pixel: pixel patches, no VAE; vae: the "
    "KL-16 VAE, with --vae-ckpt; vq: VQ codes, with --vq-ckpt and --loss ce)",
    "vae_ckpt": "the KL-16 VAE file (kl16.ckpt) for --tokenizer vae (default: none)",
    "vq_ckpt": "--tokenizer vq: a folder from marengine train-vq, or LDM's VQ-16 file (default: none)",
    "crop": "image folders: the official center crop (--no-crop: images must already be the model's size)",
    "num_workers": "DataLoader worker processes; 0 loads in the training process (suits the in-memory digits "
    "on a CPU); 4-8 per GPU for image folders",
    "batch_size": "images per step per process",
    "blr": "base learning rate: lr = blr * global batch / 256",
    "lr": "absolute learning rate, instead of --blr (default: from --blr)",
    "min_lr": "the learning rate the cosine schedule ends at",
    "lr_schedule": f"after the warmup: {_names(LR_SCHEDULES)}",
    "warmup_steps": "steps of linear learning-rate warmup",
    "max_steps": "optimizer steps to train",
    "weight_decay": "AdamW weight decay (not on biases, 1-D parameters and the head)",
    "betas": "AdamW betas: BETA1 BETA2",
    "grad_clip": "clip the gradient norm to this",
    "ema_rate": "decay of the EMA weights",
    "ema_warmup": "ramp the EMA rate up from 0 over the first steps (short runs)",
    "precision": f"training precision: {_names(PRECISIONS)} (auto: bf16 on a GPU, fp32 on a CPU)",
    "grad_checkpointing": "recompute the blocks' activations in the backward pass (less memory, slower)",
    "max_bad_steps": "consecutive non-finite steps before training stops",
    "seed": "seed of the weights, the data order and the masks",
    "device": "auto (a GPU when torch sees one), cpu, cuda or cuda:N",
    "out_dir": "run folder: last.pth, step-N.pth, ema/ (a pretrained folder), metrics.csv, samples",
    "save_every": "keep step-N.pth every N steps (0: only last.pth)",
    "ckpt_every": "write last.pth every N steps (and at the end)",
    "sample_every": "write a sample grid every N steps (0: never)",
    "log_every": "log and append to metrics.csv every N steps",
    "resume": "a training checkpoint (or its run folder) to continue exactly (default: start anew)",
    "overwrite": "start over in an --out-dir that holds a run (replaces its files; others are never touched)",
    "progress": "show a progress bar",
}


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.trainer import Trainer

    cfg = dataclass_from(TrainConfig, args)
    make_hook = online_eval_hook(args, cfg)  # every evaluation option checked before training starts
    trainer = Trainer(cfg)
    try:
        if make_hook is not None:
            trainer.eval_hook = make_hook(trainer.device)
        out = trainer.fit()
    finally:
        trainer.close()
    if out["ema"] is not None:  # the main process
        print(
            f"trained {out['step']} steps ({out['skipped']} skipped); checkpoint {out['checkpoint']}, "
            f"EMA model {out['ema']}"
        )
    return 0


def online_eval_hook(args: argparse.Namespace, cfg: TrainConfig):
    """None without --eval-every; else a function device -> EvalHook (evaluation.online builds the callback)."""
    if not args.eval_every:
        return None
    from ..evaluation.online import online_eval
    from ..models.family import member_config
    from ..sampling.balanced import balanced_labels
    from ..sampling.engine import SampleSettings
    from ..training.trainer import EvalHook

    _, model_cfg = member_config(cfg.model, cfg.loss, **cfg.model_overrides)
    balanced_labels(model_cfg.class_num, args.eval_images)  # a count that does not divide is refused now
    digits = model_cfg.class_num == 10 and getattr(model_cfg, "img_size", None) in (8, 16)
    if args.eval_inception_weights is None and not digits:
        raise ValueError(
            "--eval-every on this model needs --eval-inception-weights FILE (and --eval-ref-stats for FID)"
        )
    sides = [getattr(model_cfg, a, None) for a in ("img_size", "vae_stride", "patch_size")]
    seq_len = (sides[0] // sides[1] // sides[2]) ** 2 if all(sides) else args.eval_num_iter
    settings = SampleSettings(num_iter=min(args.eval_num_iter, seq_len), cfg=args.eval_cfg, seed=0)

    def make(device):
        fn, columns = online_eval(
            args.eval_images, settings, model_cfg.class_num, args.eval_inception_weights, args.eval_ref_stats, device
        )
        return EvalHook(fn, args.eval_every, columns)

    return make


def add_eval_flags(p: argparse.ArgumentParser) -> None:
    every = "score the EMA weights every N steps and at the end, into metrics.csv (default: never)"
    add_checked(p, "--eval-every", check_int, None, every, lo=1)
    images = "class-balanced images per evaluation, a multiple of the classes"
    add_checked(p, "--eval-images", check_int, 1000, images, lo=1)
    p.add_argument(
        "--eval-inception-weights",
        default=None,
        help="Inception weights file for FID/IS (default: none; digits models use the digits judge)",
    )
    p.add_argument(
        "--eval-ref-stats", default=None, help="reference statistics npz (mu, sigma) for FID (default: none)"
    )
    iters = "sampling iterations of the evaluation (at most the tokens)"
    add_checked(p, "--eval-num-iter", check_int, SAMPLE_DEFAULTS.num_iter, iters, lo=1)
    add_checked(p, "--eval-cfg", check_float, SAMPLE_DEFAULTS.cfg, "guidance scale of the evaluation", lo=1.0)


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a small MAR on the bundled digits, sample per class, write grid, npz, one PNG per
    sample and the checkpoint."""
    import numpy as np

    from ..evaluation.digits import evaluate
    from ..imageio import save_samples
    from ..sampling.engine import generate
    from ..training.trainer import RUN_KIND, Trainer

    t0 = time.perf_counter()
    cfg, settings = dataclass_from(TrainConfig, args), sample_settings(args)  # every setting checked up front
    trainer = Trainer(cfg)
    try:
        out = trainer.fit()
    finally:
        trainer.close()
    if not trainer.dist.is_main:
        return 0
    labels = np.repeat(np.arange(10), args.per_class)
    images = generate(trainer.ema_model(), trainer.tokenizer, labels, settings)
    paths = save_samples(
        args.out_dir, images, labels, ncols=args.per_class, per_image=True, kind=RUN_KIND
    )  # in the run
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    print(f"  samples:    {paths['grid']}  {paths['samples']}")
    print(f"  images:     {paths['pngs']}/class{{c}}_{{i}}.png (one PNG per sample, e.g. for marengine edit --images)")
    print(f"  checkpoint: {out['checkpoint']} (EMA model: {out['ema']})")
    if args.evaluate:
        print(f"  quality:    {evaluate(images, labels)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    train = "train a MAR (torchrun --nproc_per_node=N -m marengine train ... for DDP)"
    p = add_command(sub, "train", train, cmd_train)
    add_dataclass_flags(p, TrainConfig, TrainConfig(), TRAIN_HELP)
    add_threads_option(p)
    add_eval_flags(p)

    p = add_command(sub, "demo", "the main job: train on the bundled digits, sample, write images", cmd_demo)
    add_dataclass_flags(p, TrainConfig, DEMO, TRAIN_HELP)
    add_settings_options(p, DEMO_SAMPLING, precision_flag="--sample-precision", seed_flag="--sample-seed")
    add_checked(p, "--per-class", check_int, 10, "samples per digit", lo=1)
    add_switch(p, "--evaluate", True, "score the samples with an independent digits classifier")
    add_threads_option(p)
