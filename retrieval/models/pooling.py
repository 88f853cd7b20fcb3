"""Global pooling layers: feature map (B, C, h, w) -> descriptor (B, D)."""
from __future__ import annotations

import torch
from torch import nn


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
    """Generalised mean pooling (Radenović et al.) with a learnable exponent ``p``."""

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
