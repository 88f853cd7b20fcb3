"""LightningDataModule for class-labelled image collections (class folders or a CSV).

Training yields P×K batches of ``(images, labels)`` (see :mod:`~retrieval.datamodules.
samplers`) for in-batch mining; validation yields one loader, the evaluation gallery as
``(image, index)``: every gallery image is a query against all the others (leave-one-out),
so the evaluation callback embeds it once and uses it as queries and database alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from retrieval.data.class_ground_truth import ClassGroundTruth
from retrieval.data.image_io import load_rgb
from retrieval.data.image_paths import ImagePaths
from retrieval.datamodules.image_datasets import ImageListDataset, Transform, seeded_call
from retrieval.datamodules.landmark_datamodule import VAL_QUERIES
from retrieval.datamodules.resumable import ResumableDataLoader
from retrieval.datamodules.samplers import PKSampler
from retrieval.datamodules.transforms import eval_transform, train_transform
from retrieval.models.input_normalization import InputNormalization
from retrieval.utils.errors import DatasetError

log = logging.getLogger(__name__)

VAL_GALLERY = VAL_QUERIES  # the one validation loader: the callback reads it as the queries
SPLIT_BY = ("image", "class")


class LabelledImageDataset(Dataset):
    """``(tensor, class id)`` pairs. With ``seed``, image ``i``'s random augmentation is a
    function of ``(seed, i)`` (:func:`seeded_call`): a resumed run replays it exactly. The
    train loader passes a new seed each epoch, so an image drawn twice in one epoch gets the
    same augmentation twice (P×K batches draw with replacement across batches)."""

    def __init__(
        self, paths: Sequence[Path], labels: np.ndarray, transform: Transform, seed: int | None = None
    ) -> None:
        # ImagePaths (GLDv2's 1.6 M) stay compact: a list would be copied into every worker
        paths = paths if isinstance(paths, ImagePaths) else list(paths)
        self.paths, self.labels, self.transform, self.seed = paths, labels, transform, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = load_rgb(self.paths[index])
        return seeded_call(self.seed, index, lambda: self.transform(image)), int(self.labels[index])


def split_items(
    gt: ClassGroundTruth, val_fraction: float, split_by: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of a set without a split column, seeded.

    ``image``: a ``val_fraction`` of each class's images (every class keeps 2 for training;
    the classes are shared, as in Oxford 102 Flowers' or Fashion-MNIST's own splits).
    ``class``: a ``val_fraction`` of the classes, all their images (classes never seen in
    training, the CUB-200 / Cars196 / SOP convention of deep metric learning).
    """
    if split_by not in SPLIT_BY:
        raise DatasetError(f"dataset.split_by={split_by!r}: use one of {', '.join(SPLIT_BY)}")
    rng = np.random.default_rng(seed)
    if split_by == "class":
        n_classes = len(gt.class_names)
        n_val = int(np.clip(round(val_fraction * n_classes), 1 if val_fraction > 0 else 0, n_classes - 2))
        val_classes = rng.permutation(n_classes)[:n_val]
        is_val = np.isin(gt.labels, val_classes)
    else:
        is_val = np.zeros(len(gt), dtype=bool)
        for members in (np.flatnonzero(gt.labels == c) for c in range(len(gt.class_names))):
            n_val = int(np.clip(round(val_fraction * len(members)), 0, len(members) - 2))
            is_val[rng.permutation(members)[:n_val]] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


