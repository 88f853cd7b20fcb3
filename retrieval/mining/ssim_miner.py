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
query files when the pass ends, all atomically. A run that is killed, pre-empted or
interrupted therefore loses at most the block in progress; the next run with the same
inputs scores only what is not saved, and logs how much that is.

Scorer: on the CPU the fused Numba kernel (:mod:`.ssim_fused`, threads in this process)
when Numba imports and the kernel compiles, else the NumPy path; the choice is logged.
Processes: the NumPy scorer forks ``num_workers`` processes per block. They die with the
miner (a parent-death signal, or a watchdog where the platform has none), so a SIGKILL
leaves no orphans, and they ignore Ctrl-C, which the miner turns into
:class:`MiningInterrupted`: one line saying what is saved.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
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
    SMALL_POLICIES,
    CropCache,
    CropSpec,
    SmallImageError,
    build_crop_cache,
    fingerprint,
    load_crop,
    name_some,
)
from retrieval.mining.ssim import ssim_many_vs_many
from retrieval.mining.ssim_stats import WIN_SIZE, ImageStats
from retrieval.mining.ssim_store import NegativePool, PoolStore, QuerySpec
from retrieval.mining.ssim_torch import ssim_many_vs_many_torch
from retrieval.utils.errors import UserFacingError

log = logging.getLogger(__name__)

ALGORITHM_VERSION = 1  # bump when scores or selection change: it is part of the cache key
DATA_RANGE = 255.0  # crops are uint8, as the reference's OpenCV images


# -- settings ------------------------------------------------------------------------------

_DEVICE = re.compile(r"auto|cpu|numpy|fused|cuda(:\d+)?|torch:\S+")


def check_settings(
    top_k: object = 500,
    crop_size: object = 500,
    grayscale: object = True,
    small_images: object = "upscale",
    device: object = "auto",
    num_workers: object = 2,
    queries_per_pass: object = 64,
    candidates_per_block: object = 128,
    show_progress: object = True,
) -> None:
    """Raise a :class:`UserFacingError` naming every unusable setting (the ``mining.*`` keys
    of ``configs/mining/ssim.yaml``), before any image is read."""
    problems = []

    def whole(name: str, value: object, minimum: int, meaning: str) -> None:
        if not (type(value) is int and value >= minimum):  # bool is not a count either
            problems.append(f"mining.{name}={value} must be a whole number of at least {minimum} ({meaning})")

    whole("top_k", top_k, 1, "the negatives kept per query; the reference keeps 500")
    if type(crop_size) is int and 0 < crop_size < WIN_SIZE:
        problems.append(
            f"mining.crop_size={crop_size} is smaller than SSIM's {WIN_SIZE}x{WIN_SIZE} window: the "
            f"minimum is {WIN_SIZE} pixels (the reference compares 500x500 centre crops)"
        )
    else:
        whole(
            "crop_size", crop_size, WIN_SIZE, "the side of the centre crop in pixels; the reference's is 500"
        )
    whole("num_workers", num_workers, 0, "worker processes; 0 or 1 score in this process")
    whole("queries_per_pass", queries_per_pass, 1, "queries scored in one pass over the images")
    whole("candidates_per_block", candidates_per_block, 1, "images scored between two saves of progress")
    for name, value in (("grayscale", grayscale), ("show_progress", show_progress)):
        if not isinstance(value, bool):
            problems.append(f"mining.{name}={value} must be true or false")
    if small_images not in SMALL_POLICIES:
        problems.append(f"mining.small_images={small_images} must be one of {', '.join(SMALL_POLICIES)}")
    if not (isinstance(device, str) and _DEVICE.fullmatch(device)):
        problems.append(
            f"mining.device={device} must be auto, cpu (fused kernel, else NumPy), fused, numpy, cuda, "
            "cuda:N or torch:<device>"
        )
    elif device.removeprefix("torch:").startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            problems.append(
                f"mining.device={device} asks for CUDA but none is available: use mining.device=auto or cpu"
            )
    if problems:
        raise UserFacingError(f"SSIM mining settings: {'; '.join(problems)}. Nothing was mined.")


# -- worker processes die with the miner ------------------------------------------------------

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_WATCH_INTERVAL_S = 0.5
_guarded_parent: int | None = None  # while set, a process forked by this one dies with it
_prctl: Callable[..., int] | None = None


