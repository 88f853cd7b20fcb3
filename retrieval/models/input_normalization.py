"""What a backbone expects of its input pixels, read from timm's pretrained config.

timm records, per architecture, the mean/std (and interpolation) its weights were trained
with: ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) for torchvision-style models,
0.5 / 0.5 for the TensorFlow ports (``tf_*``). Training, evaluation, database builds,
queries, the app and export all take it from here, and checkpoints and databases store
it, so serving can never normalise differently from training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import timm
from timm.data import resolve_data_config
from torch import nn

from retrieval.utils.errors import WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputNormalization:
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    @classmethod
    def of_backbone(cls, name: str) -> InputNormalization:
        """The normalisation timm's pretrained config gives architecture ``name``."""
        pretrained_cfg = timm.get_pretrained_cfg(name)
        if pretrained_cfg is None:
            raise WeightsError(
                f"timm has no model '{name}' (model.net.backbone.name; see timm.list_models())"
            )
        return cls.from_data_config(resolve_data_config(pretrained_cfg=pretrained_cfg.to_dict()))

    @classmethod
    def of_module(cls, backbone: nn.Module) -> InputNormalization:
        """The normalisation of a built timm model (its ``pretrained_cfg``), ImageNet's otherwise."""
        pretrained_cfg = getattr(backbone, "pretrained_cfg", None)
        if not pretrained_cfg:
            return cls()
        return cls.from_data_config(resolve_data_config(pretrained_cfg=dict(pretrained_cfg)))

    @classmethod
    def from_data_config(cls, config: Mapping) -> InputNormalization:
        return cls(
            tuple(float(v) for v in config["mean"]),
            tuple(float(v) for v in config["std"]),
            str(config.get("interpolation", "bilinear")),
        )

    def to_dict(self) -> dict:
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, stored: Mapping) -> InputNormalization:
        return cls.from_data_config(stored)
