"""Readers for class-labelled image collections: one folder per class, or a CSV.

* **folder**: ``<root>/<class>/**/<image>`` (torchvision's ImageFolder layout); the class
  is the name of the top-level sub-folder.
* **CSV**: a header line naming at least ``path`` and ``label`` (an optional ``split``
  column holds ``train`` / ``val`` / ``test``; other columns are ignored), then one image
  per line. Relative paths are resolved against ``image_root`` (default: the CSV's folder).

Both return a :class:`ClassGroundTruth`. Every problem raises a :class:`DatasetError` that
names the file (and line) and says how to fix it, listing all offenders at once.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from retrieval.data.class_ground_truth import ClassGroundTruth
from retrieval.data.image_checks import find_undecodable
from retrieval.data.landmark_formats import IMAGE_EXTENSIONS, unreadable_summary
from retrieval.utils.errors import DatasetError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("path", "label")
GENERATE_HINT = (
    "To try it on generated data: dataset=toy_classes (written on first use to "
    "data/toy_classes/<class>/*.png with data/toy_classes/labels.csv)."
)
_SHOWN = 5  # offenders listed in one message


def _listing(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return "; ".join(items[:_SHOWN]) + more


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() and not path.name.startswith(".")


def _given(path: str | Path | None, name: str, option: str, what: str) -> Path:
    """``path`` expanded; None (the option was not set) is an error saying what to pass."""
    if path is None:
        raise DatasetError(f"dataset={name} needs {option}, {what}. {GENERATE_HINT}")
    return Path(path).expanduser()


def read_class_folders(root: str | Path | None, name: str = "folder") -> ClassGroundTruth:
    """Every image below ``<root>/<class>/``; classes sorted by name."""
    root = _given(root, name, "dataset.root=DIR", "a folder with one sub-folder of images per class")
    if not root.is_dir():
        raise DatasetError(f"class folder root {root} does not exist (dataset.root=DIR). {GENERATE_HINT}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    stray = [p for p in root.iterdir() if _is_image(p)]
    if stray:
        log.warning(
            "%d images lie directly in %s and are ignored: only images inside a class "
            "sub-folder have a label",
            len(stray),
            root,
        )
    images = {d.name: sorted(p for p in d.rglob("*") if _is_image(p)) for d in class_dirs}
    bad = _skip_unreadable([p for paths in images.values() for p in paths], root, root)
    images = {c: [p for p in paths if p not in bad] for c, paths in images.items()}
    if not images:
        raise DatasetError(
            f"{root} has no class sub-folders: put each class's images in "
            f"{root}/<class name>/ (extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    too_small = [f"{root / c} has {len(paths)}" for c, paths in images.items() if len(paths) < 2]
    if too_small:
        raise DatasetError(
            f"every class needs at least 2 images (a query needs another image of "
            f"its class to find, a P×K batch a positive): {_listing(too_small)}. "
            f"Add images to these folders or remove them."
        )
    _require_two_classes(list(images), str(root))
    paths = [p for c in images for p in images[c]]
    labels = np.repeat(np.arange(len(images), dtype=np.int64), [len(v) for v in images.values()])
    return ClassGroundTruth(
        name,
        [p.relative_to(root).as_posix() for p in paths],
        paths,
        labels,
        list(images),
        sources=[str(p.parent) for p in paths],
    )


def read_class_csv(
    csv_path: str | Path | None, image_root: str | Path | None = None, name: str = "csv"
) -> ClassGroundTruth:
    """Rows of ``path,label[,split]`` (a header line names the columns)."""
    csv_path = _given(
        csv_path, name, "dataset.csv=FILE", "a CSV whose header names the columns path,label[,split]"
    )
    if not csv_path.is_file():
        raise DatasetError(f"CSV file {csv_path} does not exist (dataset.csv=FILE)")
    base = Path(image_root).expanduser() if image_root is not None else csv_path.parent
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: spreadsheet BOMs
            rows = [
                (n, row) for n, row in enumerate(csv.reader(f), start=1) if any(cell.strip() for cell in row)
            ]
    except (UnicodeDecodeError, csv.Error) as error:  # a spreadsheet file, an image, a zip...
        raise DatasetError(
            f"{csv_path} is not a UTF-8 text CSV ({error}): save it as CSV (UTF-8) with the "
            f"columns path,label[,split] and pass it as dataset.csv=FILE"
        ) from None
    if not rows:
        raise DatasetError(
            f"{csv_path} is empty: its first line must name the columns, "
            f"e.g. 'path,label' or 'path,label,split'"
        )
    header_line, header = rows[0]
    columns = [c.strip().lower() for c in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(
            f"{csv_path}:{header_line}: the header {header} lacks the column(s) "
            f"{', '.join(missing)}. The first line must name the columns, e.g. "
            f"'path,label' or 'path,label,split' (split: {'/'.join(SPLITS)})."
        )
    at = {c: columns.index(c) for c in (*REQUIRED_COLUMNS, "split") if c in columns}
    entries, problems = [], []
    seen: dict[str, int] = {}  # path -> the line it first appears on
    for line, row in rows[1:]:
        where = f"{csv_path}:{line}"
        if len(row) < len(columns):
            problems.append(f"{where}: {len(row)} fields where the header has {len(columns)}")
            continue
        value = {c: row[i].strip() for c, i in at.items()}
        if not value["path"] or not value["label"]:
            problems.append(f"{where}: empty {'path' if not value['path'] else 'label'}")
            continue
        path = base / value["path"]
        if not path.is_file():
            problems.append(f"{where}: image {path} does not exist")
        split = value.get("split", "").lower()
        if "split" in at and split not in SPLITS:
            problems.append(f"{where}: split '{value['split']}' is not one of {', '.join(SPLITS)}")
        if value["path"] in seen:
            problems.append(f"{where}: {value['path']} is listed again (first on line {seen[value['path']]})")
        seen.setdefault(value["path"], line)
        entries.append((value["path"], path, value["label"], split, where))
    if problems:
        raise DatasetError(
            f"{len(problems)} bad row(s) in the CSV: {_listing(problems)}. Fix these "
            f"lines (relative paths are resolved against {base}; set "
            f"dataset.image_root=DIR if they are relative to another folder)."
        )
    return _from_entries(entries, csv_path, name, has_split="split" in at)


def _skip_unreadable(paths: list[Path], folder: Path, named_from: Path) -> set[Path]:
    """The images among ``paths`` that do not decode, left out with one warning naming them
    (verdicts remembered in ``folder``: see :mod:`~retrieval.data.image_checks`)."""
    bad = find_undecodable(paths, folder, f"checking images in {folder.name}")
    if bad:
        named = {os.path.relpath(path, named_from): reason for path, reason in bad.items()}
        log.warning("skipped %s", unreadable_summary(named, folder))
    return set(bad)


def _from_entries(entries: list[tuple], csv_path: Path, name: str, has_split: bool) -> ClassGroundTruth:
    bad = _skip_unreadable([e[1] for e in entries], csv_path.parent, csv_path.parent)
    entries = [e for e in entries if e[1] not in bad]
    by_label: dict[str, list[str]] = defaultdict(list)
    for _, _, label, _, where in entries:
        by_label[label].append(where)
    too_small = [
        f"label '{label}' has 1 image ({where[0]})" for label, where in by_label.items() if len(where) < 2
    ]
    if too_small:
        raise DatasetError(
            f"every class needs at least 2 images (a query needs another image of "
            f"its class to find, a P×K batch a positive): {_listing(too_small)}. "
            f"Add rows for these labels or remove their lines."
        )
    class_names = sorted(by_label)
    _require_two_classes(class_names, str(csv_path))
    class_id = {c: i for i, c in enumerate(class_names)}
    return ClassGroundTruth(
        name,
        [e[0] for e in entries],
        [e[1] for e in entries],
        np.asarray([class_id[e[2]] for e in entries], dtype=np.int64),
        class_names,
        [e[3] for e in entries] if has_split else None,
        [e[4] for e in entries],
    )


def _require_two_classes(class_names: list[str], where: str) -> None:
    if len(class_names) < 2:
        raise DatasetError(
            f"{where} has {len(class_names)} class ({', '.join(class_names)}): "
            f"retrieval by class needs at least 2, so that negatives exist"
        )
