"""Re-ranking with global descriptors only, after the cosine ranking: each re-ranker takes
the queries, the database and every query's shortlist (its first ``depth`` database
indices, best first) and returns the shortlist re-ordered; the rest of the ranking stays.

- :class:`.superglobal.SuperGlobal`: MDescAug + RerankwMDA (Shao et al., ICCV 2023)
- :class:`.diffusion.Diffusion`: truncated diffusion on a mutual kNN graph (Iscen et al., CVPR 2017)
- :class:`.k_reciprocal.KReciprocal`: k-reciprocal encoding (Zhong et al., CVPR 2017)
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Reranker(Protocol):
    """What evaluation needs of a re-ranker (configs/rerank/*.yaml build one)."""

    @property
    def depth(self) -> int:
        """How many first images of each query's ranking it re-orders."""
        ...

    def __call__(self, queries: np.ndarray, database: np.ndarray, shortlist: np.ndarray) -> np.ndarray:
        """``shortlist`` [nq, depth] database indices, best first -> the same rows re-ordered."""
        ...
