"""Torch datasets over image files: plain image lists (evaluation) and triplets (training)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from retrieval.data.image_io import load_rgb
from retrieval.data.truth import BBox

Transform = Callable[[object], torch.Tensor]
T = TypeVar("T")


def seeded_call(seed: int | None, index: int, make: Callable[[], T]) -> T:
    """``make()`` with torch's global RNG seeded by ``(seed, index)`` alone and restored after
    (torchvision's random transforms draw from it): item ``index`` gets the same augmentation
    whatever the worker, the loading order or what ran before (a resumed run). ``seed``
    None: ``make()`` as it is."""
    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))
        return make()


class ImageListDataset(Dataset):
    """Images in a fixed order; yields ``(tensor, index)`` so results can be re-ordered
    after a distributed sampler shuffled or padded them."""

    def __init__(
        self, paths: Sequence[Path], transform: Transform, bboxes: Sequence[BBox | None] | None = None
    ) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.bboxes = list(bboxes) if bboxes is not None else [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(self.paths[index], self.bboxes[index])), index


class TripletDataset(Dataset):
    """(anchor, positive, negative) image triplets given as rows of database indices.

    The triplets themselves are drawn outside (see :mod:`retrieval.datamodules.triplets`),
    once per epoch in the main process, so that every worker sees the same, seeded draw
    and a resumed run redraws exactly what the interrupted one would have.

    With ``seed``, the random augmentations of item ``i`` draw from an RNG seeded by
    ``(seed, i)`` alone: the same images whatever the worker count, the order of loading
    or what ran before (a resumed run), and the global RNG is left as it was.
    """

    def __init__(
        self,
        anchor_paths: Sequence[Path],
        anchor_bboxes: Sequence[BBox | None],
        image_paths: Sequence[Path],
        triplets: np.ndarray,
        transform: Transform,
        seed: int | None = None,
    ) -> None:
        if triplets.ndim != 2 or triplets.shape[1] != 3:
            raise ValueError(f"triplets must be an (n, 3) array, got shape {triplets.shape}")
        self.anchor_paths = list(anchor_paths)
        self.anchor_bboxes = list(anchor_bboxes)
        self.image_paths = list(image_paths)
        self.triplets = triplets
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        query, positive, negative = (int(v) for v in self.triplets[index])
        images = (
            load_rgb(self.anchor_paths[query], self.anchor_bboxes[query]),
            load_rgb(self.image_paths[positive]),
            load_rgb(self.image_paths[negative]),
        )
        return seeded_call(self.seed, index, lambda: tuple(self.transform(image) for image in images))
