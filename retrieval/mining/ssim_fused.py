"""Fused SSIM kernel (Numba): a block of uint8 queries against many images in one pass.

Same score as :mod:`retrieval.mining.ssim` (``skimage.metrics.structural_similarity`` with
its defaults; why valid 7x7 windows suffice: :mod:`retrieval.mining.ssim_stats`), but
NumPy cannot fuse the ~20 passes per pair that path makes over memory, so this one is
compiled. Structure:

* Window statistics in "sum units", exact integers: S_x (7x7 sum, int16 for queries) and
  V_x = 49*S_xx - S_x**2 (int32). Every term that cancels -- the covariance
  49*S_xy - S_x*S_y -- is an exact integer; float32 only rounds cancellation-free sums,
  products and the final ratio. Each column of a tile sums its <= TILE_ROWS ratios in
  float32 (relative error <= 16 * 2**-24, 1e-6, and ~1e-8 measured), every tile's columns
  are then summed in float64: no long float32 sum, the flaw of the old NumPy band dot.
* Query statistics are computed once (:func:`prepare_queries`); each database image's once
  per call, tile by tile, inside the kernel.
* Work is split into groups of ``GROUP`` images (one parallel task each) and tiles of
  ``TILE_ROWS`` output rows. For a tile, the group's statistics (~0.5 MB) are computed and
  then every query is scored against all of the group's tiles while both are in L2: a
  query's tile is fetched from memory once per ``GROUP`` pairs.
* S_xy is a separable running box sum: per pair a column sum of x*y over 7 rows, updated
  by one row in and one row out, carried from tile to tile; then a 7-tap sum along the
  row. Inner loops are plain element-wise loops over a row that LLVM vectorises.

``fastmath=False``: results do not depend on the compiler's reassociation. Measured
against skimage: <= 1e-8 (tests assert <= 1e-5, including flat images up to 2048**2).
The first call on a machine compiles (~16 s of CPU); Numba's cache (``cache=True``)
serves later runs in ~1 s. Only uint8 images: other dtypes take the NumPy path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from retrieval.mining.ssim_stats import PAD, WIN_PIXELS, WIN_SIZE, as_planes, check_size, constants

# Output rows per tile and images per group: a group's tiles plus a query's stay within L2.
# Measured: 8-32 rows and 4-16 images are within 10 % of each other (compute-bound).
TILE_ROWS = 16
GROUP = 8

_JIT = {"parallel": True, "fastmath": False, "cache": True, "error_model": "numpy", "nogil": True}


@numba.njit(inline="always")
def _i32(x):  # pragma: no cover - compiled
    """Numba widens integer arithmetic to int64; truncating each step back lets LLVM keep
    16 int32 lanes per vector (every value here fits: see the module doc)."""
    return np.int32(x)


@numba.njit(fastmath=False, cache=True, error_model="numpy", nogil=True)
def _tile_stats(y, t0, nt, s_out, s2_out, v_out, col_s, col_q):  # pragma: no cover - compiled
    """Window sums S, S**2 and V = 49*S_yy - S**2 of plane ``y`` for output rows t0..t0+nt."""
    w = y.shape[1]
    wv = w - (WIN_SIZE - 1)
    for j in range(w):
        col_s[j] = 0
        col_q[j] = 0
    for i in range(WIN_SIZE):
        row = y[t0 + i]
        for j in range(w):
            p = _i32(row[j])
            col_s[j] = _i32(col_s[j] + p)
            col_q[j] = _i32(col_q[j] + _i32(p * p))
    for r in range(nt):
        if r > 0:
            new, old = y[t0 + r + WIN_SIZE - 1], y[t0 + r - 1]
            for j in range(w):
                a, b = _i32(new[j]), _i32(old[j])
                col_s[j] = _i32(col_s[j] + _i32(a - b))
                col_q[j] = _i32(col_q[j] + _i32(_i32(a * a) - _i32(b * b)))
        s_row, s2_row, v_row = s_out[r], s2_out[r], v_out[r]
        for j in range(wv):
            s = _i32(
                _i32(_i32(col_s[j] + col_s[j + 1]) + _i32(col_s[j + 2] + col_s[j + 3]))
                + _i32(_i32(col_s[j + 4] + col_s[j + 5]) + col_s[j + 6])
            )
            q = _i32(
                _i32(_i32(col_q[j] + col_q[j + 1]) + _i32(col_q[j + 2] + col_q[j + 3]))
                + _i32(_i32(col_q[j + 4] + col_q[j + 5]) + col_q[j + 6])
            )
            s_row[j] = s
            s2_row[j] = _i32(s * s)
            v_row[j] = _i32(_i32(WIN_PIXELS * q) - _i32(s * s))


@numba.njit(fastmath=False, cache=True, error_model="numpy", nogil=True)
def _query_stats(planes, s_out, v_out):  # pragma: no cover - compiled
    """S (int16) and V (int32) of every plane of (Q, C, H, W) uint8 queries: ~2 ms a query,
    serial (a parallel loop would double the first compile for little)."""
    n, c, h, w = planes.shape
    hv = h - (WIN_SIZE - 1)
    for k in range(n * c):
        q, ch = k // c, k % c
        s = np.empty((hv, w - WIN_SIZE + 1), np.int32)
        s2 = np.empty_like(s)
        col_s, col_q = np.empty(w, np.int32), np.empty(w, np.int32)
        _tile_stats(planes[q, ch], 0, hv, s, s2, v_out[q, ch], col_s, col_q)
        s_out[q, ch] = s.astype(np.int16)


@numba.njit(**_JIT)
def _ssim_sums(qx, qs, qv, images, c1, c2, tile_rows, group):  # pragma: no cover - compiled
    """Sum over windows and planes of skimage's SSIM map, every query x every image: (Q, N).

    qx (Q, C, H, W) uint8 query pixels, qs/qv their S (int16) and V (int32) per window;
    images (N, C, H, W) uint8; c1, c2 float32 constants in sum units (x49**2, x49*48).
    """
    nq, nc, h, w = qx.shape
    n = images.shape[0]
    hv, wv = h - (WIN_SIZE - 1), w - (WIN_SIZE - 1)
    out = np.zeros((nq, n))
    n_groups = (n + group - 1) // group
    for gi in numba.prange(n_groups):
        g0 = gi * group
        ng = min(group, n - g0)
        sy = np.empty((ng, tile_rows, wv), np.int32)
        sy2 = np.empty_like(sy)
        vy = np.empty_like(sy)
        col = np.empty((nq, ng, w), np.int32)  # per pair: sum of x*y over the 7 rows of a window
        col_s, col_q = np.empty(w, np.int32), np.empty(w, np.int32)
        acc = np.empty(wv, np.float32)  # a tile's <= TILE_ROWS rows per column
        for ch in range(nc):
            for t0 in range(0, hv, tile_rows):
                nt = min(tile_rows, hv - t0)
                for k in range(ng):
                    _tile_stats(images[g0 + k, ch], t0, nt, sy[k], sy2[k], vy[k], col_s, col_q)
                for q in range(nq):
                    x = qx[q, ch]
                    for k in range(ng):
                        y = images[g0 + k, ch]
                        v = col[q, k]
                        if t0 == 0:
                            for j in range(w):
                                v[j] = 0
                            for i in range(WIN_SIZE):
                                xr, yr = x[i], y[i]
                                for j in range(w):
                                    v[j] = _i32(v[j] + _i32(_i32(xr[j]) * _i32(yr[j])))
                        for j in range(wv):
                            acc[j] = 0
                        for r in range(nt):
                            row = t0 + r
                            qs_r, qv_r = qs[q, ch, row], qv[q, ch, row]
                            sy_r, sy2_r, vy_r = sy[k, r], sy2[k, r], vy[k, r]
                            for j in range(wv):
                                sxy = _i32(
                                    _i32(_i32(v[j] + v[j + 1]) + _i32(v[j + 2] + v[j + 3]))
                                    + _i32(_i32(v[j + 4] + v[j + 5]) + v[j + 6])
                                )
                                sx = _i32(qs_r[j])
                                p = _i32(sx * sy_r[j])
                                d = _i32(_i32(WIN_PIXELS * sxy) - p)  # 49*48 * covariance, exact
                                a1 = np.float32(_i32(2 * p)) + c1
                                a2 = np.float32(_i32(2 * d)) + c2
                                b1 = np.float32(_i32(_i32(sx * sx) + sy2_r[j])) + c1
                                b2 = np.float32(_i32(qv_r[j] + vy_r[j])) + c2
                                acc[j] += (a1 * a2) / (b1 * b2)
                            if row + 1 < hv:  # slide the 7 rows down by one
                                xn, yn, xo, yo = x[row + WIN_SIZE], y[row + WIN_SIZE], x[row], y[row]
                                for j in range(w):
                                    v[j] = _i32(
                                        v[j]
                                        + _i32(
                                            _i32(_i32(xn[j]) * _i32(yn[j])) - _i32(_i32(xo[j]) * _i32(yo[j]))
                                        )
                                    )
                        # 8 independent chains: a fixed summation order that still pipelines
                        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0  # float64
                        m = wv - wv % 8
                        for j in range(0, m, 8):
                            s0 += np.float64(acc[j])
                            s1 += np.float64(acc[j + 1])
                            s2 += np.float64(acc[j + 2])
                            s3 += np.float64(acc[j + 3])
                            s4 += np.float64(acc[j + 4])
                            s5 += np.float64(acc[j + 5])
                            s6 += np.float64(acc[j + 6])
                            s7 += np.float64(acc[j + 7])
                        for j in range(m, wv):
                            s0 += np.float64(acc[j])
                        out[q, g0 + k] += ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    return out


@dataclass(frozen=True)
class FusedQueries:
    """Query pixels and window statistics in the kernel's layout (see the module doc)."""

    pixels: np.ndarray  # (Q, C, H, W) uint8
    sums: np.ndarray  # (Q, C, H-6, W-6) int16: 7x7 window sums
    var: np.ndarray  # (Q, C, H-6, W-6) int32: 49 * window sum of squares - sum**2
    multichannel: bool

    def __len__(self) -> int:
        return self.pixels.shape[0]


