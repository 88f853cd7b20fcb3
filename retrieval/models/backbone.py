"""timm backbones with their global pooling and classifier removed (feature maps out)."""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from retrieval.utils.errors import WeightsError


def create_backbone(name: str = "resnet50", pretrained: bool = False,
                    weights_path: str | Path | None = None) -> nn.Module:
    """A timm model returning its last feature map ``(B, C, h, w)``.

    ``pretrained=True`` downloads timm's weights from the hub (what users with network get);
    ``weights_path`` loads a local state dict instead (``weights_only=True``: never executes
    pickled code). A failed download names both options.
    """
    try:
        model = timm.create_model(name, pretrained=pretrained and weights_path is None,
                                  num_classes=0, global_pool="")
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise WeightsError(f"timm has no model '{name}' (see timm.list_models())") from None
        raise
    except Exception as error:  # network errors come in many types (OSError, HTTPError, hub errors)
        raise WeightsError(
            f"could not download pretrained weights for '{name}' ({type(error).__name__}: {error}). "
            f"Either run where the model hub is reachable, or download the weights elsewhere and "
            f"pass model.net.backbone.weights_path=FILE (a timm/torch state dict), or train from "
            f"scratch with model.net.backbone.pretrained=false."
        ) from None
    if weights_path is not None:
        load_local_weights(model, Path(weights_path))
    return model


def load_local_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist (model.net.backbone.weights_path)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    # classifier weights of an ImageNet checkpoint have no place in a headless backbone
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.startswith(("fc.", "classifier.", "head."))]
    if missing or unexpected:
        raise WeightsError(f"{path} does not fit the backbone: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
