"""Exact fast SSIM of query images against many images, on the CPU (NumPy).

The score equals ``skimage.metrics.structural_similarity(x, y, data_range=R)`` with its
defaults; why it can be computed from per-image window statistics without padding, and
how those are laid out, is in :mod:`retrieval.mining.ssim_stats`. The torch path (any
device, used by the miner on CUDA) is :mod:`retrieval.mining.ssim_torch`.

Per pair only the window mean of x*y is new, computed here with the flat box sums of
:func:`~retrieval.mining.ssim_stats.box_sums`. Every operation is then a contiguous ufunc
with ``out=`` -- NumPy has no fused kernel, so the cost is ~20 passes over the image per
pair, and the layout keeps each pass at memory speed. Work is done in bands of rows over
chunks of candidates so that those passes run from cache, and chunks go to forked worker
processes (or threads). uint8 images take the exact integer path, so float32 suffices for
the per-window terms; each window's SSIM is then summed in float64. Measured error against
skimage: <= 3e-8 on random, constant and near-constant images, flat ones up to 2048**2
included (tests assert <= 1e-5; the float32 per-band dot used before lost 5e-6 at 500**2
and 1.9e-5 at 2048**2). Other dtypes use float64. This is the fallback where the fused
kernel (:mod:`retrieval.mining.ssim_fused`, Numba, uint8 only) cannot run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from retrieval.mining.ssim_stats import (
    COV_NORM,
    PAD,
    WIN_PIXELS,
    WIN_SIZE,
    ImageStats,
    Progress,
    box_sums,
    constants,
    valid_mask,
)

_BAND_ROWS = 32  # rows of output per band: a band of a chunk stays within L2/L3 (tuned)
CHUNK = 8  # candidates per task: amortises Python overhead over a batch


def _scaled(a: np.ndarray, factor: float) -> np.ndarray:
    """a * factor in a's dtype (integer factors stay exact on the int32 path)."""
    if np.issubdtype(a.dtype, np.integer):
        return np.rint(a * factor).astype(a.dtype)
    return a * factor


@dataclass(frozen=True)
class _QueryTerms:
    """One query's per-pixel factors, data-range constants folded in (see _Band.sums)."""

    x: np.ndarray  # pixels * 2*v*cn/N: box(x * y) + qa * lin_y = 2 * covariance (units v)
    qa: np.ndarray  # lin * -2*v*cn/m**2
    qa2: np.ndarray  # 2 * mean, zero where the window is junk
    c1m: np.ndarray  # C1 (units m**2), zero where the window is junk
    qb1: np.ndarray  # mean**2 + C1
    qb2: np.ndarray  # var + C2
    c2: float  # C2 (units v)
    width: int  # image width (row length of the flat planes)

    @classmethod
    def of(cls, stats: ImageStats, data_range: float) -> list[_QueryTerms]:
        c1, c2 = constants(data_range)
        m, v = stats.scales
        c1, c2 = c1 * m * m, c2 * v
        ftype = stats.mean.dtype.type
        mask = valid_mask(stats.shape)
        c1m = np.where(mask, c1, 0.0).astype(ftype)
        k = 2 * v * COV_NORM
        return [
            cls(
                _scaled(stats.pixels[i], k / WIN_PIXELS),
                _scaled(stats.lin[i], -k / (m * m)),
                np.where(mask, 2 * stats.mean[i], 0).astype(ftype),
                c1m,
                stats.mean_sq[i] + ftype(c1),
                stats.var[i] + ftype(c2),
                c2,
                stats.shape[2],
            )
            for i in range(len(stats))
        ]


