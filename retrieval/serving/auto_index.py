"""``search=auto``: a faiss index chosen for a memory budget, tuned to a recall target, kept on disk.

1. :func:`~retrieval.serving.index_choice.plan_index` picks exact / HNSW / IVF-Flat / IVF-PQ
   and its parameters from ``n``, ``d`` and ``memory_budget``;
2. the index is trained on a seeded sample of the vectors and filled;
3. ``nprobe`` (IVF) or ``efSearch`` (HNSW) is raised, doubling then bisecting, until the
   recall@k of ``tune_queries`` held-out database rows (rows outside the training sample;
   each query's own row left out of both lists) against exact search reaches
   ``target_recall`` on its lower confidence bound (:func:`recall_lower_bound`), so that
   fresh queries, not only the tuning rows, reach the target;
4. the index and what was chosen are written beside the database
   (``index/auto-<fingerprint>.faiss`` + ``.json``, atomically), and a later start with the
   same vectors and settings reads them back memory-mapped (``IO_FLAG_MMAP``: IVF lists and
   flat storage stay in the page cache, not in the process) instead of training again.

IVF-PQ candidates are re-scored on the exact vectors (the array the index was built from,
a memory map of ``embeddings.npy`` where the database gives one). faiss' own
``IndexRefineFlat`` would keep a second full copy of the vectors inside the index, in memory,
which is what a memory budget rules out; so the re-ranking is written here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from retrieval.serving.index_choice import parse_bytes, plan_index
from retrieval.serving.search import IndexSource, _faiss, top_k
from retrieval.utils.atomic import atomic_file, write_atomic

log = logging.getLogger(__name__)

_BLOCK = 1 << 16  # rows per block when hashing or scanning (bounded temporaries)
_SCORE_BLOCK = 1 << 26  # float32 scores per block of an exact scan: 256 MB
_TRAIN_POINTS_PER_CELL = 50
_MAX_PARAM = {"nprobe": 1 << 16, "efSearch": 4096}
# one-sided 95% normal quantile: the tuned recall is the target's at 95% confidence
_Z = 1.645
# doubling nprobe gained less than this: the codes, not the visited cells, cap the recall
_PLATEAU = 0.002


def fingerprint(vectors: np.ndarray) -> str:
    """blake2b of the vectors' bytes and shape: a stored index belongs to exactly these."""
    digest = hashlib.blake2b(str(vectors.shape).encode(), digest_size=16)
    for start in range(0, len(vectors), _BLOCK):
        digest.update(np.ascontiguousarray(vectors[start : start + _BLOCK]).tobytes())
    return digest.hexdigest()


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / k for a, b in zip(found, truth)]))


def recall_lower_bound(recall: float, trials: int, z: float = _Z) -> float:
    """Wilson score lower bound of a recall measured as hits over ``trials`` (queries x k).

    A recall@k measured on a few hundred queries is itself an estimate: tuned until the
    measured value reaches the target, the index meets it on about half of all query sets
    (1M x 256-d: 0.95 on the tuning rows, 0.947 on fresh queries). Requiring the bound to
    reach the target makes the target hold at ~95% confidence instead. Wilson's interval
    stays inside [0, 1] and is sound near recall 1, where the normal one is not. The k
    slots of one query are positively correlated (a query in a hard region misses several),
    so the effective number of trials is below queries x k and the bound is somewhat
    optimistic: more tuning queries, not a smaller z, is the remedy."""
    if trials <= 0:
        return 0.0
    centre = recall + z * z / (2 * trials)
    spread = z * np.sqrt(recall * (1 - recall) / trials + z * z / (4 * trials * trials))
    return float((centre - spread) / (1 + z * z / trials))


