"""Google Landmarks Dataset v2 (``train`` set) in its published layout, read from its CSVs.

Layout (github.com/cvdfoundation/google-landmark, README "Download train set" and
"Extracting the data"; what ``retrieval-download dataset=gldv2`` writes)::

    <root>/train.csv               id,url,landmark_id      (4,132,914 images: "full")
    <root>/train_clean.csv         landmark_id,images      (images: space-separated ids;
                                                             1.6 M images, 81 k landmarks: "clean")
    <root>/train_attribution.csv   id,url,author,license,title
    <root>/train/a/b/c/abc....jpg  the 500 images_NNN.tar shards unpacked into train/
                                   (a, b, c: the first three characters of the 16-char id)
    <root>/shards/images_NNN.txt   what the downloader unpacked (see shard_lists)

The image folder is never listed: paths are built from the ids (:class:`ImagePaths`), the
images the downloader did not unpack are left out by its shard lists, and a seeded sample
is checked. Each image's class is its ``landmark_id``; the validation split holds a seeded
fraction of the landmarks with all their images (landmark-disjoint: no validation landmark
is seen in training), in the ``split`` column the class datamodule reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from retrieval.data.class_ground_truth import ClassGroundTruth
from retrieval.data.image_paths import ImagePaths, check_sampled, gldv2_layout
from retrieval.data.shard_lists import keep_unpacked
from retrieval.utils.errors import DatasetError

CSV_OF_VERSION = {"clean": "train_clean.csv", "full": "train.csv"}
COLUMNS_OF_VERSION = {"clean": ("landmark_id", "images"), "full": ("id", "landmark_id")}
TRAIN_DIR = "train"
TRAIN_SHARDS = 500
DOWNLOAD = "retrieval-download dataset=gldv2 paths.data_dir=DATA_DIR"
_DOWNLOAD_HINT = (
    f"Download it with `{DOWNLOAD}` (all 500 shards, ~500 GB; add shards=N for the first N, "
    f"e.g. shards=2 to try it), or put the published files there by hand: the CSVs from "
    f"https://s3.amazonaws.com/google-landmark/metadata/ and the train/images_NNN.tar shards "
    f"unpacked into <root>/train/."
)


def _read_csv(path: Path, version: str) -> pd.DataFrame:
    wanted = COLUMNS_OF_VERSION[version]
    if not path.is_file():
        raise DatasetError(
            f"GLDv2 file {path} does not exist (dataset.items.version={version}). {_DOWNLOAD_HINT}"
        )
    try:
        header = pd.read_csv(path, nrows=0).columns.str.strip().tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path} is not a readable CSV ({error}). {_DOWNLOAD_HINT}") from None
    missing = [c for c in wanted if c not in header]
    if missing:
        raise DatasetError(
            f"{path}: the header {header} lacks {', '.join(missing)}; GLDv2's {path.name} has the "
            f"columns {','.join(wanted)}. The file is damaged or another file; download it "
            f"again with `{DOWNLOAD}`."
        )
    # C parser, two columns, ids as strings: train.csv's 4.1 M rows in seconds
    frame = pd.read_csv(path, usecols=list(wanted), dtype=str, keep_default_na=False)
    frame.columns = frame.columns.str.strip()
    return frame


def _ids_and_landmarks(root: Path, version: str) -> tuple[np.ndarray, np.ndarray]:
    if version not in CSV_OF_VERSION:
        raise DatasetError(f"dataset.items.version={version!r}: use clean or full")
    path = root / CSV_OF_VERSION[version]
    frame = _read_csv(path, version)
    if version == "clean":  # one row per landmark: split all lists at once (explode: 3x slower)
        images = frame["images"].str.strip()
        counts = np.where(images == "", 0, images.str.count(r"\s+") + 1)
        ids = " ".join(images.tolist()).split()
        frame = pd.DataFrame({"id": ids, "landmark_id": np.repeat(frame["landmark_id"].to_numpy(), counts)})
    bad_id = ~frame["id"].str.fullmatch(r"[0-9a-f]{16}")
    bad_label = ~frame["landmark_id"].str.fullmatch(r"\d+")
    if (bad_id | bad_label).any():
        row = frame[bad_id | bad_label].iloc[0]
        raise DatasetError(
            f"{path}: {int((bad_id | bad_label).sum())} entries are not a 16-character hex id with "
            f"an integer landmark_id, e.g. id={row['id']!r} landmark_id={row['landmark_id']!r}; "
            f"download the file again with `{DOWNLOAD}`."
        )
    return frame["id"].to_numpy(dtype="U16"), frame["landmark_id"].to_numpy(dtype=np.int64)


def _keep_unpacked(root: Path, ids: np.ndarray) -> np.ndarray:
    """A mask of the ids whose image the downloader unpacked (all True without shard lists)."""
    keep = keep_unpacked(
        root,
        np.char.encode(ids, "ascii"),
        lambda listed: np.char.rpartition(np.char.rpartition(listed, b"/")[:, 2], b".")[:, 0],
        TRAIN_SHARDS,
        "gldv2",
    )
    return np.ones(len(ids), dtype=bool) if keep is None else keep


def landmark_disjoint_split(landmarks: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """``"val"`` / ``"train"`` per image: a seeded ``val_fraction`` of the landmarks that have
    two or more images (a lone image has nothing to retrieve) goes to validation whole."""
    values, counts = np.unique(landmarks, return_counts=True)
    eligible = values[counts >= 2]
    n_val = round(val_fraction * len(values))
    n_val = int(min(max(n_val, 1 if val_fraction > 0 else 0), len(eligible), max(len(values) - 2, 0)))
    val = np.random.default_rng(seed).permutation(eligible)[:n_val]
    return np.where(np.isin(landmarks, val), "val", "train")


def read_gldv2(
    root: str | Path,
    version: str = "clean",
    val_fraction: float = 0.01,
    seed: int = 0,
    check_sample: int = 64,
    name: str = "gldv2",
) -> ClassGroundTruth:
    """GLDv2's train set (see the module doc): ``version`` clean or full."""
    root = Path(root).expanduser()
    ids, landmarks = _ids_and_landmarks(root, version)
    keep = _keep_unpacked(root, ids)
    ids, landmarks = ids[keep], landmarks[keep]
    if len(np.unique(landmarks)) < 2:
        raise DatasetError(
            f"{root}: {len(ids)} images of {len(np.unique(landmarks))} landmark(s) are on disk; "
            f"retrieval by landmark needs at least 2. {_DOWNLOAD_HINT}"
        )
    paths = ImagePaths(root / TRAIN_DIR, ids, gldv2_layout)
    check_sampled(
        paths,
        check_sample,
        seed,
        f"GLDv2 images listed in {CSV_OF_VERSION[version]}",
        f"{_DOWNLOAD_HINT} (a download resumes and re-checks what is there).",
    )
    class_ids, labels = np.unique(landmarks, return_inverse=True)
    return ClassGroundTruth(
        name,
        ids.tolist(),
        paths,
        labels.astype(np.int64),
        [str(c) for c in class_ids.tolist()],
        split=landmark_disjoint_split(landmarks, val_fraction, seed).tolist(),
    )
