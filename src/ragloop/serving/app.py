"""The HTTP API: answer and search over a saved RAG model (or search over an index alone).

    >>> from ragloop.serving import create_app
    >>> app = create_app("runs/demo/rag/best_model", max_batch=16, max_wait_ms=10)
    >>> # uvicorn.run(app) — or `ragloop serve runs/demo/rag/best_model`

Endpoints:
    GET  /         a small page: ask a question, read the answer and its sources (`/?q=...` asks at once)
    GET  /health   status, the model and index it serves, batching and cache statistics (hits, hit rate)
    POST /answer   {"question": str, "k": int?}                      -> answer + passages (+ the span copied)
    POST /search   {"question": str, "k": int?, "mode": dense|bm25|hybrid} -> ranked passages
    GET  /docs     the API described on one self-contained page (from /openapi.json; no CDN)

Concurrent /answer requests are micro-batched into one `RAG.answer(list_of_questions)` call, and
concurrent /search requests into one `Retriever.search(list_of_questions, k, mode)` call (see
`batcher.py`); every model call runs on one worker thread, with a fixed number of torch and FAISS
threads, so the event loop stays responsive and the cores are not oversubscribed. The question
encoder is loaded and run once before the app is returned, so the first request does not wait for it.
Bodies must be `application/json`, at most MAX_BODY_BYTES, UTF-8; with an API key, requests must
send it (see `guard.py`).

What the server reads is fixed when it starts: no request field names a file or a folder, and
nothing is unpickled (the model and index folders hold safetensors, FAISS, SQLite and JSON).
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import logging
import math
import os
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

from ragloop._version import __version__
from ragloop.constants import CACHE_MAX_ENTRIES
from ragloop.errors import RagloopError
from ragloop.model import RAG
from ragloop.model_io import CONFIG_FILE
from ragloop.retrieval.index import MANIFEST
from ragloop.retrieval.retriever import Retriever
from ragloop.serving.batcher import MicroBatcher
from ragloop.serving.docs import DOCS_CSP, docs_page
from ragloop.serving.guard import RequestGuard, check_api_key, clip

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 1000
MAX_K = 100
DEFAULT_SEARCH_K = 5
DEFAULT_CACHE_SIZE = CACHE_MAX_ENTRIES
# a question of MAX_QUESTION_CHARS written as JSON escapes is ~12 KB; anything far over that is refused unread
MAX_BODY_BYTES = 64 * 1024

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
    source: str | None = Field(None, description="the file the passage came from (only when the index records it)")


class CopiedOut(BaseModel):
    start: int = Field(description="first character of the copied span in the passage text")
    end: int = Field(description="one past its last character: the span is text[start:end]")
    text: str


class AnswerPassageOut(PassageOut):
    copied: CopiedOut | None = Field(None, description="the span of the passage text the answer copied (a generator "
                                     "with a copy head only; left out where it copied nothing from the passage)")


class AnswerResponse(BaseModel):
    question: str
    answer: str
    passages: list[AnswerPassageOut] = Field(description="the passages the answer was drawn from, best first")
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
    batch_size: int = Field(description="questions in the search call that answered this one")


# -- what is served -------------------------------------------------------------------------------


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; all of the machine's where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _set_threads(threads: int) -> None:
    """Runs first on the model thread: torch's and FAISS's OpenMP thread counts are per calling thread."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


