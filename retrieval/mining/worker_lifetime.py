"""Worker processes forked while the miner scores die with it.

The NumPy scorer forks its workers per block. Each child forked inside
:func:`workers_die_with_this_process` gets a parent-death signal (SIGKILL, Linux ``prctl``),
or a watchdog thread where the platform has none, so a SIGKILLed miner leaves no orphans;
and it ignores Ctrl-C, which the miner handles (it shuts the pool down). Processes forked
outside that block are left as they are. The hook is registered with
``os.register_at_fork`` when this module is imported.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_WATCH_INTERVAL_S = 0.5
_guarded_parent: int | None = None  # while set, a process forked by this one dies with it
_prctl: Callable[..., int] | None = None


def _load_prctl() -> None:
    """Resolve libc's prctl in the parent: a child forked from a threaded process must not
    run the dynamic loader."""
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            _prctl = ctypes.CDLL(None, use_errno=True).prctl


def _parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux)."""
    if _prctl is None:
        return False
    try:
        return _prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(sig), *(ctypes.c_ulong(0),) * 3) == 0
    except Exception:  # noqa: BLE001 -- any failure: the watchdog takes over
        return False


def _watch_parent(parent: int) -> None:
    """The fallback where no parent-death signal exists: exit once the parent is gone (an
    orphan is re-parented, so its parent pid changes)."""
    while os.getppid() == parent:
        time.sleep(_WATCH_INTERVAL_S)
    os._exit(1)


def _die_with_parent() -> None:
    """Run in every forked child (``os.register_at_fork``); acts only while a miner scores."""
    global _guarded_parent
    parent, _guarded_parent = _guarded_parent, None  # the child's own forks are not guarded
    if parent is None:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the miner's: it stops the pool
    if not _parent_death_signal(signal.SIGKILL):
        threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_die_with_parent)


@contextlib.contextmanager
def workers_die_with_this_process() -> Iterator[None]:
    """Processes forked inside the block get SIGKILL when this one dies (SIGKILL included),
    and ignore Ctrl-C (this process handles it and shuts them down)."""
    global _guarded_parent
    _load_prctl()
    previous, _guarded_parent = _guarded_parent, os.getpid()
    try:
        yield
    finally:
        _guarded_parent = previous
