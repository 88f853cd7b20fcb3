"""Readers for the on-disk ground-truth formats of landmark retrieval datasets.

* VGG "classic" (Oxford5k, Paris6k and the generated toy set): an image folder plus
  ``gt_files/<landmark>_<k>_{good,ok,junk,query}.txt``.
* Revisited (ROxford5k, RParis6k): ``gnd_<name>.pkl`` with ``imlist``, ``qimlist`` and one
  ``gnd`` dict (``bbx``, ``easy``, ``hard``, ``junk``) per query.

Both return a :class:`RetrievalGroundTruth`; every problem with the files raises a
:class:`DatasetError` whose message names the file (and line) and says how to fix it.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import numpy as np

from retrieval.data.ground_truth import Query, RetrievalGroundTruth
from retrieval.data.image_checks import find_undecodable
from retrieval.data.truth import BBox
from retrieval.utils.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_QUERY_FILE = re.compile(r"^(?P<landmark>.+)_(?P<k>\d+)_query\.txt$")
_OXFORD_PREFIX = "oxc1_"  # Oxford's query files name images with this prefix; Paris's do not


def skip_unreadable(index: dict[str, Path], where: Path) -> dict[str, str]:
    """Remove images that do not decode from ``index`` (Paris6k ships about 20 corrupt files;
    an interrupted extraction leaves truncated ones; a damaged JPEG keeps its header) with one
    warning naming them; returns name -> reason for the skipped ones."""
    bad = find_undecodable(list(index.values()), where, f"checking images in {where.name}")
    problems = {name: bad[path] for name, path in index.items() if path in bad}
    for name in problems:
        del index[name]
    if problems:
        log.warning("skipped %s", unreadable_summary(problems, where))
    return problems


def unreadable_summary(problems: dict[str, str], where: Path, shown: int = 25) -> str:
    """``"N unreadable image(s) in WHERE: a (reason); b (reason) and K more"``: one bounded line."""
    listed = "; ".join(f"{name} ({reason})" for name, reason in list(problems.items())[:shown])
    more = f" and {len(problems) - shown} more" if len(problems) > shown else ""
    return f"{len(problems)} unreadable image(s) in {where}: {listed}{more}"


def index_images(images_dir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Map image name (file stem) -> path for every readable image below ``images_dir``,
    and name -> reason for the unreadable ones.

    Recursive because Paris6k nests images in ``paris/<landmark>/`` while Oxford5k and the
    revisited sets are flat. Unreadable files are left out with a warning
    (:func:`skip_unreadable`); the ground-truth readers drop them from their lists too.
    """
    if not images_dir.is_dir():
        raise DatasetError(f"image folder {images_dir} does not exist")
    index: dict[str, Path] = {}
    for path in sorted(images_dir.rglob("*")):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            index.setdefault(path.stem, path)
    if not index:
        raise DatasetError(f"image folder {images_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    skipped = skip_unreadable(index, images_dir)
    if not index:
        raise DatasetError(f"image folder {images_dir} holds no readable image")
    return index, skipped


def _read_name_list(path: Path, known: dict[str, Path], skipped: dict[str, str] | None = None) -> list[str]:
    names = []
    for line_no, raw in enumerate(path.read_text().splitlines(), start=1):
        name = raw.strip()
        if not name or name in (skipped or {}):  # an unreadable image: warned about, left out
            continue
        if name not in known:
            raise DatasetError(
                f"{path}:{line_no} names image '{name}', which is not in the image folder "
                f"(is the image archive fully extracted?)"
            )
        names.append(name)
    return names


def parse_query_line(path: Path) -> tuple[str, tuple[float, float, float, float]]:
    """Parse ``<image-name> x1 y1 x2 y2`` from a VGG ``*_query.txt`` file."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parts = lines[0].split() if lines else []
    try:
        if len(lines) != 1 or len(parts) != 5:
            raise ValueError
        x1, y1, x2, y2 = (float(v) for v in parts[1:])
    except ValueError:
        raise DatasetError(
            f"{path}:1 is not a query line '<image-name> x1 y1 x2 y2' (got {lines[:1]!r})"
        ) from None
    name = parts[0]
    if name.startswith(_OXFORD_PREFIX):
        name = name[len(_OXFORD_PREFIX) :]
    return name, (x1, y1, x2, y2)


def load_classic_ground_truth(
    root: str | Path, name: str, images_dir: str = "jpg", gt_dir: str = "gt_files"
) -> RetrievalGroundTruth:
    """Read a VGG-layout dataset: ``root/images_dir`` (any depth) and ``root/gt_dir``."""
    root = Path(root)
    gt_path = root / gt_dir
    if not gt_path.is_dir():
        raise DatasetError(f"ground-truth folder {gt_path} does not exist")
    images, skipped = index_images(root / images_dir)
    image_names = sorted(images)
    position = {n: i for i, n in enumerate(image_names)}

    query_files = sorted(p for p in gt_path.iterdir() if _QUERY_FILE.match(p.name))
    if not query_files:
        raise DatasetError(f"{gt_path} holds no '<landmark>_<k>_query.txt' files")
    queries = []
    for query_file in query_files:
        match = _QUERY_FILE.match(query_file.name)
        assert match is not None  # query_files holds only names that match
        stem = query_file.name[: -len("_query.txt")]
        query_name, bbox = parse_query_line(query_file)
        if query_name in skipped:
            raise DatasetError(
                f"{query_file}:1 names query image '{query_name}', which is unreadable "
                f"({skipped[query_name]}); re-download the dataset"
            )
        if query_name not in images:
            raise DatasetError(
                f"{query_file}:1 names query image '{query_name}', which is not in {root / images_dir}"
            )
        labels = {}
        for label in ("good", "ok", "junk"):
            label_file = gt_path / f"{stem}_{label}.txt"
            if not label_file.is_file():
                raise DatasetError(f"{label_file} is missing (every query needs good, ok and junk files)")
            labels[label] = np.asarray(
                sorted(position[n] for n in _read_name_list(label_file, images, skipped)), dtype=np.int64
            )
        if labels["good"].size + labels["ok"].size == 0:
            raise DatasetError(f"query {stem}: both {stem}_good.txt and {stem}_ok.txt are empty")
        queries.append(
            Query(name=query_name, landmark=match["landmark"], path=images[query_name], bbox=bbox, **labels)
        )
    return RetrievalGroundTruth(
        name,
        image_names,
        [images[n] for n in image_names],
        queries,
        "classic",
        skipped=[f"{n} ({reason})" for n, reason in skipped.items()],
    )


def load_revisited_ground_truth(
    root: str | Path, name: str, images_dir: str = "jpg", pkl_name: str | None = None
) -> RetrievalGroundTruth:
    """Read a revisited dataset: ``root/gnd_<name>.pkl`` and images in ``root/images_dir``."""
    root = Path(root)
    pkl_path = root / (pkl_name or f"gnd_{name}.pkl")
    if not pkl_path.is_file():
        raise DatasetError(f"ground-truth file {pkl_path} does not exist")
    try:
        with pkl_path.open("rb") as f:
            gnd_file = pickle.load(f)
        imlist, qimlist, gnd = gnd_file["imlist"], gnd_file["qimlist"], gnd_file["gnd"]
    except Exception as error:  # corrupt pickle, wrong keys, truncated file...
        raise DatasetError(
            f"{pkl_path} is not a revisited ground-truth pickle (dict with imlist, qimlist, gnd): {error!r}"
        ) from None
    if len(gnd) != len(qimlist):
        raise DatasetError(f"{pkl_path}: {len(qimlist)} query names but {len(gnd)} gnd entries")
    images, skipped = index_images(root / images_dir)
    unreadable = [f"{n} ({skipped[n]})" for n in list(imlist) + list(qimlist) if n in skipped]
    if unreadable:  # the revisited lists index images by position: none may go missing
        raise DatasetError(
            f"{pkl_path} lists {len(unreadable)} unreadable images, e.g. "
            f"{unreadable[:3]}; re-download {root / images_dir}"
        )
    missing = [n for n in list(imlist) + list(qimlist) if n not in images]
    if missing:
        raise DatasetError(
            f"{pkl_path} names {len(missing)} images not in {root / images_dir}, e.g. {missing[:3]}"
        )
    queries = []
    for q_name, entry in zip(qimlist, gnd):
        labels = {
            k: np.asarray(sorted(np.asarray(entry.get(k, []), dtype=np.int64).ravel()), dtype=np.int64)
            for k in ("easy", "hard", "junk")
        }
        bbx = entry.get("bbx")
        bbox: BBox | None = None
        if bbx is not None and len(bbx) == 4:
            x1, y1, x2, y2 = (float(v) for v in bbx)
            bbox = (x1, y1, x2, y2)
        landmark = re.sub(r"_\d+$", "", q_name)
        queries.append(Query(name=q_name, landmark=landmark, path=images[q_name], bbox=bbox, **labels))
    return RetrievalGroundTruth(name, list(imlist), [images[n] for n in imlist], queries, "revisited")