class Service:
    """A RAG model (answer + search) or an index alone (search only), and the batchers in front of it.

    Every model call (answers, searches, the warm-up) runs on one thread with `threads` torch/FAISS
    threads (default: the cores available to the process)."""

    def __init__(self, model: RAG | None, retriever: Retriever, name: str, max_batch: int = 16,
                 max_wait_ms: float = 10.0, num_beams: int = 1, max_new_tokens: int = 32,
                 threads: int | None = None, cache_size: int | None = None) -> None:
        self.model, self.retriever, self.name = model, retriever, name
        if cache_size and retriever.cache is None:  # repeated questions from memory (retrieval/cache.py)
            from ragloop.retrieval.cache import RetrievalCache

            retriever.cache = RetrievalCache(max_entries=cache_size)
        self.num_beams, self.max_new_tokens = num_beams, max_new_tokens
        self.threads = available_cores() if threads is None else threads
        if self.threads < 1:
            raise RagloopError(f"threads must be at least 1 (got {self.threads})")
        if model is not None:
            model.eval()
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ragloop-model",
                                                              initializer=_set_threads, initargs=(self.threads,))
        self.answers = MicroBatcher(self._answer_batch, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                    executor=self.executor)
        self.searches = MicroBatcher(self._search_batch, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                     executor=self.executor)
        try:
            self.executor.submit(self._warm_up).result()
        except BaseException:
            self.executor.shutdown(wait=False)
            raise
        self.started = time.time()

    @classmethod
    def load(cls, source: str | Path | RAG | Retriever, quantize: str | None = None, **kwargs) -> Service:
        """From a RAG model or a Retriever object, or a folder holding either (decided by its files);
        `quantize="int8"` quantizes its models for inference (ragloop/quantize.py) before the warm-up."""
        if isinstance(source, RAG):
            return cls(source.quantize(quantize), source.retriever, "RAG", **kwargs)
        if isinstance(source, Retriever):
            return cls(None, source.quantize(quantize), "index", **kwargs)
        path = Path(source)
        if not path.is_dir():
            raise RagloopError(f"{path}: no such folder (expected a saved RAG model or an index folder)")
        if (path / CONFIG_FILE).is_file():
            model = RAG.from_pretrained(path).quantize(quantize)
            return cls(model, model.retriever, path.name, **kwargs)
        if (path / MANIFEST).is_file():
            return cls(None, Retriever.from_index(path, quantize=quantize), path.name, **kwargs)
        raise RagloopError(f"{path}: neither a saved RAG model (no {CONFIG_FILE}) nor an index (no {MANIFEST})")

    @property
    def passages(self) -> int:
        return len(self.retriever.index)

    def _warm_up(self) -> None:
        """On the model thread, before the server says it is ready: load the question encoder (an index
        folder loads it lazily) and encode once, so the first dense search pays for neither."""
        start = time.perf_counter()
        try:
            self.retriever.question_encoder.encode(["warm-up question"], progress=False)
        except OSError as e:  # transformers' word for a model it cannot find or read
            raise RagloopError(f"{self.retriever.index.path}: cannot load the question encoder: {e}") from None
        log.info("question encoder ready in %.1f s (%d threads)", time.perf_counter() - start, self.threads)

    def _answer_batch(self, questions: list[str], k: int | None) -> list[dict]:
        """Runs on the model thread: one `RAG.answer` call for a whole batch."""
        answers = self.model.answer(questions, k=k, num_beams=self.num_beams, max_new_tokens=self.max_new_tokens)
        return [{**a.to_dict(), "k": len(a.passages), "batch_size": len(questions)} for a in answers]

    def _search_batch(self, questions: list[str], key: tuple[int, str]) -> list[dict]:
        """Runs on the model thread: one `Retriever.search` call for a batch sharing (k, mode)."""
        k, mode = key
        rows = self.retriever.search(questions, k=k, mode=mode)
        return [{"hits": [hit.to_dict() for hit in row], "batch_size": len(questions)} for row in rows]

    async def stop(self) -> None:
        await self.answers.stop()
        await self.searches.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def info(self) -> dict:
        index = self.retriever.index
        model = None
        if self.model is not None:
            cfg = self.model.config
            model = {"name": self.name, "rag_mode": cfg.mode, "n_docs": cfg.n_docs, "search_mode": cfg.search_mode,
                     "generator": self.model.generator.name, "question_encoder": self.model.question_encoder.spec.name,
                     "quantize": self.model.quantization, "lm_head_quantized": self.model.generator.lm_head_quantized}
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
            "threads": self.threads,
            "batching": {"max_batch": self.answers.max_batch, "max_wait_ms": self.answers.max_wait * 1000,
                         "answer": self.answers.stats.to_dict(), "search": self.searches.stats.to_dict()},
            "cache": self.retriever.cache.stats() if self.retriever.cache is not None else None,
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


