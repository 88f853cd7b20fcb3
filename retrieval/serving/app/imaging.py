"""Reading image headers and making JPEG thumbnails (the gallery, results and upload preview)."""

from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from retrieval.serving.app.lru import BoundedLRU

# ~10 kB each: a gallery and its results pages stay in memory
THUMBNAILS: BoundedLRU[tuple[int, int, int, int, int], bytes] = BoundedLRU(1024)


@lru_cache(maxsize=4096)
def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header (no decoding); None if unreadable."""
    try:
        with Image.open(path) as image:
            return image.size
    except OSError:
        return None


def thumbnail_jpeg(image: Image.Image, size: int) -> bytes:
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def file_thumbnail(file: BinaryIO, status: os.stat_result, size: int) -> bytes:
    """The JPEG thumbnail of an open image file (checked by files.ServableImages: it is
    decoded from that descriptor, never reopened by name); the file's identity and
    modification time key out stale entries."""
    key = (status.st_dev, status.st_ino, status.st_mtime_ns, status.st_size, size)
    jpeg = THUMBNAILS.get(key)
    if jpeg is None:
        with Image.open(file) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster
            jpeg = thumbnail_jpeg(image, size)
        THUMBNAILS.put(key, jpeg)
    return jpeg
