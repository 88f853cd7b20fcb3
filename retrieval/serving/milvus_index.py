"""``search=milvus``: the vectors in a Milvus collection, queried through ``pymilvus``.

``uri`` null is milvus-lite, embedded: a local file (``<database>/milvus.db``; a temporary
one for vectors of no database), no server, for tests and single machines; ``uri=http://HOST:19530`` (with ``token`` if the server wants
one) is a Milvus server or cluster, the same client calls. The collection holds one row per
database image: ``id`` (the row of ``embeddings.npy``, so results map back to the database
unchanged), ``vector``, ``name`` and ``dataset``; :meth:`MilvusSearch.search` takes a Milvus
boolean ``filter`` over those fields (``dataset == "oxford5k"``, ``name like "all_souls%"``).

A collection property records a fingerprint of the vectors, names and index settings:
a later start with the same database reuses the collection (no re-insert); anything else
drops and rebuilds it. Milvus answers at most ``MAX_TOP_K`` results per query; a larger ``k``
(the app's full ranking) pads with ``-1`` as approximate indexes do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from retrieval.serving.auto_index import fingerprint
from retrieval.serving.search import IndexSource
from retrieval.utils.errors import UserFacingError

log = logging.getLogger(__name__)

MAX_TOP_K = 16384  # Milvus' limit on results per query
MAX_NAME = 1024
_FINGERPRINT = "retrieval_fingerprint"
_INSERT_ROWS = 10_000  # rows per insert call (bounded gRPC messages)
# milvus-lite 3.2 builds these (IVF_PQ / DISKANN are server-only there)
LITE_INDEXES = ("FLAT", "BRUTE_FORCE", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8")
_SEARCH_BEAM = {"HNSW": "ef", "HNSW_SQ": "ef"}  # must be >= k


def _client(uri: str, token: str | None):
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise UserFacingError(
            "search=milvus needs pymilvus (and milvus-lite for a local file): pip install 'retrieval[milvus]'"
        ) from None
    try:
        return MilvusClient(uri=uri, token=token or "")
    except Exception as error:  # pymilvus raises MilvusException, gRPC errors, OSError
        raise UserFacingError(
            f"search.uri={uri}: could not open Milvus there ({error}); give a local file name "
            "(milvus-lite) or a running server's http://HOST:19530"
        ) from None


@contextlib.contextmanager
def _quiet_lite_server() -> Iterator[None]:
    """milvus-lite 3.2 serves pymilvus in this process and lacks ``AllocTimestamp``, which
    ``create_collection`` calls first (and then does without): gRPC logs a traceback at
    ERROR for it. Only that call is silenced."""
    logger = logging.getLogger("grpc._server")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class MilvusSearch:
    def __init__(
        self,
        vectors: np.ndarray,
        source: IndexSource | None = None,
        uri: str | None = None,
        token: str | None = None,
        collection: str | None = None,
        index_type: str = "HNSW",
        index_params: dict | None = None,
        search_params: dict | None = None,
    ) -> None:
        source = source or IndexSource()
        self._scratch: Path | None = None
        if uri is None and source.directory is None:
            # vectors of no database (a test, an evaluation): a milvus-lite file of its own,
            # deleted with this index, as faiss indexes live in memory only
            self._scratch = Path(tempfile.mkdtemp(prefix="retrieval-milvus-"))
            weakref.finalize(self, shutil.rmtree, self._scratch, True)
            uri = str(self._scratch / "milvus.db")
        elif uri is None:
            uri = str(Path(source.directory) / "milvus.db")
        self.uri, self.index_type = uri, index_type.upper()
        if not uri.startswith(("http://", "https://", "tcp://")) and self.index_type not in LITE_INDEXES:
            raise UserFacingError(
                f"search.index_type={index_type}: milvus-lite builds {', '.join(LITE_INDEXES)}; "
                "other index types need a Milvus server (search.uri=http://HOST:19530)"
            )
        names = list(source.names) if source.names is not None else [str(i) for i in range(len(vectors))]
        if len(names) != len(vectors):
            raise ValueError(f"{len(names)} names for {len(vectors)} vectors")
        dataset = source.dataset or ""
        self.name = collection or "retrieval_" + (re.sub(r"\W", "_", dataset) or "vectors")
        self.index_params, self.search_params = dict(index_params or {}), dict(search_params or {})
        self.client = _client(uri, token)
        settings = {"index_type": self.index_type, "index_params": self.index_params}
        digest = hashlib.blake2b(digest_size=16)
        digest.update(json.dumps([fingerprint(vectors), dataset, names, settings]).encode())
        self.fingerprint = digest.hexdigest()
        start = time.perf_counter()
        if self._current(len(vectors)):
            log.info("milvus: reusing collection %s at %s", self.name, uri)
        else:
            self._build(vectors, names, dataset)
        self.client.load_collection(self.name)
        self.build_s = time.perf_counter() - start

    def _current(self, n: int) -> bool:
        if not self.client.has_collection(self.name):
            return False
        properties = self.client.describe_collection(self.name).get("properties") or {}
        rows = int(self.client.get_collection_stats(self.name).get("row_count", -1))
        if properties.get(_FINGERPRINT) == self.fingerprint and rows == n:
            return True
        log.warning("milvus: collection %s holds other vectors; rebuilding it", self.name)
        self.client.drop_collection(self.name)
        return False

    def _build(self, vectors: np.ndarray, names: list[str], dataset: str) -> None:
        from pymilvus import DataType

        if (longest := max(len(n.encode()) for n in names)) > MAX_NAME:
            raise UserFacingError(f"an image name is {longest} bytes; the Milvus schema allows {MAX_NAME}")
        schema = self.client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=vectors.shape[1])
        schema.add_field("name", DataType.VARCHAR, max_length=MAX_NAME)
        schema.add_field("dataset", DataType.VARCHAR, max_length=256)
        index = self.client.prepare_index_params()
        index.add_index("vector", index_type=self.index_type, metric_type="IP", params=self.index_params)
        # Bounded: a search does not wait for the newest writes (Strong costs ~0.4 s a query
        # in milvus-lite); everything is flushed before the first search anyway
        with _quiet_lite_server():
            self.client.create_collection(
                self.name, schema=schema, index_params=index, consistency_level="Bounded"
            )
        for start in range(0, len(vectors), _INSERT_ROWS):
            block = np.asarray(vectors[start : start + _INSERT_ROWS], dtype=np.float32)
            rows = [
                {"id": start + i, "vector": v, "name": names[start + i], "dataset": dataset}
                for i, v in enumerate(block)
            ]
            self.client.insert(self.name, rows)
        self.client.flush(self.name)  # sealed segments get their index built
        self._wait_for_index(len(vectors))
        # last: a collection whose build was interrupted has no fingerprint and is rebuilt
        self.client.alter_collection_properties(self.name, {_FINGERPRINT: self.fingerprint})
        log.info("milvus: %d vectors in %s (%s) at %s", len(vectors), self.name, self.index_type, self.uri)

    def _wait_for_index(self, n: int, timeout_s: float = 3600.0) -> None:
        """Milvus indexes sealed segments in the background; until then it answers by brute
        force, so a search right after the build would not measure (or use) the index."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.client.describe_index(self.name, "vector")
            if int(state.get("indexed_rows", 0)) >= n and not int(state.get("pending_index_rows", 0)):
                return
            time.sleep(0.2)
        log.warning("milvus: %s still indexing after %.0f s; searching anyway", self.name, timeout_s)

    def search(self, queries: np.ndarray, k: int, filter: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        limit = min(k, MAX_TOP_K)
        params = dict(self.search_params)
        if (beam := _SEARCH_BEAM.get(self.index_type)) is not None:
            params[beam] = max(int(params.get(beam, 0)), limit)
        try:
            hits = self.client.search(
                self.name,
                data=queries,
                limit=limit,
                filter=filter or "",
                search_params={"metric_type": "IP", "params": params},
            )
        except Exception as error:
            if filter:  # most likely the expression: say so, not a gRPC trace
                raise UserFacingError(f"Milvus refused the search filter {filter!r}: {error}") from None
            raise
        scores = np.full((len(queries), k), -np.inf, np.float32)
        indices = np.full((len(queries), k), -1, np.int64)
        for row, found in enumerate(hits):
            scores[row, : len(found)] = [h["distance"] for h in found]
            indices[row, : len(found)] = [h["id"] for h in found]
        return scores, indices

    def close(self) -> None:
        self.client.close()
