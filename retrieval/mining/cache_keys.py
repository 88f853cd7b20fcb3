"""The keys of the mining caches: what identifies a set of image files, and the hash of a
set of parameters that names a cache file (the crop cache, the SSIM store)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path


def fingerprint(paths: Sequence[str | Path]) -> list[list]:
    """(path, size, mtime in ns) per file -- what decides whether a cache is still valid."""
    rows = []
    for path in paths:
        try:
            stat = os.stat(path)
            rows.append([str(path), stat.st_size, stat.st_mtime_ns])
        except OSError:
            rows.append([str(path), None, None])
    return rows


def digest(payload: dict) -> str:
    """sha256 of a canonical JSON rendering."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
