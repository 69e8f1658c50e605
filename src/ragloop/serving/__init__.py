"""Serve a RAG model over HTTP (FastAPI + uvicorn; `pip install 'ragloop[serve]'`).

    >>> from ragloop.serving import create_app, serve
    >>> serve(create_app("runs/demo/rag/best_model"), host="127.0.0.1", port=8000)

or from the shell: `ragloop serve runs/demo/rag/best_model`. See `app.py` for the endpoints.
"""

from ragloop.serving.app import create_app
from ragloop.serving.batcher import MicroBatcher
from ragloop.serving.server import BackgroundServer, serve

__all__ = ["BackgroundServer", "MicroBatcher", "create_app", "serve"]
