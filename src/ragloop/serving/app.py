"""The HTTP API: answer and search over a saved RAG model (or search over an index alone).

    >>> from ragloop.serving import create_app
    >>> app = create_app("runs/demo/rag/best_model", max_batch=16, max_wait_ms=10)
    >>> # uvicorn.run(app) — or `ragloop serve runs/demo/rag/best_model`

Endpoints:
    GET  /         a small page: ask a question, read the answer and its sources (`/?q=...` asks at once)
    GET  /health   status, the model and index it serves, batching statistics
    POST /answer   {"question": str, "k": int?}                      -> answer + passages
    POST /search   {"question": str, "k": int?, "mode": dense|bm25|hybrid} -> ranked passages
    GET  /docs     OpenAPI documentation (FastAPI's own)

Concurrent /answer requests are micro-batched into one `RAG.answer(list_of_questions)` call (see
`batcher.py`); every model call runs on one worker thread, so the event loop stays responsive.

What the server reads is fixed when it starts: no request field names a file or a folder, and
nothing is unpickled (the model and index folders hold safetensors, FAISS, SQLite and JSON).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import re
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ragloop import __version__
from ragloop.errors import RagloopError
from ragloop.model import CONFIG_FILE, RAG
from ragloop.retrieval.index import MANIFEST
from ragloop.retrieval.retriever import Retriever
from ragloop.serving.batcher import MicroBatcher

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 1000
MAX_K = 100
DEFAULT_SEARCH_K = 5

# -- request and response bodies ------------------------------------------------------------------

QuestionText = Annotated[str, Field(strict=True, description=f"the question, 1 to {MAX_QUESTION_CHARS} characters",
                                    examples=["Who won Super Bowl 50?"])]


def _check_question(value: str) -> str:
    if not value.strip():
        raise ValueError("question is empty (or only whitespace)")
    if len(value) > MAX_QUESTION_CHARS:
        raise ValueError(f"question has {len(value)} characters; the limit is {MAX_QUESTION_CHARS}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("question is not valid Unicode text (it holds a lone surrogate)") from None
    return value


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: QuestionText
    k: int | None = Field(None, strict=True, ge=1, le=MAX_K,
                          description="passages to read (default: the model's n_docs; at most the index size)")

    _question = field_validator("question")(_check_question)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: QuestionText
    k: int | None = Field(None, strict=True, ge=1, le=MAX_K,
                          description=f"passages to return (default {DEFAULT_SEARCH_K}; at most the index size)")
    mode: Literal["dense", "bm25", "hybrid"] = Field("dense", description="dense (FAISS), bm25, or hybrid (fused)")

    _question = field_validator("question")(_check_question)


class PassageOut(BaseModel):
    id: str
    title: str
    text: str
    score: float = Field(description="q·d, the score the model weighs the passage by")


class AnswerResponse(BaseModel):
    question: str
    answer: str
    passages: list[PassageOut] = Field(description="the passages the answer was drawn from, best first")
    k: int
    batch_size: int = Field(description="questions in the model call that answered this one")
    seconds: float = Field(description="time from receiving the request to the answer")


class HitOut(PassageOut):
    doc_id: str
    score: float = Field(description="the search mode's score (inner product, BM25, or fused)")


class SearchResponse(BaseModel):
    question: str
    mode: str
    k: int
    hits: list[HitOut]


# -- what is served -------------------------------------------------------------------------------


class Service:
    """A RAG model (answer + search) or an index alone (search only), and the batcher in front of it."""

    def __init__(self, model: RAG | None, retriever: Retriever, name: str, max_batch: int = 16,
                 max_wait_ms: float = 10.0, num_beams: int = 1, max_new_tokens: int = 32) -> None:
        self.model, self.retriever, self.name = model, retriever, name
        self.num_beams, self.max_new_tokens = num_beams, max_new_tokens
        if model is not None:
            model.eval()
        self.batcher = MicroBatcher(self._answer_batch, max_batch=max_batch, max_wait_ms=max_wait_ms)
        self.started = time.time()

    @classmethod
    def load(cls, source: str | Path | RAG | Retriever, **kwargs) -> Service:
        """From a RAG model or a Retriever object, or a folder holding either (decided by its files)."""
        if isinstance(source, RAG):
            return cls(source, source.retriever, "RAG", **kwargs)
        if isinstance(source, Retriever):
            return cls(None, source, "index", **kwargs)
        path = Path(source)
        if not path.is_dir():
            raise RagloopError(f"{path}: no such folder (expected a saved RAG model or an index folder)")
        if (path / CONFIG_FILE).is_file():
            model = RAG.from_pretrained(path)
            return cls(model, model.retriever, path.name, **kwargs)
        if (path / MANIFEST).is_file():
            return cls(None, Retriever.from_index(path), path.name, **kwargs)
        raise RagloopError(f"{path}: neither a saved RAG model (no {CONFIG_FILE}) nor an index (no {MANIFEST})")

    @property
    def passages(self) -> int:
        return len(self.retriever.index)

    def _answer_batch(self, questions: list[str], k: int | None) -> list[dict]:
        """Runs on the model thread: one `RAG.answer` call for a whole batch."""
        answers = self.model.answer(questions, k=k, num_beams=self.num_beams, max_new_tokens=self.max_new_tokens)
        return [{**a.to_dict(), "k": len(a.passages), "batch_size": len(questions)} for a in answers]

    def _search(self, question: str, k: int, mode: str) -> list[dict]:
        return [hit.to_dict() for hit in self.retriever.search([question], k=k, mode=mode)[0]]

    def info(self) -> dict:
        index = self.retriever.index
        model = None
        if self.model is not None:
            cfg = self.model.config
            model = {"name": self.name, "rag_mode": cfg.mode, "n_docs": cfg.n_docs, "search_mode": cfg.search_mode,
                     "generator": self.model.generator.name, "question_encoder": self.model.question_encoder.spec.name}
        return {
            "status": "ok",
            "ragloop_version": __version__,
            "serving": "rag" if self.model is not None else "index",
            "endpoints": ["/answer", "/search"] if self.model is not None else ["/search"],
            "model": model,
            "retrieval": self.retriever.describe(),
            "index": {"passages": self.passages, "dim": index.dim,
                      "factory": index.manifest["index"]["factory"], "bm25": index.bm25 is not None},
            "limits": {"max_question_chars": MAX_QUESTION_CHARS, "max_k": min(MAX_K, self.passages)},
            "batching": {"max_batch": self.batcher.max_batch, "max_wait_ms": self.batcher.max_wait * 1000,
                         **self.batcher.stats.to_dict()},
            "uptime_s": round(time.time() - self.started, 1),
        }


# -- the app --------------------------------------------------------------------------------------


def _json_safe(value):
    """Error details echo the client's input, which JSON can carry but not always re-encode: lone
    surrogates (not UTF-8) and NaN/Infinity (not JSON). Escape those instead of failing with a 500."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {_json_safe(str(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _invalid(field: str, message: str, value=None) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors."""
    return HTTPException(422, detail=[{"type": "value_error", "loc": ["body", field], "msg": message,
                                       "input": value}])


