"""A landmark set trained as a class-labelled one (``model=landmark_classes``): every
training image, i.e. each training query and its training positives, labelled with the
query's landmark, in P×K batches, as GLDv2's images carry their ``landmark_id``. The
classification losses (``loss=arcface|cosface|subcenter_arcface``) learn one weight vector
per landmark; pair losses take the batch's pairs. Evaluation is the landmark set's own
(its split's queries against the database), so the numbers compare with triplet training.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from retrieval.data.ground_truth import RetrievalGroundTruth
from retrieval.datamodules.class_datamodule import LabelledImageDataset
from retrieval.datamodules.landmark_datamodule import LandmarkDataModule
from retrieval.datamodules.resumable import ResumableDataLoader
from retrieval.datamodules.samplers import PKSampler
from retrieval.datamodules.transforms import train_transform


def landmark_labels(gt: RetrievalGroundTruth, train_pairs: np.ndarray) -> tuple[list, np.ndarray]:
    """(paths, labels): the database images of the training pairs and the training queries'
    own images, each once, labelled by the index of its query's landmark in ``gt.landmarks``.
    A database image that is a positive of two landmarks keeps the first."""
    landmark_ids = {name: i for i, name in enumerate(gt.landmarks)}
    by_image: dict[int, int] = {}
    extra: list[tuple[object, int]] = []  # query images that are not database images
    for q in np.unique(train_pairs[:, 0]).tolist():
        query = gt.queries[q]
        label = landmark_ids[query.landmark]
        if gt.has_image(query.name):
            by_image.setdefault(gt.index_of(query.name), label)
        else:
            extra.append((query.path, label))
    for q, image in train_pairs.tolist():
        by_image.setdefault(image, landmark_ids[gt.queries[q].landmark])
    images = sorted(by_image)
    paths = [gt.image_paths[i] for i in images] + [path for path, _ in extra]
    labels = np.asarray([by_image[i] for i in images] + [label for _, label in extra], dtype=np.int64)
    return paths, labels


class LandmarkClassDataModule(LandmarkDataModule):
    """:class:`LandmarkDataModule` whose training batches are ``(images, landmark labels)``
    (P classes × K images, seeded per epoch as the class sets'); no validation triplets and
    no negative pools (they are a triplet recipe's)."""

    def __init__(
        self,
        *args,
        classes_per_batch: int = 8,
        images_per_class: int = 4,
        batches_per_epoch: int | None = None,
        **kwargs,
    ) -> None:
        kwargs.update(val_triplets=False, negative_pools=None)
        super().__init__(*args, **kwargs)
        self.classes_per_batch, self.images_per_class = classes_per_batch, images_per_class
        self.batches_per_epoch = batches_per_epoch

    def setup(self, stage: str | None = None) -> None:
        fresh = self.gt is None
        super().setup(stage)
        if fresh:
            self.train_paths, self.train_labels = landmark_labels(self.gt, self.train_pairs)

    @property
    def num_classes(self) -> int:
        """Every landmark of the set (held-out ones too: their weights are simply never pulled)."""
        return len(self.gt.landmarks)

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        world, rank = (
            (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        )
        classes = int((np.bincount(self.train_labels) >= 2).sum())
        sampler = PKSampler(
            self.train_labels,
            min(self.classes_per_batch, classes),
            self.images_per_class,
            self.batches_per_epoch,
            self.seed,
            num_replicas=world,
            rank=rank,
        )
        sampler.set_epoch(epoch)
        dataset = LabelledImageDataset(
            self.train_paths,
            self.train_labels,
            train_transform(self.image_size, self.augmentations, self.normalization),
            seed=int(np.random.default_rng([self.seed, epoch, 2]).integers(2**62)),
        )
        return ResumableDataLoader(
            dataset,
            batch_size=sampler.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )
