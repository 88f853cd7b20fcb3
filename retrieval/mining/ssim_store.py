"""The resumable on-disk store of SSIM mining results (see :mod:`retrieval.mining.ssim_miner`).

``cache_dir/ssim-<key>/`` holds ``index.json`` (the parameters the key hashes), one
``<query>.json`` per finished query -- names, indices and scores of its negatives, most
similar first, plus a tag hashing the query's path and excluded set, so a query file is
recomputed when either changes -- and, while a pass of queries is being scored, that
pass's ``partial-<key>.npy``: the scores of the candidates finished so far, (queries,
candidates done) float64, rewritten after every block of candidates and deleted once the
pass's query files are written. Every file is written atomically
(:func:`retrieval.utils.atomic.write_atomic`): a killed run leaves finished queries and
finished blocks only, and the temporaries it leaves are deleted when the next run opens
the store. A file that is damaged anyway (does not parse, or does not fit the images) is
reported once, naming it, and its work is done again.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.mining.cache_keys import digest
from retrieval.mining.name_lists import name_some
from retrieval.mining.stale_temporaries import remove_stale_temporaries, report_removed
from retrieval.utils.atomic import atomic_file, write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuerySpec:
    """A query image and the database indices that must never be its negatives."""

    name: str
    path: Path
    exclude: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass(frozen=True)
class NegativePool:
    """Negatives of one query: indices into the image list, most SSIM-similar first."""

    indices: np.ndarray  # int64
    scores: np.ndarray  # float32


def _write_json(path: Path, payload: dict) -> None:
    write_atomic(path, json.dumps(payload, indent=1))


def _query_tag(query: QuerySpec) -> str:
    return digest({"path": str(query.path), "exclude": sorted(int(i) for i in query.exclude)})


class DamagedFile(ValueError):
    """A store file that exists but cannot be this store's result."""


def _pool_of(data: object, query: QuerySpec, n_images: int, top_k: int) -> NegativePool | None:
    """The pool a parsed query file holds; None when it belongs to another query (or an
    older version of it); :class:`DamagedFile` when it cannot be a pool at all."""
    if not isinstance(data, dict):
        raise DamagedFile("not a JSON object")
    if data.get("query") != query.name or data.get("tag") != _query_tag(query):
        return None
    indices, scores = data.get("indices"), data.get("scores")
    if not (isinstance(indices, list) and isinstance(scores, list) and len(indices) == len(scores)):
        raise DamagedFile("indices and scores are not two lists of one length")
    if len(indices) > top_k:
        raise DamagedFile(f"{len(indices)} negatives, more than top_k={top_k}")
    if not all(type(i) is int and 0 <= i < n_images for i in indices):
        raise DamagedFile(f"indices outside the {n_images} images")
    if not all(isinstance(s, (int, float)) and math.isfinite(s) for s in scores):
        raise DamagedFile("scores are not finite numbers")
    return NegativePool(np.asarray(indices, dtype=np.int64), np.asarray(scores, dtype=np.float32))


