"""An upload's optional crop box (``bbox=x1,y1,x2,y2``), validated in one place for the
JSON API and the upload form: the text first (before the upload is read), then against
the decoded image's size. Anything else is a 422 that says what is allowed."""

from __future__ import annotations

import math

from retrieval.serving.app.uploads import RequestError
from retrieval.utils.validation import box_problem

Box = tuple[float, float, float, float]
PixelBox = tuple[int, int, int, int]
RULE = "four finite numbers 'x1,y1,x2,y2' in pixels with x1 < x2 and y1 < y2, overlapping the image"
ECHO = 60  # characters of a bad box quoted back: a form field can be megabytes


def quoted(text: str) -> str:
    return repr(text if len(text) <= ECHO else text[:ECHO] + "...")


def parse_bbox(text: str | None) -> Box | None:
    """``"x1,y1,x2,y2"`` (pixels; spaces allowed) or empty -> a box; else a 422.

    ``float()`` also reads "inf", "nan" and "1e999" (= inf): refused here, so no later
    rounding or cropping ever sees a value that is not a finite number. The rules are the
    query command's (``box_problem``); the image's size is checked once it is decoded.
    """
    if text is None or not text.strip():
        return None
    try:
        values = [float(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError:
        values = []
    if box_problem(values, math.inf, math.inf) is not None:
        raise RequestError(422, f"The box (bbox) must be {RULE}; got {quoted(text)}.")
    return values[0], values[1], values[2], values[3]


def clip_to_image(box: Box, size: tuple[int, int]) -> PixelBox:
    """The box's whole pixels inside a ``(width, height)`` image (what is cropped); a box
    partly outside is clipped, one with no pixel inside is a 422."""
    width, height = size
    x1, y1 = max(round(box[0]), 0), max(round(box[1]), 0)
    x2, y2 = min(round(box[2]), width), min(round(box[3]), height)
    # a box inside the image can still round to no whole pixel (0.2..0.4)
    if box_problem(box, width, height) is not None or x2 <= x1 or y2 <= y1:
        shown = ",".join(f"{v:g}" for v in box)
        raise RequestError(
            422,
            f"The box (bbox) {shown} lies outside the {width}x{height} image; it must be {RULE} "
            f"(x1 < {width}, y1 < {height}, x2 > 0, y2 > 0).",
        )
    return x1, y1, x2, y2
