"""Learned whitening from matching pairs (Radenović et al., "CNN image retrieval learns from
BoW", ECCV 2016; cirtorch's ``whitenlearn``), as a :class:`Whitening` so that it is applied,
stored and loaded exactly like PCA whitening.

Given descriptors ``X`` (n, d) and matching pairs ``(q_k, p_k)`` (rows of ``X`` that show
the same landmark), with ``power`` normalisation first as in PCA whitening:

1. ``m`` = mean of the descriptors ``X[q]`` of the pairs' first members;
2. ``S`` = covariance of the pair differences ``X[q] - X[p]`` (intra-class variation);
   ``P = S^(-1/2)``, computed from ``S``'s eigen-decomposition, with a ridge
   ``max(shrinkage, 1e-6) * mean(eig(S))`` on the diagonal so that a singular ``S``
   (fewer pairs than dimensions) stays invertible;
3. rotation: the eigenvectors ``V`` of ``sum_i z_i z_i^T`` over all rows,
   ``z_i = P (x_i - m)`` (the uncentred scatter about ``m``, as cirtorch), by decreasing
   eigenvalue, keeping ``dim`` of them.

The transform is ``y = V^T P (x - m)`` (``projection = P^T V``), then L2 normalisation.
Directions along which matching images differ are shrunk (step 2: the variation that does
not tell landmarks apart), and the rest is ordered by how much the data spreads along it
(step 3). This is a d × d eigen-problem on covariances rather than a PCA of the data
matrix, so it is solved with NumPy's ``eigh`` directly (scikit-learn's PCA would centre
on the data mean rather than on ``m``).

The pairs must come from the training split (never the evaluation queries' ground truth)
for a leak-free evaluation.
"""

from __future__ import annotations

import logging

import numpy as np

from retrieval.evaluation.whitening import Whitening, signed_power

log = logging.getLogger(__name__)

_MIN_RIDGE = 1e-6


def _symmetric_eig(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (decreasing) and eigenvectors of a symmetric matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return values[::-1], vectors[:, ::-1]


def fit_learned_whitening(
    descriptors: np.ndarray,
    pairs: np.ndarray,
    dim: int | None = None,
    power: float = 1.0,
    shrinkage: float = 0.0,
) -> Whitening:
    """Learn whitening from ``descriptors`` (n, d) and ``pairs`` (m, 2) of matching rows."""
    x = signed_power(np.asarray(descriptors, dtype=np.float64), power)
    pairs = np.asarray(pairs, dtype=np.int64)
    if x.ndim != 2 or pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
        raise ValueError(
            f"need (n, d) descriptors and (m, 2) matching pairs, got {x.shape} and {pairs.shape}"
        )
    if shrinkage < 0:
        raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")
    d = x.shape[1]
    dim = d if dim is None else min(dim, d)
    queries, positives = x[pairs[:, 0]], x[pairs[:, 1]]
    mean = queries.mean(axis=0)
    differences = queries - positives
    values, vectors = _symmetric_eig(differences.T @ differences / len(differences))
    values = np.maximum(values, 0.0)
    ridge = max(shrinkage, _MIN_RIDGE) * max(values.mean(), np.finfo(np.float64).tiny)
    if len(pairs) < d:
        log.warning(
            "learned whitening: %d pairs for %d-d descriptors; the pair covariance is singular "
            "and regularised (ridge %.2g)",
            len(pairs),
            d,
            ridge,
        )
    inverse_sqrt = vectors / np.sqrt(values + ridge)  # columns u_i / sqrt(l_i + ridge): P^T
    whitened = (x - mean) @ inverse_sqrt
    _, rotation = _symmetric_eig(whitened.T @ whitened)
    projection = inverse_sqrt @ rotation[:, :dim]
    log.info("learned whitening from %d pairs over %d descriptors: %d -> %d", len(pairs), len(x), d, dim)
    return Whitening(
        mean=mean.astype(np.float32),
        projection=projection.astype(np.float32),
        power=float(power),
        shrinkage=float(shrinkage),
    )
