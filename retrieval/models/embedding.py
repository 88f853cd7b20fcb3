"""The embedding network: backbone -> pooling -> optional projection -> L2 normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.models.input_normalization import InputNormalization


class EmbeddingNetwork(nn.Module):
    def __init__(self, backbone: nn.Module, pooling: nn.Module, projection: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone, self.pooling = backbone, pooling
        self.projection = projection if projection is not None else nn.Identity()

    @property
    def input_normalization(self) -> InputNormalization:
        """The pixel normalisation the backbone's weights expect (timm's pretrained config)."""
        return InputNormalization.of_module(self.backbone)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        descriptors = self.projection(self.pooling(self.backbone(images)))
        # per image (dim=1); the seed normalised across the batch (dim=0), which is a bug
        return F.normalize(descriptors, p=2, dim=1)