class AutoIndex:
    def __init__(
        self,
        vectors: np.ndarray,
        source: IndexSource | None = None,
        memory_budget: int | str = "4GB",
        target_recall: float = 0.95,
        k: int = 10,
        tune_queries: int = 1024,
        index_path: str | None = None,
        exact_below: int = 10_000,
        hnsw_max_n: int = 250_000,
        max_nlist: int = 8192,
        refine: int = 10,
        seed: int = 0,
    ) -> None:
        if not 0 < target_recall <= 1:
            raise ValueError(f"search.target_recall must be in (0, 1], got {target_recall}")
        self.vectors, self.faiss = vectors, _faiss()
        self.budget = parse_bytes(memory_budget)
        n, d = vectors.shape
        self.plan = plan_index(n, d, self.budget, exact_below, hnsw_max_n, max_nlist, refine)
        settings = {"budget": self.budget, "target_recall": target_recall, "k": k, "plan": vars(self.plan)}
        self.settings = {**settings, "tune_queries": tune_queries, "seed": seed}
        self.index = None
        self.param: dict[str, int] = {}
        self.recall: float | None = None
        self.recall_low: float | None = None
        self._train_rows = np.zeros(0, np.int64)
        if self.plan.kind == "exact":
            log.info("search=auto: %d vectors, exact search", n)
            return
        path = self._path(index_path, source, vectors)
        if path is not None and self._load(path):
            return
        start = time.perf_counter()
        self.index = self._build(seed)
        self.build_s = time.perf_counter() - start
        self._tune(target_recall, k, tune_queries, seed)
        if path is not None:
            self._store(path)
        log.info(
            "search=auto: %s, %s -> recall@%d %.3f (>= %.3f at 95%%; target %.2f), built in %.0f s",
            self.plan.describe(), self.param, k, self.recall, self.recall_low, target_recall, self.build_s,
        )  # fmt: skip

    # ------------------------------------------------------------------ build and tune
    def _build(self, seed: int):
        faiss, vectors, plan = self.faiss, self.vectors, self.plan
        index = faiss.index_factory(vectors.shape[1], plan.factory, faiss.METRIC_INNER_PRODUCT)
        if plan.kind == "hnsw":
            index.hnsw.efConstruction = 80
        else:
            faiss.extract_index_ivf(index).cp.seed = seed
            size = min(len(vectors), max(_TRAIN_POINTS_PER_CELL * plan.nlist, 256 * 40))
            sample = np.sort(np.random.default_rng(seed).choice(len(vectors), size, replace=False))
            index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
            self._train_rows = sample  # the tuning queries avoid these (held out)
        for start in range(0, len(vectors), 16 * _BLOCK):  # blocks: a memory map stays on disk
            index.add(np.ascontiguousarray(vectors[start : start + 16 * _BLOCK], dtype=np.float32))
        return index

    def _set(self, name: str, value: int) -> None:
        if name == "nprobe":
            self.faiss.extract_index_ivf(self.index).nprobe = value
        elif name == "efSearch":
            self.index.hnsw.efSearch = value
        self.param[name] = value  # refine: read by search()

    def _tune(self, target: float, k: int, n_queries: int, seed: int) -> None:
        """Smallest nprobe / efSearch whose recall@k reaches ``target`` on its lower confidence
        bound (monotone enough in practice for doubling then bisection); the largest tried if
        none does. IVF-PQ whose codes cap the recall below the target (doubling nprobe no
        longer gains) re-ranks more candidates (``refine`` x 2, 5, 10, 20) before giving up."""
        rows = self._tune_rows(n_queries, seed)
        queries = np.ascontiguousarray(self.vectors[rows], dtype=np.float32)
        truth = _without_self(exact_top_k(self.vectors, queries, k + 1), rows, k)
        name = "efSearch" if self.plan.kind == "hnsw" else "nprobe"
        limit = self.plan.nlist if name == "nprobe" else _MAX_PARAM[name]
        found: dict[int, float] = {}  # measured recall; ``measured`` holds its lower bound

        def recall(value: int) -> float:
            self._set(name, value)
            found[value] = recall_at_k(_without_self(self.search(queries, k, extra=1)[1], rows, k), truth)
            bound = recall_lower_bound(found[value], len(rows) * k)
            log.debug("search=auto: %s -> recall@%d %.4f (>= %.4f)", self.param, k, found[value], bound)
            return bound

        for factor in (1, 2, 5, 10, 20) if self.plan.refine else (1,):
            if self.plan.refine:
                self._set("refine", factor * self.plan.refine)
            # HNSW searches with efSearch >= k anyway: start there
            low, value = (0, 1) if name == "nprobe" else (k, 2 * k)
            measured = {value: recall(value)}
            while measured[value] < target and value < limit:
                low, value = value, min(2 * value, limit)
                measured[value] = recall(value)
                if self.plan.refine and measured[value] - measured[low] < _PLATEAU:
                    break  # more cells bring nothing the codes can tell apart: re-rank more
            if measured[value] >= target:
                break
        high = value
        while measured[high] >= target and high - low > 1:
            mid = (low + high) // 2
            measured[mid] = recall(mid)
            low, high = (mid, high) if measured[mid] < target else (low, mid)
        self._set(name, high)
        self.recall, self.recall_low = found[high], measured[high]
        if self.recall_low < target:
            log.warning(
                "search=auto: recall@%d %.3f (>= %.3f at 95%%) < target %.2f even at %s; "
                "raise search.memory_budget",
                k, self.recall, self.recall_low, target, self.param,
            )  # fmt: skip

    def _tune_rows(self, n_queries: int, seed: int) -> np.ndarray:
        """Database rows to tune on, outside the training sample where there are enough: rows
        the quantisers were trained on are easier queries than fresh ones."""
        n = len(self.vectors)
        held_out = np.setdiff1d(np.arange(n), self._train_rows, assume_unique=True)
        pool = held_out if len(held_out) >= min(n_queries, n) else np.arange(n)
        rng = np.random.default_rng(seed + 1)
        return np.sort(rng.choice(pool, min(n_queries, len(pool)), replace=False))

    # ------------------------------------------------------------------ on disk
    def _path(self, index_path: str | None, source: IndexSource | None, vectors: np.ndarray) -> Path | None:
        if index_path is None and (source is None or source.directory is None):
            return None  # vectors of no database and no index_path: kept in memory only
        self.settings["fingerprint"] = fingerprint(vectors)
        if index_path is not None:
            return Path(index_path).expanduser()
        # one file per vectors x settings: another budget or target does not overwrite it
        key = hashlib.blake2b(json.dumps(self.settings, sort_keys=True).encode(), digest_size=8).hexdigest()
        return Path(source.directory) / "index" / f"auto-{key}.faiss"

    def _load(self, path: Path) -> bool:
        sidecar = path.with_suffix(".json")
        if not (path.is_file() and sidecar.is_file()):
            return False
        try:
            stored = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if stored.get("settings") != json.loads(json.dumps(self.settings)):
            log.info("search=auto: %s was built for other vectors or settings; rebuilding", path.name)
            return False
        # IVF: the inverted lists are mapped (OnDiskInvertedLists); HNSW: its flat storage
        # (IndexFlatCodes). One flag or the other: MMAP_IFC maps the whole file, and faiss
        # then refuses to map the lists again from a mapped reader
        mmap = self.faiss.IO_FLAG_MMAP_IFC if self.plan.kind == "hnsw" else self.faiss.IO_FLAG_MMAP
        flags = mmap | self.faiss.IO_FLAG_READ_ONLY
        self.index = self.faiss.read_index(str(path), flags)
        for name, value in stored["param"].items():
            self._set(name, value)
        self.recall, self.recall_low, self.build_s = stored["recall"], stored.get("recall_low"), 0.0
        log.info("search=auto: %s memory-mapped from %s (%s)", self.plan.describe(), path, self.param)
        return True

    def _store(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as staged:
            self.faiss.write_index(self.index, str(staged))
        record = {
            "settings": self.settings,
            "param": self.param,
            "recall": self.recall,
            "recall_low": self.recall_low,
        }
        write_atomic(path.with_suffix(".json"), json.dumps(record, indent=1))  # last: marks it complete
        self.stored_path = path

    @property
    def bytes_per_vector(self) -> float:
        """In-memory size of the index (its serialised size) per vector."""
        if self.index is None:
            return float(self.vectors.itemsize * self.vectors.shape[1])
        return len(self.faiss.serialize_index(self.index)) / len(self.vectors)

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int, extra: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k + extra``, from the candidates a top-``k`` search re-ranks (+ ``extra``):
        tuning asks for one extra (the query's own row, dropped), and must not re-rank
        ``refine`` more candidates than a real query gets, which made its recall optimistic."""
        if self.index is None:
            return self.faiss.knn(queries, self.vectors, k + extra, metric=self.faiss.METRIC_INNER_PRODUCT)
        if self.plan.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.param["efSearch"], k + extra)
        if not self.plan.refine:
            return self.index.search(queries, k + extra)
        _, candidates = self.index.search(queries, min(k * self.param["refine"] + extra, len(self.vectors)))
        return self._rerank(queries, candidates, k + extra)

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.where(candidates < 0, 0, candidates)
        order = np.argsort(rows, axis=None)  # ascending reads from a memory map
        gathered = np.empty((rows.size, self.vectors.shape[1]), np.float32)
        gathered[order] = self.vectors[rows.ravel()[order]]
        scores = np.einsum("qrd,qd->qr", gathered.reshape(*rows.shape, -1), queries)
        scores[candidates < 0] = -np.inf
        best_s, best = top_k(scores, k)
        return best_s, np.take_along_axis(candidates, best, axis=1)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k rows by inner product, over blocks of rows (a memory map is read once).

    NumPy matmul + argpartition rather than ``faiss.knn``, measured at load ~5 on 2 cores,
    256 queries x 200k x 256-d: faiss.knn 7.6 s, NumPy 1.6 s (a 10M x 1024-query ground
    truth: ~25 minutes against ~5). Probably faiss' OpenMP regions (one per block of 1024
    database rows) waiting at barriers for threads the loaded machine has descheduled."""
    rows = max(1, min(16 * _BLOCK, _SCORE_BLOCK // max(1, len(queries))))  # bounded score block
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(vectors), rows):
        block = np.asarray(vectors[start : start + rows], dtype=np.float32)
        s, i = top_k(queries @ block.T, min(k, len(block)))
        s, i = np.hstack([best_s, s]), np.hstack([best_i, i + start])
        keep = top_k(s, min(k, s.shape[1]))[1]
        best_s, best_i = np.take_along_axis(s, keep, 1), np.take_along_axis(i, keep, 1)
    return best_i


def _without_self(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Each row's neighbours other than the query's own row, first ``k``."""
    out = np.full((len(found), k), -1, np.int64)
    for r, (neighbours, own) in enumerate(zip(found, rows)):
        kept = neighbours[neighbours != own][:k]
        out[r, : len(kept)] = kept
    return out
