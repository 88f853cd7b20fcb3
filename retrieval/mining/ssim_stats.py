"""Window statistics for exact fast SSIM (see :mod:`retrieval.mining.ssim`).

The score equals ``skimage.metrics.structural_similarity(x, y, data_range=R)`` with its
defaults (7x7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance N/(N-1), mean over
the interior with a 3-pixel border cropped, channel mean for colour). Two facts make it
fast:

* Only interior pixels are averaged, and a 7x7 window centred on an interior pixel lies
  wholly inside the image, so skimage's ``uniform_filter(mode="reflect")`` followed by the
  crop equals a plain "valid" 7x7 box sum: no padding is needed.
* SSIM factorises: window means and variances belong to one image and are computed once
  (:class:`ImageStats`, this module); per pair only the window mean of x*y is new.

Images are flattened row-major, so a box sum along a row is a sum of the flat array
shifted by 1..6 and along a column shifted by W..6W (:func:`box_sums`); windows that would
wrap past the right or bottom edge are junk and are masked out (:func:`valid_mask`).
uint8 images use exact integer arithmetic for every term that cancels (see
:class:`ImageStats`), so float32 suffices for the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

WIN_SIZE = 7
K1, K2 = 0.01, 0.03
WIN_PIXELS = WIN_SIZE * WIN_SIZE
COV_NORM = WIN_PIXELS / (WIN_PIXELS - 1)  # skimage's use_sample_covariance=True
PAD = (WIN_SIZE - 1) // 2  # the border skimage crops before the mean

Progress = Callable[[int], None]  # called with the number of images finished


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


def check_size(height: int, width: int) -> None:
    if min(height, width) < WIN_SIZE:
        raise ValueError(f"images of {height}x{width} are smaller than the {WIN_SIZE}x{WIN_SIZE} window")


def box_sums(a: np.ndarray, width: int, t1: np.ndarray, t2: np.ndarray, t3: np.ndarray) -> np.ndarray:
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
        return (float(WIN_PIXELS), float(WIN_PIXELS * (WIN_PIXELS - 1))) if self.exact else (1.0, 1.0)

    @classmethod
    def compute(
        cls, images: np.ndarray, *, multichannel: bool = False, exact: bool | None = None
    ) -> ImageStats:
        """Statistics of (N, H, W) images, or (N, H, W, C) with ``multichannel``.

        ``exact`` defaults to "images are uint8"; asking for it with another dtype fails.
        """
        planes = as_planes(images, multichannel)
        n, c, h, w = planes.shape
        check_size(h, w)
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
            var_num = WIN_PIXELS * box_sums(sq, w, t1, t2, t3) - sums * sums  # N(N-1) * variance
            if exact:
                mean[i, :valid], var[i, :valid] = sums, var_num
            else:
                lin[i, :valid] /= WIN_PIXELS  # centred window means
                mean[i] = (lin[i].reshape(c, h * w) + offset).reshape(size)
                var[i, :valid] = var_num / (WIN_PIXELS * (WIN_PIXELS - 1))
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