class ClassDataModule(L.LightningDataModule):
    """``items`` reads the collection (a reader of :mod:`~retrieval.data.class_formats`
    as a Hydra partial). ``root`` / ``csv`` / ``image_root`` are where it reads from: the
    config passes them to the reader; kept here for the record."""

    def __init__(
        self,
        items: Callable[[], ClassGroundTruth],
        name: str,
        root: str | Path | None = None,
        csv: str | Path | None = None,
        image_root: str | Path | None = None,
        image_size: int = 224,
        normalization: InputNormalization | None = None,
        classes_per_batch: int = 8,
        images_per_class: int = 4,
        batches_per_epoch: int | None = None,
        eval_batch_size: int = 64,
        num_workers: int = 2,
        augmentations: Mapping | Sequence = (),
        val_fraction: float = 0.2,
        split_by: str = "image",
        eval_split: str = "val",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.read_items, self.name = items, name
        self.source = csv or root
        self.image_size, self.eval_batch_size, self.num_workers = image_size, eval_batch_size, num_workers
        # the backbone's pixel normalisation (timm); set by the pipelines from the model config
        self.normalization = normalization or InputNormalization()
        self.classes_per_batch, self.images_per_class = classes_per_batch, images_per_class
        self.batches_per_epoch = batches_per_epoch
        # a mapping name -> transform (overridable by name), applied in order (as landmarks)
        self.augmentations = list(
            augmentations.values() if isinstance(augmentations, Mapping) else augmentations
        )
        self.val_fraction, self.split_by, self.eval_split, self.seed = (
            val_fraction,
            split_by,
            eval_split,
            seed,
        )
        self.all_items: ClassGroundTruth | None = None
        self.train_gt: ClassGroundTruth | None = None
        self.eval_gt: ClassGroundTruth | None = None
        self._evaluates_on_training = False

    def prepare_data(self) -> None:
        self._read()  # bad files fail here, before any model is built

    def _read(self) -> ClassGroundTruth:
        if self.all_items is None:
            self.all_items = self.read_items()
        return self.all_items

    def setup(self, stage: str | None = None) -> None:
        if self.eval_gt is not None:
            return
        items = self._read()
        train, val = self._split(items)
        self.train_gt = items.subset(train, f"{self.name}/train")
        # val_fraction=0 (no held-out images): evaluate on the training images, and say so
        self.eval_gt = items.subset(val if len(val) else train, f"{self.name}/{self.eval_split}")
        self._evaluates_on_training = len(val) == 0
        if not (self.eval_gt.class_sizes() >= 2).any():
            raise DatasetError(
                f"{self.source}: no class has 2 images among the {len(self.eval_gt)} "
                f"evaluation images, so no query has a positive to find; hold out "
                f"more (dataset.val_fraction) or fix the split column"
            )
        log.info(
            "%s: %d images in %d classes; %d train / %d evaluation images (%s)",
            self.name,
            len(items),
            len(items.class_names),
            len(train),
            len(self.eval_gt),
            "split column"
            if items.split is not None
            else f"{self.val_fraction:.0%} held out by {self.split_by}",
        )

    def _split(self, items: ClassGroundTruth) -> tuple[np.ndarray, np.ndarray]:
        if items.split is None:
            return split_items(items, self.val_fraction, self.split_by, self.seed)
        split = np.asarray(items.split)
        train, val = np.flatnonzero(split == "train"), np.flatnonzero(split == self.eval_split)
        if not len(val):
            counts = dict(zip(*np.unique(split, return_counts=True)))
            raise DatasetError(
                f"{self.source}: no rows have split '{self.eval_split}' (the split "
                f"column holds {counts}); choose the evaluation split with "
                f"dataset.eval_split=val|test|train"
            )
        return train, (val if self.eval_split != "train" else np.empty(0, np.int64))

    @property
    def evaluates_on_training_anchors(self) -> bool:
        """True when the evaluation images are training images (optimistic numbers)."""
        return self._evaluates_on_training

    # ------------------------------------------------------------ dataloaders
    def _loader(
        self, dataset: Dataset, batch_size: int, loader: type[DataLoader] = DataLoader, **kwargs
    ) -> DataLoader:
        return loader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            **kwargs,
        )

    def train_sampler(self, epoch: int = 0) -> PKSampler:
        labels = self.train_gt.labels
        eligible = int((np.bincount(labels) >= 2).sum())
        if eligible < 2:
            raise DatasetError(
                f"{self.source}: the training split has {eligible} classes with 2 or "
                f"more images; P×K batches need at least 2 (check the split column "
                f"or dataset.val_fraction / dataset.split_by)"
            )
        p = self.classes_per_batch
        if eligible < p:
            log.warning(
                "P=%d classes per batch, but the training split has %d classes with 2+ images: using P=%d",
                p,
                eligible,
                eligible,
            )
            p = eligible
        world, rank = (
            (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        )
        sampler = PKSampler(
            labels, p, self.images_per_class, self.batches_per_epoch, self.seed, num_replicas=world, rank=rank
        )
        sampler.set_epoch(epoch)
        return sampler

    def train_dataloader(self) -> DataLoader:
        # rebuilt every epoch (trainer.reload_dataloaders_every_n_epochs=1): batches are a
        # function of (seed, epoch); Lightning also calls set_epoch on the sampler
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        sampler = self.train_sampler(epoch)
        dataset = LabelledImageDataset(
            self.train_gt.image_paths,
            self.train_gt.labels,
            train_transform(self.image_size, self.augmentations, self.normalization),
            seed=int(np.random.default_rng([self.seed, epoch, 2]).integers(2**62)),
        )
        return self._loader(
            dataset, sampler.batch_size, loader=ResumableDataLoader, sampler=sampler, drop_last=True
        )

    def gallery_dataset(self) -> ImageListDataset:
        return ImageListDataset(self.eval_gt.image_paths, eval_transform(self.image_size, self.normalization))

    # the names evaluate.py asks a landmark datamodule for: here both are the gallery (its
    # embedding cache keys on the image list, so the gallery is embedded once)
    query_dataset = database_dataset = gallery_dataset

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.gallery_dataset(), self.eval_batch_size, shuffle=False)]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()
