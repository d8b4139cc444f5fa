"""FID, Inception Score, precision/recall and statistics files, against closed forms and
independent computations written here."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from marengine.evaluation.metrics import (
    check_count,
    fid_statistics,
    frechet_distance,
    inception_score,
    load_stats,
    precision_recall,
    save_stats,
)


def test_fid_of_identical_sets_is_zero():
    f = np.random.default_rng(0).normal(size=(500, 16)).astype(np.float32)
    mu, sigma = fid_statistics(f)
    assert mu.dtype == sigma.dtype == np.float64
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_fid_closed_form_commuting_covariances():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))  # a shared eigenbasis
    a, b = rng.uniform(0.5, 3, 6), rng.uniform(0.5, 3, 6)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_fid_general_case_against_sqrtm():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) + 1.0
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(*fid_statistics(x), *fid_statistics(y)) == pytest.approx(expected, rel=1e-7)


def test_fid_refuses_other_dimensions():
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_inception_score_closed_form():
    # 100 images, sharply one-hot over 5 classes cycling: every unshuffled split of 10 holds each class twice,
    # so p(y|x) is one-hot and p(y) uniform over 5: IS = exp(log 5) = 5 in every split
    logits = 60.0 * np.eye(8)[np.arange(100) % 5]
    mean, std = inception_score(logits, splits=10, shuffle=False)
    assert mean == pytest.approx(5.0, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_matches_independent_loop():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3.0, size=(137, 12))
    perm = np.random.RandomState(2020).permutation(137)
    x = logits[perm]
    scores = []
    for i in range(10):
        part = x[i * 137 // 10 : (i + 1) * 137 // 10]
        p = np.exp(part - part.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        q = p.mean(0)
        kl = (p * (np.log(p) - np.log(q))).sum(1)
        scores.append(np.exp(kl.mean()))
    mean, std = inception_score(logits)
    assert mean == pytest.approx(np.mean(scores), rel=1e-9)
    assert std == pytest.approx(np.std(scores), rel=1e-7)
    with pytest.raises(ValueError, match="at least 10"):
        inception_score(logits[:5])


def test_precision_recall():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(200, 5))
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    # fakes collapsed onto one real sample: all precise, recall = the fraction of reals whose k-NN ball
    # (radius: distance to their 3rd neighbour) reaches that sample, computed here by brute force
    fake = np.repeat(real[:1], 10, axis=0)
    d = np.linalg.norm(real[:, None] - real[None], axis=-1)
    radius_fake = 0.0  # all fakes coincide: their 3rd-neighbour distance is 0
    recall = float((np.linalg.norm(real - real[0], axis=1) <= radius_fake).mean())
    precision = float((d[0] <= np.sort(d, axis=1)[:, 3]).any())
    assert precision_recall(real, fake) == (pytest.approx(precision), pytest.approx(recall))


def test_stats_files(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3)
    save_stats(tmp_path / "s.npz", mu, sigma)
    m, s = load_stats(tmp_path / "s.npz", 3)
    np.testing.assert_array_equal(m, mu)
    np.testing.assert_array_equal(s, sigma)
    np.savez(tmp_path / "nomu.npz", sigma=sigma)
    with pytest.raises(ValueError, match=r"lacks \['mu'\]"):
        load_stats(tmp_path / "nomu.npz", 3)
    with pytest.raises(ValueError, match=r"need mu \[2048\]"):
        load_stats(tmp_path / "s.npz", 2048)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable npz"):
        load_stats(tmp_path / "junk.npz", 3)
    with pytest.raises(FileNotFoundError, match="--save-stats"):
        load_stats(tmp_path / "absent.npz", 3)


def test_too_few_images(caplog):
    with pytest.raises(ValueError, match="at least 2"):
        fid_statistics(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        check_count(1)
    check_count(10)
    assert "biased" in caplog.text
