"""Offline SSIM hard-negative mining: for each query, the top-K most SSIM-similar database
images that are not tied to it, cached per query and resumable.

The measurement is the reference project's (centre crops, grayscale, skimage SSIM with
data_range 255, top 500) without its bug: the reference skipped pairs whose crops
differed in shape and so shifted every later score onto the wrong image. Here every
candidate keeps its own index; images that cannot be scored (unreadable, or small under
``small_images="exclude"``) are masked out by index and reported.

Cache layout: ``cache_dir/crops-<key>.npy`` (see :mod:`.crops`) and
``cache_dir/ssim-<key>/`` with one file per finished query (see :mod:`.ssim_store`).
The key hashes everything that changes the result: image paths, sizes and mtimes, crop
parameters, top_k and :data:`ALGORITHM_VERSION`. Queries are scored in
passes of ``queries_per_pass`` (one pass over the candidates serves all of them, so each
candidate's window statistics are computed once per pass); every query file is written
atomically when its pass ends, so a killed run resumes after the last finished pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from retrieval.mining.crops import (
    CropCache,
    CropSpec,
    SmallImageError,
    build_crop_cache,
    fingerprint,
    load_crop,
)
from retrieval.mining.ssim import ssim_many_vs_many
from retrieval.mining.ssim_store import NegativePool, PoolStore, QuerySpec
from retrieval.mining.ssim_torch import ssim_many_vs_many_torch

log = logging.getLogger(__name__)

ALGORITHM_VERSION = 1  # bump when scores or selection change: it is part of the cache key
DATA_RANGE = 255.0  # crops are uint8, as the reference's OpenCV images


class _Candidates:
    """Lazy rows of the crop memmap, so a chunk is read only when it is scored."""

    def __init__(self, crops: np.ndarray, rows: np.ndarray) -> None:
        self.crops, self.rows = crops, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, part: slice) -> np.ndarray:
        return np.asarray(self.crops[self.rows[part]])


# (queries, many, data_range, multichannel=, progress=) -> (Q, N) SSIM
Scorer = Callable[..., np.ndarray]


def _scorer(device: str, num_workers: int) -> Scorer:
    """``"auto"``: torch on CUDA when available, else NumPy; ``"cpu"``/``"numpy"``: NumPy on
    ``num_workers`` worker processes; ``"cuda[:N]"`` or ``"torch:<device>"`` (e.g.
    ``"torch:cpu"``): torch."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device in ("cpu", "numpy"):
        return lambda *args, **kw: ssim_many_vs_many(*args, workers=num_workers, **kw)
    device = device.removeprefix("torch:")
    return lambda *args, **kw: ssim_many_vs_many_torch(*args, device=device, **kw)


def _score_block(
    scorer: Scorer,
    query_crops: np.ndarray,
    candidates: _Candidates,
    multichannel: bool,
    progress: Callable[[int], None],
) -> np.ndarray:
    """SSIM of a block of query crops against all candidates: (Q, n_candidates)."""
    return scorer(query_crops, candidates, DATA_RANGE, multichannel=multichannel, progress=progress)


def top_negatives(scores: np.ndarray, candidates: np.ndarray, top_k: int) -> NegativePool:
    """The ``top_k`` best ``candidates`` (indices into ``scores``): score descending, ties
    by index."""
    values = scores[candidates]
    order = np.lexsort((candidates, -values))[:top_k]
    return NegativePool(candidates[order].astype(np.int64), values[order].astype(np.float32))


def _query_crop(
    query: QuerySpec, by_path: dict[str, int], cache: CropCache, usable: np.ndarray
) -> np.ndarray | None:
    """The query's crop: its database row when it is a database image, else decoded now."""
    row = by_path.get(str(Path(query.path)))
    if row is not None and usable[row]:
        return np.asarray(cache.crops[row])
    try:
        return load_crop(query.path, cache.spec)[0]
    except SmallImageError:
        log.warning(
            "query %s is smaller than the crop and small images are excluded: no negatives",
            query.name,
        )
    except Exception as error:  # noqa: BLE001 -- unreadable query: report it, mine the others
        log.warning("cannot read query %s (%s: %s): no negatives", query.path, type(error).__name__, error)
    return None


