"""Online evaluation during training (`marengine train --eval-every N --eval-images M`): the
callback the trainer calls with its EMA model, scoring class-balanced, index-seeded samples with
the Inception network (FID against reference statistics, IS) or, on the digits, the digits judge."""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch

from ..sampling.balanced import balanced_labels, generate_indexed
from . import digits
from .features import Features, features_of_batch
from .inception import POOL_DIM, load_inception
from .metrics import fid_statistics, frechet_distance, inception_score, load_stats

log = logging.getLogger("marengine.evaluation")

JUDGE_COLUMNS = ("eval_accuracy", "eval_fd")
INCEPTION_COLUMNS = ("eval_fid", "eval_is")


def online_eval(
    num_images: int,
    settings: Any,
    num_classes: int,
    inception_weights: str | None = None,
    ref_stats: str | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Callable[[int, Any, Any], dict[str, float]], tuple[str, ...]]:
    """(fn(step, model, tokenizer) -> {column: value}, the columns); every input checked now."""
    labels = balanced_labels(num_classes, num_images)  # refuses a count that does not divide
    if inception_weights is None:
        if ref_stats:
            raise ValueError("--eval-ref-stats needs --eval-inception-weights")

        def judge(step: int, model: Any, tokenizer: Any) -> dict[str, float]:
            images = generate_indexed(model, tokenizer, labels, settings)
            r = digits.evaluate(images, labels)
            log.info("step %d: digits judge accuracy %.3f, FD %.3f", step, r.accuracy, r.fd_samples)
            return {"eval_accuracy": r.accuracy, "eval_fd": r.fd_samples}

        return judge, JUDGE_COLUMNS
    net = load_inception(inception_weights, device)
    ref = load_stats(ref_stats, POOL_DIM) if ref_stats else None

    def score(step: int, model: Any, tokenizer: Any) -> dict[str, float]:
        images = generate_indexed(model, tokenizer, labels, settings)
        rgb = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
        f = Features.concat([features_of_batch(net, rgb[s : s + 64]) for s in range(0, len(rgb), 64)])
        fid = frechet_distance(*fid_statistics(f.pool), *ref) if ref is not None else float("nan")
        isc = inception_score(f.logits)[0] if len(f.logits) >= 10 else float("nan")
        log.info("step %d: FID %.4f, IS %.3f", step, fid, isc)
        return {"eval_fid": fid, "eval_is": isc}

    return score, INCEPTION_COLUMNS
