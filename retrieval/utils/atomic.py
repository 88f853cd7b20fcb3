"""Writing a file or a folder so that its final name only ever holds a complete one.

Everything is built under a temporary name next to the target (same folder, hence same
filesystem, so the final ``os.replace`` is atomic) and renamed into place once complete; on
any failure, ``KeyboardInterrupt`` included, the temporary is deleted and the target is left
as it was. A folder cannot replace a non-empty folder in one rename, so an existing target
folder is first renamed aside and deleted once the new one is in place (put back if that
rename fails).

Temporary names are ``.<target name>.tmp-<pid>-<hex>`` (``.old-`` for a folder moved aside),
a file's temporary keeps the target's suffix (``np.save`` appends ``.npy`` otherwise). The
pid lets :func:`remove_stale` delete what a killed process (SIGKILL, power loss) left, once
that process is gone. Files are fsync'ed before their rename and the folder after it, so
after a crash a name holds either the old content or the complete new one; the files of a
folder are fsync'ed only when asked (``fsync_files=True``): a regenerable cache need not be.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

_TEMPORARY = re.compile(r"(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]+")


def sibling(target: Path, kind: str = "tmp", suffix: str = "") -> Path:
    """A fresh temporary name next to ``target`` that :func:`remove_stale` recognises."""
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:  # e.g. folders cannot be opened on Windows: nothing to sync there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process, or we cannot tell: keep its files
    return True


def remove_stale(target: Path) -> list[Path]:
    """Delete the temporaries of ``target`` whose process has died; returns them."""
    target = Path(target)
    prefix = f".{target.name}."
    removed: list[Path] = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        rest = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
        if target.suffix and rest.endswith(target.suffix):
            rest = rest[: -len(target.suffix)]
        match = _TEMPORARY.fullmatch(rest)
        if match is not None and int(match["pid"]) != os.getpid() and not _alive(int(match["pid"])):
            _remove(entry)
            removed.append(entry)
    return removed


# a temporary's name: ".<target>.tmp-PID-HEX[.suffix]" or ".<target>.old-PID-HEX"
_TEMPORARY_NAME = re.compile(r"\.(?P<target>.+?)\.(?:tmp|old)-\d+-[0-9a-f]+(?:\.[^.]+)?")


def remove_stale_in(folder: Path) -> list[Path]:
    """Delete every temporary in ``folder`` whose process has died (whatever its target:
    a folder a run owns, e.g. a cache's or a build's); returns them."""
    try:
        names = [entry.name for entry in Path(folder).iterdir() if entry.name.startswith(".")]
    except OSError:
        return []
    targets = sorted({m["target"] for n in names if (m := _TEMPORARY_NAME.fullmatch(n))})
    return [path for target in targets for path in remove_stale(Path(folder) / target)]


def replace_directory(staged: Path, target: Path) -> None:
    """Rename the folder ``staged`` to ``target``; an existing ``target`` is moved aside first
    and deleted after (put back when the rename fails)."""
    if not (target.exists() or target.is_symlink()):
        os.replace(staged, target)
        return
    old = sibling(target, "old")
    os.replace(target, old)
    try:
        os.replace(staged, target)
    except BaseException:
        os.replace(old, target)
        raise
    _remove(old)


@contextlib.contextmanager
def atomic_directory(
    target: str | Path, *, fsync_files: bool = False, keep_existing: Callable[[], bool] | None = None
) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block ends without error it becomes ``target``.

    ``keep_existing``, checked after the block: when it returns True (another process put a
    complete ``target`` in place meanwhile) the new folder is discarded instead. Temporaries
    of ``target`` left by dead processes are removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    staged = sibling(target)
    staged.mkdir()
    try:
        yield staged
        if keep_existing is not None and keep_existing():
            return
        if fsync_files:
            for path in sorted(staged.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    _fsync(path)
        replace_directory(staged, target)
        _fsync(target.parent, directory=True)
    finally:
        _remove(staged)  # gone already after a successful rename


@contextlib.contextmanager
def atomic_file(target: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``target`` (nothing there yet); when the block ends
    without error the file written there is fsync'ed and renamed to ``target``."""
    target = Path(target)
    staged = sibling(target, suffix=target.suffix)
    try:
        yield staged
        if fsync:
            _fsync(staged)
        os.replace(staged, target)
        if fsync:
            _fsync(target.parent, directory=True)
    finally:
        staged.unlink(missing_ok=True)


def write_atomic(target: str | Path, data: str | bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` (text as UTF-8) to ``target`` through :func:`atomic_file`."""
    target = Path(target)
    with atomic_file(target, fsync=fsync) as staged:
        staged.write_bytes(data.encode() if isinstance(data, str) else data)
    return target


@contextlib.contextmanager
def scratch_directory(parent: str | Path, name: str) -> Iterator[Path]:
    """A temporary folder ``parent/.<name>.tmp-<pid>-<hex>``, deleted when the block ends
    whatever happens (for work whose results are moved elsewhere piece by piece)."""
    path = sibling(Path(parent) / name)
    remove_stale(Path(parent) / name)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        _remove(path)