def _page() -> tuple[str, str]:
    """The page and a Content-Security-Policy that allows its one inline script and nothing external."""
    html = resources.files("ragloop.serving").joinpath("index.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    hashes = " ".join("'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
                      for s in scripts)
    csp = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; connect-src 'self'; "
           "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    return html, csp


def create_app(source: str | Path | RAG | Retriever, *, max_batch: int = 16, max_wait_ms: float = 10.0,
               num_beams: int = 1, max_new_tokens: int = 32, rerank: str | None = None,
               rerank_depth: int | None = None) -> FastAPI:
    """A FastAPI app serving a saved RAG model folder (or a RAG object), or an index folder (or a
    Retriever) for /search alone. The model is loaded here, before any request. `rerank` (a cross-encoder
    name or path) and `rerank_depth` replace the reranking stage of what is served."""
    service = Service.load(source, max_batch=max_batch, max_wait_ms=max_wait_ms, num_beams=num_beams,
                           max_new_tokens=max_new_tokens)
    if rerank or rerank_depth:
        service.retriever.set_reranker(rerank or service.retriever.reranker, rerank_depth)
    page, csp = _page()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("serving %s (%d passages)", service.name, service.passages)
        yield
        await service.batcher.stop()

    app = FastAPI(title="ragloop", version=__version__, lifespan=lifespan,
                  description="Retrieval-augmented answers with their sources, and passage search.")
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{key: e[key] for key in ("type", "loc", "msg", "input") if key in e} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": _json_safe(jsonable_encoder(errors))})

    @app.exception_handler(RagloopError)
    async def ragloop_error(request: Request, exc: RagloopError) -> JSONResponse:
        detail = [{"type": "ragloop_error", "loc": ["body"], "msg": str(exc)}]
        return JSONResponse(status_code=422, content={"detail": _json_safe(detail)})

    def check_k(k: int | None) -> None:
        if k is not None and k > service.passages:
            raise _invalid("k", f"k is {k} but the index holds only {service.passages} passages", k)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
                                           "Referrer-Policy": "no-referrer"})

    @app.get("/health", summary="Status, the model and index served, batching statistics")
    async def health() -> dict:
        return service.info()

    @app.post("/answer", response_model=AnswerResponse, summary="Answer a question with its sources",
              responses={503: {"description": "started with an index folder: no generator"}})
    async def answer(body: AnswerRequest) -> dict:
        if service.model is None:
            raise HTTPException(503, detail="this server serves an index, not a RAG model: /answer needs a "
                                            "generator; start it with a saved RAG model folder, or use /search")
        check_k(body.k)
        start = time.perf_counter()
        result = await service.batcher.submit(body.question, key=body.k)
        return {**result, "seconds": round(time.perf_counter() - start, 4)}

    @app.post("/search", response_model=SearchResponse, summary="Search the index")
    async def search(body: SearchRequest) -> dict:
        check_k(body.k)
        k = body.k if body.k is not None else min(DEFAULT_SEARCH_K, service.passages)
        if body.mode != "dense" and service.retriever.index.bm25 is None:
            raise _invalid("mode", f"mode {body.mode!r} needs BM25, and this index was built without it", body.mode)
        hits = await service.batcher.run(service._search, body.question, k, body.mode)
        return {"question": body.question, "mode": body.mode, "k": k, "hits": hits}

    return app