class _Band:
    """Contiguous copies of a chunk's statistics for one band of windows, plus scratch.

    NumPy's per-call cost is ~3x lower on contiguous operands than on strided views, and a
    band is reused by every query, so copying it once pays for itself. Buffers are sized
    for the largest band and reused: a band of n windows uses flat prefixes of them.
    """

    def __init__(self, cand: ImageStats, step: int, halo: int) -> None:
        self.cand, self.halo, b = cand, halo, len(cand)
        pixel, real = cand.pixels.dtype, cand.mean.dtype
        self.buffers = [np.empty(b * (step + halo), pixel) for _ in range(5)]  # y, p, t1, t2, t3
        self.stats = [np.empty(b * step, cand.lin.dtype)] + [np.empty(b * step, real) for _ in range(3)]
        self.floats = [np.empty(b * step, real) for _ in range(4)]  # f1..f4
        self.terms = np.empty(b * step)  # float64 per-window SSIM, summed pairwise

    def load(self, k0: int, n: int) -> None:
        """Copy windows [k0, k0 + n) (and the pixels they cover) of every candidate."""
        b, nin = len(self.cand), n + self.halo
        self.k0, self.n, self.nin = k0, n, nin
        self.y = self.buffers[0][: b * nin].reshape(b, nin)
        np.copyto(self.y, self.cand.pixels[:, k0 : k0 + nin])
        self.lin, self.mean, self.mean_sq, self.var = (buf[: b * n].reshape(b, n) for buf in self.stats)
        for dst, src in zip(
            (self.lin, self.mean, self.mean_sq, self.var),
            (self.cand.lin, self.cand.mean, self.cand.mean_sq, self.cand.var),
        ):
            np.copyto(dst, src[:, k0 : k0 + n])

    def sums(self, q: _QueryTerms) -> np.ndarray:
        """Sum of skimage's S = A1*A2 / (B1*B2) over the band's windows, per candidate.

        A2 = box(x*y) + qa*lin_y + C2 is formed in the pixel dtype (int32 when exact) and
        converted once; A1 = qa2*mean_y + C1m, B1 = qb1 + mean_y**2, B2 = qb2 + var_y.
        """
        k0, k1, n, nin = self.k0, self.k0 + self.n, self.n, self.nin
        b = self.y.shape[0]
        _, p, t1, t2, t3 = (buf[: b * nin] for buf in self.buffers)
        f1, f2, f3, f4 = (buf[: b * n].reshape(b, n) for buf in self.floats)
        np.multiply(q.x[k0 : k0 + nin], self.y, out=p.reshape(b, nin))
        # all candidates' bands in one flat box sum (in t2); windows reaching past a band are junk
        box_sums(p, q.width, t1, t2, t3)
        cov = np.multiply(q.qa[k0:k1], self.lin, out=t3[: b * n].reshape(b, n))
        cov += t2.reshape(b, nin)[:, :n]
        np.copyto(f1, cov, casting="unsafe")  # exact integers become float32 only now
        a2 = np.add(f1, q.c2, out=f1)
        a1 = np.multiply(q.qa2[k0:k1], self.mean, out=f2)
        a1 += q.c1m[k0:k1]
        b1 = np.add(q.qb1[k0:k1], self.mean_sq, out=f3)
        b1 *= np.add(q.qb2[k0:k1], self.var, out=f4)
        a2 /= b1
        # float64 product and (pairwise) sum: a float32 dot over a band of ~16k windows lost
        # up to 1.9e-5 on flat 2048**2 images; this costs ~10 % of the path
        terms = np.multiply(a1, a2, out=self.terms[: b * n].reshape(b, n), dtype=np.float64)
        return terms.sum(axis=1)


def _score_chunk(queries: list[_QueryTerms], cand: ImageStats) -> np.ndarray:
    """SSIM sums (before the mean) of every query against a chunk of candidates: (Q, B).

    Bands are the outer loop so that a band of the candidates stays in cache across all
    queries; ~20 passes per pair.
    """
    w = cand.shape[2]
    halo = (WIN_SIZE - 1) * (w + 1)
    out_len = cand.pixels.shape[1] - halo  # one past the last valid window
    step = min(_BAND_ROWS * w, out_len)
    band = _Band(cand, step, halo)
    total = np.zeros((len(queries), len(cand)))
    for k0 in range(0, out_len, step):
        band.load(k0, min(step, out_len - k0))
        for qi, q in enumerate(queries):
            total[qi] += band.sums(q)
    return total


@dataclass(frozen=True)
class _Job:
    """Score the chunk of ``many`` that starts at a given index against all query terms."""

    terms: list[_QueryTerms]
    many: object  # ImageStats or indexable raw images
    chunk: int
    multichannel: bool
    shape: tuple[int, int, int]
    exact: bool

    def __call__(self, start: int) -> np.ndarray:
        part = self.many[start : start + self.chunk]
        if not isinstance(part, ImageStats):
            part = ImageStats.compute(np.asarray(part), multichannel=self.multichannel, exact=self.exact)
        if part.shape != self.shape or part.exact != self.exact:
            raise ValueError(
                f"images {part.shape} (exact={part.exact}) do not match the "
                f"query's {self.shape} (exact={self.exact})"
            )
        return _score_chunk(self.terms, part)


_FORKED_JOB: _Job | None = None  # set just before a process pool forks; its workers read it
_FORK_LOCK = threading.Lock()


