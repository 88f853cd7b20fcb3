"""Ground truth of a landmark-retrieval dataset, independent of its on-disk format.

Both the VGG "classic" text files (Oxford5k / Paris6k) and the revisited pickles
(ROxford5k / RParis6k) are parsed into one :class:`RetrievalGroundTruth`, so that mining,
training and evaluation never look at file formats. Indices always point into
``image_names`` / ``image_paths`` (the database).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BBox = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the original image


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


@dataclass(frozen=True)
class RetrievalGroundTruth:
    """A database of images plus queries with labelled positives and junk."""

    name: str
    image_names: list[str]
    image_paths: list[Path]
    queries: list[Query]
    protocol: str  # "classic" (good/ok/junk) or "revisited" (easy/hard/junk)
    skipped: list[str] = field(default_factory=list)  # unreadable images, named for the user

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

    def subset_queries(self, keep: list[int]) -> "RetrievalGroundTruth":
        return RetrievalGroundTruth(
            self.name, self.image_names, self.image_paths,
            [self.queries[i] for i in keep], self.protocol, self.skipped,
        )
