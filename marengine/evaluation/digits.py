"""Quality gate for the digits demo: an independent classifier trained on real
digits judges the class-conditional samples; a Frechet distance in its hidden
features compares samples with held-out real digits (real vs real is the floor)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass
class DigitsReport:
    accuracy: float  # fraction of samples recognised as the class they were asked for
    fd_samples: float  # Frechet distance: samples vs held-out real digits
    fd_real: float  # the floor: as many real training-half digits (same labels) vs held-out real digits
    classifier_accuracy: float  # the classifier's own accuracy on held-out real digits

    def __str__(self) -> str:
        return (
            f"classifier recognises {100 * self.accuracy:.1f}% of samples as their class "
            f"(it scores {100 * self.classifier_accuracy:.1f}% on held-out real digits); "
            f"FD samples-vs-real {self.fd_samples:.2f}, real-vs-real floor {self.fd_real:.2f}"
        )


def _real_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.reshape(len(d.images), -1).astype(np.float64) / 16.0, d.target


def images_to_features(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 8, 8, 1] in [0, 255] -> [N, 64] in [0, 1] (the classifier's input scale).

    16x16 samples (the "digits16" data: digits upsampled by pixel repetition) are first
    average-pooled 2x2 to 8x8, which maps an upsampled real digit back to itself."""
    if images.ndim != 4 or images.shape[1:3] not in ((8, 8), (16, 16)):
        raise ValueError(f"expected 8x8 (or 16x16) digit images [N, 8, 8, C], got {images.shape}")
    x = images[..., 0].astype(np.float64)
    if x.shape[1] == 16:
        x = x.reshape(len(x), 8, 2, 8, 2).mean(axis=(2, 4))  # [N, 8, 8]
    return x.reshape(len(images), -1) / 255.0


@functools.lru_cache(maxsize=4)
def train_classifier(seed: int = 0):
    """MLPClassifier on the even-indexed half of the digits (the half the demo trains on);
    trained once per seed and process (a sweep judges many sample sets)."""
    from sklearn.neural_network import MLPClassifier

    x, y = _real_digits()
    clf = MLPClassifier(hidden_layer_sizes=(128,), max_iter=600, random_state=seed)
    clf.fit(x[0::2], y[0::2])
    return clf


def hidden_features(clf, x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ clf.coefs_[0] + clf.intercepts_[0], 0.0)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to features a [N, F] and b [M, F]:
    |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2).

    tr((S1 S2)^1/2) is taken as the sum of the square roots of the eigenvalues of the symmetric
    S1^1/2 S2 S1^1/2 (the same eigenvalues as S1 S2), so a singular covariance (fewer samples
    than features, a dead feature) is handled exactly: its zero eigenvalues add nothing, where
    scipy's sqrtm of the non-symmetric product warns and returns an approximation."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(s1)  # s1 is symmetric PSD; round-off may leave tiny negative eigenvalues
    s1_half = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = s1_half @ s2 @ s1_half
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


def evaluate(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> DigitsReport:
    x, y = _real_digits()
    clf = train_classifier(seed)
    feats = images_to_features(images)
    acc = float((clf.predict(feats) == np.asarray(labels)).mean())
    held = hidden_features(clf, x[1::2])
    # the floor uses real digits with the samples' labels, so both distances carry the same small-n bias
    rng = np.random.default_rng(seed)
    train_x, train_y = x[0::2], y[0::2]
    counts = np.bincount(np.asarray(labels), minlength=10)
    real = np.concatenate([rng.choice(train_x[train_y == c], n, replace=False) for c, n in enumerate(counts) if n])
    return DigitsReport(
        accuracy=acc,
        fd_samples=frechet_distance(hidden_features(clf, feats), held),
        fd_real=frechet_distance(hidden_features(clf, real), held),
        classifier_accuracy=float((clf.predict(x[1::2]) == y[1::2]).mean()),
    )
