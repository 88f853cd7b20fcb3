"""What the ground truth says about a ranked database image, for any protocol we can draw.

Landmark ground truth (classic good/ok/junk, revisited easy/hard/junk) is read from each
query's index arrays. Class-labelled ground truth counts a result as relevant when its label
equals the query's: a leave-one-out gallery (``ClassGroundTruth``: one ``labels`` array, the
queries are the database images) or, in general, anything exposing ``query_labels`` and
``database_labels``. Anything else returns None and the caller skips the plot. Duck-typed,
so that drawing code does not depend on every dataset module.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

LANDMARK_PROTOCOLS = ("classic", "revisited")
# labels a ranked database image can get; colours live with the drawing code
POSITIVE_LABELS = ("good", "ok", "easy", "hard", "same")
JUNK, WRONG, OTHER = "junk", "wrong", "other"


def _class_labels(gt: Any) -> tuple[Sequence, Sequence] | None:
    """(query labels, database labels), or None for ground truth without class labels."""
    if getattr(gt, "protocol", None) in LANDMARK_PROTOCOLS:
        return None
    queries, database = getattr(gt, "query_labels", None), getattr(gt, "database_labels", None)
    if queries is None or database is None:
        queries = database = getattr(gt, "labels", None)  # leave-one-out gallery
    return None if queries is None else (queries, database)


def _names(gt: Any, labels: Sequence) -> list[str]:
    names = getattr(gt, "class_names", None)  # integer ids -> readable names
    return [str(names[int(i)]) if names is not None else str(i) for i in labels]


def can_judge(gt: Any) -> bool:
    return getattr(gt, "protocol", None) in LANDMARK_PROTOCOLS or _class_labels(gt) is not None


def relevance(gt: Any, query: int, database: Sequence[int] | np.ndarray) -> list[str] | None:
    """One label per database index (see POSITIVE_LABELS, JUNK, WRONG), or None."""
    if getattr(gt, "protocol", None) in LANDMARK_PROTOCOLS:
        q = gt.queries[query]
        lookup: dict[int, str] = {}
        for name in ("junk", "hard", "ok", "easy", "good"):  # the stronger label wins
            lookup.update({int(i): name for i in getattr(q, name)})
        return [lookup.get(int(i), WRONG) for i in database]
    labels = _class_labels(gt)
    if labels is None:
        return None
    query_labels, database_labels = labels
    return ["same" if database_labels[int(i)] == query_labels[query] else WRONG for i in database]


def database_groups(gt: Any) -> list[str] | None:
    """A group name per database image for colouring plots: its landmark (images that are a
    positive of some query of that landmark; the rest are OTHER) or its class label."""
    if getattr(gt, "protocol", None) in LANDMARK_PROTOCOLS:
        groups = [OTHER] * len(gt.image_names)
        for q in gt.queries:
            for i in q.positives:
                groups[int(i)] = q.landmark
        return groups
    labels = _class_labels(gt)
    return None if labels is None else _names(gt, labels[1])


def query_groups(gt: Any) -> list[str] | None:
    if getattr(gt, "protocol", None) in LANDMARK_PROTOCOLS:
        return [q.landmark for q in gt.queries]
    labels = _class_labels(gt)
    return None if labels is None else _names(gt, labels[0])


def _gallery(gt: Any) -> bool:
    """Leave-one-out: query i is database image i (and ``gt.queries`` may be rebuilt per access)."""
    return _class_labels(gt) is not None and getattr(gt, "query_labels", None) is None


def query_image(gt: Any, query: int) -> tuple[Path, tuple[float, float, float, float] | None]:
    """The query's image file and its box (None: the whole image)."""
    if _gallery(gt):
        return Path(gt.image_paths[query]), None
    paths = getattr(gt, "query_paths", None)
    if paths is not None:
        return Path(paths[query]), None
    q = gt.queries[query]
    return Path(q.path), getattr(q, "bbox", None)


def query_name(gt: Any, query: int) -> str:
    if _gallery(gt):
        return str(gt.image_names[query])
    queries = getattr(gt, "queries", None)
    if queries is not None and hasattr(queries[query], "name"):
        return str(queries[query].name)
    return query_image(gt, query)[0].stem


def database_paths(gt: Any) -> list[Path]:
    return [Path(p) for p in gt.image_paths]
