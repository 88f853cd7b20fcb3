"""Exact fast SSIM of query images against many images.

The score equals ``skimage.metrics.structural_similarity(x, y, data_range=R)`` with its
defaults (7x7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance N/(N-1), mean over
the interior with a 3-pixel border cropped, channel mean for colour). Two facts make it
fast:

* Only interior pixels are averaged, and a 7x7 window centred on an interior pixel lies
  wholly inside the image, so skimage's ``uniform_filter(mode="reflect")`` followed by the
  crop equals a plain "valid" 7x7 box sum: no padding is needed.
* SSIM factorises: window means and variances belong to one image and are computed once
  (:class:`ImageStats`); per pair only the window mean of x*y is new.

CPU path (NumPy, :func:`ssim_many_vs_many`): images are flattened row-major, so a box sum
along a row is a sum of the flat array shifted by 1..6 and along a column shifted by
W..6W; windows that would wrap past the right or bottom edge are junk and are masked out.
Every operation is then a contiguous ufunc with ``out=`` -- NumPy has no fused kernel, so
the cost is ~20 passes over the image per pair, and the layout keeps each pass at memory
speed. Work is done in bands of rows over chunks of candidates so that those passes run
from cache, and chunks go to forked worker processes (or threads).
uint8 images use exact integer arithmetic for every term that cancels (see
:class:`ImageStats`), so float32 suffices for the rest: measured error against skimage
is ~1e-8 (tests assert <= 1e-5). Other dtypes use float64.

Torch path (:func:`ssim_many_vs_many_torch`, any device, used by the miner on CUDA):
``avg_pool2d`` with stride 1 is the valid box filter; float64 by default.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

WIN_SIZE = 7
K1, K2 = 0.01, 0.03
_NP = WIN_SIZE * WIN_SIZE
_COV_NORM = _NP / (_NP - 1)  # skimage's use_sample_covariance=True
_PAD = (WIN_SIZE - 1) // 2
_BAND_ROWS = 32  # rows of output per band: a band of a chunk stays within L2/L3 (tuned)
CHUNK = 8  # candidates per task: amortises Python overhead over a batch

Progress = Callable[[int], None]


def constants(data_range: float) -> tuple[float, float]:
    """SSIM's stabilising constants C1, C2 for a data range."""
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    return (K1 * data_range) ** 2, (K2 * data_range) ** 2


def as_planes(images: np.ndarray, multichannel: bool) -> np.ndarray:
    """(N, H, W) or channel-last (N, H, W, C) -> planar (N, C, H, W), no copy for gray."""
    images = np.asarray(images)
    if multichannel:
        if images.ndim != 4:
            raise ValueError(f"expected (N, H, W, C) colour images, got shape {images.shape}")
        return np.moveaxis(images, -1, 1)
    if images.ndim != 3:
        raise ValueError(f"expected (N, H, W) grayscale images, got shape {images.shape}")
    return images[:, None]


def _check_size(height: int, width: int) -> None:
    if min(height, width) < WIN_SIZE:
        raise ValueError(
            f"images of {height}x{width} are smaller than the {WIN_SIZE}x{WIN_SIZE} window"
        )


def box_sums(
    a: np.ndarray, width: int, t1: np.ndarray, t2: np.ndarray, t3: np.ndarray
) -> np.ndarray:
    """7x7 window sums over a flat, row-major array whose rows are ``width`` long.

    Returns a view (in ``t2``) of length len(a) - 6*width - 6 whose element k is the sum of
    the window with top-left corner at flat index k. Doubling (2, 4, then 4 + 4 - 1 overlap)
    needs 4 contiguous passes per direction, fewer than the 6 of a naive 7-tap sum and much
    faster than ``np.cumsum`` or ``ndimage.uniform_filter1d``, which are sequential. ``a`` may
    hold several planes (or bands) one after the other: windows that straddle two are junk.
    ``a`` is left intact; t1..t3 are flat scratch at least as long.
    """
    n = len(a)
    s2 = np.add(a[:-1], a[1:], out=t1[: n - 1])
    s4 = np.add(s2[:-2], s2[2:], out=t2[: n - 3])
    s7 = np.add(s4[:-3], s4[3:], out=t1[: n - 6])
    s7 -= a[3 : n - 3]
    n -= 6
    w = width
    r2 = np.add(s7[:-w], s7[w:], out=t2[: n - w])
    r4 = np.add(r2[: -2 * w], r2[2 * w :], out=t3[: n - 3 * w])
    r7 = np.add(r4[: -3 * w], r4[3 * w :], out=t2[: n - 6 * w])
    r7 -= s7[3 * w : n - 3 * w]
    return r7


