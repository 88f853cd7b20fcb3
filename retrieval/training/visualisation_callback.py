"""Per validation run: a retrieval grid, a per-query AP table and an embedding map.

Reads the :class:`RetrievalEvaluation` callback's ``last_result``, so it must come after
that callback in the trainer's list (configs/callbacks/default.yaml keeps that order).
PNGs go to ``dirpath``; images and the table are also logged to every W&B logger of the
trainer (other loggers are left alone).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from retrieval.data import truth as rel
from retrieval.evaluation.protocols import EvaluationResult
from retrieval.tracking.embedding_plot import METHODS, plot_embeddings
from retrieval.tracking.retrieval_grid import pick_queries, save_retrieval_grid
from retrieval.training.evaluation_callback import RetrievalEvaluation

log = logging.getLogger(__name__)


class RetrievalVisualisation(L.Callback):
    def __init__(
        self,
        dirpath: str = "plots",
        n_queries: int = 4,
        top_k: int = 8,
        thumbnail_size: int = 96,
        per_query_table: bool = True,
        embedding_method: str | None = "tsne",
        embedding_every_n: int = 1,
        embedding_max_points: int | None = 2000,
        seed: int = 0,
    ) -> None:
        """``embedding_every_n``: plot the embeddings on every n-th validation run (the
        untrained baseline counts as one); 0 or ``embedding_method=null`` never."""
        if embedding_method is not None and embedding_method not in METHODS:
            raise ValueError(f"embedding_method must be one of {METHODS} or null")
        self.dirpath = Path(dirpath)
        self.n_queries, self.top_k, self.thumbnail_size = n_queries, top_k, thumbnail_size
        self.per_query_table = per_query_table
        self.embedding_method, self.embedding_every_n = embedding_method, embedding_every_n
        self.embedding_max_points, self.seed = embedding_max_points, seed
        self._seen: EvaluationResult | None = None
        self._runs = 0  # validation runs drawn so far

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        order = [c for c in trainer.callbacks if isinstance(c, (RetrievalEvaluation, RetrievalVisualisation))]
        if order and order[0] is self and len(order) > 1:
            log.warning(
                "RetrievalVisualisation is listed before RetrievalEvaluation: it would draw "
                "the previous validation's result; list it after retrieval_evaluation"
            )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        evaluator = next((c for c in trainer.callbacks if isinstance(c, RetrievalEvaluation)), None)
        if trainer.sanity_checking or evaluator is None or not trainer.is_global_zero:
            return
        result = evaluator.last_result
        if result is None or result is self._seen:  # skipped epoch (partial validation)
            return
        self._seen = result
        try:
            self._draw_and_log(trainer, evaluator, result)
        except Exception as error:  # a plot must never end a long training run
            log.warning("retrieval plots skipped: %s: %s", type(error).__name__, error)
        self._runs += 1

    def _draw_and_log(
        self, trainer: L.Trainer, evaluator: RetrievalEvaluation, result: EvaluationResult
    ) -> None:
        gt = trainer.datamodule.eval_gt
        stage = trainer.state.fn.value if trainer.state.fn else "val"  # fit / validate
        tag = f"{self._runs:03d}_{stage}_epoch{trainer.current_epoch:03d}"
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        prefix, step = evaluator.prefix, trainer.global_step
        grid = self._grid(result, gt, tag)
        if grid is not None:
            for lg in loggers:
                lg.log_image(f"{prefix}/retrieval_grid", [str(grid)], step=step, caption=[tag])
        if self.per_query_table and loggers:
            columns, rows = per_query_rows(result, gt)
            for lg in loggers:
                lg.log_table(f"{prefix}/per_query_ap", columns=columns, data=rows, step=step)
        if self._embedding_due():
            png = plot_embeddings(
                result,
                gt,
                self.dirpath / f"embeddings_{tag}.png",
                self.embedding_method,
                self.embedding_max_points,
                self.seed,
            )
            if png is not None:
                for lg in loggers:
                    lg.log_image(f"{prefix}/embeddings", [str(png)], step=step, caption=[tag])

    def _embedding_due(self) -> bool:
        return (
            bool(self.embedding_method)
            and self.embedding_every_n > 0
            and self._runs % self.embedding_every_n == 0
        )

    def _grid(self, result: EvaluationResult, gt, tag: str) -> Path | None:
        return save_retrieval_grid(
            result,
            gt,
            self.dirpath / f"retrieval_grid_{tag}.png",
            self.n_queries,
            self.top_k,
            self.thumbnail_size,
            title=f"{getattr(gt, 'name', '')} · {tag} · top {self.top_k}",
        )


def per_query_rows(result: EvaluationResult, gt, max_rows: int = 1000) -> tuple[list[str], list[list]]:
    """Columns and rows of the per-query AP table (AP in %, None where a query has no
    positives); a leave-one-out gallery of thousands of queries is sampled evenly."""
    setups = list(result.per_query_ap)
    groups, paths = rel.query_groups(gt), rel.database_paths(gt)
    columns = ["query", "group", *[f"AP {s}" for s in setups], "top-1", "top-1 label"]
    rows = []
    for q in pick_queries(len(result.rankings), max_rows):  # all of a landmark set's queries
        top1 = int(result.rankings[q, 0])
        labels = rel.relevance(gt, q, [top1])
        aps = [float(result.per_query_ap[s][q]) for s in setups]
        rows.append(
            [
                rel.query_name(gt, q),
                groups[q] if groups else "",
                *[None if math.isnan(a) else round(100 * a, 2) for a in aps],
                paths[top1].stem,
                labels[0] if labels else "",
            ]
        )
    return columns, rows
