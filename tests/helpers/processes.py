"""What a killed command leaves behind: processes of its session, temporary files."""

from __future__ import annotations

import os
import time
from pathlib import Path


def session_members(session_id: int) -> list[int]:
    """PIDs of live processes in session ``session_id`` (a command started with
    ``start_new_session=True`` leads its own session: its workers belong to it, and stay in it
    when they are orphaned), zombies excluded."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces, split after it
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[3]) == session_id and fields[0] != "Z" and int(stat.parent.name) != os.getpid():
            members.append(int(stat.parent.name))
    return members


def wait_for_no_survivors(session_id: int, timeout: float = 30.0) -> list[int]:
    """Poll until session ``session_id`` is empty (workers notice their parent died within a
    few seconds); returns the survivors at ``timeout``, ``[]`` when none."""
    deadline = time.monotonic() + timeout
    while (members := session_members(session_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return members


def temporary_files(folder: Path) -> list[Path]:
    """Files of the atomic writers' temporary names (``.NAME.tmp-PID-HEX``, ``*.tmp*``) under ``folder``."""
    return [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(".") and "-" in p.name]
