"""What every ground truth tells the code that draws or serves results: :class:`GroundTruth`.

A ground truth judges a ranked database image for a query (:meth:`GroundTruth.relevance`),
groups queries and database images for colouring plots, and names each query's image.
Both kinds we read implement it: landmark sets
(:class:`~retrieval.data.ground_truth.RetrievalGroundTruth`: good / ok / junk classic,
easy / hard / junk revisited) and class-labelled galleries
(:class:`~retrieval.data.class_ground_truth.ClassGroundTruth`: "same" class or wrong).
Drawing and serving code calls these methods; anything that does not implement them
(:func:`as_ground_truth` returns None) is drawn without labels or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

BBox = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the original image

# labels a ranked database image can get; colours live with the drawing code
POSITIVE_LABELS = ("good", "ok", "easy", "hard", "same")
SAME, JUNK, WRONG = "same", "junk", "wrong"
OTHER = "other"  # the group of a database image that belongs to no query's landmark


@runtime_checkable
class GroundTruth(Protocol):
    """A database of images and queries whose ranked results can be judged."""

    name: str
    protocol: str  # "classic" | "revisited" | "leave_one_out"
    image_names: list[str]  # the database, in index order
    image_paths: list[Path]

    def relevance(self, query: int, database: Sequence[int]) -> list[str]:
        """One label per database index: one of POSITIVE_LABELS, JUNK or WRONG."""
        ...

    def query_groups(self) -> list[str]:
        """A group name per query (its landmark or class), for colouring plots."""
        ...

    def database_groups(self) -> list[str]:
        """A group name per database image (a landmark, OTHER, or its class)."""
        ...

    def query_image(self, query: int) -> tuple[Path, BBox | None]:
        """The query's image file and its box (None: the whole image)."""
        ...

    def query_name(self, query: int) -> str: ...


def as_ground_truth(gt: object) -> GroundTruth | None:
    """``gt`` when it can judge results, else None (the caller draws no labels)."""
    return gt if isinstance(gt, GroundTruth) else None


# For callers that hold a ground truth of any kind (the training visualisation callback):
# the method's answer, or None where ``gt`` is not a GroundTruth.


def relevance(gt: object, query: int, database: Sequence[int]) -> list[str] | None:
    truth = as_ground_truth(gt)
    return None if truth is None else truth.relevance(query, database)


def query_groups(gt: object) -> list[str] | None:
    truth = as_ground_truth(gt)
    return None if truth is None else truth.query_groups()


def query_name(gt: object, query: int) -> str:
    truth = as_ground_truth(gt)
    return str(query) if truth is None else truth.query_name(query)


def database_paths(gt: object) -> list[Path]:
    truth = as_ground_truth(gt)
    return [] if truth is None else [Path(p) for p in truth.image_paths]
