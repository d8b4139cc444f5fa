"""FID, Inception Score and precision/recall from Inception features, with torch-fidelity's
conventions (its `metric_fid`, `metric_isc`, `metric_prc`):

- statistics: mu = mean, sigma = np.cov(rowvar=False) of the float32 pool features, both float64;
- FID = |mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 sum(sqrt(eigvals(s1 s2))).real;
- IS: the unbiased logits shuffled by np.random.RandomState(2020).permutation, then in 10 splits
  [i N / 10, (i + 1) N / 10): exp(mean_x KL(p(y|x) || p(y))) in float64; mean and (population) std;
- precision / recall (k = 3): a sample is inside a set's manifold when it lies within the distance of
  some member to that member's k-th nearest neighbour (the member itself not counted).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..config import EVAL_DEFAULTS
from ..imageio import save_npz

log = logging.getLogger("marengine.evaluation")

MIN_IMAGES = 2  # a covariance needs two samples
UNBIASED_FROM = 2048  # fewer images than feature dimensions: FID is biased upward (singular covariance)


def fid_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """float features [N, D] -> (mu [D], sigma [D, D]), float64."""
    f = features.cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if f.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {list(f.shape)}")
    if len(f) < MIN_IMAGES:
        raise ValueError(f"{len(f)} images: FID needs at least {MIN_IMAGES} (papers use 50,000)")
    return f.astype(np.float64).mean(axis=0), np.cov(f, rowvar=False)


def check_count(n: int, what: str = "images") -> None:
    """Refuse fewer than 2 samples; warn below 2048 (FID is then biased and not comparable)."""
    if n < MIN_IMAGES:
        raise ValueError(f"{n} {what}: FID and IS need at least {MIN_IMAGES} (papers use 50,000)")
    if n < UNBIASED_FROM:
        log.warning(
            "only %d %s: with fewer than %d, FID is biased upward; compare only scores of equal counts",
            n,
            what,
            UNBIASED_FROM,
        )


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Frechet distance of two Gaussians (torch-fidelity's eigenvalue form of tr sqrt(s1 s2))."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"statistics of different dimensions: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}"
        )
    diff = mu1 - mu2
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvals(sigma1 @ sigma2).astype(np.complex128)).real)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def inception_score(
    logits: np.ndarray | torch.Tensor,
    splits: int = EVAL_DEFAULTS.isc_splits,
    shuffle: bool = True,
    seed: int = EVAL_DEFAULTS.isc_seed,
) -> tuple[float, float]:
    """(mean, std) of the Inception Score of unbiased logits [N, 1008] over `splits` splits."""
    x = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits).cpu()
    if x.dim() != 2:
        raise ValueError(f"logits must be [N, classes], got shape {list(x.shape)}")
    n = x.shape[0]
    if n < splits:
        raise ValueError(f"{n} images cannot make {splits} Inception Score splits: give at least {splits}")
    if shuffle:
        x = x[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    x = x.double()
    p, log_p = x.softmax(dim=1), x.log_softmax(dim=1)  # [N, C]
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(dim=0, keepdim=True)  # [1, C] the split's marginal
        kl = (p[lo:hi] * (log_p[lo:hi] - q.log())).sum(dim=1)  # [n_i]
        scores.append(kl.mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def _kth_neighbour_radius(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """[N] distance of each row of x [N, D] to its k-th nearest other row."""
    out = []
    for part in x.split(chunk):
        d = torch.cdist(part, x)  # [n, N], the row itself at distance 0
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _inside(query: torch.Tensor, ref: torch.Tensor, radius: torch.Tensor, chunk: int) -> float:
    """Fraction of query rows within radius[j] of some ref row j."""
    hits = []
    for part in query.split(chunk):
        d = torch.cdist(part, ref)  # [n, M]
        hits.append((d <= radius[None, :]).any(dim=1))
    return torch.cat(hits).float().mean().item()


def precision_recall(
    real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, k: int = EVAL_DEFAULTS.prc_k, chunk: int = 4096
) -> tuple[float, float]:
    """(precision, recall) of generated features against real ones (k-NN manifolds, float32)."""
    r, f = (
        torch.as_tensor(np.asarray(real), dtype=torch.float32),
        torch.as_tensor(np.asarray(fake), dtype=torch.float32),
    )
    if min(len(r), len(f)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images on each side")
    precision = _inside(f, r, _kth_neighbour_radius(r, k, chunk), chunk)
    recall = _inside(r, f, _kth_neighbour_radius(f, k, chunk), chunk)
    return precision, recall


def load_stats(path: str | os.PathLike, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(mu [dim], sigma [dim, dim]) float64 from an npz with `mu` and `sigma` (ADM's adm_in256_stats.npz)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"statistics file {path} not found: give an npz with mu and sigma "
            "(e.g. adm_in256_stats.npz), or make one with --save-stats"
        )
    try:
        z = np.load(path, allow_pickle=False)
        keys = set(z.files)
    except (OSError, EOFError, ValueError, AttributeError) as e:  # not an npz at all (or a bare .npy)
        raise ValueError(f"statistics file {path} is not a readable npz with mu and sigma: {e}") from e
    with z:
        if not {"mu", "sigma"} <= keys:
            raise ValueError(
                f"statistics file {path} lacks {sorted({'mu', 'sigma'} - keys)} "
                f"(it has {sorted(keys)}): it needs mu [{dim}] and sigma [{dim}, {dim}]"
            )
        mu, sigma = z["mu"], z["sigma"]
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ValueError(
            f"statistics file {path} has mu {list(mu.shape)} and sigma {list(sigma.shape)}; "
            f"these features need mu [{dim}] and sigma [{dim}, {dim}]"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"statistics file {path} holds non-finite values")
    return mu.astype(np.float64), sigma.astype(np.float64)


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> Path:
    """Write mu and sigma (float64) as an npz, whole or not at all."""
    return save_npz(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))
