"""Revisited Oxford / Paris with revisitop's 1M distractors appended (ROxf+R1M, RPar+R1M).

Layout (filipradenovic/revisitop, python/dataset.py ``configdataset('revisitop1m')`` and
python/download.py ``download_distractors``; what ``retrieval-download dataset=roxford5k+r1m``
writes into ``<data_dir>/revisitop1m``)::

    <distractors root>/revisitop1m.txt     one image a line, a path relative to jpg/ (the
                                           MATLAB reader appends .jpg to a name without one)
    <distractors root>/jpg/...             the 100 revisitop1m.N.tar.gz archives unpacked
    <distractors root>/shards/revisitop1m.N.txt   what the downloader unpacked (shard_lists)

The benchmark is read as usual (:func:`load_revisited_ground_truth`); the distractors are
appended after its ``imlist`` in the list's order, so every query's easy / hard / junk
indices stay what the pickle says, and database index ``offset + i`` is distractor ``i``.
Queries are unchanged. The image folder is never listed: the list names the images, the
shard lists say which the downloader unpacked, and a seeded sample is checked.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from retrieval.data.ground_truth import Distractors, RetrievalGroundTruth
from retrieval.data.image_paths import ChainedPaths, ImagePaths, check_sampled
from retrieval.data.landmark_formats import load_revisited_ground_truth
from retrieval.data.shard_lists import keep_unpacked
from retrieval.utils.errors import DatasetError

R1M, R1M_LIST, R1M_SHARDS = "revisitop1m", "revisitop1m.txt", 100
DOWNLOAD = "retrieval-download dataset=roxford5k+r1m paths.data_dir=DATA_DIR"
_HINT = (
    f"Download them with `{DOWNLOAD}` (or rparis6k+r1m; the distractors go to "
    f"DATA_DIR/revisitop1m: all 100 archives, shards=N for the first N, to try it) or fetch revisitop1m.txt and jpg/revisitop1m.N.tar.gz from "
    f"http://ptak.felk.cvut.cz/revisitop/revisitop1m/ and unpack the archives into <root>/jpg/."
)


def _with_extension(name: str) -> str:
    return name if Path(name).suffix else f"{name}.jpg"


def read_distractors(root: str | Path, offset: int, check_sample: int = 64, seed: int = 0) -> Distractors:
    """The distractor images of ``root`` (see the module doc), indexed from ``offset``."""
    root = Path(root).expanduser()
    list_file = root / R1M_LIST
    if not list_file.is_file():
        raise DatasetError(f"the distractor image list {list_file} does not exist. {_HINT}")
    text = list_file.read_bytes()
    names = np.asarray([_with_extension(n.strip()) for n in text.decode().splitlines() if n.strip()])
    if not len(names):
        raise DatasetError(f"{list_file} lists no images; download it again with `{DOWNLOAD}`")
    digest = hashlib.sha256(text)
    keep = keep_unpacked(root, np.char.encode(names, "utf-8"), lambda listed: listed, R1M_SHARDS, R1M)
    if keep is not None:  # the downloader's record: only images it unpacked
        names = names[keep]
        digest.update(np.packbits(keep).tobytes())
        if not len(names):
            raise DatasetError(f"none of the images {list_file} lists is in {root / 'jpg'}. {_HINT}")
    paths = ImagePaths(root / "jpg", names)
    check_sampled(paths, check_sample, seed, f"distractors listed in {list_file}", _HINT)
    return Distractors(R1M, names.tolist(), paths, offset, list_file, digest.hexdigest())


def load_revisited_with_distractors(
    root: str | Path,
    name: str,
    distractors_root: str | Path,
    images_dir: str = "jpg",
    check_sample: int = 64,
) -> RetrievalGroundTruth:
    """``gnd_<name>.pkl`` of ``root`` with the distractors of ``distractors_root`` appended."""
    base = load_revisited_ground_truth(root, name, images_dir)
    distractors = read_distractors(distractors_root, len(base.image_names), check_sample)
    return RetrievalGroundTruth(
        f"{name}+r1m",
        [*base.image_names, *distractors.names],
        ChainedPaths(base.image_paths, distractors.paths),
        base.queries,
        base.protocol,
        base.skipped,
        distractors,
    )
