"""Uploads kept so that their results page has a link of its own.

``POST /upload`` embeds the image once, keeps what a results page needs (the descriptor,
the image's size, the crop box and a JPEG thumbnail) under a random id, and redirects
(303) to ``GET /upload/<id>``: a page that can be reloaded, bookmarked and shared, and
re-ranked with another ``k`` without running the model again. Nothing goes to disk; the
least recently viewed upload is dropped past ``upload.keep`` entries, and all of them
with the server. The id is 128 random bits, so a link is as private as whoever holds it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

from retrieval.serving.app.boxes import PixelBox
from retrieval.serving.app.lru import BoundedLRU


@dataclass(frozen=True)
class KeptUpload:
    name: str  # the file name the browser sent (shown, never used as a path)
    vector: np.ndarray  # (1, dim): the searchable descriptor of the (cropped) image
    size: tuple[int, int]  # the upload's (width, height)
    box: PixelBox | None  # the crop, in the image's pixels
    preview: bytes  # a JPEG thumbnail of the whole image


class KeptUploads:
    def __init__(self, max_items: int) -> None:
        self._kept: BoundedLRU[str, KeptUpload] = BoundedLRU(max_items)

    def keep(self, upload: KeptUpload) -> str:
        upload_id = secrets.token_urlsafe(16)
        self._kept.put(upload_id, upload)
        return upload_id

    def get(self, upload_id: str) -> KeptUpload | None:
        return self._kept.get(upload_id)

    @property
    def max_items(self) -> int:
        return self._kept.max_items
