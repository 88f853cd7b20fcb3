"""Image transforms built from torchvision transforms v2.

Evaluation resizes every image to a fixed square: the reference's flatten head needs one
input size, and fixed sizes batch. Training augmentations are given by the
``augmentation`` config group as a list of v2 transforms applied before that resize. The
pixel normalisation is the backbone's own (:class:`InputNormalization`, from timm).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from retrieval.models.input_normalization import InputNormalization

_INTERPOLATION = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}


def _resize(image_size: int, normalization: InputNormalization) -> v2.Resize:
    mode = _INTERPOLATION.get(normalization.interpolation, v2.InterpolationMode.BILINEAR)
    return v2.Resize((image_size, image_size), interpolation=mode, antialias=True)


def _to_normalized_tensor(normalization: InputNormalization) -> list[v2.Transform]:
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(normalization.mean, normalization.std),
    ]


def eval_transform(image_size: int, normalization: InputNormalization | None = None) -> v2.Compose:
    normalization = normalization or InputNormalization()
    return v2.Compose([_resize(image_size, normalization), *_to_normalized_tensor(normalization)])


def train_transform(
    image_size: int,
    augmentations: Sequence[v2.Transform] = (),
    normalization: InputNormalization | None = None,
) -> v2.Compose:
    normalization = normalization or InputNormalization()
    return v2.Compose(
        [*augmentations, _resize(image_size, normalization), *_to_normalized_tensor(normalization)]
    )
