"""Image transforms built from torchvision transforms v2.

Evaluation resizes every image to a fixed square: the reference's flatten head needs one
input size, and fixed sizes batch. Training augmentations are given by the
``augmentation`` config group as a list of v2 transforms applied before that resize.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_normalized_tensor() -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def eval_transform(image_size: int) -> v2.Compose:
    return v2.Compose([v2.Resize((image_size, image_size), antialias=True), *_to_normalized_tensor()])


def train_transform(image_size: int, augmentations: Sequence[v2.Transform] = ()) -> v2.Compose:
    return v2.Compose([*augmentations, v2.Resize((image_size, image_size), antialias=True),
                       *_to_normalized_tensor()])
