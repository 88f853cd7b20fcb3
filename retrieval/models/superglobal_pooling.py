"""SuperGlobal's global pooling (Shao et al., ICCV 2023, "Global Features are All You Need
for Image Retrieval and Reranking"): Regional-GeM, then GeM+ (GeM with a fixed, larger p).

Regional-GeM replaces each activation by the mean of itself and the power mean (exponent
``region_p``) of its ``region_size`` x ``region_size`` neighbourhood, so that the global
pooling after it sees regional context; GeM+ is GeM with p = 4.6 instead of a learned p ~ 3.
Defaults are the reference implementation's (ShihaoShao-GH/SuperGlobal,
modules/coarse_retrieval/rgem.py and gemp.py; parity tested). Its Scale-GeM (aggregating the
multi-scale descriptors) and the ReLU+ backbone change are not part of this pooling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RegionalGeM(nn.Module):
    """(B, C, h, w) -> (B, C): Regional-GeM, then GeM with exponent ``p`` (fixed by default,
    as in SuperGlobal; ``learnable=true`` trains it like pooling=gem)."""

    def __init__(
        self,
        region_p: float = 2.5,
        region_size: int = 5,
        p: float = 4.6,
        eps: float = 1e-8,
        learnable: bool = False,
    ) -> None:
        super().__init__()
        if region_size < 1 or region_size % 2 == 0:
            raise ValueError(f"region_size must be an odd number >= 1, got {region_size}")
        self.region_p, self.region_size, self.eps = float(region_p), int(region_size), eps
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)

    def regional(self, x: torch.Tensor) -> torch.Tensor:
        """0.5 x + 0.5 (power mean over the window), windows reflected at the borders. A map
        no larger than the window's half-width cannot be reflected (the reference fails
        there): it passes unchanged."""
        pad = (self.region_size - 1) // 2
        if pad == 0 or min(x.shape[-2:]) <= pad:
            return x
        # lp_pool2d sums x^p over the window; dividing x by (window area)^(1/p) first makes
        # it the power mean, as the reference does
        scale = float(self.region_size**2) ** (1.0 / self.region_p)
        pooled = F.lp_pool2d(F.pad(x / scale, (pad,) * 4, mode="reflect"), self.region_p, self.region_size, 1)
        return 0.5 * pooled + 0.5 * x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.regional(x)
        p = self.p.to(x.dtype)  # 1/p in the maps' precision (float64 maps: float64 1/p)
        return x.clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"region_p={self.region_p}, region_size={self.region_size}, p={self.p.item():.3f}"
