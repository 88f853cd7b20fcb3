"""Run a web-app command as a real server process and ask it for its health."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def health_of_served(
    command: list[str], port: int, cwd: Path, timeout: float = 120
) -> tuple[dict | None, int, str]:
    """Start ``command`` (a server on ``port``), wait for ``/api/health``, stop it with SIGINT
    (uvicorn's graceful shutdown); return (health or None, exit code, its output)."""
    server = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, health = time.monotonic() + timeout, None
        while health is None and server.poll() is None and time.monotonic() < deadline:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/api/health").json()
            except httpx.TransportError:
                time.sleep(0.2)
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=30)[0]
    return health, server.returncode, output
