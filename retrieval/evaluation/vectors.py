"""Row vectors: L2 normalisation and cosine similarity (NumPy), the one copy used by the
evaluation, whitening, query expansion and serving code."""

from __future__ import annotations

import numpy as np

_EPS = 1e-12  # a zero row stays zero instead of becoming NaN


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Every row of ``x`` divided by its L2 norm (rows of norm < 1e-12: by 1e-12)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)


def cosine_similarity(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Cosine similarity of every query with every database vector, float32 (rows
    re-normalised, so it is exact also after float16 storage or whitening)."""
    return unit_rows(queries) @ unit_rows(database).T


def unit_rows(x: np.ndarray) -> np.ndarray:
    """:func:`l2_normalize` in float32."""
    return l2_normalize(np.asarray(x)).astype(np.float32, copy=False)
