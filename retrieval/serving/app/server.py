"""Serving the app: bind the port first, then load, then listen, and say "serving on"
only once the server listens.

Binding before the database and model load makes a busy port one sentence at once
instead of a traceback after the load; the bound socket is handed to uvicorn, so no other
process can take the port in between.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

import uvicorn

from retrieval.utils.errors import UserFacingError


def bind_port(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening), or a :class:`UserFacingError`
    that names the port and what to do."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise UserFacingError(
            f"host={host} is not an address this machine can listen on ({error}); use host=127.0.0.1 "
            f"(this machine only) or host=0.0.0.0 (every interface)"
        ) from None
    sock = socket.socket(family, kind, proto)
    # as uvicorn does: a restart may reuse a port whose old connections linger in TIME_WAIT;
    # a port another server listens on is still refused (EADDRINUSE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise port_refusal(host, port, error) from None
    return sock


def port_refusal(host: str, port: int, error: OSError) -> UserFacingError:
    if error.errno == errno.EADDRINUSE:
        reason = "is already in use (another server, or this app started twice?)"
    elif error.errno == errno.EACCES:
        reason = "needs privileges to listen on (ports below 1024 do)"
    else:
        reason = f"cannot be listened on ({error.strerror})"
    return UserFacingError(
        f"port {port} on {host} {reason}; stop what holds it or choose another port with "
        f"port=OTHER (e.g. port={8001 if port == 8000 else 8000})"
    )


class ListeningServer(uvicorn.Server):
    """A uvicorn server that calls ``on_listening`` once its socket accepts connections."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_listening = on_listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            self.on_listening()


def serve_on(app, sock: socket.socket, host: str, log_level: str, on_listening: Callable[[], None]) -> None:
    """Serve ``app`` on the bound ``sock`` until interrupted (SIGINT / SIGTERM)."""
    config = uvicorn.Config(app, log_level=log_level)
    try:
        # listen here, not in uvicorn: two servers that both bound the port (SO_REUSEADDR
        # lets sockets that are not listening yet share it) get a sentence, not a traceback
        sock.listen(config.backlog)
    except OSError as error:
        raise port_refusal(host, sock.getsockname()[1], error) from None
    try:
        ListeningServer(config, on_listening).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on (uvicorn.run swallows it too)
        pass
