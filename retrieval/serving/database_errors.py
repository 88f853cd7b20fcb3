"""The errors of a database directory (one paragraph each: what is wrong, how to fix it)."""

from __future__ import annotations

from retrieval.utils.errors import UserFacingError

BUILD_HINT = "retrieval-database build ckpt_path=CKPT dataset=NAME db_dir=DIR"


class DatabaseError(UserFacingError):
    """A database directory is missing, incomplete, of another format version, or stale."""


class CheckpointMismatchError(DatabaseError):
    """The checkpoint offered for queries is not the one the database was built with."""