def _run_forked(start: int) -> np.ndarray:
    return _FORKED_JOB(start)


def _map_chunks(job: _Job, starts: range, workers: int, processes: bool) -> Iterator[np.ndarray]:
    """job(start) for each start, in order: inline, on forked processes or on threads.

    Processes are the default on Linux: each NumPy call holds the GIL for a few
    microseconds of dispatch, which kept two threads at ~1.3x of one while two forked
    processes reached ~1.8x; forked workers share the data copy-on-write and return only
    (Q, chunk) sums.
    """
    global _FORKED_JOB
    if workers <= 1 or len(starts) <= 1:
        yield from map(job, starts)
    elif processes and sys.platform.startswith("linux"):  # fork: unsafe on macOS, no Windows
        with _FORK_LOCK:
            _FORKED_JOB = job
            try:
                pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
                yield from _ordered(pool, _run_forked, starts, defer_interrupt=True)
            finally:
                _FORKED_JOB = None
    else:
        yield from _ordered(ThreadPoolExecutor(workers), job, starts)  # NumPy frees the GIL


@contextlib.contextmanager
def _sigint_deferred(active: bool) -> Iterator[None]:
    """SIGINT blocked in this (main) thread for the block; a Ctrl-C sent meanwhile is
    delivered when it ends. Around the forks of a process pool: a Ctrl-C landing mid-fork
    interrupted a child inside its at-fork hooks (a traceback from each) or left the pool
    half-started (its shutdown then failed or hung). Children start with SIGINT blocked."""
    if (
        not (active and hasattr(signal, "pthread_sigmask"))
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _ordered(
    pool: Executor, fn: Callable[[int], np.ndarray], starts: range, defer_interrupt: bool = False
) -> Iterator[np.ndarray]:
    """pool.map, but an error or interrupt cancels the chunks not started yet."""
    try:
        with _sigint_deferred(defer_interrupt):
            results = pool.map(fn, starts)  # submits every chunk: a fork pool forks all its workers now
        yield from results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def ssim_many_vs_many(
    queries: ImageStats | np.ndarray,
    many: ImageStats | np.ndarray,
    data_range: float,
    *,
    multichannel: bool = False,
    workers: int = 2,
    processes: bool = True,
    chunk: int = CHUNK,
    progress: Progress | None = None,
) -> np.ndarray:
    """SSIM of every query against every image of ``many``: float64 array (Q, N).

    ``many`` may be an :class:`ImageStats` or raw images (a memory map is fine): raw
    images are turned into statistics chunk by chunk inside the workers, so memory stays
    bounded and each chunk's statistics serve all queries. ``workers`` processes (forked;
    threads if ``processes=False`` or where fork does not exist) score chunks of ``chunk``
    images. ``progress(n)`` is called with the number of images finished after each chunk.
    A caller that forks must not hold locks that a child could need (e.g. an auto-refreshing
    progress display writing to stdout): the children only compute and return.
    """
    if len(queries) == 0:
        return np.empty((0, len(many)))
    if isinstance(queries, ImageStats):
        terms, shape, exact = _QueryTerms.of(queries, data_range), queries.shape, queries.exact
    else:  # one query at a time: only its terms are kept, not its statistics too
        terms = []
        for i in range(len(queries)):
            stats = ImageStats.compute(queries[i : i + 1], multichannel=multichannel)
            terms += _QueryTerms.of(stats, data_range)
        shape, exact = stats.shape, stats.exact
    job = _Job(terms, many, chunk, multichannel, shape, exact)
    scores = np.empty((len(terms), len(many)))
    starts = range(0, len(many), chunk)
    for start, sums in zip(starts, _map_chunks(job, starts, workers, processes)):
        scores[:, start : start + sums.shape[1]] = sums
        if progress is not None:
            progress(sums.shape[1])
    c, h, w = shape
    return scores / (c * (h - 2 * PAD) * (w - 2 * PAD))


def ssim_one_vs_many(
    query: ImageStats | np.ndarray, many: ImageStats | np.ndarray, data_range: float, **kwargs
) -> np.ndarray:
    """SSIM of one query (stats of one image, or an (H, W) / (H, W, C) image) against many.

    A raw colour query, (H, W, C), implies colour ``many`` (N, H, W, C). Returns float64 (N,).
    """
    if not isinstance(query, ImageStats):
        query = np.asarray(query)
        kwargs.setdefault("multichannel", query.ndim == 3)
        query = query[None]
    return ssim_many_vs_many(query, many, data_range, **kwargs)[0]
