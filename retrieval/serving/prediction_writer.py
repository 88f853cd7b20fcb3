"""Lightning's prediction writer for database builds: descriptors go to shard files (see
:mod:`retrieval.serving.shards`) as soon as a shard's images are all embedded, never held
for the whole set; and the batch sampler that gives each process whole shards.

Lightning's own ``DistributedSampler`` pads the last ranks with repeated images and deals
images round-robin, so no process would own a complete shard; here rank 0 lists the shards
still missing once (after the processes have joined), broadcasts the list, and rank ``r``
embeds shards ``r, r + world, ...`` of it: deterministic, nothing duplicated, nothing
redone after a kill.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import Sampler

from retrieval.serving.shards import ShardError, ShardPlan

log = logging.getLogger(__name__)


class ShardWriter(BasePredictionWriter):
    """Buffers each batch's descriptors by shard and writes a shard when it is complete."""

    def __init__(self, plan: ShardPlan) -> None:
        super().__init__(write_interval="batch")
        self.plan = plan
        self.assigned: list[int] = []  # this rank's shards, in order
        self.pending_total = 0  # images still to embed over all ranks when the run started
        self.run = ""
        self.embedded = 0  # images embedded by all ranks in this run (after finish)
        self._mine = 0
        self._buffers: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # after the processes joined: one listing, broadcast, so all ranks agree on it
        pending = self.plan.prepare() if trainer.global_rank == 0 else []
        pending, self.run = trainer.strategy.broadcast((pending, secrets.token_hex(4)), src=0)
        self.assigned = pending[trainer.global_rank :: trainer.world_size]
        self.pending_total = sum(len(self.plan.rows(i)) for i in pending)
        if trainer.global_rank == 0:
            done = self.plan.n_blocks - len(pending)
            log.info(
                "%d of %d shards already embedded (%s); %d images to embed on %d process(es)",
                done,
                self.plan.n_blocks,
                self.plan.folder,
                self.pending_total,
                trainer.world_size,
            )

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: torch.Tensor,
        batch_indices: object,
        batch: tuple[torch.Tensor, torch.Tensor],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        indices = batch[1].cpu().numpy().astype(np.int64)
        vectors = prediction.float().cpu().numpy()
        mine = np.isin(indices // self.plan.size, self.assigned)  # not ShardBatchSampler's filler
        indices, vectors = indices[mine], vectors[mine]
        self._mine += len(indices)
        for shard in np.unique(indices // self.plan.size).tolist():
            rows = indices // self.plan.size == shard
            parts = self._buffers.setdefault(shard, [])
            parts.append((indices[rows], vectors[rows]))
            if sum(len(i) for i, _ in parts) == len(self.plan.rows(shard)):
                self.plan.write(
                    shard,
                    np.concatenate([i for i, _ in parts]),
                    np.concatenate([v for _, v in parts]),
                    self.run,
                )
                del self._buffers[shard]

    def finish(self, trainer: L.Trainer) -> None:
        """After ``trainer.predict`` on every rank (a rank with no shard skips the predict
        loop and its epoch hooks, so this cannot be one): sum what the ranks embedded, and
        wait until all shards are on disk before rank 0 merges them."""
        if self._buffers:
            raise ShardError(f"shards {sorted(self._buffers)} were embedded only in part")
        total = trainer.strategy.reduce(torch.tensor(float(self._mine)), reduce_op="sum")
        self.embedded = int(total.item())
        trainer.strategy.barrier("shards-written")


class ShardBatchSampler(Sampler[list[int]]):
    """Batches of the images of this rank's shards (``writer.assigned``, read when the
    predict loop starts: the writer's ``setup`` decides them)."""

    def __init__(self, writer: ShardWriter, batch_size: int) -> None:
        self.writer, self.batch_size = writer, batch_size

    def _indices(self) -> Iterator[int]:
        if not self.writer.assigned:
            # Lightning refuses a rank whose loader is empty (fewer shards left than
            # ranks): one image as filler, which the writer drops
            yield 0
        for shard in self.writer.assigned:
            yield from self.writer.plan.rows(shard)

    def __iter__(self) -> Iterator[list[int]]:
        batch: list[int] = []
        for index in self._indices():
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def __len__(self) -> int:
        count = sum(len(self.writer.plan.rows(s)) for s in self.writer.assigned)
        return max(1, -(-count // self.batch_size))
