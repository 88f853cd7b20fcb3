"""Reading image headers and making JPEG thumbnails (the gallery, results and upload preview)."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

from PIL import Image


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


@lru_cache(maxsize=1024)  # ~10 kB each: a gallery and its results pages stay in memory
def file_thumbnail(path: Path, mtime_ns: int, size: int) -> bytes:
    """The JPEG thumbnail of an image file; ``mtime_ns`` keys out stale entries."""
    with Image.open(path) as image:
        image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster
        return thumbnail_jpeg(image, size)
