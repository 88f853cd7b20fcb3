"""Fetching single files over HTTP: resumable (``<file>.part`` + HTTP Range, restarting when a
server ignores Range), retried with exponential backoff, reported to a Rich progress bar.
urllib is enough for that, so there is no extra HTTP dependency.
"""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from retrieval.utils.errors import DatasetError

USER_AGENT = "retrieval-dataset-downloader/0.1 (python-urllib)"


@dataclass(frozen=True)
class FetchOptions:
    timeout_s: float = 30.0  # per socket operation, not for a whole file
    retries: int = 5  # per URL, after the first attempt
    backoff_s: float = 2.0  # wait before retry k: backoff_s * 2**(k-1)
    chunk_bytes: int = 1 << 16
    quiet: bool = False  # no progress bars
    size_hint: str = ""  # appended to the error when the server announces an unexpected size


class _Transient(Exception):
    """A failed attempt; ``connected`` says whether the server answered at all."""

    def __init__(self, message: str, connected: bool, final: bool = False):
        super().__init__(message)
        self.connected, self.final = connected, final  # final: retrying cannot help


class DownloadFailed(Exception):
    def __init__(self, message: str, unreachable: bool):
        super().__init__(message)
        self.unreachable = unreachable


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 500-999/1000`` -> (500, 1000); ``bytes */1000`` -> (None, 1000)."""
    try:
        span, total = (value or "").removeprefix("bytes ").split("/")
        start = None if span == "*" else int(span.split("-")[0])
        return start, None if total == "*" else int(total)
    except ValueError:
        return None, None


def _chunks(response: http.client.HTTPResponse, size: int) -> Iterator[bytes]:
    try:
        while chunk := response.read(size):
            yield chunk
    except (OSError, http.client.HTTPException) as error:  # reset, timeout, IncompleteRead...
        raise _Transient(f"transfer interrupted ({error!r})", connected=True) from None


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:  # asked past the end: the .part may be complete
            raise
        retry = error.code in (408, 425, 429) or error.code >= 500
        raise _Transient(f"HTTP {error.code} {error.reason}", connected=True, final=not retry) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise _Transient(f"cannot connect ({getattr(error, 'reason', error)})", connected=False) from None


def _attempt(
    url: str, part: Path, expected_size: int | None, options: FetchOptions, update: Callable[..., None]
) -> None:
    """One HTTP request continuing ``part`` from its current size; raises _Transient."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()
        offset = 0
    try:
        response = _open(url, offset, options.timeout_s)
    except urllib.error.HTTPError as error:  # 416
        if _content_range(error.headers.get("Content-Range"))[1] == offset:
            return
        part.unlink()
        raise _Transient("server refused to resume; restarting", connected=True) from None
    with response:
        resumed = offset > 0 and response.status == 206
        if resumed:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Transient(f"server resumed at byte {start}, not {offset}", connected=True)
        else:  # a 200 answer to a Range request: the server ignores Range, so start over
            length = response.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() else None
        if None not in (expected_size, total) and total != expected_size:
            part.unlink(missing_ok=True)
            name = part.name.removesuffix(".part")
            raise DatasetError(
                f"{url} announces {total} bytes, but {name} must be {expected_size} "
                f"bytes; nothing was downloaded. {options.size_hint}".rstrip()
            )
        update(total=total, completed=offset if resumed else 0)
        try:
            with part.open("ab" if resumed else "wb") as out:
                for chunk in _chunks(response, options.chunk_bytes):
                    out.write(chunk)
                    update(advance=len(chunk))
        except OSError as error:  # the disk, not the network
            raise DatasetError(f"cannot write {part}: {error}") from None
    got = part.stat().st_size
    if total is not None and got != total:
        # http.client returns b"" rather than raising when a connection ends early
        raise _Transient(f"connection closed after {got} of {total} bytes", connected=True)


def fetch(
    url: str,
    dest: Path,
    *,
    expected_size: int | None = None,
    options: FetchOptions = FetchOptions(),
    progress: Progress | None = None,
) -> None:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming it with HTTP Range.

    Retries transient failures with exponential backoff; a server that ignores Range makes
    the transfer restart. Raises :class:`DownloadFailed` when it gives up.
    """
    part = dest.with_name(dest.name + ".part")
    progress = progress or Progress(disable=True)
    task = progress.add_task(dest.name, total=expected_size)

    def update(**kw) -> None:
        progress.update(task, **kw)

    connected, attempts = False, 0
    while True:
        try:
            _attempt(url, part, expected_size, options, update)
            os.replace(part, dest)
            return
        except _Transient as error:
            attempts += 1
            # Never reached the server (no DNS, refused, no route, connect timeout): retrying
            # only makes an offline user wait. Once it has answered, outages are worth waiting out.
            never_connected = not (connected or error.connected)
            connected = not never_connected
            if error.final or never_connected or attempts > options.retries:
                raise DownloadFailed(
                    f"{url}: {error} (gave up after {attempts} attempt(s))", unreachable=not connected
                ) from None
        time.sleep(options.backoff_s * 2 ** (attempts - 1))


def fetch_first(urls: tuple[str, ...], dest: Path, **kwargs) -> str:
    """:func:`fetch` from the first URL that works; returns it."""
    failures = []
    for url in urls:
        try:
            fetch(url, dest, **kwargs)
            return url
        except DownloadFailed as error:
            failures.append(error)
    raise DownloadFailed("; ".join(map(str, failures)), all(f.unreachable for f in failures))
