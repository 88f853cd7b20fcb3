"""Ground truth of a class-labelled image collection (flowers, Fashion-MNIST exports, ...).

Unlike a landmark set there are no designated queries: every image is a query against all
the others (leave-one-out), and its positives are the other images of its class. The
evaluation code recognises this type (see :mod:`retrieval.evaluation.protocols`) and uses
one set of embeddings as both queries and database. It implements
:class:`~retrieval.data.truth.GroundTruth`: query i is database image i.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.data.image_paths import take
from retrieval.data.truth import SAME, WRONG

LEAVE_ONE_OUT = "leave_one_out"


@dataclass(frozen=True)
class ClassItem:
    """One image seen as a query. Field names follow :class:`~retrieval.data.ground_truth.
    Query` (``name``, ``path``, ``bbox``), so code written for landmark queries (reports)
    reads these too; ``landmark`` is the class name for the same reason."""

    name: str
    path: Path
    label: str
    bbox: None = None

    @property
    def landmark(self) -> str:
        return self.label


@dataclass(frozen=True)
class ClassGroundTruth:
    """Images with one class label each; ``labels[i]`` indexes ``class_names``.

    ``split`` holds the split name of each image when the source gave one (a CSV's split
    column), else it is None and the datamodule splits.
    """

    name: str
    image_names: list[str]  # unique, human-readable: the path relative to the dataset root
    image_paths: Sequence[Path]  # a list, or ImagePaths for sets of millions
    labels: np.ndarray  # int64 [n]
    class_names: list[str]
    split: list[str] | None = None
    # where each image came from ("file.csv:12" or a folder), for error messages
    sources: list[str] = field(default_factory=list)
    protocol: str = LEAVE_ONE_OUT

    def __post_init__(self) -> None:
        n = len(self.image_paths)
        if (
            len(self.image_names) != n
            or len(self.labels) != n
            or (self.split is not None and len(self.split) != n)
        ):
            raise ValueError("image_names, image_paths, labels and split differ in length")

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def queries(self) -> list[ClassItem]:
        """Every image is a query (leave-one-out); built on demand, it is cheap."""
        return [
            ClassItem(n, p, self.class_names[c])
            for n, p, c in zip(self.image_names, self.image_paths, self.labels.tolist())
        ]

    # --- GroundTruth (retrieval.data.truth) ---------------------------------------------
    def relevance(self, query: int, database: Sequence[int]) -> list[str]:
        """ "same" for an image of the query's class, else wrong."""
        own = self.labels[query]
        return [SAME if self.labels[int(i)] == own else WRONG for i in database]

    def query_groups(self) -> list[str]:
        return [self.class_names[c] for c in self.labels.tolist()]

    def database_groups(self) -> list[str]:
        return self.query_groups()  # the gallery is both

    def query_image(self, query: int) -> tuple[Path, None]:
        return Path(self.image_paths[query]), None

    def query_name(self, query: int) -> str:
        return str(self.image_names[query])

    def class_sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.class_names))

    def subset(self, keep: np.ndarray, name: str | None = None) -> ClassGroundTruth:
        """The images ``keep`` (indices, kept in dataset order), class ids unchanged."""
        keep = np.sort(np.asarray(keep, dtype=np.int64))
        pick = keep.tolist()
        return ClassGroundTruth(
            name or self.name,
            [self.image_names[i] for i in pick],
            take(self.image_paths, keep),  # compact for ImagePaths (GLDv2's 1.6 M images)
            self.labels[keep],
            self.class_names,
            None if self.split is None else [self.split[i] for i in pick],
            [self.sources[i] for i in pick] if self.sources else [],
        )
