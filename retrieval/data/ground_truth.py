"""Ground truth of a landmark-retrieval dataset, independent of its on-disk format.

Both the VGG "classic" text files (Oxford5k / Paris6k) and the revisited pickles
(ROxford5k / RParis6k) are parsed into one :class:`RetrievalGroundTruth`, so that mining,
training and evaluation never look at file formats. Indices always point into
``image_names`` / ``image_paths`` (the database). It implements
:class:`~retrieval.data.truth.GroundTruth`, through which results are drawn and served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.data.truth import OTHER, WRONG, BBox

# the labels of each protocol: two kinds of positive (classic: good ∪ ok; revisited Medium:
# easy ∪ hard), then junk, which AP ignores
LABELS = {"classic": ("good", "ok", "junk"), "revisited": ("easy", "hard", "junk")}


def _index_array(values=()) -> np.ndarray:
    return np.asarray(sorted(set(int(v) for v in values)), dtype=np.int64)


@dataclass(frozen=True)
class Query:
    """One query: its image, its box, and its labelled database images.

    Classic (VGG) labels live in ``good`` / ``ok`` / ``junk``; revisited labels in ``easy`` /
    ``hard`` / ``junk``. A dataset fills the set its format has and leaves the other empty.
    """

    name: str  # image name without extension (``oxc1_`` prefix already stripped)
    landmark: str
    path: Path  # the query's image file
    bbox: BBox | None = None
    good: np.ndarray = field(default_factory=_index_array)
    ok: np.ndarray = field(default_factory=_index_array)
    easy: np.ndarray = field(default_factory=_index_array)
    hard: np.ndarray = field(default_factory=_index_array)
    junk: np.ndarray = field(default_factory=_index_array)

    @property
    def positives(self) -> np.ndarray:
        """Positives of the classic protocol (good ∪ ok), or revisited Medium (easy ∪ hard)."""
        return np.union1d(np.union1d(self.good, self.ok), np.union1d(self.easy, self.hard))

    @property
    def labelled(self) -> np.ndarray:
        """Every database image the annotators tied to this query, junk included.

        The seed project trains on all of these as positives, and mining must never
        offer one of them as a negative.
        """
        return np.union1d(self.positives, self.junk)

    def labels(self) -> dict[int, str]:
        """The label of every database image tied to this query. Labels should not overlap;
        where they do, the stronger one wins: good > easy > ok > hard > junk."""
        lookup: dict[int, str] = {}
        for name, indices in (
            ("junk", self.junk),
            ("hard", self.hard),
            ("ok", self.ok),
            ("easy", self.easy),
            ("good", self.good),
        ):
            lookup.update(dict.fromkeys(np.asarray(indices).ravel().tolist(), name))
        return lookup


@dataclass(frozen=True)
class Distractors:
    """Images appended to a benchmark's database that are no query's positive or junk.

    ``fingerprint`` (sha256 of the image list and of which images are on disk) is what an
    embedding cache keys on, with the checkpoint, so that the million images are embedded once.
    """

    name: str  # "revisitop1m"
    names: list[str]  # as in the image list: paths relative to its jpg/ folder
    paths: Sequence[Path]
    offset: int  # database index of the first distractor
    list_file: Path
    fingerprint: str

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class RetrievalGroundTruth:
    """A database of images plus queries with labelled positives and junk."""

    name: str
    image_names: list[str]
    image_paths: Sequence[Path]  # a list, or (with distractors) a ChainedPaths
    queries: list[Query]
    protocol: str  # "classic" (good/ok/junk) or "revisited" (easy/hard/junk)
    skipped: list[str] = field(default_factory=list)  # unreadable images, named for the user
    # images appended after the benchmark's own (revisitop's 1M): database indices
    # distractors.offset.. ; queries' labels index only the images before them
    distractors: Distractors | None = None

    def __post_init__(self) -> None:
        if len(self.image_names) != len(self.image_paths):
            raise ValueError("image_names and image_paths differ in length")

    @property
    def landmarks(self) -> list[str]:
        return sorted({q.landmark for q in self.queries})

    def index_of(self, name: str) -> int:
        return self._name_to_index[name]

    def has_image(self, name: str) -> bool:
        return name in self._name_to_index

    @property
    def _name_to_index(self) -> dict[str, int]:
        cache = self.__dict__.get("_index_cache")
        if cache is None:
            cache = {n: i for i, n in enumerate(self.image_names)}
            object.__setattr__(self, "_index_cache", cache)
        return cache

    # --- GroundTruth (retrieval.data.truth) ---------------------------------------------
    def relevance(self, query: int, database: Sequence[int]) -> list[str]:
        """good / ok / junk (classic) or easy / hard / junk (revisited), else wrong."""
        labels = self.queries[query].labels()
        return [labels.get(int(i), WRONG) for i in database]

    def query_groups(self) -> list[str]:
        return [q.landmark for q in self.queries]

    def database_groups(self) -> list[str]:
        """The landmark of every image that is a positive of one of its queries, else OTHER."""
        groups = [OTHER] * len(self.image_names)
        for q in self.queries:
            for i in q.positives.tolist():
                groups[i] = q.landmark
        return groups

    def query_image(self, query: int) -> tuple[Path, BBox | None]:
        q = self.queries[query]
        return Path(q.path), q.bbox

    def query_name(self, query: int) -> str:
        return self.queries[query].name

    def subset_queries(self, keep: list[int]) -> RetrievalGroundTruth:
        return RetrievalGroundTruth(
            self.name,
            self.image_names,
            self.image_paths,
            [self.queries[i] for i in keep],
            self.protocol,
            self.skipped,
            self.distractors,
        )
