"""The image files /images serves: exactly the database's and queries' images listed at
start-up, and only while each is still that same regular file.

The list is made once, from resolved paths under the image root. A request opens the
listed path without following a final symlink (``O_NOFOLLOW``; ``O_NONBLOCK`` so a FIFO
put in its place cannot hang a worker), then checks on the *open* descriptor that it is a
regular file with the device and inode recorded at start-up. Checking the descriptor, not
the path, leaves no gap between check and use: a file swapped for a symlink, a parent
folder swapped for a link elsewhere, or a new file renamed over the old one is refused.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class ListedFile:
    path: Path  # resolved at start-up: no symlink in it then
    device: int
    inode: int


class ServableImages:
    """Relative path (under the image root) -> the file listed there at start-up."""

    def __init__(self, root: Path, paths: Iterable[str | Path]) -> None:
        self.root = root
        self.files: dict[str, ListedFile] = {}
        for path in paths:
            resolved = Path(path).resolve()
            if not resolved.is_relative_to(root):  # e.g. a symlink out of the root: never served
                continue
            try:
                status = resolved.stat()
            except OSError:  # missing at start-up: nothing to compare with later, so not served
                continue
            if stat.S_ISREG(status.st_mode):
                relative = resolved.relative_to(root).as_posix()
                self.files[relative] = ListedFile(resolved, status.st_dev, status.st_ino)

    def __len__(self) -> int:
        return len(self.files)

    def relative(self, path: str | Path) -> str | None:
        """The name under the root of a listed image (its URL path); None if not listed."""
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.root):
            return None
        relative = resolved.relative_to(self.root).as_posix()
        return relative if relative in self.files else None

    def open(self, relative: str) -> tuple[BinaryIO, os.stat_result] | None:
        """The listed file, opened, with its status; None if not listed or no longer that file."""
        listed = self.files.get(relative)
        if listed is None:
            return None
        try:
            fd = os.open(listed.path, OPEN_FLAGS)  # ELOOP if the file is now a symlink
        except OSError:
            return None
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode) or (status.st_dev, status.st_ino) != (
            listed.device,
            listed.inode,
        ):
            os.close(fd)
            return None
        return os.fdopen(fd, "rb"), status
