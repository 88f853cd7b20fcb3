"""P×K class-balanced batches for in-batch mining: P classes, K images of each.

Why not pytorch-metric-learning's ``MPerClassSampler``, which yields the same batch shape:

* it draws from pml's module-global NumPy RNG (``c_f.NUMPY_RANDOM``), so an epoch's batches
  depend on whatever else consumed that RNG; here they are a function of (seed, epoch), so
  every DDP rank agrees on the draw and a resumed run redraws what the interrupted one would;
* under DDP Lightning wraps a plain sampler in a ``DistributedSamplerWrapper`` that deals
  its indices out round-robin, so a rank's batch would hold K/W images of 2P classes rather
  than P × K. This sampler *is* a ``DistributedSampler`` (Lightning then leaves it alone)
  and hands each rank whole P×K batches of its own;
* it is a :class:`~retrieval.datamodules.resumable.ResumableSampler`: a checkpoint written
  mid-epoch resumes at the next batch.

Use it with ``DataLoader(batch_size=P * K, drop_last=True, shuffle=False)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retrieval.datamodules.resumable import ResumableSampler


class PKSampler(ResumableSampler):
    """A flat stream of dataset indices, P×K per batch.

    Each batch takes ``classes_per_batch`` (P) distinct classes uniformly at random among
    those with at least two images, and ``images_per_class`` (K) images of each, without
    replacement where the class has K images (with replacement where it has fewer, as
    MPerClassSampler does). ``batches_per_epoch`` counts batches over all ranks (default:
    about one pass over the images); every rank gets the same number of them.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        classes_per_batch: int,
        images_per_class: int,
        batches_per_epoch: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        super().__init__(labels, num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed)
        if classes_per_batch < 2 or images_per_class < 2:
            raise ValueError(
                "P×K batches need P >= 2 classes and K >= 2 images per class "
                f"(got P={classes_per_batch}, K={images_per_class})"
            )
        # grouped by one stable sort, not one scan per class: GLDv2 has 81 k classes × 1.6 M images
        order = np.argsort(labels, kind="stable")
        members = np.split(order, np.flatnonzero(np.diff(labels[order])) + 1) if len(labels) else []
        self.members = [m for m in members if len(m) >= 2]  # a lone image has no positive
        if len(self.members) < classes_per_batch:
            raise ValueError(
                f"P={classes_per_batch} classes per batch, but only "
                f"{len(self.members)} classes have 2 or more images"
            )
        self.p, self.k = classes_per_batch, images_per_class
        total = batches_per_epoch or max(1, len(labels) // (self.p * self.k))
        self.batches_per_rank = max(1, total // num_replicas)

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def __len__(self) -> int:
        return self.batches_per_rank * self.batch_size

    def batches(self) -> list[np.ndarray]:
        """This rank's batches of the current epoch (see ``set_epoch``), each P×K indices."""
        rng = np.random.default_rng([self.seed, self.epoch])
        out = []
        for _ in range(self.batches_per_rank * self.num_replicas):  # the same draw on every rank
            classes = rng.choice(len(self.members), size=self.p, replace=False)
            out.append(
                np.concatenate(
                    [
                        rng.choice(self.members[c], size=self.k, replace=len(self.members[c]) < self.k)
                        for c in classes
                    ]
                )
            )
        return out[self.rank :: self.num_replicas]

    def order(self) -> list[int]:
        return np.concatenate(self.batches()).tolist()
