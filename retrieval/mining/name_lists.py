"""Bounded lists of names for log and error messages: the first few, then ``and N more``."""

from __future__ import annotations

from collections.abc import Iterable

LISTED = 10  # names a message lists before "and N more"


def name_some(names: Iterable[object], limit: int = LISTED) -> str:
    """``a, b, c`` -- the first ``limit`` names, then ``and N more``: a message stays one
    readable line whether 3 files or 30,000 are concerned."""
    names = [str(n) for n in names]
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
