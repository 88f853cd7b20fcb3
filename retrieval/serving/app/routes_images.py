"""``/images/<path>``: a database or query image (or its thumbnail), served only from the
list made at start-up and only while it is still that file (``files.py``)."""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator
from email.utils import formatdate
from typing import BinaryIO

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from PIL import UnidentifiedImageError

from retrieval.serving.app.imaging import file_thumbnail
from retrieval.serving.app.routes_api import service_of
from retrieval.serving.app.uploads import RequestError

router = APIRouter(include_in_schema=False)
CACHE = {"Cache-Control": "public, max-age=3600"}
CHUNK = 256 * 1024
# the same sentence for every refusal, and no path in it: a 404 tells nothing about the disk
NO_IMAGE = "There is no image at this address in this database."


def chunks(file: BinaryIO) -> Iterator[bytes]:
    """The open file's bytes (the descriptor that was checked), closed at the end."""
    with file:
        while block := file.read(CHUNK):
            yield block


@router.get("/images/{path:path}")
def image(request: Request, path: str, thumb: bool = False) -> Response:
    """Any path not in the list (``..``, absolute, a file beside the images) or a listed file
    since replaced (a symlink, another file, a folder) is a 404."""
    service = service_of(request)
    opened = service.images.open(path)
    if opened is None:
        raise RequestError(404, NO_IMAGE)
    file, status = opened
    if thumb:
        with file:
            try:
                jpeg = file_thumbnail(file, status, service.settings.thumbnail_size)
            except (OSError, UnidentifiedImageError, ValueError):  # damaged since start-up
                raise RequestError(404, NO_IMAGE) from None
        return Response(jpeg, media_type="image/jpeg", headers=CACHE)
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    headers = {
        **CACHE,
        "Content-Length": str(status.st_size),
        "Last-Modified": formatdate(status.st_mtime, usegmt=True),
    }
    return StreamingResponse(chunks(file), media_type=media_type, headers=headers)
