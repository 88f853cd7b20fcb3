"""Everything the routes need, loaded once: the database, its network and index, the
dataset's ground truth, and a worker thread pool that runs the model off the event loop."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np

from retrieval.evaluation.landmark_metrics import average_precisions
from retrieval.evaluation.reranking import Reranker
from retrieval.serving.app.boxes import Box, clip_to_image
from retrieval.serving.app.files import ServableImages
from retrieval.serving.app.imaging import thumbnail_jpeg
from retrieval.serving.app.kept import KeptUpload, KeptUploads
from retrieval.serving.app.settings import AppSettings
from retrieval.serving.app.truth import QueryTruth, load_dataset_truth
from retrieval.serving.app.uploads import RequestError, decode_upload
from retrieval.serving.database import DatabaseError, load_database
from retrieval.serving.search import SearchIndex
from retrieval.serving.searcher import DatabaseSearcher, FilterUnsupportedError, Match
from retrieval.serving.self_check import self_check, self_check_rows
from retrieval.utils.errors import UserFacingError

__all__ = ["Outcome", "SearchService", "public_names", "self_check", "self_check_rows"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Outcome:
    """One search: the top-k matches and, for a dataset query, their labels, its AP and how
    many of the top k are its ground-truth positives."""

    matches: list[Match]
    labels: list[str | None] = field(default_factory=list)  # per match; None without ground truth
    ap: float | None = None  # None: not a dataset query (or one without positives)
    positives_in_top: int | None = None  # None: not a dataset query


class SearchService:
    def __init__(self, searcher: DatabaseSearcher, settings: AppSettings) -> None:
        artifact = searcher.artifact
        self.searcher, self.settings, self.artifact = searcher, settings, artifact
        root = artifact.image_root or os.path.commonpath(artifact.image_paths)
        self.image_root = Path(root).resolve()
        if not self.image_root.is_dir():
            raise DatabaseError(
                f"the images of database {artifact.path} are not at {self.image_root} "
                f"(moved or deleted?); the app serves them from there"
            )
        self._public_names = public_names(self.image_root, artifact.image_root, artifact.path)
        truth, note = load_dataset_truth(artifact, self.image_root, settings.ground_truth)
        log.info("ground truth: %s", note)  # the server's log keeps the absolute paths
        self.truth, self.truth_note = truth, self.public(note)
        self.images = ServableImages(
            self.image_root, [*artifact.image_paths, *(q.path for q in self.queries)]
        )
        self.uploads = KeptUploads(settings.kept_uploads)
        self.executor = ThreadPoolExecutor(settings.model_threads, thread_name_prefix="retrieval-model")

    @classmethod
    def load(
        cls,
        settings: AppSettings,
        index_factory: Callable[..., SearchIndex] = SearchIndex,
        reranker: Reranker | None = None,
    ) -> SearchService:
        """Load and check everything; a missing or mismatched database is a DatabaseError."""
        artifact = load_database(settings.db)
        searcher = DatabaseSearcher(artifact, index_factory, settings.ckpt_path, settings.device, reranker)
        self_check(searcher)
        return cls(searcher, settings)

    # ------------------------------------------------------------------ queries
    @property
    def queries(self) -> list[QueryTruth]:
        return self.truth.queries if self.truth is not None else []

    def dataset_query(self, query_id: int) -> QueryTruth:
        if not 0 <= query_id < len(self.queries):
            raise RequestError(
                404, f"There is no dataset query {query_id} (this database has {len(self.queries)})."
            )
        return self.queries[query_id]

    def url_of(self, path: str | Path) -> str | None:
        """The path under /images of a database or query image (None: not servable)."""
        return self.images.relative(path)

    def public(self, text: str) -> str:
        """``text`` as a client may see it: the image root and the database folder (absolute
        paths on this server) shown by their folder name, what is under them relative to
        it. Every note and error message a page or the API shows goes through here."""
        for pattern, name in self._public_names:
            text = pattern.sub(name.replace("\\", r"\\"), text)  # a name, not a template
        return text

    def check_k(self, k: int | None) -> int:
        k = self.settings.k if k is None else k
        if not 1 <= k <= self.settings.max_k:
            raise RequestError(422, f"k must be between 1 and {self.settings.max_k}, got {k}.")
        return k

    # ------------------------------------------------------------ the searches (worker thread)
    async def run(self, function: Callable[..., T], *args) -> T:
        """Run ``function(*args)`` on the model's worker threads; the event loop stays free."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, partial(function, *args))

    def check_filter(self, filter: str | None) -> None:
        """A filter the search backend cannot apply: a 422 before any work is queued."""
        try:
            self.searcher.check_filter(filter)
        except FilterUnsupportedError as error:
            raise RequestError(422, str(error)) from None

    def search_vector(self, vector: np.ndarray, k: int, filter: str | None) -> list[Match]:
        try:
            return self.searcher.search_vector(vector, k, filter)
        except UserFacingError as error:  # Milvus refused the expression: the client's to fix
            raise RequestError(422, self.public(str(error))) from None

    def search_dataset_query(
        self, query: QueryTruth, k: int, start: int = 0, filter: str | None = None
    ) -> Outcome:
        """Ranks ``start + 1 .. start + k`` of ``query`` (a results page, from the index,
        ``filter``-ed), its AP and how many of the ranks shown are its positives."""
        bbox = query.bbox if self.settings.query_crop else None
        vector = self.searcher.embed(query.path, bbox)
        # the AP is the evaluation's: exact scores over the whole database (never filtered),
        # whatever the index (HNSW/PQ are approximate, Milvus returns 16384 at most)
        ap = average_precisions(self.searcher.exact_ranking(vector), [query.positives], [query.junk])[0]
        top = self.search_vector(vector, start + k, filter)[start:]
        positives = set(query.positives.tolist())
        return Outcome(
            top,
            [query.label(m.index) for m in top],
            None if math.isnan(ap) else float(ap),
            sum(m.index in positives for m in top),
        )

    def embed_upload(self, data: bytes, name: str, bbox: Box | None, preview: bool = True) -> KeptUpload:
        """Decode, crop and embed an upload: everything its results pages need (see kept.py)."""
        image = decode_upload(data, self.settings.max_upload_bytes, self.settings.max_pixels)
        box = clip_to_image(bbox, image.size) if bbox is not None else None
        thumbnail = thumbnail_jpeg(image, self.settings.thumbnail_size * 2) if preview else b""
        vector = self.searcher.embed_image(image.crop(box) if box is not None else image)
        return KeptUpload(name, vector, image.size, box, thumbnail)

    def search_kept(self, upload: KeptUpload, k: int, start: int = 0, filter: str | None = None) -> Outcome:
        matches = self.search_vector(upload.vector, start + k, filter)[start:]
        return Outcome(matches, [None] * len(matches))

    def search_upload(self, data: bytes, k: int, bbox: Box | None, filter: str | None = None) -> Outcome:
        return self.search_kept(self.embed_upload(data, "upload", bbox, preview=False), k, 0, filter)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def public_names(*folders: str | Path | None) -> list[tuple[re.Pattern, str]]:
    """(absolute path as written or resolved -> the folder's name), longest path first so
    that a folder inside another is named by its own name."""
    names: dict[str, str] = {}
    for folder in filter(None, folders):
        for spelling in (Path(folder), Path(folder).resolve()):
            if spelling.name:  # never "/": it has no name to show instead
                names[str(spelling)] = spelling.name
    # a whole path component only (followed by "/", an end or punctuation): /data must not
    # rename the start of /database
    return [
        (re.compile(re.escape(path) + r"(?![^/\s'\",.;:)\]])"), names[path])
        for path in sorted(names, key=len, reverse=True)
    ]