class PoolStore:
    """The folder of one set of mining parameters: ``cache_dir/ssim-<digest of params>``."""

    def __init__(self, cache_dir: Path, params: dict, **description) -> None:
        """Create the folder, delete the temporaries killed runs left in it and in
        ``cache_dir`` (crop caches) and (re)write its ``index.json``: ``params`` (their
        ``"files"`` fingerprint summarised) plus ``description``."""
        key = digest(params)
        self.run_dir = Path(cache_dir) / f"ssim-{key[:24]}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        report_removed(remove_stale_temporaries(Path(cache_dir)) + remove_stale_temporaries(self.run_dir))
        self.n_images, self.top_k = len(params["files"]), int(params["top_k"])
        _write_json(
            self.run_dir / "index.json",
            {
                **params,
                "files": len(params["files"]),
                "key": key,
                "files_sha256": digest({"files": params["files"]}),
                **description,
            },
        )

    def _file(self, name: str) -> Path:
        return self.run_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.json"

    def _read(self, query: QuerySpec) -> NegativePool | None:
        """The stored pool of ``query``; None when missing or stored for another query;
        :class:`DamagedFile` naming what is wrong."""
        path = self._file(query.name)
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
            raise DamagedFile(f"does not parse ({type(error).__name__}: {error})") from None
        return _pool_of(data, query, self.n_images, self.top_k)

    def load(self, query: QuerySpec) -> NegativePool | None:
        """The stored pool of ``query``, or None when missing, stored for another query or
        damaged (a warning names the file; the query is then mined again)."""
        return self.load_all([query]).get(query.name)

    def load_all(self, queries: Sequence[QuerySpec]) -> dict[str, NegativePool]:
        """The stored pools of ``queries`` that are there and sound, by name; damaged files
        are named in one warning and mined again."""
        pools: dict[str, NegativePool] = {}
        damaged: list[str] = []
        for query in queries:
            try:
                pool = self._read(query)
            except DamagedFile as error:
                damaged.append(f"{self._file(query.name)} ({error})")
                continue
            if pool is not None:
                pools[query.name] = pool
        if damaged:
            log.warning(
                "%d damaged SSIM result file(s) ignored, those queries are mined again: %s",
                len(damaged),
                name_some(damaged),
            )
        return pools

    def save(self, query: QuerySpec, pool: NegativePool, names: list[str]) -> NegativePool:
        """Write the pool of ``query``; returns it as stored (scores rounded to 7 decimals),
        so a fresh run and one that reads the store return the same pools."""
        scores = [round(float(s), 7) for s in pool.scores]
        _write_json(
            self._file(query.name),
            {
                "query": query.name,
                "query_path": str(query.path),
                "tag": _query_tag(query),
                "names": [names[i] for i in pool.indices],
                "indices": pool.indices.tolist(),
                "scores": scores,
            },
        )
        return NegativePool(pool.indices, np.asarray(scores, dtype=np.float32))

    # -- the scores of a pass in progress -------------------------------------------------

    def _partial_file(self, queries: Sequence[QuerySpec], rows: np.ndarray) -> Path:
        key = digest(
            {
                "queries": [[q.name, _query_tag(q)] for q in queries],
                "rows": digest({"rows": np.asarray(rows).tolist()}),
            }
        )
        return self.run_dir / f"partial-{key[:24]}.npy"

    def load_partial(self, queries: Sequence[QuerySpec], rows: np.ndarray) -> np.ndarray:
        """The saved scores of ``queries`` against the first candidates of ``rows``:
        (len(queries), done) float64; done is 0 when nothing was saved or the file is
        damaged (a warning names it)."""
        path = self._partial_file(queries, rows)
        empty = np.zeros((len(queries), 0))
        if not path.exists():
            return empty
        try:
            scores = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            reason = f"does not load ({type(error).__name__}: {error})"
        else:
            if (
                scores.dtype == np.float64
                and scores.ndim == 2
                and scores.shape[0] == len(queries)
                and scores.shape[1] <= len(rows)
                and np.isfinite(scores).all()
            ):
                return scores
            reason = f"holds {scores.dtype}{list(scores.shape)}, not float64[{len(queries)}, <={len(rows)}]"
        log.warning("damaged SSIM progress file %s ignored (%s): that pass is scored again", path, reason)
        path.unlink(missing_ok=True)
        return empty

    def save_partial(self, queries: Sequence[QuerySpec], rows: np.ndarray, scores: np.ndarray) -> None:
        """Save the scores of ``queries`` against the first ``scores.shape[1]`` candidates."""
        with atomic_file(self._partial_file(queries, rows)) as staged:
            np.save(staged, np.ascontiguousarray(scores, dtype=np.float64))

    def remove_partial(self, queries: Sequence[QuerySpec], rows: np.ndarray) -> None:
        """Delete the progress file of a pass whose query files are written."""
        self._partial_file(queries, rows).unlink(missing_ok=True)

    def partial_files(self) -> list[Path]:
        return sorted(self.run_dir.glob("partial-*.npy"))

    def remove_partials(self) -> None:
        """Delete the progress files of passes (all finished once every query is saved)."""
        for path in self.partial_files():
            path.unlink(missing_ok=True)
