"""Read an offline W&B run (``wandb/offline-run-*/run-*.wandb``) without uploading it.

Since wandb's Go core, an offline run keeps its config, history and summary only inside the
``.wandb`` transaction log (LevelDB log framing around protobuf ``Record``s), and wandb no
longer ships a reader for it. This small reader lets tests, and users on machines without
network, check what a run holds before ``wandb sync``.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HEADER = struct.Struct("<4sHB")  # ident ":W&B", magic 0xBEE1, version
_RECORD = struct.Struct("<IHB")  # crc32, length, type (full / first / middle / last)
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    path: Path  # the offline-run-* folder
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)  # names of logged artifacts
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    exit_code: int | None = None  # None: the run was never finished

    def media(self, kind: str = "images") -> list[Path]:
        return sorted((self.path / "files" / "media" / kind).rglob("*.*"))


def _payloads(data: bytes):
    """Yield the records' payloads, re-joining those split across 32 KiB blocks."""
    ident, magic, _ = _HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError("not a W&B transaction log")
    pos, pending = _HEADER.size, b""
    while pos + _RECORD.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD.size:  # block trailer: zero padding
            pos += left
            continue
        _, length, kind = _RECORD.unpack_from(data, pos)
        if kind == 0 and length == 0:
            break  # preallocated tail
        chunk = data[pos + _RECORD.size : pos + _RECORD.size + length]
        pos += _RECORD.size + length
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            yield pending


def _items(updates) -> dict[str, Any]:
    """Config / summary / history items: a key, or a nested key path, and a JSON value."""
    out: dict[str, Any] = {}
    for item in updates:
        key = item.key or "/".join(item.nested_key)
        out[key] = json.loads(item.value_json)
    return out


def read_offline_run(path: Path | str, wait_s: float = 0.0) -> OfflineRun:
    """``path``: an ``offline-run-*`` folder (or the ``.wandb`` file inside it).

    ``wait_s``: wait up to that long for the run's exit record. ``wandb.finish`` can return
    before W&B's core process has flushed the log, so a reader in the same process may
    otherwise see a run that is still being written."""
    path = Path(path)
    log_file = path if path.suffix == ".wandb" else next(path.glob("*.wandb"))
    deadline = time.monotonic() + wait_s
    run = _read(log_file)
    while run.exit_code is None and time.monotonic() < deadline:
        time.sleep(0.1)
        run = _read(log_file)
    return run


def _read(log_file: Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb  # wandb is a dependency; import late

    run = OfflineRun(path=log_file.parent)
    explicit: dict[str, Any] = {}  # summary values set by the run itself
    for payload in _payloads(log_file.read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.name, run.group = record.run.display_name, record.run.run_group
            run.tags = list(record.run.tags)
            run.config.update(_items(record.run.config.update))
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "history":
            run.history.append(_items(record.history.item))
        elif kind == "summary":
            explicit.update(_items(record.summary.update))
        elif kind == "artifact":
            run.artifacts.append(record.artifact.name)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    # offline, wandb derives the summary at sync time: the last value of every history
    # key, overridden by values the run set explicitly
    for row in run.history:
        run.summary.update(row)
    run.summary.update(explicit)
    run.config.pop("_wandb", None)
    return run


def offline_runs(root: Path | str, wait_s: float = 0.0) -> list[OfflineRun]:
    """Every offline run below ``root`` (a run folder or a multirun sweep folder)."""
    return [read_offline_run(p, wait_s) for p in sorted(Path(root).rglob("offline-run-*")) if p.is_dir()]
