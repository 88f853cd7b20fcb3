"""One pass of SSIM mining: a group of queries scored against every usable image, block by
block, with the scores of finished blocks saved after each block so that a killed run
resumes after the last one; then each query's top-K negatives are ranked and saved
(:mod:`.ssim_store` holds the files)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.mining.crop_spec import SmallImageError, load_crop
from retrieval.mining.crops import CropCache
from retrieval.mining.name_lists import name_some
from retrieval.mining.ssim_report import MiningReport
from retrieval.mining.ssim_scorers import Scorer
from retrieval.mining.ssim_stats import ImageStats
from retrieval.mining.ssim_store import NegativePool, PoolStore, QuerySpec
from retrieval.mining.worker_lifetime import workers_die_with_this_process

log = logging.getLogger(__name__)

DATA_RANGE = 255.0  # crops are uint8, as the reference's OpenCV images


class _Candidates:
    """Lazy rows of the crop memmap, so a chunk is read only when it is scored."""

    def __init__(self, crops: np.ndarray, rows: np.ndarray) -> None:
        self.crops, self.rows = crops, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, part: slice) -> np.ndarray:
        return np.asarray(self.crops[self.rows[part]])


def _score_block(
    scorer: Scorer,
    queries: ImageStats | np.ndarray,
    candidates: _Candidates,
    multichannel: bool,
    progress: Callable[[int], None],
) -> np.ndarray:
    """SSIM of a pass's queries (``scorer.prepare``-d) against a block of candidates:
    (Q, n_candidates)."""
    with workers_die_with_this_process():
        return scorer(queries, candidates, DATA_RANGE, multichannel=multichannel, progress=progress)


def top_negatives(scores: np.ndarray, candidates: np.ndarray, top_k: int) -> NegativePool:
    """The ``top_k`` best ``candidates`` (indices into ``scores``): score descending, ties
    by index."""
    values = scores[candidates]
    order = np.lexsort((candidates, -values))[:top_k]
    return NegativePool(candidates[order].astype(np.int64), values[order].astype(np.float32))


def _query_crop(
    query: QuerySpec, by_path: dict[str, int], cache: CropCache, usable: np.ndarray
) -> np.ndarray | str:
    """The query's crop (its database row when it is a database image, else decoded now),
    or why it has none."""
    row = by_path.get(str(Path(query.path)))
    if row is not None and usable[row]:
        return np.asarray(cache.crops[row])
    try:
        return load_crop(query.path, cache.spec)[0]
    except SmallImageError:
        return f"{query.name} (smaller than the crop; small images are excluded)"
    except Exception as error:  # noqa: BLE001 -- unreadable query: report it, mine the others
        return f"{query.path} ({type(error).__name__}: {error})"


@dataclass
class MiningPass:
    """What one pass over the candidates needs: crops, candidate rows, scorer, output."""

    cache: CropCache
    image_paths: Sequence[Path]
    scorer: Scorer
    store: PoolStore
    top_k: int
    block: int  # candidates scored between two saves
    report: MiningReport

    def __post_init__(self) -> None:
        self.usable = self.cache.usable
        self.rows = np.flatnonzero(self.usable)
        self.by_path = {str(Path(p)): i for i, p in enumerate(self.image_paths)}
        self.stems = [Path(p).stem for p in self.image_paths]
        self.report.candidates = len(self.rows)

    def run(self, queries: list[QuerySpec], advance: Callable[[float], None]) -> dict[str, NegativePool]:
        """Score ``queries`` against every usable image, block by block, resuming after the
        blocks an earlier run saved; save and return their pools."""
        crops = [_query_crop(q, self.by_path, self.cache, self.usable) for q in queries]
        unusable = [crop for crop in crops if isinstance(crop, str)]
        if unusable:
            log.warning(
                "%d query image(s) without a crop get no negatives: %s", len(unusable), name_some(unusable)
            )
        pools = {
            q.name: NegativePool(np.zeros(0, np.int64), np.zeros(0, np.float32))
            for q, crop in zip(queries, crops)
            if isinstance(crop, str)
        }  # reported; not saved: retried
        scored = [q for q, crop in zip(queries, crops) if not isinstance(crop, str)]
        if not scored:
            return pools
        multichannel = not self.cache.spec.grayscale
        prepared = self.scorer.prepare(np.stack([c for c in crops if not isinstance(c, str)]), multichannel)
        step = len(scored) / max(1, len(self.rows))  # queries finished per image scored
        sims = self.store.load_partial(scored, self.rows)
        self.report.pairs_resumed += sims.size
        self.report.pass_in_progress = (len(scored), sims.shape[1])
        advance(sims.shape[1] * step)
        for start in range(sims.shape[1], len(self.rows), self.block):
            part = _score_block(
                self.scorer,
                prepared,
                _Candidates(self.cache.crops, self.rows[start : start + self.block]),
                multichannel,
                lambda n: advance(n * step),
            )
            sims = np.concatenate([sims, part], axis=1)
            self.report.pairs_scored += part.size
            if sims.shape[1] < len(self.rows):  # the last block goes straight into the query files
                self.store.save_partial(scored, self.rows, sims)
                self.report.pass_in_progress = (len(scored), sims.shape[1])
        all_scores = np.full(len(self.image_paths), -np.inf)
        for q, row in zip(scored, sims):
            all_scores[self.rows] = row
            keep = self.usable.copy()
            keep[np.asarray(q.exclude, dtype=np.int64)] = False
            pool = top_negatives(all_scores, np.flatnonzero(keep), self.top_k)
            pools[q.name] = self.store.save(q, pool, self.stems)
        self.report.mined += len(scored)
        self.report.pass_in_progress = None
        self.store.remove_partial(scored, self.rows)
        return pools