@dataclass(frozen=True)
class ImageStats:
    """Window statistics of a batch of same-shaped images, reusable against any partner.

    Arrays are (N, L) with L = C*H*W: planes flattened row-major, channels one after the
    other; element k of a window array belongs to the window whose top-left pixel is k
    (junk where that window would leave the plane, see :func:`valid_mask`).

    uint8 images take the *exact* path: pixels and window sums are int32, and the terms
    are kept in "sum units" (means x49, variances x49*48), so the covariance
    49*sum(xy) - sum(x)*sum(y) is computed in exact integer arithmetic (it needs < 2**30)
    and float32 only rounds the final, cancellation-free ratio (error ~1e-7). Other dtypes
    take a float64 path on pixels centred by their plane's mean.
    """

    pixels: np.ndarray  # int32 x (exact) | float64 x - offset
    lin: np.ndarray  # int32 window sums (exact) | float64 window means of x - offset
    mean: np.ndarray  # window mean, x49 if exact (float32 | float64)
    mean_sq: np.ndarray  # mean ** 2
    var: np.ndarray  # window sample variance (N/(N-1), as skimage), x49*48 if exact
    shape: tuple[int, int, int]  # C, H, W
    exact: bool

    @property
    def scales(self) -> tuple[float, float]:
        """Units of ``mean`` and ``var`` relative to skimage's window mean and variance."""
        return (float(_NP), float(_NP * (_NP - 1))) if self.exact else (1.0, 1.0)

    @classmethod
    def compute(
        cls, images: np.ndarray, *, multichannel: bool = False, exact: bool | None = None
    ) -> ImageStats:
        """Statistics of (N, H, W) images, or (N, H, W, C) with ``multichannel``.

        ``exact`` defaults to "images are uint8"; asking for it with another dtype fails.
        """
        planes = as_planes(images, multichannel)
        n, c, h, w = planes.shape
        _check_size(h, w)
        exact = planes.dtype == np.uint8 if exact is None else exact
        if exact and planes.dtype != np.uint8:
            raise ValueError(f"the exact path needs uint8 images, got {planes.dtype}")
        size = c * h * w
        # int32 is exact for uint8 (sums of squares < 2**22, 49*S_xx - S_x**2 < 2**28).
        work = np.int32 if exact else np.float64
        ftype = np.float32 if exact else np.float64
        pixels = np.empty((n, size), work)
        lin = np.zeros((n, size), work)
        mean, mean_sq, var = (np.zeros((n, size), ftype) for _ in range(3))
        t1, t2, t3, sq = (np.empty(size, work) for _ in range(4))
        valid = size - (WIN_SIZE - 1) * (w + 1)
        for i in range(n):  # one image at a time: its ~2 MB arrays stay in cache
            x = planes[i].reshape(c, h * w).astype(work)
            offset = 0 if exact else x.mean(axis=1, keepdims=True)
            pixels[i] = (x - offset).reshape(size)
            x, sums = pixels[i], lin[i, :valid]
            sums[:] = box_sums(x, w, t1, t2, t3)
            np.multiply(x, x, out=sq)
            var_num = _NP * box_sums(sq, w, t1, t2, t3) - sums * sums  # N(N-1) * variance
            if exact:
                mean[i, :valid], var[i, :valid] = sums, var_num
            else:
                lin[i, :valid] /= _NP  # centred window means
                mean[i] = (lin[i].reshape(c, h * w) + offset).reshape(size)
                var[i, :valid] = var_num / (_NP * (_NP - 1))
        np.multiply(mean, mean, out=mean_sq)
        return cls(pixels, lin, mean, mean_sq, var, (c, h, w), exact)

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, index: slice | np.ndarray) -> ImageStats:
        return ImageStats(
            self.pixels[index],
            self.lin[index],
            self.mean[index],
            self.mean_sq[index],
            self.var[index],
            self.shape,
            self.exact,
        )


