"""Checking downloaded files and unpacking tar archives that must not be trusted.

A checksum or size mismatch deletes the file. An archive member that could land outside
the target folder (absolute path, ``..``, a link pointing out, a device node) fails the
whole extraction; because :func:`safe_extract` writes into a fresh scratch folder that the
caller moves into place only afterwards, a refused archive leaves nothing in the dataset
folder and nothing anywhere else.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath

from PIL import Image

from retrieval.utils.atomic import write_atomic
from retrieval.utils.errors import DatasetError

_CHUNK = 1 << 20
# macOS tar adds AppleDouble "._name" twins and .DS_Store files; they are not data, and a
# "._x_query.txt" would even look like a ground-truth file to the loaders.
_JUNK_PREFIX, _JUNK_NAMES = "._", {".DS_Store"}


def file_digests(path: Path, algorithms: tuple[str, ...] = ("sha256", "md5")) -> dict[str, str]:
    """Hex digests of ``path`` for every algorithm, in one read of the file."""
    # usedforsecurity=False: md5 is an integrity check here, and FIPS builds refuse it otherwise
    hashers = {name: hashlib.new(name, usedforsecurity=False) for name in dict.fromkeys(algorithms)}
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def verify_file(
    path: Path, *, size: int | None = None, checksums: Mapping[str, str] | None = None, hint: str = ""
) -> dict[str, str]:
    """Check ``path`` against an expected size and checksums (``{"sha256": hex, ...}``).

    Returns the file's sha256 and md5. On a mismatch the file is deleted (it is useless and
    would otherwise be picked up again) and a :class:`DatasetError` names the file, what was
    expected and what was found, followed by ``hint``.
    """
    checksums = {algo: value.lower() for algo, value in (checksums or {}).items()}
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        _reject(path, "size", f"{size} bytes", f"{actual_size} bytes", hint)
    digests = file_digests(path, ("sha256", "md5", *checksums))
    for algo, expected in checksums.items():
        if digests[algo] != expected:
            _reject(path, algo, expected, digests[algo], hint)
    return digests


def _reject(path: Path, what: str, expected: str, actual: str, hint: str) -> None:
    path.unlink(missing_ok=True)
    raise DatasetError(
        f"{path.name} failed verification: expected {what} {expected}, got {actual}. The file is "
        f"corrupt or was tampered with, so it was deleted ({path}). {hint}".rstrip()
    )


def unsafe_reason(member: tarfile.TarInfo) -> str | None:
    """Why extracting ``member`` could write outside the target folder, or None if it cannot."""
    name = member.name
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive:
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' in its path"
    if member.ischr() or member.isblk() or member.isfifo():
        return "device file or FIFO"
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith(("/", "\\")) or PureWindowsPath(target).drive:
            return f"link to the absolute path {target!r}"
        # Refuse any '..' in a link target, not just ones that leave dest lexically: 'b -> a/..'
        # with 'a -> .' escapes although it normalises to inside. With no '..' and no absolute
        # path anywhere, every link can only descend, so nothing resolves outside dest.
        if ".." in PurePosixPath(target.replace("\\", "/")).parts:
            return f"link to {target!r}, which climbs out of its folder"
    elif not (member.isfile() or member.isdir()):
        return "unsupported member type"
    return None


def _checked_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    # Lazy, so one pass over the (possibly multi-GB, gzip'd) stream both checks and extracts.
    for member in tar:
        reason = unsafe_reason(member)
        if reason is not None:
            raise DatasetError(f"member {member.name!r}: {reason}")
        basename = PurePosixPath(member.name).name
        if basename.startswith(_JUNK_PREFIX) or basename in _JUNK_NAMES:
            continue
        if not hasattr(tarfile, "data_filter"):
            member.mode &= 0o755  # what filter="data" does: no setuid/setgid/world-write bits
        yield member


def safe_extract(archive: Path, dest: Path) -> int:
    """Extract tar ``archive`` (any compression) into the folder ``dest``; return the file count.

    Every member is checked by :func:`unsafe_reason` before it is written; on Pythons that
    have it (3.11.4+, 3.12+) tarfile's own ``filter="data"`` checks again as defence in
    depth. ``dest`` should be a scratch folder: a refused or corrupt archive leaves it
    partially filled, and the caller discards it.
    """
    dest.mkdir(parents=True, exist_ok=True)
    filter_kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(dest, members=_checked_members(tar), **filter_kwargs)
    except DatasetError as error:
        raise DatasetError(
            f"{archive.name} holds an unsafe {error}; refusing to extract it. "
            f"A genuine dataset archive never does this: the file is tampered "
            f"with or not what the server should have sent."
        ) from None
    except tarfile.FilterError as error:  # only reachable if our own check missed a case
        raise DatasetError(
            f"{archive.name} holds an unsafe member ({error}); refusing to extract it."
        ) from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DatasetError(
            f"{archive.name} is not a readable tar archive ({error}); it is truncated or corrupt."
        ) from None
    except OSError as error:
        raise DatasetError(f"extracting {archive.name} into {dest} failed: {error}") from None
    return sum(1 for p in dest.rglob("*") if p.is_file())


def move_tree(src: Path, dest: Path) -> None:
    """Move the contents of ``src`` into ``dest``, merging folders (Paris's two archives
    share ``paris/``); a file replaces one of the same name. Each move is a rename."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in sorted(src.iterdir()):
        target = dest / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir() and not target.is_symlink():
            move_tree(entry, target)
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)


def flatten_files(src: Path, dest: Path) -> int:
    """Move every regular file below ``src`` directly into ``dest``; return how many.

    Ground-truth archives are read as a flat ``gt_files/`` folder whatever folder the archive
    wraps its text files in.
    """
    dest.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    clashes = sorted(n for n, k in Counter(p.name for p in files).items() if k > 1)
    if clashes:
        raise DatasetError(
            f"the archive holds several files named {clashes[:3]} in different "
            f"folders, so they cannot all go into {dest}"
        )
    for path in files:
        os.replace(path, dest / path.name)
    return len(files)


class Manifest:
    """``<dataset>/.download.json``: per file, its verified size/sha256/md5 and where it went.

    Recording the sha256 at the first download is what lets later runs detect a changed or
    tampered file where the publisher gives no checksum (trust on first use).
    """

    def __init__(self, folder: Path, name: str = ".download.json"):
        self.path = folder / name
        try:
            self.files: dict[str, dict] = json.loads(self.path.read_text())["files"]
        except FileNotFoundError:
            self.files = {}
        except (ValueError, KeyError, TypeError) as error:
            raise DatasetError(
                f"{self.path} is unreadable ({error}); delete it and run again "
                f"(files are then re-verified or re-downloaded)"
            ) from None

    def save(self) -> None:
        write_atomic(self.path, json.dumps({"files": self.files}, indent=2, sort_keys=True))


def unreadable_images(images_dir: Path, extensions: tuple[str, ...]) -> tuple[int, list[Path]]:
    """Count the images below ``images_dir`` and list those PIL cannot open (header check).

    Paris6k ships about 20 broken files; they are reported, never deleted: the loader skips
    them with a warning, so the dataset on disk stays exactly what was published.
    """
    paths = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in extensions)
    bad = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception:  # noqa: BLE001 - PIL raises many types for broken files; all mean unreadable
            bad.append(path)
    return len(paths), bad
