"""Lightning callback turning validation embeddings into retrieval metrics.

The module's ``validation_step`` returns ``{"embeddings", "indices"}`` for the query loader
and the database loader; this callback collects them, gathers them across processes,
drops the duplicates that a DistributedSampler pads with, restores dataset order, ranks
the database for every query by cosine similarity and logs the protocol's metrics.
Class-labelled sets (leave-one-out) have one loader, the gallery: it is both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch

from retrieval.data.class_ground_truth import ClassGroundTruth
from retrieval.datamodules.landmark_datamodule import VAL_DATABASE, VAL_QUERIES
from retrieval.evaluation.protocols import EvaluationResult, evaluate_embeddings

log = logging.getLogger(__name__)


@dataclass
class _Collected:
    embeddings: list[torch.Tensor] = field(default_factory=list)
    indices: list[torch.Tensor] = field(default_factory=list)

    def add(self, output: dict) -> None:
        self.embeddings.append(output["embeddings"].detach())
        self.indices.append(output["indices"].detach())

    def ordered(self, module: L.LightningModule, size: int) -> np.ndarray | None:
        """All ``size`` embeddings in dataset order, or None if some were never embedded
        (``limit_val_batches`` / ``fast_dev_run`` runs see only part of the data)."""
        if not self.embeddings:
            return None
        embeddings, indices = torch.cat(self.embeddings), torch.cat(self.indices)
        if module.trainer.world_size > 1:
            embeddings = module.all_gather(embeddings).flatten(0, 1)
            indices = module.all_gather(indices).flatten(0, 1)
        out = torch.empty(size, embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device)
        out[indices] = embeddings  # padded duplicates write the same row twice: harmless
        seen = torch.zeros(size, dtype=torch.bool, device=indices.device)
        seen[indices] = True
        if not bool(seen.all()):
            return None
        return out.cpu().numpy()


class RetrievalEvaluation(L.Callback):
    """Logs ``<prefix>/mAP`` and friends at the end of every validation epoch."""

    def __init__(self, ks: tuple[int, ...] = (1, 5, 10), prefix: str = "val") -> None:
        self.ks, self.prefix = tuple(ks), prefix
        self.last_result: EvaluationResult | None = None
        self._reset()

    def _reset(self) -> None:
        self._queries, self._database = _Collected(), _Collected()

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx: int = 0
    ) -> None:
        if dataloader_idx == VAL_QUERIES:
            self._queries.add(outputs)
        elif dataloader_idx == VAL_DATABASE:
            self._database.add(outputs)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        gt = getattr(trainer.datamodule, "eval_gt", None)
        # leave-one-out: the gallery (loader 0) is the queries and the database
        gallery_only = isinstance(gt, ClassGroundTruth)
        if trainer.sanity_checking or not (self._queries if gallery_only else self._database).embeddings:
            return
        queries = self._queries.ordered(pl_module, len(gt.queries))
        database = queries if gallery_only else self._database.ordered(pl_module, len(gt.image_names))
        if queries is None or database is None:
            log.warning(
                "retrieval metrics skipped: validation saw only part of the queries or "
                "database (limit_val_batches / fast_dev_run)"
            )
            return
        self.last_result = evaluate_embeddings(queries, database, gt, self.ks)
        for name, value in self.last_result.metrics.items():
            # every process computed the same numbers from the same gathered embeddings
            pl_module.log(f"{self.prefix}/{name}", float(value), add_dataloader_idx=False)
        self._reset()

    # test runs use the same machinery
    on_test_epoch_start = on_validation_epoch_start

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self.on_validation_epoch_end(trainer, pl_module)
