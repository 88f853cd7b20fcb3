"""Training loaders that a checkpoint resumes exactly, a checkpoint written mid-epoch included.

Two things make a plain shuffled ``DataLoader`` resume inexactly under Lightning:

* its ``RandomSampler`` draws each pass's order from a generator that advances on every
  ``iter()``, and Lightning iterates a reloaded loader twice at the start of every epoch after
  the first of an uninterrupted run (``FitLoop.setup_data`` and
  ``TrainingEpochLoop.on_run_start``) but once in a resumed run: the two see different orders;
* a checkpoint written mid-epoch (``ModelCheckpoint(every_n_train_steps=...)``) restarts the
  epoch's data at its first batch, unless the loader is stateful (``state_dict`` /
  ``load_state_dict``, which Lightning saves in the checkpoint and restores on resume).

Here a rank's order is a pure function of (seed, epoch) (:class:`ResumableSampler`, a
``DistributedSampler``, so that Lightning leaves it alone under DDP) and the loader counts the
batches it delivered (:class:`ResumableDataLoader`), so a resumed run skips exactly those.
Random augmentations must not depend on worker RNG state either: the datasets seed them per
item (:func:`retrieval.datamodules.image_datasets.seeded_call`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` (shuffled by ``seed + epoch``, as torch's) whose pass can
    start part-way: the first ``skip`` indices of this rank's order are left out once."""

    def __init__(
        self, dataset: Sized, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
        self.skip = 0

    def order(self) -> list[int]:
        """This rank's whole order for the current epoch (subclasses draw their own)."""
        return list(super().__iter__())

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.skip :])


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position in the epoch is part of Lightning's checkpoint.

    Its state is the number of batches handed to the training loop in the current pass;
    loading it makes the next pass skip them (the sampler must be a
    :class:`ResumableSampler`; batches must be ``batch_size`` indices each). Same constructor
    as ``DataLoader``, so Lightning can re-create it with another sampler (``overfit_batches``).
    """

    _delivered = 0

    def _resumable(self) -> ResumableSampler | None:
        sampler = self.sampler
        return sampler if isinstance(sampler, ResumableSampler) and self.batch_size else None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self._resumable()
        self._delivered = sampler.skip // self.batch_size if sampler is not None else 0  # type: ignore[operator]
        for batch in super().__iter__():
            self._delivered += 1
            yield batch
        if sampler is not None:
            sampler.skip = 0  # a pass ran to its end: the next one is whole

    def state_dict(self) -> dict[str, int]:
        return {"batches_delivered": self._delivered}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self._resumable()
        if sampler is not None:
            sampler.skip = int(state.get("batches_delivered", 0)) * int(self.batch_size)  # type: ignore[arg-type]
