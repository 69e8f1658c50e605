"""What a client reads on the wire when the server refuses its request (a live uvicorn, Python's
http.client): the refusal's status and body, not "connection reset", and the server goes on."""

from __future__ import annotations

import http.client
import json
import socket

import pytest

from ragloop.serving.schemas import MAX_BODY_BYTES, MAX_HEADER_BYTES

pytestmark = pytest.mark.usefixtures("one_thread")


def _request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, JSON body) as http.client reads them: it sends the whole request before it reads."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_a_10mb_body_gets_a_413_the_client_reads(server):
    body = json.dumps({"question": "x" * (10 << 20)}).encode()
    status, out = _request(server, "POST", "/answer", body, {"content-type": "application/json"})
    assert status == 413 and f"over {MAX_BODY_BYTES} bytes" in out["detail"][0]["msg"]
    assert _request(server, "GET", "/health")[0] == 200


def test_a_1mb_header_gets_a_431_the_client_reads(server):
    """h11 holds the request line and headers to MAX_HEADER_BYTES; past it the answer is the 431 it hints."""
    for method, body in (("GET", None), ("POST", json.dumps({"question": "Who won?"}).encode())):
        headers = {"content-type": "application/json", "authorization": "Bearer " + "k" * (1 << 20)}
        status, out = _request(server, method, "/answer" if body else "/health", body, headers)
        assert status == 431, out
        assert out["detail"][0]["type"] == "headers_too_large" and str(MAX_HEADER_BYTES) in out["detail"][0]["msg"]
    status, out = _request(server, "POST", "/search", json.dumps({"question": "Who won Super Bowl 50?"}).encode(),
                           {"content-type": "application/json"})
    assert status == 200 and out["hits"]


def test_a_request_that_is_not_http_gets_a_400_the_client_reads(server):
    with socket.create_connection((server.host, server.port), timeout=60) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n" + b"y" * (1 << 20))
        sock.shutdown(socket.SHUT_WR)
        reply = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and json.loads(body)["detail"][0]["type"] == "bad_request"
    assert _request(server, "GET", "/health")[0] == 200


def test_a_refused_request_leaves_other_requests_on_their_connections(server):
    """The lingering close is only for a connection whose request was refused unread: a kept-alive
    connection goes on answering."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        for _ in range(2):
            conn.request("GET", "/health")
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["status"] == "ok"
    finally:
        conn.close()