def _progress_bar(show: bool) -> Progress:
    # Refreshed by hand from the main thread: a background refresh thread could hold the
    # stdout lock at the moment the scorer forks its workers.
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not show,
        auto_refresh=False,
    )


@dataclass
class _Pass:
    """What one pass over the candidates needs: crops, candidate rows, scorer, output."""

    cache: CropCache
    image_paths: Sequence[Path]
    scorer: Scorer
    store: PoolStore
    top_k: int

    def __post_init__(self) -> None:
        self.usable = self.cache.usable
        self.rows = np.flatnonzero(self.usable)
        self.by_path = {str(Path(p)): i for i, p in enumerate(self.image_paths)}
        self.stems = [Path(p).stem for p in self.image_paths]

    def run(self, queries: list[QuerySpec], advance: Callable[[float], None]) -> dict[str, NegativePool]:
        """Score ``queries`` against every usable image; save and return their pools."""
        crops = [_query_crop(q, self.by_path, self.cache, self.usable) for q in queries]
        pools = {
            q.name: NegativePool(np.zeros(0, np.int64), np.zeros(0, np.float32))
            for q, crop in zip(queries, crops)
            if crop is None
        }  # reported; not saved: retried
        scored = [q for q, crop in zip(queries, crops) if crop is not None]
        if not scored:
            return pools
        step = len(scored) / max(1, len(self.rows))  # queries finished per image scored
        sims = _score_block(
            self.scorer,
            np.stack([c for c in crops if c is not None]),
            _Candidates(self.cache.crops, self.rows),
            not self.cache.spec.grayscale,
            lambda n: advance(n * step),
        )
        all_scores = np.full(len(self.image_paths), -np.inf)
        for q, row in zip(scored, sims):
            all_scores[self.rows] = row
            keep = self.usable.copy()
            keep[np.asarray(q.exclude, dtype=np.int64)] = False
            pools[q.name] = top_negatives(all_scores, np.flatnonzero(keep), self.top_k)
            self.store.save(q, pools[q.name], self.stems)
        return pools


def mine_ssim_negatives(
    image_paths: Sequence[Path],
    queries: Sequence[QuerySpec],
    cache_dir: Path,
    top_k: int = 500,
    crop_size: int = 500,
    grayscale: bool = True,
    small_images: str = "upscale",
    device: str = "auto",
    num_workers: int = 2,
    queries_per_pass: int = 64,
    show_progress: bool = True,
) -> dict[str, NegativePool]:
    """Top-``top_k`` SSIM negatives per query, keyed by query name (see the module doc).

    Candidates are all database images with a crop, minus the query's ``exclude``.
    ``device``: see :func:`_scorer`. ``queries_per_pass`` trades resume granularity for
    speed (candidate statistics are recomputed once per pass).
    """
    names = [q.name for q in queries]
    if len(set(names)) != len(names):
        raise ValueError("query names must be unique: they name the cache files")
    spec = CropSpec(crop_size, grayscale, small_images)
    cache_dir = Path(cache_dir)
    params = {
        "version": ALGORITHM_VERSION,
        "spec": asdict(spec),
        "top_k": top_k,
        "files": fingerprint(image_paths),
    }
    store = PoolStore(cache_dir, params, data_range=DATA_RANGE, metric="skimage SSIM, 7x7 uniform")
    pools = {q.name: pool for q in queries if (pool := store.load(q)) is not None}
    todo = [q for q in queries if q.name not in pools]
    if todo:
        cache = build_crop_cache(image_paths, cache_dir, spec, num_workers, show_progress)
        mining = _Pass(cache, image_paths, _scorer(device, num_workers), store, top_k)
        with _progress_bar(show_progress) as bar:
            task = bar.add_task("SSIM mining (queries)", total=len(todo))

            def advance(done: float) -> None:
                bar.advance(task, done)
                bar.refresh()

            for block in np.array_split(np.arange(len(todo)), -(-len(todo) // queries_per_pass)):
                pools.update(mining.run([todo[i] for i in block], advance))
                bar.update(task, completed=block[-1] + 1)
                bar.refresh()
    return {q.name: pools[q.name] for q in queries}
