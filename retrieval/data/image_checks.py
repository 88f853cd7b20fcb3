"""Which images of a collection decode: each image is decoded once, and the verdict kept.

A JPEG whose entropy-coded data is damaged keeps a valid header and end-of-image marker, so
the header check (:func:`~retrieval.data.image_io.image_problem`) passes it and training
later dies in the middle of an epoch ("broken data stream"). Only decoding finds that damage.
Decoding at 1/8 scale (libjpeg's DCT scaling, ``Image.draft``) still reads every coefficient
and costs about half a full decode; Pillow releases the GIL while decoding, so a thread pool
uses every core. The verdicts live in a small JSON in the user's cache
(``$RETRIEVAL_CACHE`` or ``~/.cache/retrieval``, one file per image folder; keyed by file
name, size and modification time), never inside the dataset, so a collection is decoded
once, not at every start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from rich.progress import track

from retrieval.data.image_io import image_problem
from retrieval.utils.atomic import write_atomic

log = logging.getLogger(__name__)

_VERSION = 1  # bump when the checks change, so old verdicts are not trusted


def decode_problem(path: Path) -> str | None:
    """Why ``path`` cannot be decoded, or None: the header checks, then a (reduced) decode."""
    if (problem := image_problem(path)) is not None:
        return problem
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except (OSError, SyntaxError, ValueError) as error:
        return f"damaged image data ({error})"
    return None


def checks_file(folder: Path) -> Path:
    """Where the verdicts of ``folder``'s images are remembered."""
    root = Path(os.environ.get("RETRIEVAL_CACHE", Path.home() / ".cache" / "retrieval"))
    digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:16]
    return root / "image-checks" / f"{folder.name}-{digest}.json"


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _read_verdicts(checks: Path) -> dict[str, list]:
    try:
        saved = json.loads(checks.read_text())
        return saved["images"] if saved.get("version") == _VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # none yet, or damaged: check again
        return {}


def find_undecodable(
    paths: Sequence[Path], folder: Path, description: str = "checking images"
) -> dict[Path, str]:
    """``path -> reason`` for the images among ``paths`` that do not decode. Verdicts are
    remembered in ``folder / CHECKS_FILE`` (``paths`` named relative to ``folder`` where
    they lie below it), so only new or changed files are decoded again."""
    checks = checks_file(folder)
    verdicts = _read_verdicts(checks)

    def key(path: Path) -> str:
        return os.path.relpath(path, folder)

    stamps = {path: _stamp(path) for path in paths}
    todo = [p for p in paths if verdicts.get(key(p), [None, None])[:2] != stamps[p]]
    if todo:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            found = track(
                pool.map(decode_problem, todo),
                total=len(todo),
                description=f"{description} (decoded once, then remembered)",
                disable=len(todo) < 200,
                transient=True,
            )
            for path, problem in zip(todo, found, strict=True):
                verdicts[key(path)] = [*stamps[path], problem]
        try:
            checks.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(checks, json.dumps({"version": _VERSION, "images": verdicts}), fsync=False)
        except OSError as error:  # a read-only dataset: nothing remembered, nothing broken
            log.debug("could not remember image checks in %s: %s", checks, error)
    return {p: verdicts[key(p)][2] for p in paths if verdicts[key(p)][2] is not None}
