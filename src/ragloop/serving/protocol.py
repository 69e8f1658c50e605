"""uvicorn's HTTP/1.1 protocol (h11), refusing a request so that the client can read why.

    >>> uvicorn.Config(app, http=RefusingH11Protocol, h11_max_incomplete_event_size=MAX_HEADER_BYTES)
    >>> # a 10 MB body: HTTP 413 read by the client; 1 MB of headers: HTTP 431; the server goes on

Two things a plain uvicorn does that leave a client with "connection reset" instead of a status:
  - It closes the socket right after a refusal sent before the body was read (the guard's 413 for a
    10 MB body), while the client is still sending it. Closing a socket with unread data in it makes the
    kernel send a reset, which also throws away the response the client had not read yet.
    Here the close is a lingering one (RFC 9112 §9.6): the server stops writing (FIN), reads and drops
    whatever the client still sends, for at most LINGER_SECONDS, then closes. The client finishes
    sending, then reads the refusal.
  - Its HTTP parser refuses headers over the limit (h11: max_incomplete_event_size) with a 400.
    Here it is the status h11 hints: 431 Request Header Fields Too Large; any other malformed request
    stays a 400. Both have a JSON body shaped like the API's other errors, and a lingering close.

Only what comes after a refusal changes: a request read to its end is answered and closed (or kept
alive) as uvicorn does. uvicorn picks httptools when it is installed; `server.py` names this h11
protocol instead, so the behaviour does not depend on what else is installed.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from ragloop.serving.guard import clip, error_body

DEFAULT_MAX_HEADER_BYTES = 16 * 1024  # h11's own default, where the config sets none
LINGER_SECONDS = 10.0  # nginx's lingering_time is 30 s; a client still sending after this is reset
UNREAD = frozenset({h11.SEND_BODY, h11.ERROR})  # the client's states in which it may still be sending


class _Parser(h11.Connection):
    """h11's connection, remembering the error it raised on the client's bytes (its status hint: 431)."""

    error: h11.RemoteProtocolError | None = None

    def next_event(self):
        try:
            return super().next_event()
        except h11.RemoteProtocolError as e:
            self.error = e
            raise


class _Transport:
    """The socket's transport as uvicorn sees it: close() is the protocol's lingering close."""

    def __init__(self, transport: asyncio.Transport, protocol: RefusingH11Protocol) -> None:
        self._transport, self._protocol = transport, protocol

    def __getattr__(self, name: str):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()

    def close(self) -> None:
        self._protocol.close_gracefully()


class RefusingH11Protocol(H11Protocol):
    """uvicorn's H11Protocol with a lingering close and the parser's own status (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_header_bytes = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_HEADER_BYTES
        self.conn = _Parser(h11.SERVER, self.max_header_bytes)
        self.lingering = False
        self._linger_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._real = transport  # uvicorn gets _Transport(_real)
        super().connection_made(_Transport(transport, self))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if not self.lingering:  # lingering: what the client still sends after the refusal is dropped
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def close_gracefully(self) -> None:
        """Close now when the client has sent all it meant to; else stop writing and linger (reading and
        dropping) until the client closes or LINGER_SECONDS pass. A second close closes at once."""
        sock = self._real
        if self.lingering or sock.is_closing() or self.conn.their_state not in UNREAD or not sock.can_write_eof():
            sock.close()
            return
        self.lingering = True
        sock.write_eof()  # after what is still buffered: the refusal goes out first
        sock.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, sock.close)

    def send_400_response(self, msg: str) -> None:
        """The parser's refusal: 431 for headers over the limit, else 400, with a JSON body."""
        error = self.conn.error
        status = error.error_status_hint if error is not None else 400
        if status == 431:
            body = error_body("headers_too_large", ["header"], f"the request's headers are over {self.max_header_bytes}"
                              " bytes (this API needs only Content-Type and Authorization: Bearer KEY)")
        else:
            body = error_body("bad_request", [], f"not a valid HTTP/1.1 request ({clip(str(error or msg))})")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status]),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()
