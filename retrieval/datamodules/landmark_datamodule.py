"""LightningDataModule for landmark retrieval datasets (toy, Oxford5k, Paris6k, revisited).

Training yields triplets; validation yields three loaders: validation triplets (loss),
query images (cropped to their box) and database images. The evaluation callback turns
the embeddings of the last two into retrieval metrics.

``split`` (the ``split`` config group) divides the (query, positive) pairs into training
and validation and says which queries are evaluated; ``negative_pools`` (the ``mining``
group, a :mod:`~retrieval.datamodules.negative_pools` source) gives each query the images
its triplets take their negatives from. Evaluation-only commands pass no pools.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from retrieval.data.ground_truth import RetrievalGroundTruth
from retrieval.datamodules.image_datasets import ImageListDataset, TripletDataset
from retrieval.datamodules.negative_pools import EpochNegativePoolSource, NegativePools
from retrieval.datamodules.resumable import ResumableDataLoader, ResumableSampler
from retrieval.datamodules.transforms import eval_transform, train_transform
from retrieval.datamodules.triplets import PairSplit, SplitFunction, draw_triplets, split_positives_per_query
from retrieval.models.input_normalization import InputNormalization
from retrieval.utils.errors import DatasetError, dataset_missing_message

log = logging.getLogger(__name__)

VAL_QUERIES, VAL_DATABASE, VAL_TRIPLETS = 0, 1, 2  # validation dataloader indices (triplets optional)


class LandmarkDataModule(L.LightningDataModule):
    def __init__(
        self,
        ground_truth: Callable[[], RetrievalGroundTruth],
        name: str,
        root: str | Path | None = None,
        how_to_get: str = "",
        image_size: int = 224,
        normalization: InputNormalization | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        num_workers: int = 2,
        augmentations: Mapping | Sequence = (),
        negative_pools: NegativePools | None = None,
        split: SplitFunction = split_positives_per_query,
        eval_ground_truth: Callable[[], RetrievalGroundTruth] | None = None,
        query_crop: bool = True,
        train_anchor_crop: bool = False,
        cache_dir: str | Path = "data/cache",
        val_triplets: bool = True,
        triplets_per_epoch: int | None = None,
        max_val_triplets: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.load_ground_truth = ground_truth
        self.name, self.root, self.how_to_get = name, root, how_to_get
        self.image_size, self.batch_size, self.eval_batch_size = image_size, batch_size, eval_batch_size
        # the backbone's pixel normalisation (timm); set by the pipelines from the model config
        self.normalization = normalization or InputNormalization()
        self.num_workers = num_workers
        # the augmentation config is a mapping name -> transform (so each can be overridden
        # or removed by name); its order is the order of application
        self.augmentations = list(
            augmentations.values() if isinstance(augmentations, Mapping) else augmentations
        )
        self.negative_pools_fn = negative_pools
        # the split function; setup() applies it and keeps its result as self.split
        self.make_split = split
        self.split: PairSplit | None = None
        self.load_eval_ground_truth = eval_ground_truth  # cross-dataset: evaluate elsewhere
        self.query_crop, self.train_anchor_crop = query_crop, train_anchor_crop
        self.cache_dir = Path(cache_dir)
        self.val_triplets = val_triplets  # evaluation-only runs switch the triplet loss off
        # caps for quick runs: a seeded random subset of the (query, positive) pairs per epoch
        self.triplets_per_epoch, self.max_val_triplets = triplets_per_epoch, max_val_triplets
        self.seed = seed
        self.gt: RetrievalGroundTruth | None = None

    # ----------------------------------------------------------------- set-up
    def prepare_data(self) -> None:
        self.read_ground_truth()  # generates the toy set on first use; real sets fail early and clearly

    def setup(self, stage: str | None = None) -> None:
        if self.gt is not None:
            return
        self.gt = self.read_ground_truth()
        self.split = self.make_split(self.gt)
        self.train_pairs, self.val_pairs = self.split.train_pairs, self.split.val_pairs
        log.info(
            "%s: %d database images, %d queries, %d train / %d val (query, positive) pairs",
            self.gt.name,
            len(self.gt.image_names),
            len(self.gt.queries),
            len(self.train_pairs),
            len(self.val_pairs),
        )
        if self.load_eval_ground_truth is not None:
            self.eval_gt = self.read_ground_truth(self.load_eval_ground_truth)
        elif self.split.eval_queries is not None:
            self.eval_gt = self.gt.subset_queries(self.split.eval_queries.tolist())
        else:
            self.eval_gt = self.gt
        self.negative_pools: list[np.ndarray] | None = None
        self._pools_epoch: int | None = None

    @property
    def evaluates_on_training_anchors(self) -> bool:
        return self.load_eval_ground_truth is None and self.split.evaluates_on_training_anchors

    def read_ground_truth(
        self, loader: Callable[[], RetrievalGroundTruth] | None = None
    ) -> RetrievalGroundTruth:
        """Read a ground truth; a missing or broken dataset becomes one readable paragraph."""
        loader = loader or self.load_ground_truth
        if loader is self.load_ground_truth:
            name, root, how_to_get = self.name, self.root, self.how_to_get
        else:  # the evaluation set of split=cross (another dataset): its reader names it
            keywords = getattr(loader, "keywords", {})
            name, root = keywords.get("name", "evaluation set"), keywords.get("root", "?")
            how_to_get = f"Download it with `retrieval-download dataset={name} paths.data_dir=DATA_DIR`."
        try:
            return loader()
        except DatasetError as error:
            raise DatasetError(dataset_missing_message(name, str(root), str(error), how_to_get)) from None

    def _pools(self, epoch: int | None = None) -> list[np.ndarray]:
        """The negative pools; ``epoch`` None (validation triplets): whatever is current."""
        if isinstance(self.negative_pools_fn, EpochNegativePoolSource):
            if epoch is None and self.negative_pools is not None:
                return self.negative_pools
            return self._pools_from_current_model(epoch or 0)
        if self.negative_pools is None:
            if self.negative_pools_fn is None:
                raise ValueError(
                    "this datamodule was built without negative pools (mining=...; "
                    "train.py passes them, evaluation builds no triplets)"
                )
            pools = self.negative_pools_fn(self.gt, cache_dir=self.cache_dir / self.gt.name)
            held_out = self.split.held_out_images
            self.negative_pools = [np.setdiff1d(pool, held_out) for pool in pools] if len(held_out) else pools
        return self.negative_pools

    def _pools_from_current_model(self, epoch: int) -> list[np.ndarray]:
        """mining=current_model: re-mined with the network's weights once per epoch."""
        if self._pools_epoch != epoch or self.negative_pools is None:
            module = self.trainer.lightning_module if self.trainer is not None else None
            if module is None:
                raise ValueError("mining=current_model needs the model: use the datamodule in a Trainer")
            self.negative_pools = self.negative_pools_fn.pools_for_epoch(
                self.gt,
                model=module,
                epoch=epoch,
                seed=self.seed,
                image_size=self.image_size,
                query_bboxes=self._anchor_bboxes(),
                held_out=self.split.held_out_images,
            )
            self._pools_epoch = epoch
        return self.negative_pools

    def _anchor_bboxes(self) -> list:
        """Training anchors: the full query image, as the reference, or its box."""
        return [q.bbox if self.train_anchor_crop else None for q in self.gt.queries]

    # ------------------------------------------------------------ dataloaders
    def _triplets(
        self,
        pairs: np.ndarray,
        epoch: int,
        augment: bool,
        limit: int | None = None,
        seed: int | None = None,
        mining_epoch: int | None = None,
    ) -> TripletDataset:
        if limit is not None and len(pairs) > limit:
            rng = np.random.default_rng([self.seed, epoch, 1])
            pairs = pairs[np.sort(rng.choice(len(pairs), size=limit, replace=False))]
        transform = (
            train_transform(self.image_size, self.augmentations, self.normalization)
            if augment
            else eval_transform(self.image_size, self.normalization)
        )
        return TripletDataset(
            [q.path for q in self.gt.queries],
            self._anchor_bboxes(),
            self.gt.image_paths,
            draw_triplets(pairs, self._pools(mining_epoch), self.seed, epoch),
            transform,
            seed,
        )

    def _loader(self, dataset, batch_size: int, sampler: ResumableSampler | None = None) -> DataLoader:
        """A training loader (``sampler`` given: resumable mid-epoch) or an evaluation one."""
        return (ResumableDataLoader if sampler is not None else DataLoader)(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        # Called again every epoch (trainer.reload_dataloaders_every_n_epochs=1) so that
        # negatives are re-drawn per epoch, seeded by the epoch number.
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        # Everything random in an epoch derives from (seed, epoch), never from what ran
        # before, so a run resumed from a checkpoint replays the uninterrupted run exactly:
        # the triplets, their order (the sampler's seed), their augmentations (the dataset's
        # seed) and, from a mid-epoch checkpoint, the position in the epoch (resumable.py).
        epoch_seed = int(np.random.default_rng([self.seed, epoch, 2]).integers(2**62))
        triplets = self._triplets(
            self.train_pairs,
            epoch,
            augment=True,
            limit=self.triplets_per_epoch,
            seed=epoch_seed,
            mining_epoch=epoch,
        )
        world, rank = (
            (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        )
        # torch's DistributedSampler seeds with seed + epoch in 63 bits
        sampler = ResumableSampler(triplets, num_replicas=world, rank=rank, seed=epoch_seed % 2**62)
        return self._loader(triplets, self.batch_size, sampler=sampler)

    def query_dataset(self) -> ImageListDataset:
        queries = self.eval_gt.queries
        bboxes = [q.bbox if self.query_crop else None for q in queries]
        return ImageListDataset(
            [q.path for q in queries], eval_transform(self.image_size, self.normalization), bboxes
        )

    def database_dataset(self) -> ImageListDataset:
        return ImageListDataset(self.eval_gt.image_paths, eval_transform(self.image_size, self.normalization))

    def val_dataloader(self) -> list[DataLoader]:
        loaders = [
            self._loader(self.query_dataset(), self.eval_batch_size),
            self._loader(self.database_dataset(), self.eval_batch_size),
        ]
        if self.val_triplets and len(self.val_pairs):
            # a fixed draw (epoch 0), so that the validation loss is comparable across epochs
            loaders.append(
                self._loader(
                    self._triplets(self.val_pairs, 0, augment=False, limit=self.max_val_triplets),
                    self.batch_size,
                )
            )
        return loaders

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()
