"""A searchable database: the descriptors of a dataset's images plus everything needed to
embed a new query the same way (model config, checkpoint hash, whitening). Built by
:mod:`retrieval.pipelines.database` (``retrieval-database build ...``).

On disk (a directory, written atomically by :func:`retrieval.utils.atomic.atomic_directory`:
built in ``.<dir>.tmp-<pid>-XXXX`` and renamed into place, so a crash never leaves a half
artifact under the final name):

- ``embeddings.npy``: ``(n, dim)`` float16 or float32, L2-normalised, whitened when
  whitening is on: the vectors the search index is built from;
- ``whitening.npz``: the PCA whitening (:class:`~retrieval.evaluation.whitening.Whitening`)
  that queries go through, when whitening is on;
- ``meta.json``: format version, image paths (absolute) and names, dataset and image root,
  the resolved ``model`` config and image size, checkpoint path + sha256, embedding and
  whitening settings, creation time, library versions; the manifest: each file's sha256
  and, per shard (a block of consecutive rows: one of the build, one per ``add``), its
  rows, origin and the sha256 of its vectors, so a damaged file names the rows it lost.
"""

from __future__ import annotations

import copy
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hydra.utils import instantiate

from retrieval.datamodules.transforms import eval_transform
from retrieval.evaluation.whitening import Whitening
from retrieval.models.checkpoints import file_sha256, load_weights
from retrieval.models.input_normalization import InputNormalization
from retrieval.serving.database_errors import BUILD_HINT, CheckpointMismatchError, DatabaseError
from retrieval.serving.integrity import EMBEDDINGS, META, check_manifest, check_vectors, rows_sha256
from retrieval.utils.atomic import atomic_directory

log = logging.getLogger(__name__)

# 2: meta.json records the backbone's pixel normalisation
FORMAT_VERSION = 2
WHITENING = "whitening.npz"