def _planes(images: np.ndarray, multichannel: bool) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"the fused SSIM kernel takes uint8 images, got {images.dtype}")
    planes = np.ascontiguousarray(as_planes(images, multichannel))
    check_size(*planes.shape[2:])
    return planes


def prepare_queries(images: np.ndarray, *, multichannel: bool = False) -> FusedQueries:
    """Statistics of (Q, H, W) or, with ``multichannel``, (Q, H, W, C) uint8 queries."""
    planes = _planes(images, multichannel)
    q, c, h, w = planes.shape
    sums = np.empty((q, c, h - WIN_SIZE + 1, w - WIN_SIZE + 1), np.int16)
    var = np.empty(sums.shape, np.int32)
    _query_stats(planes, sums, var)
    return FusedQueries(planes, sums, var, multichannel)


def ssim_many_vs_many_fused(
    queries: FusedQueries | np.ndarray,
    many: np.ndarray,
    data_range: float,
    *,
    multichannel: bool = False,
    threads: int | None = None,
) -> np.ndarray:
    """SSIM of every query against every uint8 image of ``many``: float64 (Q, N).

    ``queries``: :func:`prepare_queries` output or raw uint8 images; ``many``: (N, H, W) or
    (N, H, W, C) uint8 (a memory map is read once). ``threads``: Numba threads for this call
    (default: Numba's current setting).
    """
    if not isinstance(queries, FusedQueries):
        queries = prepare_queries(queries, multichannel=multichannel)
    images = _planes(many, queries.multichannel)
    if images.shape[1:] != queries.pixels.shape[1:]:
        raise ValueError(f"images {images.shape[1:]} do not match the queries' {queries.pixels.shape[1:]}")
    if len(queries) == 0 or len(images) == 0:
        return np.zeros((len(queries), len(images)))
    c1, c2 = constants(data_range)
    c1, c2 = np.float32(c1 * WIN_PIXELS**2), np.float32(c2 * WIN_PIXELS * (WIN_PIXELS - 1))
    previous = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        sums = _ssim_sums(queries.pixels, queries.sums, queries.var, images, c1, c2, TILE_ROWS, GROUP)
    finally:
        numba.set_num_threads(previous)
    _, c, h, w = images.shape
    return sums / (c * (h - 2 * PAD) * (w - 2 * PAD))


def fused_kernel_works() -> bool:
    """Compile (or load from Numba's cache) and check the kernel on a tiny image pair."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 9, 11), dtype=np.uint8)
    got = ssim_many_vs_many_fused(images[:1], images, 255.0)
    return bool(abs(got[0, 0] - 1.0) < 1e-6 and np.isfinite(got).all())


__all__ = ["FusedQueries", "fused_kernel_works", "prepare_queries", "ssim_many_vs_many_fused"]