def _load_prctl() -> None:
    """Resolve libc's prctl in the parent: a child forked from a threaded process must not
    run the dynamic loader."""
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            _prctl = ctypes.CDLL(None, use_errno=True).prctl


def _parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux)."""
    if _prctl is None:
        return False
    try:
        return _prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(sig), *(ctypes.c_ulong(0),) * 3) == 0
    except Exception:  # noqa: BLE001 -- any failure: the watchdog takes over
        return False


def _watch_parent(parent: int) -> None:
    """The fallback where no parent-death signal exists: exit once the parent is gone (an
    orphan is re-parented, so its parent pid changes)."""
    while os.getppid() == parent:
        time.sleep(_WATCH_INTERVAL_S)
    os._exit(1)


def _die_with_parent() -> None:
    """Run in every forked child (``os.register_at_fork``); acts only while a miner scores."""
    global _guarded_parent
    parent, _guarded_parent = _guarded_parent, None  # the child's own forks are not guarded
    if parent is None:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the miner's: it stops the pool
    if not _parent_death_signal(signal.SIGKILL):
        threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_die_with_parent)


@contextlib.contextmanager
def _workers_die_with_this_process() -> Iterator[None]:
    """Processes forked inside the block get SIGKILL when this one dies (SIGKILL included),
    and ignore Ctrl-C (this process handles it and shuts them down)."""
    global _guarded_parent
    _load_prctl()
    previous, _guarded_parent = _guarded_parent, os.getpid()
    try:
        yield
    finally:
        _guarded_parent = previous


# -- what a run did ----------------------------------------------------------------------------


class MiningInterrupted(KeyboardInterrupt):
    """Ctrl-C while mining; the message says what is saved (entry points print it alone)."""


@dataclass
class MiningReport:
    """What one call of :func:`mine_ssim_negatives` found saved and what it computed."""

    queries: int  # asked for
    saved_before: int  # finished by an earlier run, read back
    candidates: int = 0  # images each query is scored against
    mined: int = 0  # finished and saved by this run
    pairs_scored: int = 0  # (query, image) scores computed by this run
    pairs_resumed: int = 0  # read back from the saved blocks of an unfinished pass
    pass_in_progress: tuple[int, int] | None = None  # (queries, candidates saved) of the open pass

    def summary(self) -> str:
        return (
            f"SSIM mining: mined {self.mined} of {self.queries} queries in this run "
            f"({self.saved_before} saved by an earlier run); {self.pairs_scored} query-image pairs "
            f"scored, {self.pairs_resumed} resumed from saved blocks"
        )

    def interrupted(self) -> str:
        saved = self.saved_before + self.mined
        partial = ""
        if self.pass_in_progress is not None and self.pass_in_progress[1] > 0:
            queries, done = self.pass_in_progress
            partial = f" (and {done} of {self.candidates} images scored for {queries} more)"
        return (
            f"interrupted: {saved} of {self.queries} queries mined are saved{partial}; "
            f"run the same command again to resume"
        )


class _Candidates:
    """Lazy rows of the crop memmap, so a chunk is read only when it is scored."""

    def __init__(self, crops: np.ndarray, rows: np.ndarray) -> None:
        self.crops, self.rows = crops, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, part: slice) -> np.ndarray:
        return np.asarray(self.crops[self.rows[part]])


@dataclass(frozen=True)
class _NumpyScorer:
    """NumPy on ``workers`` forked processes. A pass's queries are turned into window
    statistics once (``prepare``), not once per block: ~3x less work per block for them."""

    workers: int

    def prepare(self, query_crops: np.ndarray, multichannel: bool) -> ImageStats:
        return ImageStats.compute(query_crops, multichannel=multichannel)

    def __call__(self, queries: ImageStats, many, data_range: float, **kw) -> np.ndarray:
        return ssim_many_vs_many(queries, many, data_range, workers=self.workers, **kw)


@dataclass(frozen=True)
class _TorchScorer:
    """Torch on ``device`` (raw crops: the device computes the statistics)."""

    device: str

    def prepare(self, query_crops: np.ndarray, multichannel: bool) -> np.ndarray:
        return query_crops

    def __call__(self, queries: np.ndarray, many, data_range: float, **kw) -> np.ndarray:
        return ssim_many_vs_many_torch(queries, many, data_range, device=self.device, **kw)


@dataclass(frozen=True)
class _FusedScorer:
    """The fused Numba kernel on ``threads`` threads of this process (uint8 crops)."""

    threads: int

    def prepare(self, query_crops: np.ndarray, multichannel: bool):
        from retrieval.mining.ssim_fused import prepare_queries

        return prepare_queries(query_crops, multichannel=multichannel)

    def __call__(self, queries, many, data_range: float, *, multichannel: bool, progress=None) -> np.ndarray:
        from retrieval.mining.ssim_fused import ssim_many_vs_many_fused

        scores = ssim_many_vs_many_fused(queries, many[:], data_range, threads=self.threads)
        if progress is not None:
            progress(scores.shape[1])
        return scores


# (prepared queries, many, data_range, multichannel=, progress=) -> (Q, N) SSIM
Scorer = _NumpyScorer | _TorchScorer | _FusedScorer


@functools.cache
def fused_unavailable() -> str | None:
    """Why the fused kernel cannot run here (Numba missing, or it fails to compile or to
    check out on a tiny pair), or None. Compiled once per machine (Numba's cache)."""
    start = time.perf_counter()
    try:
        from retrieval.mining.ssim_fused import fused_kernel_works

        works = fused_kernel_works()
        if time.perf_counter() - start > 5:  # a compile, not a load from Numba's cache
            log.info(
                "compiled the fused SSIM kernel in %.0f s (cached for later runs)",
                time.perf_counter() - start,
            )
        return None if works else "it gave a wrong score on a test pair"
    except Exception as error:  # noqa: BLE001 -- ImportError, a compile error: fall back, say why
        return f"{type(error).__name__}: {error}"


def _scorer(device: str, num_workers: int) -> Scorer:
    """``"auto"``: torch on CUDA when available, else as ``"cpu"``; ``"cpu"``: the fused
    kernel on ``num_workers`` threads where it runs, else NumPy; ``"fused"`` / ``"numpy"``:
    that path (``"numpy"``: ``num_workers`` forked processes); ``"cuda[:N]"`` or
    ``"torch:<device>"`` (e.g. ``"torch:cpu"``): torch. The choice is logged."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device in ("cpu", "fused"):
        why = fused_unavailable()
        if why is None:
            log.info("SSIM mining on the CPU: fused Numba kernel, %d thread(s)", max(1, num_workers))
            return _FusedScorer(max(1, num_workers))
        if device == "fused":
            raise UserFacingError(
                f"mining.device=fused: the fused SSIM kernel cannot run here ({why}). Install numba "
                "(pip install numba) or use mining.device=cpu, which falls back to NumPy. Nothing was mined."
            )
        log.warning("SSIM mining on the CPU: NumPy path (the fused Numba kernel cannot run here: %s)", why)
        device = "numpy"
    if device == "numpy":
        log.info("SSIM mining on the CPU: NumPy path, %d worker process(es)", max(1, num_workers))
        return _NumpyScorer(num_workers)
    log.info("SSIM mining with torch on %s", device.removeprefix("torch:"))
    return _TorchScorer(device.removeprefix("torch:"))


def _score_block(
    scorer: Scorer,
    queries: ImageStats | np.ndarray,
    candidates: _Candidates,
    multichannel: bool,
    progress: Callable[[int], None],
) -> np.ndarray:
    """SSIM of a pass's queries (``scorer.prepare``-d) against a block of candidates:
    (Q, n_candidates)."""
    with _workers_die_with_this_process():
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
    ``device``: see :func:`_scorer`. ``queries_per_pass`` trades memory for speed
    (candidate statistics are recomputed once per pass); ``candidates_per_block``: how
    many images are scored between two saves of the pass's progress. Settings are
    checked first (:func:`check_settings`); Ctrl-C raises :class:`MiningInterrupted`.
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
        scorer = _scorer(device, num_workers)  # before decoding: a forced path that cannot run fails at once
        cache = build_crop_cache(image_paths, cache_dir, spec, num_workers, show_progress)
        mining = _Pass(cache, image_paths, scorer, store, top_k, candidates_per_block, report)
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
