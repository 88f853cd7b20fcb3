"""A loaded database that answers image queries: the top-k database images, best first.

The query goes through the database's own network, eval transform, scales and whitening,
so its descriptor lives in the same space as the database's. The command around it is
:mod:`retrieval.pipelines.query`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from retrieval.data.image_io import load_rgb
from retrieval.evaluation.ranking import rank_by_similarity
from retrieval.evaluation.reranking import Reranker
from retrieval.evaluation.vectors import cosine_similarity
from retrieval.models.inference import embed_batch, resolve_device
from retrieval.serving.database import DatabaseArtifact, load_model_for_database
from retrieval.serving.search import IndexSource, SearchIndex
from retrieval.utils.errors import UserFacingError
from retrieval.utils.validation import box_problem

# database rows scored at once by :meth:`DatabaseSearcher.exact_ranking` (a memory map is
# read block by block: 64k rows x 2048-d float32 is 512 MB at most)
_EXACT_BLOCK_ROWS = 1 << 16
# the only backend that evaluates a metadata filter (search.py)
_FILTER_BACKENDS = ("milvus",)


@dataclass(frozen=True)
class Match:
    rank: int  # 1-based
    score: float  # cosine similarity
    index: int  # row in the database
    name: str
    path: str


class DatabaseSearcher:
    """A loaded database, its network and its search index: answers image queries.
    Build it once and reuse it (a web app, a batch of queries).

    ``reranker`` (``configs/rerank``): the index's first ``max(k, reranker.depth)``
    candidates are re-ordered with the stored vectors before the top ``k`` are cut, as
    ``evaluate.py rerank=...`` re-orders the cosine ranking's head."""

    def __init__(
        self,
        artifact: DatabaseArtifact,
        index_factory: Callable[..., SearchIndex] = SearchIndex,
        ckpt_path: str | Path | None = None,
        device: str = "auto",
        reranker: Reranker | None = None,
    ) -> None:
        self.artifact, self.reranker = artifact, reranker
        self.device = resolve_device(device)
        model, self.transform = load_model_for_database(artifact, ckpt_path)
        self.model = model.to(self.device)
        # names, dataset and folder: the fields of a Milvus collection, where auto stores its index
        source = IndexSource(artifact.image_names, artifact.dataset, artifact.path)
        self.index = index_factory(artifact.embeddings, source=source)

    def embed(self, image: str | Path, bbox: Sequence[float] | None = None) -> np.ndarray:
        """The query's searchable vector ``(1, dim)``: network, then the database's whitening."""
        return self.embed_image(_read_image(Path(image), bbox))

    def embed_image(self, image: Image.Image) -> np.ndarray:
        """:meth:`embed` for an RGB image already in memory (a web upload: never written to disk)."""
        batch = self.transform(image).unsqueeze(0).to(self.device)
        descriptor = embed_batch(self.model, batch, self.artifact.scales).cpu().numpy()
        whitening = self.artifact.whitening
        return whitening.apply(descriptor) if whitening is not None else descriptor

    def query(
        self, image: str | Path, k: int = 10, bbox: Sequence[float] | None = None, filter: str | None = None
    ) -> list[Match]:
        return self.search_vector(self.embed(image, bbox), k, filter)

    def search_vector(self, vector: np.ndarray, k: int = 10, filter: str | None = None) -> list[Match]:
        """The top-``k`` matches of one searchable vector ``(1, dim)`` (from :meth:`embed`),
        re-ranked if the searcher has a re-ranker (scores stay the index's cosine scores);
        ``filter``: a metadata expression (search=milvus: ``dataset == "oxford5k"``)."""
        self.check_filter(filter)
        depth = max(k, self.reranker.depth) if self.reranker is not None else k
        scores, indices = self.index.search(vector, depth, filter=filter)
        found = indices[0] >= 0  # an approximate or filtered search may find fewer
        ids, scores = indices[0][found], scores[0][found]
        if self.reranker is not None and len(ids) > 1:
            order = self.reranker(vector, self.artifact.embeddings, ids[None])[0]
            # the re-ranker returns a permutation of ids: carry each id's score along
            scores = scores[np.argsort(ids)[np.searchsorted(np.sort(ids), order)]]
            ids = order
        a = self.artifact
        return [
            Match(rank, float(s), int(i), a.image_names[i], a.image_paths[i])
            for rank, (s, i) in enumerate(zip(scores[:k], ids[:k]), start=1)
        ]

    def exact_ranking(self, vector: np.ndarray) -> np.ndarray:
        """Every database row, best first ``(1, n)``: exact cosine over the stored vectors
        (whatever the index: an approximate one, or Milvus' 16384-result cap, would cut the
        ranking short), head re-ranked as :meth:`search_vector` and the evaluation do. One
        matrix-vector product, block by block so that a memory-mapped database is streamed."""
        db = self.artifact.embeddings
        scores = np.concatenate(
            [
                cosine_similarity(vector, db[i : i + _EXACT_BLOCK_ROWS])
                for i in range(0, len(db), _EXACT_BLOCK_ROWS)
            ],
            axis=1,
        )
        ranking = rank_by_similarity(scores)
        if self.reranker is not None:
            depth = min(self.reranker.depth, ranking.shape[1])
            ranking[:, :depth] = self.reranker(vector, db, ranking[:, :depth])
        return ranking

    def check_filter(self, filter: str | None) -> None:
        """A filter on a backend that cannot apply it is the user's mistake, said once."""
        backend = getattr(self.index, "backend", None)
        if filter is not None and backend not in _FILTER_BACKENDS:
            raise FilterUnsupportedError(
                f"filter={filter!r} needs a backend with metadata fields (search=milvus); "
                f"this database is searched with search={backend}: drop the filter or add search=milvus"
            )


class FilterUnsupportedError(UserFacingError):
    """A metadata filter asked of a search backend without metadata (all but milvus)."""


def _read_image(path: Path, bbox: Sequence[float] | None):
    """The query image as RGB, cropped to ``bbox``; every bad input is a readable error."""
    if path.is_dir():
        raise UserFacingError(f"query image {path} is a folder; pass one image file (image=PATH)")
    if not path.is_file():
        raise UserFacingError(f"query image {path} does not exist (image=PATH)")
    try:
        if bbox is not None:
            with Image.open(path) as header:  # the size only: nothing decoded yet
                size = header.size
            if (problem := box_problem(list(bbox), *size)) is not None:
                raise UserFacingError(f"bbox={list(bbox)}: {problem} ({path.name})")
        return load_rgb(path, tuple(float(v) for v in bbox) if bbox is not None else None)
    except Image.DecompressionBombError:
        raise UserFacingError(
            f"query image {path} has more than {Image.MAX_IMAGE_PIXELS:,} pixels; refused as a "
            "possible decompression bomb (downscale it first)"
        ) from None
    except (UnidentifiedImageError, OSError) as error:
        raise UserFacingError(f"query image {path} could not be read as an image ({error})") from None