@dataclass
class DatabaseArtifact:
    embeddings: np.ndarray  # (n, dim): the searchable vectors (whitened if ``whitening``)
    image_paths: list[str]  # absolute
    image_names: list[str]
    dataset: str
    image_root: str | None
    model_config: dict  # the resolved ``model`` node of the build's config
    image_size: int
    checkpoint: str | None
    checkpoint_sha256: str | None
    whitening: Whitening | None = None
    whitening_info: dict = field(default_factory=dict)  # settings and what it was fit on
    scales: tuple[float, ...] = (1.0,)
    # the pixel normalisation the network was trained with (queries get the same)
    input_normalization: InputNormalization = field(default_factory=InputNormalization)
    created_at: str = ""
    versions: dict = field(default_factory=dict)
    path: Path | None = None  # where it was loaded from
    # row blocks of ``embeddings``: {"first", "count", "source"} (+ "sha256" once written);
    # empty: one block of every row, from the build
    shards: list[dict] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def meta(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "created_at": self.created_at,
            "dataset": self.dataset,
            "image_root": self.image_root,
            "images": {"paths": self.image_paths, "names": self.image_names},
            "embedding": {
                "count": len(self.embeddings),
                "dim": self.dim,
                "dtype": str(self.embeddings.dtype),
                "scales": list(self.scales),
            },
            "model": {
                "config": self.model_config,
                "image_size": self.image_size,
                "input_normalization": self.input_normalization.to_dict(),
            },
            "checkpoint": {"path": self.checkpoint, "sha256": self.checkpoint_sha256},
            "whitening": None
            if self.whitening is None
            else {
                "file": WHITENING,
                "dim": self.whitening.dim,
                "input_dim": self.whitening.input_dim,
                **self.whitening_info,
            },
            "versions": self.versions,
            "shards": self.shard_manifest(),
        }

    def shard_manifest(self) -> list[dict]:
        blocks = self.shards or [{"first": 0, "count": len(self.embeddings), "source": "build"}]
        return [{**b, "sha256": rows_sha256(self.embeddings, b["first"], b["count"])} for b in blocks]

    def write(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write atomically to ``directory``; replaces an existing database only with ``overwrite``."""
        target = Path(directory).expanduser().resolve()
        check_target(target, overwrite)
        with atomic_directory(target, fsync_files=True) as tmp:
            np.save(tmp / EMBEDDINGS, self.embeddings)
            if self.whitening is not None:
                np.savez(tmp / WHITENING, **self.whitening.to_dict())
            # the manifest: a swapped, re-ordered or damaged array file is refused at load
            files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
            # meta.json last: a directory with meta.json was written completely
            (tmp / META).write_text(json.dumps({**self.meta(), "files": files}, indent=1))
        return target


def check_target(target: Path, overwrite: bool) -> None:
    if not target.exists():
        return
    if not target.is_dir() or (any(target.iterdir()) and not (target / META).is_file()):
        # never delete a folder that is not a database: db_dir may be mistyped
        raise DatabaseError(f"{target} exists and is not a database; choose another db_dir")
    if (target / META).is_file() and not overwrite:
        raise DatabaseError(f"database {target} already exists; pass overwrite=true to replace it")


def _read_meta(directory: Path) -> dict:
    if not directory.is_dir():
        raise DatabaseError(
            f"database directory {directory} does not exist (db=DIR); build one with {BUILD_HINT}"
        )
    if not (directory / META).is_file():
        raise DatabaseError(f"{directory} is not a database (no {META}); build one with {BUILD_HINT}")
    try:
        meta = json.loads((directory / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatabaseError(f"database {directory}: {META} is not valid JSON ({error}); rebuild it") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise DatabaseError(
            f"database {directory} has format version {version}, this code reads version "
            f"{FORMAT_VERSION}; rebuild it with {BUILD_HINT}"
        )
    return meta


def load_database(directory: str | Path) -> DatabaseArtifact:
    """Read and validate a database directory written by :meth:`DatabaseArtifact.write`."""
    directory = Path(directory).expanduser().resolve()
    meta = _read_meta(directory)
    try:
        return _artifact_from(meta, directory)
    except (KeyError, TypeError) as error:  # a hand-edited or truncated meta.json / whitening.npz
        raise DatabaseError(
            f"database {directory}: {META} or {WHITENING} lacks {error}; rebuild it with {BUILD_HINT}"
        ) from None


def _artifact_from(meta: dict, directory: Path) -> DatabaseArtifact:
    check_manifest(meta, directory)
    embeddings = _load_array(directory / EMBEDDINGS)
    paths, names, dim = meta["images"]["paths"], meta["images"]["names"], meta["embedding"]["dim"]
    if embeddings.ndim != 2 or embeddings.shape != (len(paths), dim) or len(names) != len(paths):
        raise DatabaseError(
            f"database {directory}: {EMBEDDINGS} has shape {embeddings.shape} but {META} lists "
            f"{len(paths)} images of dimension {dim}; rebuild it"
        )
    check_vectors(embeddings, directory)
    whitening = None
    if meta["whitening"] is not None:
        try:
            with _open_npz(directory / WHITENING) as stored:
                whitening = Whitening.from_dict(stored)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:  # truncated or not an npz
            raise DatabaseError(
                f"database {directory}: {WHITENING} is unreadable ({error}); rebuild it with {BUILD_HINT}"
            ) from None
    return DatabaseArtifact(
        embeddings=embeddings,
        image_paths=paths,
        image_names=names,
        dataset=meta["dataset"],
        image_root=meta.get("image_root"),
        model_config=meta["model"]["config"],
        image_size=int(meta["model"]["image_size"]),
        checkpoint=meta["checkpoint"]["path"],
        input_normalization=InputNormalization.from_dict(meta["model"]["input_normalization"]),
        checkpoint_sha256=meta["checkpoint"]["sha256"],
        whitening=whitening,
        whitening_info={
            k: v for k, v in (meta["whitening"] or {}).items() if k not in ("file", "dim", "input_dim")
        },
        scales=tuple(meta["embedding"].get("scales", (1.0,))),
        created_at=meta.get("created_at", ""),
        versions=meta.get("versions", {}),
        path=directory,
        shards=[{k: v for k, v in s.items() if k != "sha256"} for s in meta.get("shards") or []],
    )


def _load_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatabaseError(f"database {path.parent} is incomplete: {path.name} is missing; rebuild it")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        # float32 stays a read-only memory map: the exact index and the re-rankers read it
        # as it is, paged in on use, never a second copy. float16 is read into memory: every
        # consumer converts it to float32 (the index keeps that copy), so a map would save
        # nothing; it keeps its dtype so that add/remove write the database's own dtype back
        return array if array.dtype == np.float32 else np.array(array)
    except (ValueError, OSError) as error:
        raise DatabaseError(
            f"database {path.parent}: {path.name} is unreadable ({error}); rebuild it"
        ) from None


def _open_npz(path: Path):
    if not path.is_file():
        raise DatabaseError(f"database {path.parent} is incomplete: {path.name} is missing; rebuild it")
    return np.load(path, allow_pickle=False)


def load_model_for_database(artifact: DatabaseArtifact, ckpt_path: str | Path | None = None):
    """``(model, transform)`` that embed a query exactly as the database was embedded.

    The network is rebuilt from the stored model config and loaded from the database's
    checkpoint (or ``ckpt_path``, if it moved); a checkpoint whose sha256 differs from the
    one recorded at build time is refused: its descriptors would not match the database's.
    """
    config = copy.deepcopy(artifact.model_config)
    if artifact.checkpoint_sha256 is not None:
        ckpt = Path(ckpt_path or artifact.checkpoint).expanduser()
        if not ckpt.is_file():
            raise DatabaseError(
                f"checkpoint {ckpt} of database {artifact.path} does not exist; pass "
                f"ckpt_path=FILE if it moved (it must be the same file: sha256 "
                f"{artifact.checkpoint_sha256[:12]}...)"
            )
        digest = file_sha256(ckpt)
        if digest != artifact.checkpoint_sha256:
            raise CheckpointMismatchError(
                f"database {artifact.path} was built with another checkpoint; rebuild it "
                f"(retrieval-database build ckpt_path={ckpt} ...) or query it with "
                f"the original checkpoint (sha256 {artifact.checkpoint_sha256[:12]}..., {ckpt} has "
                f"{digest[:12]}...)"
            )
        # every weight comes from the checkpoint: never download or read backbone weights
        config["net"]["backbone"]["weights"] = "none"
    model = instantiate(config)
    if artifact.checkpoint_sha256 is not None:
        load_weights(model, ckpt, network_only=True)
    return model.eval(), eval_transform(artifact.image_size, artifact.input_normalization)
