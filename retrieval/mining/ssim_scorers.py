"""The SSIM scorers of the miner and the choice among them (``mining.device``).

On the CPU the fused Numba kernel (:mod:`.ssim_fused`, threads in this process) when
Numba imports and the kernel compiles, else the NumPy path (:mod:`.ssim`, forked worker
processes); torch (:mod:`.ssim_torch`) on CUDA or a named torch device. The choice is
logged. Every scorer turns a pass's query crops into what it scores once (``prepare``),
then scores them against one block of candidates at a time.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import numpy as np

from retrieval.mining.ssim import ssim_many_vs_many
from retrieval.mining.ssim_stats import ImageStats
from retrieval.mining.ssim_torch import ssim_many_vs_many_torch
from retrieval.utils.errors import UserFacingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _NumpyScorer:
    """NumPy on ``workers`` forked processes. A pass's queries are turned into window
    statistics once (``prepare``), not once per block: ~3x less work per block for them."""

    workers: int

    def prepare(self, query_crops: np.ndarray, multichannel: bool) -> ImageStats:
        return ImageStats.compute(query_crops, multichannel=multichannel)

    def __call__(self, queries: ImageStats, many, data_range: float, **kw) -> np.ndarray:
        return ssim_many_vs_many(queries, many, data_range, workers=self.workers, **kw)


@dataclass(frozen=True)
class _TorchScorer:
    """Torch on ``device`` (raw crops: the device computes the statistics)."""

    device: str

    def prepare(self, query_crops: np.ndarray, multichannel: bool) -> np.ndarray:
        return query_crops

    def __call__(self, queries: np.ndarray, many, data_range: float, **kw) -> np.ndarray:
        return ssim_many_vs_many_torch(queries, many, data_range, device=self.device, **kw)


@dataclass(frozen=True)
class _FusedScorer:
    """The fused Numba kernel on ``threads`` threads of this process (uint8 crops)."""

    threads: int

    def prepare(self, query_crops: np.ndarray, multichannel: bool):
        from retrieval.mining.ssim_fused import prepare_queries

        return prepare_queries(query_crops, multichannel=multichannel)

    def __call__(self, queries, many, data_range: float, *, multichannel: bool, progress=None) -> np.ndarray:
        from retrieval.mining.ssim_fused import ssim_many_vs_many_fused

        scores = ssim_many_vs_many_fused(queries, many[:], data_range, threads=self.threads)
        if progress is not None:
            progress(scores.shape[1])
        return scores


# (prepared queries, many, data_range, multichannel=, progress=) -> (Q, N) SSIM
Scorer = _NumpyScorer | _TorchScorer | _FusedScorer


@functools.cache
def fused_unavailable() -> str | None:
    """Why the fused kernel cannot run here (Numba missing, or it fails to compile or to
    check out on a tiny pair), or None. Compiled once per machine (Numba's cache)."""
    start = time.perf_counter()
    try:
        from retrieval.mining.ssim_fused import fused_kernel_works

        works = fused_kernel_works()
        if time.perf_counter() - start > 5:  # a compile, not a load from Numba's cache
            log.info(
                "compiled the fused SSIM kernel in %.0f s (cached for later runs)",
                time.perf_counter() - start,
            )
        return None if works else "it gave a wrong score on a test pair"
    except Exception as error:  # noqa: BLE001 -- ImportError, a compile error: fall back, say why
        return f"{type(error).__name__}: {error}"


def choose_scorer(device: str, num_workers: int) -> Scorer:
    """``"auto"``: torch on CUDA when available, else as ``"cpu"``; ``"cpu"``: the fused
    kernel on ``num_workers`` threads where it runs, else NumPy; ``"fused"`` / ``"numpy"``:
    that path (``"numpy"``: ``num_workers`` forked processes); ``"cuda[:N]"`` or
    ``"torch:<device>"`` (e.g. ``"torch:cpu"``): torch. The choice is logged."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device in ("cpu", "fused"):
        why = fused_unavailable()
        if why is None:
            log.info("SSIM mining on the CPU: fused Numba kernel, %d thread(s)", max(1, num_workers))
            return _FusedScorer(max(1, num_workers))
        if device == "fused":
            raise UserFacingError(
                f"mining.device=fused: the fused SSIM kernel cannot run here ({why}). Install numba "
                "(pip install numba) or use mining.device=cpu, which falls back to NumPy. Nothing was mined."
            )
        log.warning("SSIM mining on the CPU: NumPy path (the fused Numba kernel cannot run here: %s)", why)
        device = "numpy"
    if device == "numpy":
        log.info("SSIM mining on the CPU: NumPy path, %d worker process(es)", max(1, num_workers))
        return _NumpyScorer(num_workers)
    log.info("SSIM mining with torch on %s", device.removeprefix("torch:"))
    return _TorchScorer(device.removeprefix("torch:"))
