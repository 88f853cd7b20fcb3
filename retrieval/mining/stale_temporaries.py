"""The temporaries killed runs leave in a mining cache folder: finding the ones whose
writer is dead, deleting them, and saying so in one line.

Two kinds: those of :mod:`retrieval.utils.atomic`'s writers and those of earlier versions
of the miner. The crop cache's resumable partials (:mod:`.crop_partial`) hold no pid and
are not temporaries in this sense.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from retrieval.mining.name_lists import name_some
from retrieval.utils.atomic import remove_stale_in

log = logging.getLogger(__name__)

# the temporaries of earlier versions of the miner (.NAME.tmpPID[.npy], written by np.save /
# write_text); the atomic writers' own are retrieval.utils.atomic's business
_LEGACY_TEMPORARY = re.compile(r"\.(?P<target>.+)\.tmp(?P<pid>\d+)(?:\.npy)?")


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process, or we cannot tell: keep its files
        return False
    return False


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries in ``folder`` that a killed run left (their pid is dead):
    those of :mod:`retrieval.utils.atomic` (its :func:`remove_stale_in`) and those of
    earlier versions of the miner. Files of live processes (a concurrent run) are kept."""
    removed = remove_stale_in(Path(folder))
    try:
        names = [entry.name for entry in Path(folder).iterdir() if entry.name.startswith(".")]
    except OSError:
        return removed
    for name in names:
        match = _LEGACY_TEMPORARY.fullmatch(name)
        if match is not None and int(match["pid"]) != os.getpid() and _process_gone(int(match["pid"])):
            (Path(folder) / name).unlink(missing_ok=True)
            removed.append(Path(folder) / name)
    return removed


def report_removed(removed: list[Path]) -> None:
    """Log, in one line, the temporaries :func:`remove_stale_temporaries` deleted."""
    if removed:
        log.info(
            "removed %d temporary file(s) left by killed runs: %s",
            len(removed),
            name_some(p.name for p in removed),
        )
