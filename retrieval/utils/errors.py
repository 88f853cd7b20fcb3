"""Errors that reach the user as one readable paragraph instead of a traceback wall."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserFacingError(RuntimeError):
    """A problem the user can fix; entry points print the message and exit non-zero."""


class DatasetError(UserFacingError):
    """Dataset files are missing, incomplete or malformed."""


class WeightsError(UserFacingError):
    """Pretrained weights could not be obtained."""


def dataset_missing_message(name: str, root: str, detail: str, how_to_get: str) -> str:
    return (
        f"Dataset '{name}' was not found: {detail}. Expected it under {root}. "
        f"{how_to_get} Then point the run at it with paths.data_dir=DIR (the parent folder) "
        f"or dataset.root=DIR. To try the framework without downloading anything, use the "
        f"generated set: dataset=toy."
    )


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Run ``main``; a :class:`UserFacingError` becomes a message on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception as error:
            user_error = user_facing_cause(error)
            if user_error is None:
                raise  # unexpected: keep the traceback
            print(f"\nerror: {user_error}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def user_facing_cause(error: BaseException) -> UserFacingError | None:
    """``error`` itself or the :class:`UserFacingError` it wraps: Hydra's instantiate re-raises
    what a constructor raised as an InstantiationException whose cause is the original."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserFacingError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
