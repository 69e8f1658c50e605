"""Fixtures of the serving tests: the tiny RAG model loaded, and the API on a real socket.

    def test_something(server):   # uvicorn on a free port of 127.0.0.1, for the module's tests
        http.client.HTTPConnection(server.host, server.port) ...

A module may override `model` (the one `server` serves) with its own fixture of that name.
"""

from __future__ import annotations

import pytest

from ragloop.model import RAG
from ragloop.serving import BackgroundServer, create_app


@pytest.fixture(scope="module")
def model(tiny_rag_dir) -> RAG:
    """The shared saved RAG folder (conftest.py: tiny BERT retriever over squad_small, tiny T5, k=2), loaded."""
    return RAG.from_pretrained(tiny_rag_dir)


@pytest.fixture(scope="module")
def server(model):
    """The API over `model` served by uvicorn on a thread (server.py's BackgroundServer): what a real
    client meets on the wire (parser limits, connection handling) that TestClient never shows."""
    with BackgroundServer(create_app(model, threads=1)) as s:
        yield s
