"""The ground truth of the dataset a database was built from, in database indices.

A database records its dataset's name and root (``meta.json``), not a reader; the reader
follows from the files there, the same ones the datamodule read: ``gt_files/`` (VGG
classic: Oxford5k, Paris6k, the toy set) or ``gnd_<name>.pkl`` (revisited). Labels are
re-keyed by image *name*, so a ground truth whose images are not the database's is
detected instead of silently marking the wrong images. The labels are the ground truth's
own (:meth:`~retrieval.data.truth.GroundTruth.relevance`), as in the training plots.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.data.ground_truth import LABELS, RetrievalGroundTruth
from retrieval.data.landmark_formats import load_classic_ground_truth, load_revisited_ground_truth
from retrieval.data.truth import WRONG, BBox
from retrieval.serving.database import DatabaseArtifact
from retrieval.utils.errors import DatasetError, UserFacingError

log = logging.getLogger(__name__)

AP_SETUP = {
    "classic": "classic protocol: good ∪ ok, junk ignored",
    "revisited": "Medium: easy ∪ hard, junk ignored",
}


@dataclass(frozen=True)
class QueryTruth:
    id: int  # position in the dataset's query list
    name: str
    landmark: str
    path: Path
    bbox: BBox | None
    labels: dict[int, str]  # database index -> label, for the images tied to this query
    positives: np.ndarray  # database indices
    junk: np.ndarray

    def label(self, index: int) -> str:
        """The label of database image ``index`` (wrong where the ground truth names none)."""
        return self.labels.get(index, WRONG)


@dataclass(frozen=True)
class DatasetTruth:
    protocol: str  # "classic" | "revisited"
    queries: list[QueryTruth]

    @property
    def ap_setup(self) -> str:
        return AP_SETUP[self.protocol]

    @property
    def legend(self) -> tuple[str, ...]:
        """Every label a result can get under this protocol."""
        return (*LABELS[self.protocol], WRONG)


def _detect(root: Path, dataset: str) -> str | None:
    if (root / "gt_files").is_dir():
        return "classic"
    if (root / f"gnd_{dataset}.pkl").is_file():
        return "revisited"
    return None


def _read(root: Path, dataset: str, protocol: str) -> RetrievalGroundTruth:
    reader = load_classic_ground_truth if protocol == "classic" else load_revisited_ground_truth
    return reader(root, dataset)


def _rekey(gt: RetrievalGroundTruth, artifact: DatabaseArtifact) -> DatasetTruth:
    position = {name: i for i, name in enumerate(artifact.image_names)}
    unknown = [n for n in gt.image_names if n not in position]
    if unknown:
        raise DatasetError(
            f"its {len(gt.image_names)} images are not this database's "
            f"{len(artifact.image_names)} (e.g. {unknown[:3]} are not in it)"
        )
    to_db = np.asarray([position[n] for n in gt.image_names], dtype=np.int64)
    queries = []
    for qid, q in enumerate(gt.queries):
        labelled = q.labelled
        labels = dict(zip(to_db[labelled].tolist(), gt.relevance(qid, labelled)))
        queries.append(
            QueryTruth(
                qid, q.name, q.landmark, Path(q.path), q.bbox, labels, to_db[q.positives], to_db[q.junk]
            )
        )
    return DatasetTruth(gt.protocol, queries)


def load_dataset_truth(
    artifact: DatabaseArtifact, root: Path, mode: str = "auto"
) -> tuple[DatasetTruth | None, str]:
    """``(ground truth or None, a sentence saying which one and why)``.

    ``mode`` "auto" finds the format from the files and runs without marks when there is
    none (a folder of photos); "classic" / "revisited" insist, so a failure is an error.
    """
    if mode == "none":
        return None, "ground truth switched off (ground_truth=none)"
    protocol = _detect(root, artifact.dataset) if mode == "auto" else mode
    if protocol is None:
        return None, f"no ground truth found under {root} (gt_files/ or gnd_{artifact.dataset}.pkl)"
    try:
        truth = _rekey(_read(root, artifact.dataset, protocol), artifact)
    except DatasetError as error:
        message = f"the {protocol} ground truth of {artifact.dataset} under {root} is unusable: {error}"
        if mode != "auto":
            raise UserFacingError(f"{message}; fix it or start with ground_truth=none") from None
        log.warning("%s; results are shown without marks", message)
        return None, message
    return truth, f"{len(truth.queries)} queries, {protocol} ground truth from {root}"
