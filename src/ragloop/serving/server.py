"""Run the app under uvicorn: in the foreground (`ragloop serve`) or on a background thread (tests, benchmarks).

    >>> with BackgroundServer(create_app("runs/rag/best_model")) as server:
    ...     httpx.post(server.url + "/answer", json={"question": "Who won Super Bowl 50?"}).json()
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from ragloop.errors import RagloopError
from ragloop.serving.protocol import RefusingH11Protocol
from ragloop.serving.schemas import MAX_HEADER_BYTES

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
API_KEY_ENV = "RAGLOOP_API_KEY"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_key_for(host: str, api_key: str | None = None, no_auth: bool = False) -> str | None:
    """The API key a server on `host` requires: `api_key`, else $RAGLOOP_API_KEY, else none on
    loopback. Any other address needs a key unless `no_auth` says, explicitly, to serve without one."""
    if no_auth:
        if api_key is not None:
            raise RagloopError("an API key and no authentication: choose one")
        if os.environ.get(API_KEY_ENV):
            log.warning("%s is set but ignored: serving without authentication", API_KEY_ENV)
        return None
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    if key is None and not is_loopback(host):
        raise RagloopError(f"listening on {host} lets other machines reach the API, so it needs an API key: "
                           f"set {API_KEY_ENV} (or --api-key KEY), or pass --no-auth to serve without one")
    return key


def listen(host: str, port: int) -> socket.socket:
    """A bound socket (port 0: any free one), or a RagloopError that says which address failed."""
    if not 0 <= port <= 65535:
        raise RagloopError(f"port must be between 0 and 65535 (got {port})")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise RagloopError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise RagloopError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def _config(app: FastAPI, log_level: str) -> uvicorn.Config:
    # the API reads no proxy headers: behind a reverse proxy, the proxy's address is the client's.
    # h11 with a lingering close, so that a refused client reads why (413, 431: protocol.py)
    return uvicorn.Config(app, log_level=log_level, proxy_headers=False, server_header=False, access_log=False,
                          http=RefusingH11Protocol, h11_max_incomplete_event_size=MAX_HEADER_BYTES)


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          sock: socket.socket | None = None) -> None:
    """Serve in the foreground until Ctrl-C, on `host:port` or on a socket from `listen`."""
    sock = sock if sock is not None else listen(host, port)
    with sock:
        uvicorn.Server(_config(app, log_level)).run(sockets=[sock])


class BackgroundServer:
    """uvicorn on a thread, on a free port of 127.0.0.1 unless told otherwise; a context manager."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self.sock = listen(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(_config(app, log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="ragloop-uvicorn")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