def valid_mask(shape: tuple[int, int, int]) -> np.ndarray:
    """True where a window (top-left at that flat index) lies inside its plane."""
    c, h, w = shape
    rows, cols = np.divmod(np.arange(h * w), w)
    plane = (rows <= h - WIN_SIZE) & (cols <= w - WIN_SIZE)
    return np.tile(plane, c)


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
        k = 2 * v * _COV_NORM
        return [
            cls(
                _scaled(stats.pixels[i], k / _NP),
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
        self.stats = [np.empty(b * step, cand.lin.dtype)] + [
            np.empty(b * step, real) for _ in range(3)
        ]
        self.floats = [np.empty(b * step, real) for _ in range(4)]  # f1..f4

    def load(self, k0: int, n: int) -> None:
        """Copy windows [k0, k0 + n) (and the pixels they cover) of every candidate."""
        b, nin = len(self.cand), n + self.halo
        self.k0, self.n, self.nin = k0, n, nin
        self.y = self.buffers[0][: b * nin].reshape(b, nin)
        np.copyto(self.y, self.cand.pixels[:, k0 : k0 + nin])
        self.lin, self.mean, self.mean_sq, self.var = (
            buf[: b * n].reshape(b, n) for buf in self.stats
        )
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
        return np.vecdot(a1, a2)  # float32 dot per band; the caller accumulates in float64


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
            part = ImageStats.compute(
                np.asarray(part), multichannel=self.multichannel, exact=self.exact
            )
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
                yield from _ordered(pool, _run_forked, starts)
            finally:
                _FORKED_JOB = None
    else:
        yield from _ordered(ThreadPoolExecutor(workers), job, starts)  # NumPy frees the GIL


def _ordered(
    pool: Executor, fn: Callable[[int], np.ndarray], starts: range
) -> Iterator[np.ndarray]:
    """pool.map, but an error or interrupt cancels the chunks not started yet."""
    try:
        yield from pool.map(fn, starts)
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
    return scores / (c * (h - 2 * _PAD) * (w - 2 * _PAD))


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


def _as_tensor(images, multichannel: bool, device, dtype):
    """(N, H, W[, C]) array-like -> planar (N, C, H, W) tensor on ``device``."""
    import torch

    planes = np.ascontiguousarray(as_planes(np.asarray(images), multichannel))
    return torch.from_numpy(planes).to(device=device).to(dtype)


def _torch_stats(x):
    """Centred pixels, centred and plain window means, window sample variance (valid windows)."""
    import torch.nn.functional as F

    offset = x.mean(dim=(2, 3), keepdim=True)
    xc = x - offset
    mean_c = F.avg_pool2d(xc, WIN_SIZE, stride=1)  # stride 1, no padding: the valid windows
    var = (F.avg_pool2d(xc * xc, WIN_SIZE, stride=1) - mean_c * mean_c) * _COV_NORM
    return xc, mean_c, mean_c + offset, var


def ssim_many_vs_many_torch(
    queries: np.ndarray,
    many,
    data_range: float,
    *,
    multichannel: bool = False,
    device=None,
    dtype=None,
    chunk: int | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Torch version of :func:`ssim_many_vs_many` on raw images, for any device: (Q, N) float64.

    The box filter is ``avg_pool2d`` with stride 1 and no padding, i.e. exactly the
    interior windows; pixels are centred by their image mean first. ``dtype`` defaults to
    float64 (agrees with skimage to ~1e-15). float32 halves memory traffic; its covariance
    E[xy] - E[x]E[y] is then rounded at float32 precision, which measured <= 2e-7 on the
    test images (random, constant, black/white halves) -- documented tolerance 1e-5.
    ``device`` defaults to CUDA when available. On CPU this path is slow (``avg_pool2d``
    sums each window afresh); it is there for GPUs and for testing.
    """
    import torch
    import torch.nn.functional as F

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or torch.float64
    chunk = chunk or (128 if device.type == "cuda" else 8)
    c1, c2 = constants(data_range)
    scores = np.empty((len(queries), len(many)))
    with torch.inference_mode():
        q_xc, q_mc, q_mean, q_var = _torch_stats(_as_tensor(queries, multichannel, device, dtype))
        _check_size(*q_xc.shape[2:])
        for start in range(0, len(many), chunk):
            y = _as_tensor(many[start : start + chunk], multichannel, device, dtype)
            if y.shape[1:] != q_xc.shape[1:]:
                raise ValueError(
                    f"images {tuple(y.shape[1:])} do not match queries {tuple(q_xc.shape[1:])}"
                )
            y_xc, y_mc, y_mean, y_var = _torch_stats(y)
            b2_y, b1_y = y_var + c2, y_mean * y_mean + c1
            for i in range(len(queries)):
                cov = (
                    F.avg_pool2d(q_xc[i : i + 1] * y_xc, WIN_SIZE, stride=1)
                    - q_mc[i : i + 1] * y_mc
                )
                a2 = cov * (2 * _COV_NORM) + c2
                a1 = 2 * q_mean[i : i + 1] * y_mean + c1
                ssim_map = a1 * a2 / ((b1_y + q_mean[i : i + 1] ** 2) * (b2_y + q_var[i : i + 1]))
                scores[i, start : start + len(y)] = (
                    ssim_map.mean(dim=(1, 2, 3), dtype=torch.float64).cpu().numpy()
                )
            if progress is not None:
                progress(len(y))
    return scores


def ssim_one_vs_many_torch(query: np.ndarray, many, data_range: float, **kwargs) -> np.ndarray:
    """Torch version of :func:`ssim_one_vs_many` (raw images only): float64 (N,)."""
    query = np.asarray(query)
    kwargs.setdefault("multichannel", query.ndim == 3)
    return ssim_many_vs_many_torch(query[None], many, data_range, **kwargs)[0]
