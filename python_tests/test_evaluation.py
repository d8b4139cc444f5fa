"""The digits judge's Frechet distance: the closed form on well-conditioned data, and the
singular case (fewer samples than features) handled without scipy's LinAlgWarning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from marengine.evaluation.digits import frechet_distance


def _scipy_fd(a: np.ndarray, b: np.ndarray, eps: float = 0.0) -> float:
    """The textbook formula with scipy's sqrtm (eps * I added to both covariances when asked)."""
    from scipy import linalg

    s1 = np.cov(a, rowvar=False) + eps * np.eye(a.shape[1])
    s2 = np.cov(b, rowvar=False) + eps * np.eye(a.shape[1])
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_matches_the_textbook_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    assert frechet_distance(a, b) == pytest.approx(_scipy_fd(a, b), rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_one_dimension_closed_form():
    """1-D: (mu1 - mu2)^2 + (sigma1 - sigma2)^2."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 2.0, size=(500, 1)), rng.normal(-1.0, 0.5, size=(700, 1))
    want = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-9)


def test_singular_covariances_give_no_warning():
    """Fewer samples than features: both covariances are singular. The distance is finite,
    close to the eps-regularised textbook value, and nothing warns."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(10, 32)), rng.normal(size=(12, 32)) + 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fd = frechet_distance(a, b)
        assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert np.isfinite(fd) and fd > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference itself is the one that warns
        ref = _scipy_fd(a, b, eps=1e-6)
    assert fd == pytest.approx(ref, rel=1e-3)


def test_evaluate_on_few_samples_is_quiet():
    """20 samples (fewer than the judge's features): the report comes without any warning."""
    from marengine.evaluation.digits import evaluate

    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = evaluate(rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8), np.repeat(np.arange(10), 2))
    assert np.isfinite(report.fd_samples) and np.isfinite(report.fd_real) and 0 <= report.accuracy <= 1
