"""Serving an app on a socket: binding first (a taken port is a clear UsageError before anything starts),
uvicorn over HTTP or HTTPS until Ctrl-C (`run_server`), or in a thread for tests and embedding
(`background_server`)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .tls import TLSFiles


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, so a taken port is a clear UsageError before the server starts."""
    if not 0 <= port <= 65535:
        raise UsageError(f"port {port} is not a port; use 1-65535 (8000 is the default)")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
            0
        ]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); check --host") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); try another --port") from None
    return sock


def url_of(sock: socket.socket, scheme: str = "http") -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}/" if ":" in host else f"{scheme}://{host}:{port}/"


def _uvicorn_config(app: FastAPI, tls: TLSFiles | None, **kwargs: Any) -> Any:
    import uvicorn

    files = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)} if tls else {}
    return uvicorn.Config(app, **files, **kwargs)


def _serve(server: Any, sock: socket.socket) -> None:
    """Run until Ctrl-C (a separate step so tests can run it in a thread and stop it)."""
    server.run(sockets=[sock])


def run_server(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 8000,
    tls: TLSFiles | None = None,
    warnings: tuple[str, ...] | list[str] = (),
) -> int:
    """Serve `app` on uvicorn (over HTTPS with `tls`) until Ctrl-C; a port that cannot be had is a UsageError."""
    import uvicorn

    from .access import hide_tokens_in_access_log
    from .announce import announce

    sock = bind(host, port)
    announce(
        backbone=app.state.model_info["backbone"],
        bound=host,
        port=sock.getsockname()[1],
        token=app.state.config.token,
        tls=tls,
        warnings=warnings,
    )
    server = uvicorn.Server(_uvicorn_config(app, tls, log_level="info", timeout_graceful_shutdown=5))
    hide_tokens_in_access_log()
    try:
        _serve(server, sock)
    finally:
        sock.close()
    return 0


@contextlib.contextmanager
def background_server(
    app: FastAPI, host: str = "127.0.0.1", timeout: float = 20.0, tls: TLSFiles | None = None
) -> Iterator[str]:
    """Run `app` on uvicorn in a thread on a free port of `host` (HTTPS with `tls`); yields its base URL.

    For tests, benchmarks and embedding: the socket is bound before the thread starts,
    so there is no race for the port.
    """
    import threading
    import time

    import uvicorn

    sock = bind(host, 0)
    config = _uvicorn_config(app, tls, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="flowerid-server")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the background server did not start")
        time.sleep(0.02)
    try:
        yield url_of(sock, "https" if tls else "http")
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
