"""Untrusted uploads: size limits on the request body, and decoding that refuses what is
not an image, or an image whose canvas is too big to decode (a decompression bomb).

Nothing is written under a name: Starlette spools a multipart file part to an anonymous
temporary file past 1 MB (unlinked at creation on POSIX, closed after the request), and
the bytes are then decoded from memory. No folder of uploads grows; what a results page
keeps of an upload (its descriptor and a thumbnail) stays in memory (``kept.py``).
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# formats a browser can produce and Pillow decodes safely; anything else is refused, so a
# crafted file never reaches an exotic decoder
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# room for the multipart boundaries and the small form fields beside the file
FORM_OVERHEAD = 64 * 1024


class RequestError(Exception):
    """A request the app refuses (a bad upload, k, query id): an HTTP status and a sentence for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def human_size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} kB"


def human_pixels(n: int) -> str:
    return f"{n / 1e6:.0f} MP" if n >= 10**7 else f"{n / 1e6:.1f} MP" if n >= 10**5 else f"{n} pixels"


def decode_upload(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """The upload as an RGB image, or :class:`RequestError` (400 / 413 / 415 / 422)."""
    if not data:
        raise RequestError(400, "The uploaded file is empty: choose an image file.")
    if len(data) > max_bytes:
        raise RequestError(413, f"The file is larger than {human_size(max_bytes)}, the upload limit.")
    try:
        with warnings.catch_warnings():
            # Pillow warns past its own limit (~89 MP): the canvas check below, against the
            # configured limit, decides instead and names it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise RequestError(
            415, "The file is not an image this app reads (JPEG, PNG, WebP, BMP, GIF or TIFF)."
        ) from None
    except Image.DecompressionBombError:  # past twice Pillow's limit, which is over max_pixels
        raise RequestError(
            413,
            f"The image is refused as a decompression bomb: its canvas is far over the "
            f"limit of {human_pixels(max_pixels)}.",
        ) from None
    except (OSError, SyntaxError, ValueError) as error:  # a header cut short
        raise RequestError(422, f"The image could not be decoded ({error}); is the file complete?") from None
    # the header is read, the pixels are not: check the canvas before decoding it
    width, height = image.size
    if width * height > max_pixels:
        raise RequestError(
            413,
            f"The image is {width}x{height} pixels ({human_pixels(width * height)}); "
            f"the limit is {human_pixels(max_pixels)}.",
        )
    try:
        return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt pixel data
        raise RequestError(422, f"The image could not be decoded ({error}); is the file complete?") from None


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` without reading them to the end.

    A declared ``Content-Length`` over the limit is refused at the first read; a chunked
    body is counted as it arrives. Either way the refusal is an ``HTTPException(413)``
    raised while the route parses its form, so the app's own error pages render it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _refusal(self, size: str) -> HTTPException:
        limit = human_size(self.max_bytes - FORM_OVERHEAD)
        return HTTPException(413, f"The upload is {size}; the limit is {limit} per file.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        declared_size = int(declared) if declared and declared.isdigit() else None
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared_size is not None and declared_size > self.max_bytes:
                raise self._refusal(human_size(declared_size))
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._refusal(f"over {human_size(received)}")
            return message

        await self.app(scope, limited_receive, send)
