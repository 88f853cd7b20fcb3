"""Checks of values a user typed (``k=``, ``port=``, ``mining.top_k=``): one readable
paragraph naming the setting, the bad value and what is allowed, instead of a crash later
or a silent truncation (``k=2.5`` searching for 2)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from retrieval.utils.errors import UserFacingError


def whole_number(value: object, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an int in ``[minimum, maximum]``, or a :class:`UserFacingError`. Hydra
    hands over ``k=abc`` as a string, ``k=2.5`` as a float and ``k=null`` as None."""
    allowed = f"a whole number from {minimum}" + (f" to {maximum}" if maximum is not None else " up")
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserFacingError(f"{name}={value!r} is not {allowed}")
    if value < minimum or (maximum is not None and value > maximum):
        raise UserFacingError(f"{name}={value} is out of range: use {allowed}")
    return value


def box_problem(box: Sequence[object], width: float, height: float) -> str | None:
    """Why ``box`` (x1, y1, x2, y2 in pixels) cannot crop a ``width``×``height`` image, or None:
    four finite numbers with x1 < x2 and y1 < y2 that overlap the image."""
    if len(box) != 4:
        return f"a box is [x1,y1,x2,y2] (4 numbers), got {len(box)}"
    try:
        x1, y1, x2, y2 = (float(v) for v in box)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"a box holds numbers, got {list(box)}"
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return f"a box holds finite numbers, got {list(box)}"
    if not (x1 < x2 and y1 < y2):
        return f"a box needs x1 < x2 and y1 < y2, got {list(box)}"
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return f"the box {list(box)} lies outside the {width}x{height} image"
    return None
