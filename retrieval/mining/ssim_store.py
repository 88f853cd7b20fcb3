"""The resumable on-disk store of SSIM mining results (see :mod:`retrieval.mining.ssim_miner`).

``cache_dir/ssim-<key>/`` holds ``index.json`` (the parameters the key hashes) and one
``<query>.json`` per finished query: names, indices and scores of its negatives, most
similar first, plus a tag hashing the query's path and excluded set, so a query file is
recomputed when either changes. Every file is written atomically
(:func:`retrieval.utils.atomic.write_atomic`): a killed run leaves finished queries only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.mining.crops import digest
from retrieval.utils.atomic import write_atomic


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


class PoolStore:
    """The folder of one set of mining parameters: ``cache_dir/ssim-<digest of params>``."""

    def __init__(self, cache_dir: Path, params: dict, **description) -> None:
        """Create the folder and (re)write its ``index.json``: ``params`` (their
        ``"files"`` fingerprint summarised) plus ``description``."""
        key = digest(params)
        self.run_dir = Path(cache_dir) / f"ssim-{key[:24]}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
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

    def load(self, query: QuerySpec) -> NegativePool | None:
        """The stored pool of ``query``, or None when missing or stored for another query."""
        path = self._file(query.name)
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        if data.get("query") != query.name or data.get("tag") != _query_tag(query):
            return None
        return NegativePool(
            np.asarray(data["indices"], dtype=np.int64), np.asarray(data["scores"], dtype=np.float32)
        )

    def save(self, query: QuerySpec, pool: NegativePool, names: list[str]) -> None:
        _write_json(
            self._file(query.name),
            {
                "query": query.name,
                "query_path": str(query.path),
                "tag": _query_tag(query),
                "names": [names[i] for i in pool.indices],
                "indices": pool.indices.tolist(),
                "scores": [round(float(s), 7) for s in pool.scores],
            },
        )
