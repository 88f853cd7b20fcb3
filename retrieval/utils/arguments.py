"""Type checks of config values against the annotations of the callable they configure.

Hydra passes ``trainer.max_epochs=abc`` through as the string ``"abc"``; Lightning accepts it
and fails much later with a bare ``AssertionError`` inside its fit loop. Checking each value
against the parameter's annotation (the simple ones: int, float, bool, str, None and unions
of them; anything else is trusted) names the setting while it is still a setting.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from retrieval.utils.errors import UserFacingError

_SIMPLE = (int, float, bool, str, type(None))


def _accepts(annotation: Any, value: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(annotation))
    if annotation is typing.Any or annotation not in _SIMPLE:
        return True  # a container, a Literal, a class: not ours to judge
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _hints(target: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check against
        return {}


def check_arguments(target: Callable, values: Mapping[str, Any], prefix: str) -> None:
    """A :class:`UserFacingError` for the first of ``values`` its parameter cannot take."""
    hints = _hints(target)
    for name, value in values.items():
        if name.startswith("_") or name not in hints:
            continue
        if not _accepts(hints[name], value):
            expected = str(hints[name]).replace("typing.", "").replace("NoneType", "None")
            raise UserFacingError(
                f"{prefix}.{name}={value!r} has the wrong type: {target.__qualname__} takes {expected}"
            )
