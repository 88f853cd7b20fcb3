"""Databases that grow and shrink: new rows appended as a shard of their own, rows removed
by image name, the rest of the artifact (model, checkpoint, whitening) unchanged.

The whitening is the one fitted when the database was built: added images are projected
by it, never refitted (a refit would change every stored vector and every query's
meaning); rebuild to refit it on the grown collection. A database built in one go and one
built by removes and adds of the same images hold the same rows, so they give the same
search results (tested).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from retrieval.serving.database import DatabaseArtifact
from retrieval.utils.errors import UserFacingError

_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _blocks(artifact: DatabaseArtifact) -> list[dict]:
    return artifact.shards or [{"first": 0, "count": len(artifact.embeddings), "source": "build"}]


def image_files(sources: Sequence[str | Path]) -> list[Path]:
    """The image files named by ``sources`` (files, or folders searched recursively), sorted
    within each folder, resolved, each once."""
    found: list[Path] = []
    for source in sources:
        path = Path(source).expanduser().resolve()
        if path.is_dir():
            found += sorted(
                p.resolve() for p in path.rglob("*") if p.suffix.lower() in _SUFFIXES and p.is_file()
            )
        elif path.is_file():
            found.append(path)
        else:
            raise UserFacingError(f"images={source}: no such file or folder; name image files or folders")
    return list(dict.fromkeys(found))


def name_of(artifact: DatabaseArtifact, path: Path) -> str:
    """An added image's name, spelled as the database's names are (as its first row shows):
    the path relative to the image root, the same without suffix, or the file stem."""
    root = Path(artifact.image_root) if artifact.image_root else Path(path).parent

    def spellings(image: Path) -> tuple[str, str, str]:
        relative = image.relative_to(root)
        return str(relative), str(relative.with_suffix("")), image.stem

    scheme = 0
    if artifact.image_paths:
        try:
            scheme = spellings(Path(artifact.image_paths[0])).index(artifact.image_names[0])
        except ValueError:  # a name of another spelling, or a first image outside the root
            scheme = 0
    return spellings(Path(path))[scheme]


def new_images(artifact: DatabaseArtifact, paths: Sequence[Path]) -> tuple[list[str], list[str]]:
    """(paths, names) of the images of ``paths`` not yet in the database; images outside its
    image root are refused (the app serves and names images from there)."""
    root = Path(artifact.image_root) if artifact.image_root else None
    outside = [p for p in paths if root is not None and not Path(p).is_relative_to(root)]
    if outside:
        raise UserFacingError(
            f"{len(outside)} image(s) to add are outside the database's image root {root} "
            f"(first: {outside[0]}); move them under it, or build a database of their own"
        )
    known_paths, known_names = set(artifact.image_paths), set(artifact.image_names)
    out_paths, out_names = [], []
    for path in paths:
        name = name_of(artifact, Path(path))
        if str(path) in known_paths or name in known_names:
            continue
        if name in out_names:
            raise UserFacingError(f"two images to add would both be named {name!r}; rename one")
        out_paths.append(str(path))
        out_names.append(name)
    return out_paths, out_names


def with_added(
    artifact: DatabaseArtifact, descriptors: np.ndarray, paths: Sequence[str], names: Sequence[str]
) -> DatabaseArtifact:
    """``artifact`` with rows for ``descriptors`` (unit, unwhitened: as the network gives them)
    appended as one new shard, projected by the stored whitening."""
    vectors = artifact.whitening.apply(descriptors) if artifact.whitening is not None else descriptors
    vectors = np.asarray(vectors).astype(artifact.embeddings.dtype)
    n = len(artifact.embeddings)
    block = {"first": n, "count": len(vectors), "source": f"add {_now()}"}
    return dataclasses.replace(
        artifact,
        embeddings=np.concatenate([artifact.embeddings, vectors]),
        image_paths=[*artifact.image_paths, *paths],
        image_names=[*artifact.image_names, *names],
        shards=[*_blocks(artifact), block],
    )


def without(artifact: DatabaseArtifact, names: Sequence[str]) -> DatabaseArtifact:
    """``artifact`` without the rows of the images ``names``; each shard keeps its other rows."""
    position = {name: i for i, name in enumerate(artifact.image_names)}
    unknown = [n for n in names if n not in position]
    if unknown:
        raise UserFacingError(
            f"{len(unknown)} name(s) to remove are not in database {artifact.path} "
            f"(e.g. {', '.join(map(repr, unknown[:5]))}); names are as listed in its meta.json"
        )
    keep = np.ones(len(artifact.embeddings), dtype=bool)
    keep[[position[n] for n in names]] = False
    if not keep.any():
        raise UserFacingError("removing every image would leave an empty database; delete the folder instead")
    blocks, first = [], 0
    for block in _blocks(artifact):
        count = int(keep[block["first"] : block["first"] + block["count"]].sum())
        if count:
            blocks.append({**block, "first": first, "count": count})
            first += count
    rows = np.flatnonzero(keep)
    return dataclasses.replace(
        artifact,
        embeddings=artifact.embeddings[rows],
        image_paths=[artifact.image_paths[i] for i in rows],
        image_names=[artifact.image_names[i] for i in rows],
        shards=blocks,
    )
