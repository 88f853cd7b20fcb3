"""PCA whitening: identity covariance, determinism, storage round trip, dim clipping."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.decomposition import PCA

from retrieval.evaluation.vectors import l2_normalize
from retrieval.evaluation.whitening import Whitening, fit_whitening


def correlated(n: int, d: int, seed: int = 0) -> np.ndarray:
    """L2-normalised descriptors with a strongly anisotropic, correlated covariance."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) * np.geomspace(10.0, 0.1, d)
    return l2_normalize(rng.standard_normal((n, d)) @ mixing + 3.0).astype(np.float32)


@pytest.mark.parametrize("dim,n,d", [(16, 400, 32), (40, 2000, 600)])  # full and randomised SVD
def test_whitened_training_vectors_have_identity_covariance(dim, n, d):
    x = correlated(n, d)
    whitening = fit_whitening(x, dim=dim)
    y = whitening.transform(x)
    assert y.shape == (n, dim)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(dim), atol=2e-3)


def test_zero_shrinkage_equals_sklearn_whitening_and_apply_normalises():
    x = correlated(300, 24)
    whitening = fit_whitening(x, dim=10)
    reference = PCA(n_components=10, whiten=True, svd_solver="full").fit(x.astype(np.float64))
    y = whitening.transform(x)
    # PCA axes are defined up to sign; compare per axis with the sign aligned
    signs = np.sign(np.sum(y * reference.transform(x), axis=0))
    np.testing.assert_allclose(y * signs, reference.transform(x), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(whitening.apply(x), axis=1), 1.0, rtol=1e-5)


def test_shrinkage_follows_the_documented_formula():
    x = correlated(500, 20)
    plain, shrunk = fit_whitening(x, dim=8), fit_whitening(x, dim=8, shrinkage=0.5)
    variances = 1.0 / np.linalg.norm(plain.projection, axis=0) ** 2  # projection columns: v / sqrt(l)
    expected = np.sqrt(variances / (variances + 0.5 * variances.mean()))
    np.testing.assert_allclose(
        np.linalg.norm(shrunk.projection, axis=0) / np.linalg.norm(plain.projection, axis=0),
        expected,
        rtol=1e-4,
    )
    # the covariance of shrunk-whitened vectors is l / (l + s mean(l)) per axis: below one
    assert np.all(np.diag(np.cov(shrunk.transform(x), rowvar=False)) < 1.0)


def test_power_normalisation_changes_the_input_and_is_stored():
    x = correlated(300, 16)
    powered = fit_whitening(x, dim=8, power=0.5)
    assert powered.power == 0.5
    assert not np.allclose(powered.mean, fit_whitening(x, dim=8).mean)
    np.testing.assert_allclose(np.cov(powered.transform(x), rowvar=False), np.eye(8), atol=2e-3)


def test_fit_and_apply_are_deterministic():
    x = correlated(1500, 700)  # randomised solver: seeded by random_state
    a, b = fit_whitening(x, dim=32), fit_whitening(x, dim=32)
    np.testing.assert_array_equal(a.projection, b.projection)
    np.testing.assert_array_equal(a.apply(x), a.apply(x.copy()))


def test_round_trip_through_dict_and_npz(tmp_path):
    x = correlated(200, 12)
    whitening = fit_whitening(x, dim=6, power=0.7, shrinkage=0.1)
    np.savez(tmp_path / "w.npz", **whitening.to_dict())
    with np.load(tmp_path / "w.npz") as stored:
        restored = Whitening.from_dict(stored)
    assert (restored.power, restored.shrinkage, restored.dim) == (0.7, 0.1, 6)
    np.testing.assert_array_equal(restored.apply(x), whitening.apply(x))


def test_dim_is_clipped_with_a_warning(caplog):
    x = correlated(30, 64)  # 30 samples: centred rank is 29
    with caplog.at_level(logging.WARNING, logger="retrieval.evaluation.whitening"):
        whitening = fit_whitening(x, dim=4096)
    assert whitening.dim == 29
    assert "clipped to 29" in caplog.text
    np.testing.assert_allclose(np.cov(whitening.transform(x), rowvar=False), np.eye(29), atol=2e-3)


def test_rank_deficient_input_drops_empty_axes(caplog):
    x = np.repeat(correlated(10, 16), 5, axis=0)  # 50 rows, only 10 distinct: rank 9
    with caplog.at_level(logging.WARNING, logger="retrieval.evaluation.whitening"):
        whitening = fit_whitening(x, dim=20)
    assert whitening.dim == 9 and "reduced to 9" in caplog.text
    assert np.all(np.isfinite(whitening.apply(x)))


def test_wrong_input_dimension_is_refused():
    whitening = fit_whitening(correlated(50, 8), dim=4)
    with pytest.raises(ValueError, match=r"expects \(n, 8\)"):
        whitening.apply(np.zeros((2, 9), np.float32))