def _invalid(field: str, message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors (which, here, never echo the input)."""
    return HTTPException(422, detail=[{"type": "value_error", "loc": ["body", field], "msg": message}])


def _error_detail(errors: list[dict]) -> list[dict]:
    """Validation errors without the client's input (a 10 MB question is not sent back), the field
    names in `loc` and the messages clipped: an unknown field's name is the client's too."""
    return [{"type": str(e.get("type", "value_error")),
             "loc": [clip(part) if isinstance(part, str) else part for part in e.get("loc", ())],
             "msg": clip(str(e.get("msg", "")), 300)} for e in errors]


def _page() -> tuple[str, str]:
    """The page and a Content-Security-Policy that allows its one inline script and nothing external."""
    html_text = resources.files("ragloop.serving").joinpath("index.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html_text, flags=re.S)
    hashes = " ".join("'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
                      for s in scripts)
    csp = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; connect-src 'self'; "
           "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    return html_text, csp


PAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def create_app(source: str | Path | RAG | Retriever, *, max_batch: int = 16, max_wait_ms: float = 10.0,
               num_beams: int = 1, max_new_tokens: int = 32, threads: int | None = None,
               api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               rerank: str | None = None, rerank_depth: int | None = None,
               cache_size: int | None = DEFAULT_CACHE_SIZE, quantize: str | None = None) -> FastAPI:
    """A FastAPI app serving a saved RAG model folder (or a RAG object), or an index folder (or a
    Retriever) for /search alone. The model and the question encoder are loaded here, before any
    request, on the model thread (`threads` torch/FAISS threads; default: the cores available).
    With `api_key`, every request but the page and the docs must send `Authorization: Bearer KEY`.
    `rerank` (a cross-encoder name or path) and `rerank_depth` replace the reranking stage of what is served.
    `cache_size`: answers and searches remembered per question (LRU, retrieval/cache.py; 0 or None: none),
    its hits and misses on /health.

    `quantize="int8"` serves the question encoder and the generator int8-quantized (shown in /health)."""
    if api_key is not None:
        try:
            check_api_key(api_key)
        except ValueError as e:
            raise RagloopError(str(e)) from None
    service = Service.load(source, quantize=quantize, max_batch=max_batch, max_wait_ms=max_wait_ms,
                           num_beams=num_beams, max_new_tokens=max_new_tokens, threads=threads, cache_size=cache_size)
    if rerank or rerank_depth:
        service.retriever.set_reranker(rerank or service.retriever.reranker, rerank_depth)
    page, csp = _page()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("serving %s (%d passages%s)", service.name, service.passages,
                 f", {quantize} quantized" if quantize else "")
        yield
        await service.stop()

    # docs_url=None: FastAPI's Swagger and ReDoc pages load their scripts from a CDN; /docs is ours
    app = FastAPI(title="ragloop", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Retrieval-augmented answers with their sources, and passage search.")
    app.state.service = service
    app.add_middleware(RequestGuard, api_key=api_key, max_body_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = _error_detail(exc.errors())
        return JSONResponse(status_code=422, content={"detail": _json_safe(jsonable_encoder(detail))})

    @app.exception_handler(RagloopError)
    async def ragloop_error(request: Request, exc: RagloopError) -> JSONResponse:
        detail = [{"type": "ragloop_error", "loc": ["body"], "msg": clip(str(exc), 300)}]
        return JSONResponse(status_code=422, content={"detail": _json_safe(detail)})

    def check_k(k: int | None) -> None:
        if k is not None and k > service.passages:
            raise _invalid("k", f"k is {k} but the index holds only {service.passages} passages")

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
    async def index_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": csp, **PAGE_HEADERS})

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_page(app.openapi(), api_key=api_key is not None, max_body_bytes=max_body_bytes),
                            headers={"Content-Security-Policy": DOCS_CSP, **PAGE_HEADERS})

    @app.get("/health", summary="Status, the model and index served, batching statistics")
    async def health() -> dict:
        return service.info()

    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    @app.post("/answer", response_model=AnswerResponse, response_model_exclude_none=True,
              summary="Answer a question with its sources",
              responses={503: {"description": "started with an index folder: no generator"}})
    async def answer(body: AnswerRequest) -> dict:
        if service.model is None:
            raise HTTPException(503, detail="this server serves an index, not a RAG model: /answer needs a "
                                            "generator; start it with a saved RAG model folder, or use /search")
        check_k(body.k)
        start = time.perf_counter()
        result = await service.answers.submit(body.question, key=body.k)
        return {**result, "seconds": round(time.perf_counter() - start, 4)}

    @app.post("/search", response_model=SearchResponse, response_model_exclude_none=True, summary="Search the index")
    async def search(body: SearchRequest) -> dict:
        check_k(body.k)
        k = body.k if body.k is not None else min(DEFAULT_SEARCH_K, service.passages)
        if body.mode != "dense" and service.retriever.index.bm25 is None:
            raise _invalid("mode", f"mode {body.mode!r} needs BM25, and this index was built without it")
        result = await service.searches.submit(body.question, key=(k, body.mode))
        return {"question": body.question, "mode": body.mode, "k": k, **result}

    return app
