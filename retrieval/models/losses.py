"""Distances for ``torch.nn.TripletMarginWithDistanceLoss`` (built from the loss config)."""

from __future__ import annotations

import torch


def squared_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||x − y||², the seed's distance: on unit vectors it spans [0, 4], so margin 2 bites."""
    return (x - y).pow(2).sum(dim=1)


def euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).pow(2).sum(dim=1).clamp_min(1e-12).sqrt()


def cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.nn.functional.cosine_similarity(x, y, dim=1)
