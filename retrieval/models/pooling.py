"""Global pooling layers: feature map (B, C, h, w) -> descriptor (B, D)."""

from __future__ import annotations

import functools
from fractions import Fraction

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter


class Flatten(nn.Module):
    """The seed project's head: no pooling, the whole C·h·w map is the descriptor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class MAC(nn.Module):
    """Maximum activation of convolutions (max over positions)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))


class SPoC(nn.Module):
    """Sum-pooled convolutional features (average over positions)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class GeM(nn.Module):
    """Generalised mean pooling (Radenović et al.) with a learnable exponent ``p``, one for
    the whole network (``learnable=false``: fixed p); :class:`ChannelGeM` learns one per channel."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a mean over positions rather than avg_pool2d(kernel=h,w): the same numbers, and no
        # shape-dependent kernel, so ONNX export keeps dynamic image sizes
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.3f}, eps={self.eps}"


class ChannelGeM(LazyModuleMixin, GeM):
    """GeM with one learnable exponent per channel (cirtorch's ``GeMmp``): ``p`` is a
    (C,) vector, all ``p`` at the start; C is read from the first feature map (the module
    sizes it with a dry forward before the optimizer sees it), or from a checkpoint."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__(p, eps, learnable)
        self.p_init = float(p)
        self.p = UninitializedParameter(requires_grad=learnable)

    def initialize_parameters(self, x: torch.Tensor) -> None:  # type: ignore[override]
        if self.has_uninitialized_params():
            with torch.no_grad():
                self.p.materialize((x.shape[1],), device=x.device)
                self.p.fill_(self.p_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.view(1, -1, 1, 1)
        return x.clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        if self.has_uninitialized_params():
            return f"p={self.p_init:.3f} per channel (not sized yet), eps={self.eps}"
        return f"p per channel ({self.p.numel()}; mean {self.p.mean().item():.3f}), eps={self.eps}"


@functools.lru_cache(maxsize=64)  # one grid per feature-map size: computed once, not per batch
def rmac_regions(
    height: int, width: int, levels: int = 3, overlap: float = 0.4
) -> tuple[tuple[int, int, int, int], ...]:
    """The R-MAC region grid (Tolias et al. 2016, as cirtorch's ``rmac``): ``(top, left, h, w)``.

    The whole map first, then at level ``l = 1..levels`` squares of side ``floor(2 m / (l+1))``
    (``m`` the short side) spread uniformly, first and last flush with the borders: ``l``
    along the short side and ``l + extra`` along the long one, where ``extra + 1`` in 1..6 is
    the number of steps whose overlap of consecutive level-1 squares is closest to
    ``overlap``. Positions use exact integer arithmetic; cirtorch computes them in float32,
    which differs only on rare shapes (an exact tie at 25×61; aspect ratios above 2.5 where
    its last square stops one cell short of the border).
    """
    short, long = min(height, width), max(height, width)
    extra = 0
    if height != width:
        # overlap of two level-1 squares when the long side takes s of them, in exact fractions
        # so that ties (e.g. 25x61) go to the fewer squares whatever the float rounding
        target = 1 - Fraction(str(overlap))
        errors = [abs(target - Fraction(long - short, (s - 1) * short)) for s in range(2, 8)]
        extra = errors.index(min(errors)) + 1
    extra_h, extra_w = (extra, 0) if height > width else (0, extra)
    regions = [(0, 0, height, width)]
    for level in range(1, levels + 1):
        side = 2 * short // (level + 1)
        if side == 0:  # feature maps of 1-2 cells: no squares at the finer levels
            continue
        tops = _spread(height - side, level + extra_h)
        lefts = _spread(width - side, level + extra_w)
        regions += [(top, left, side, side) for top in tops for left in lefts]
    return tuple(regions)


def _spread(room: int, count: int) -> list[int]:
    """``count`` offsets in ``[0, room]``, uniformly spaced and rounded down, ends included."""
    if count == 1:
        return [0]
    return [k * room // (count - 1) for k in range(count)]


class RMAC(nn.Module):
    """Regional MAC: the sum of the L2-normalised MACs of the :func:`rmac_regions` grid
    (the whole map plus ``levels`` levels of squares). No per-region PCA whitening, as in
    cirtorch's ``rmac``; the embedding network L2-normalises the sum."""

    def __init__(self, levels: int = 3, overlap: float = 0.4, eps: float = 1e-6) -> None:
        super().__init__()
        self.levels, self.overlap, self.eps = levels, overlap, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        regions = rmac_regions(x.shape[-2], x.shape[-1], self.levels, self.overlap)
        macs = torch.stack(
            [x[..., t : t + h, left : left + w].amax(dim=(2, 3)) for t, left, h, w in regions], dim=1
        )
        return (macs / (macs.norm(p=2, dim=2, keepdim=True) + self.eps)).sum(dim=1)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, overlap={self.overlap}"
