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
candidate's window statistics are computed once per pass: passes of one query would cost
~4x more), and a pass goes over the candidates in blocks of ``candidates_per_block``: the
scores of the finished blocks are saved after each block (a few seconds of work) and the
query files when the pass ends, all atomically (:mod:`.ssim_pass`). A run that is killed,
pre-empted or interrupted therefore loses at most the block in progress; the next run with
the same inputs scores only what is not saved, and logs how much that is.

Scorer (:mod:`.ssim_scorers`): on the CPU the fused Numba kernel (:mod:`.ssim_fused`,
threads in this process) when Numba imports and the kernel compiles, else the NumPy path;
the choice is logged. Processes: the NumPy scorer forks ``num_workers`` processes per
block. They die with the miner (a parent-death signal, or a watchdog where the platform
has none: :mod:`.worker_lifetime`), so a SIGKILL leaves no orphans, and they ignore
Ctrl-C, which the miner turns into :class:`~.ssim_report.MiningInterrupted`: one line
saying what is saved. Settings are checked first (:mod:`.ssim_settings`).

This module owns the public entry, :func:`mine_ssim_negatives`: the cache key, what is
already mined, the passes and their progress bar.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
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

from retrieval.mining.cache_keys import fingerprint
from retrieval.mining.crop_spec import CropSpec
from retrieval.mining.crops import build_crop_cache
from retrieval.mining.ssim_pass import DATA_RANGE, MiningPass
from retrieval.mining.ssim_report import MiningInterrupted, MiningReport
from retrieval.mining.ssim_scorers import choose_scorer
from retrieval.mining.ssim_settings import check_settings
from retrieval.mining.ssim_store import NegativePool, PoolStore, QuerySpec

log = logging.getLogger(__name__)

ALGORITHM_VERSION = 1  # bump when scores or selection change: it is part of the cache key


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
    candidates_per_block: int = 128,
    show_progress: bool = True,
) -> dict[str, NegativePool]:
    """Top-``top_k`` SSIM negatives per query, keyed by query name (see the module doc).

    Candidates are all database images with a crop, minus the query's ``exclude``.
    ``device``: see :func:`.ssim_scorers.choose_scorer`. ``queries_per_pass`` trades
    memory for speed (candidate statistics are recomputed once per pass);
    ``candidates_per_block``: how many images are scored between two saves of the pass's
    progress. Settings are checked first (:func:`.ssim_settings.check_settings`); Ctrl-C
    raises :class:`~.ssim_report.MiningInterrupted`.
    """
    check_settings(
        top_k,
        crop_size,
        grayscale,
        small_images,
        device,
        num_workers,
        queries_per_pass,
        candidates_per_block,
        show_progress,
    )
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
    pools = store.load_all(queries)
    todo = [q for q in queries if q.name not in pools]
    report = MiningReport(len(queries), len(pools))
    if not todo:
        log.info("SSIM mining: all %d queries already mined (%s)", len(queries), store.run_dir)
        return {q.name: pools[q.name] for q in queries}
    if pools:
        log.info(
            "SSIM mining: %d of %d queries already mined (saved by an earlier run), %d to mine",
            len(pools),
            len(queries),
            len(todo),
        )
    interrupted = False
    try:
        # before decoding: a forced path that cannot run fails at once
        scorer = choose_scorer(device, num_workers)
        cache = build_crop_cache(image_paths, cache_dir, spec, num_workers, show_progress)
        mining = MiningPass(cache, image_paths, scorer, store, top_k, candidates_per_block, report)
        with _progress_bar(show_progress) as bar:
            task = bar.add_task("SSIM mining (queries)", total=len(todo))

            def advance(done: float) -> None:
                bar.advance(task, done)
                bar.refresh()

            for block in np.array_split(np.arange(len(todo)), -(-len(todo) // queries_per_pass)):
                pools.update(mining.run([todo[i] for i in block], advance))
                bar.update(task, completed=block[-1] + 1)
                bar.refresh()
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:  # raised here, outside the handler: the frames that hold the worker pool are gone
        raise MiningInterrupted(report.interrupted())
    store.remove_partials()  # of passes whose queries a killed run had saved already
    log.info(report.summary())
    return {q.name: pools[q.name] for q in queries}
