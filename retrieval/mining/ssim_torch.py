"""Torch version of :mod:`retrieval.mining.ssim` for any device (used by the miner on CUDA).

Same query-block structure as the fused CPU kernel (:mod:`retrieval.mining.ssim_fused`):
each launch scores a batch of queries against a batch of images (the (Q_b, B) products are
box-summed in one ``avg_pool2d``), and each image's window statistics are computed once per
call. ``avg_pool2d`` with stride 1 and no padding is exactly the valid 7x7 box filter (see
:mod:`retrieval.mining.ssim_stats` for why no padding is needed).

uint8 images take the exact path in float32: window *sums* (``divisor_override=1``) of
integers below 2**24 are exact in float32 whatever the summation order, the terms that
cancel (49*S_xy - S_x*S_y, 49*S_xx - S_x**2) are formed in int32, and float32 rounds only
the cancellation-free rest; each image's sum of the SSIM map is taken in float64. Other
dtypes take a float64 path on pixels centred by their image mean.
"""

from __future__ import annotations

import numpy as np

from retrieval.mining.ssim_stats import (
    COV_NORM,
    PAD,
    WIN_PIXELS,
    WIN_SIZE,
    Progress,
    as_planes,
    check_size,
    constants,
)


def _as_tensor(images, multichannel: bool, device, dtype):
    """(N, H, W[, C]) array-like -> planar (N, C, H, W) tensor on ``device``."""
    import torch

    planes = np.ascontiguousarray(as_planes(np.asarray(images), multichannel))
    return torch.from_numpy(planes).to(device=device).to(dtype)


def _box(x):
    """7x7 window sums of (..., C, H, W), valid windows only."""
    import torch.nn.functional as F

    shape = x.shape
    sums = F.avg_pool2d(x.reshape(-1, *shape[-3:]), WIN_SIZE, stride=1, divisor_override=1)
    return sums.reshape(*shape[:-2], *sums.shape[-2:])


class _Stats:
    """Per-image terms of a batch (N, C, H, W): exact integer sums or centred float64."""

    def __init__(self, planes, exact: bool, c1: float, c2: float) -> None:
        import torch

        self.exact = exact
        if exact:  # sum units: means x49, variances x49*48 (see ssim_stats.ImageStats)
            self.x = planes.to(torch.float32)
            s = _box(self.x)
            self.s = s.to(torch.int32)
            self.sq = self.s * self.s
            self.var = WIN_PIXELS * _box(self.x * self.x).to(torch.int32) - self.sq
            self.c1, self.c2 = c1 * WIN_PIXELS**2, c2 * WIN_PIXELS * (WIN_PIXELS - 1)
        else:
            x = planes.to(torch.float64)
            offset = x.mean(dim=(-2, -1), keepdim=True)
            self.x = x - offset
            self.mc = _box(self.x) / WIN_PIXELS  # centred window means
            self.mean = self.mc + offset
            self.var = (_box(self.x * self.x) / WIN_PIXELS - self.mc * self.mc) * COV_NORM
            self.c1, self.c2 = c1, c2


def _pair_sums(q: _Stats, y: _Stats, qs: slice):
    """Sum of skimage's SSIM map over windows and planes, queries ``qs`` x images: (Q_b, B)."""
    import torch

    if q.exact:
        sxy = _box(q.x[qs, None] * y.x[None]).to(torch.int32)  # one launch for Q_b x B pairs
        p = q.s[qs, None] * y.s[None]
        a1 = (2 * p).to(torch.float32) + q.c1
        a2 = (2 * (WIN_PIXELS * sxy - p)).to(torch.float32) + q.c2
        b1 = (q.sq[qs, None] + y.sq[None]).to(torch.float32) + q.c1
        b2 = (q.var[qs, None] + y.var[None]).to(torch.float32) + q.c2
    else:
        cov = (_box(q.x[qs, None] * y.x[None]) / WIN_PIXELS - q.mc[qs, None] * y.mc[None]) * COV_NORM
        qm, ym = q.mean[qs, None], y.mean[None]
        a1, a2 = 2 * qm * ym + q.c1, 2 * cov + q.c2
        b1, b2 = qm * qm + ym * ym + q.c1, q.var[qs, None] + y.var[None] + q.c2
    return (a1 * a2 / (b1 * b2)).sum(dim=(-3, -2, -1), dtype=torch.float64)


def ssim_many_vs_many_torch(
    queries: np.ndarray,
    many,
    data_range: float,
    *,
    multichannel: bool = False,
    device=None,
    query_batch: int | None = None,
    image_batch: int | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Torch version of :func:`ssim_many_vs_many` on raw images, for any device: (Q, N) float64.

    A launch scores ``query_batch`` queries x ``image_batch`` images (defaults 16 x 32 on
    CUDA, a few GB of temporaries at 500x500; 4 x 8 elsewhere). uint8 images agree
    with skimage to ~1e-7, other dtypes (float64) to ~1e-12. ``device`` defaults to CUDA
    when available. On CPU this path is slow (``avg_pool2d`` sums each window afresh); it
    is there for GPUs and for testing.
    """
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    query_batch, image_batch = query_batch or (16 if gpu else 4), image_batch or (32 if gpu else 8)
    c1, c2 = constants(data_range)
    queries = np.asarray(queries)
    exact = queries.dtype == np.uint8
    scores = np.empty((len(queries), len(many)))
    with torch.inference_mode():
        q_planes = _as_tensor(queries, multichannel, device, torch.uint8 if exact else torch.float64)
        check_size(*q_planes.shape[-2:])
        q = _Stats(q_planes, exact, c1, c2)
        _, c, h, w = q_planes.shape
        for start in range(0, len(many), image_batch):
            part = np.asarray(many[start : start + image_batch])
            if (part.dtype == np.uint8) != exact:
                raise ValueError(
                    f"images are {part.dtype}, queries {queries.dtype}: both must be uint8 or not"
                )
            planes = _as_tensor(part, multichannel, device, q_planes.dtype)
            if planes.shape[1:] != q_planes.shape[1:]:
                raise ValueError(
                    f"images {tuple(planes.shape[1:])} do not match queries {tuple(q_planes.shape[1:])}"
                )
            y = _Stats(planes, exact, c1, c2)
            for q0 in range(0, len(queries), query_batch):
                sums = _pair_sums(q, y, slice(q0, q0 + query_batch))
                scores[q0 : q0 + query_batch, start : start + len(part)] = sums.cpu().numpy()
            if progress is not None:
                progress(len(part))
    return scores / (c * (h - 2 * PAD) * (w - 2 * PAD))


def ssim_one_vs_many_torch(query: np.ndarray, many, data_range: float, **kwargs) -> np.ndarray:
    """Torch version of :func:`ssim_one_vs_many` (raw images only): float64 (N,)."""
    query = np.asarray(query)
    kwargs.setdefault("multichannel", query.ndim == 3)
    return ssim_many_vs_many_torch(query[None], many, data_range, **kwargs)[0]
