"""The HTTP API: answer and search over a saved RAG model (or search over an index alone).

    >>> from ragloop.serving import create_app
    >>> app = create_app("runs/demo/rag/best_model", max_batch=16, max_wait_ms=10)
    >>> # uvicorn.run(app) — or `ragloop serve runs/demo/rag/best_model`

Endpoints:
    GET  /         a small page: ask a question, read the answer and its sources (`/?q=...` asks at once)
    GET  /health   status, the model and index it serves, the endpoints it offers (the /v1 ones too),
                   batching and cache statistics (hits, hit rate)
    GET  /ready    200 {"status": "ready"} once it takes requests, 503 before and while it stops (open
                   without the API key: the probe of a load balancer or an orchestrator)
    POST /answer   {"question": str, "k": int?}                      -> answer + passages (+ the span copied)
    POST /search   {"question": str, "k": int?, "mode": dense|bm25|hybrid} -> ranked passages
    GET  /docs     the API described on one self-contained page (from /openapi.json; no CDN)
    /v1/models, /v1/chat/completions, /v1/embeddings   OpenAI-compatible (`openai_api.py`)

Concurrent /answer requests are micro-batched into one `RAG.answer(list_of_questions)` call, and
concurrent /search requests into one `Retriever.search(list_of_questions, k, mode)` call, on one model
thread (`service.py`, `batcher.py`). Bodies must be `application/json`, at most MAX_BODY_BYTES, UTF-8;
with an API key, requests must send it (`guard.py`). The request and response bodies and their limits
are in `schemas.py`; this module wires them to the routes and shapes the errors.

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

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPBearer

from ragloop._version import __version__
from ragloop.constants import CACHE_MAX_ENTRIES
from ragloop.errors import RagloopError
from ragloop.model import RAG
from ragloop.retrieval.retriever import Retriever
from ragloop.serving import openai_api
from ragloop.serving.docs import DOCS_CSP, docs_page
from ragloop.serving.guard import RequestGuard, check_api_key, clip, document_refusals
from ragloop.serving.schemas import (
    DEFAULT_SEARCH_K,
    MAX_BODY_BYTES,
    AnswerRequest,
    AnswerResponse,
    ReadyResponse,
    SearchRequest,
    SearchResponse,
    limit_k,
)
from ragloop.serving.service import Service

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = CACHE_MAX_ENTRIES
NEEDS_GENERATOR = {"/answer", openai_api.PREFIX + openai_api.CHAT_PATH}  # 503 when an index alone is served
# declares the API key in /openapi.json; RequestGuard checks it (before a body is read), so no auto_error
BEARER = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="the server's API key: `Authorization: Bearer KEY` (`ragloop serve --api-key`)")

# -- errors and the page --------------------------------------------------------------------------


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


# -- the app --------------------------------------------------------------------------------------


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
    `cache_size`: answers and searches remembered per question (LRU: retrieval/cache.py for searches,
    answer_cache.py for answers; 0 or None: none), its hits and misses on /health.

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

    # docs_url=None: FastAPI's Swagger and ReDoc pages load their scripts from a CDN; /docs is ours
    app = FastAPI(title="ragloop", version=__version__, lifespan=_lifespan(service, quantize), docs_url=None,
                  redoc_url=None, description="Retrieval-augmented answers with their sources, and passage search.")
    app.state.service = service
    _add_readiness(app)  # before the key: /ready is open
    if api_key is not None:  # every route added below declares the bearer key
        app.router.dependencies.append(Depends(BEARER))
    app.add_middleware(RequestGuard, api_key=api_key, max_body_bytes=max_body_bytes)
    _add_error_handlers(app)
    _add_pages(app, api_key=api_key is not None, max_body_bytes=max_body_bytes)
    _add_api(app, service)
    openai_api.install(app)  # /v1: OpenAI's chat, embeddings and models endpoints
    openapi = app.openapi  # FastAPI's (cached), with what the guard answers and the k the index allows
    app.openapi = lambda: limit_k(document_refusals(openapi(), api_key is not None, openai_api.ERROR_SHAPE),
                                  service.passages)
    return app


def _lifespan(service: Service, quantize: str | None):
    """Logs what is served once the server starts; stops the batchers and the model thread when it stops."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("serving %s (%d passages%s)", service.name, service.passages,
                 f", {quantize} quantized" if quantize else "")
        app.state.readiness = "ready"
        yield
        app.state.readiness = "stopping"
        await service.stop()

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    """422s shaped like FastAPI's validation errors, which never echo the input nor fail to encode it."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = _error_detail(exc.errors())
        return JSONResponse(status_code=422, content={"detail": _json_safe(jsonable_encoder(detail))})

    @app.exception_handler(RagloopError)
    async def ragloop_error(request: Request, exc: RagloopError) -> JSONResponse:
        detail = [{"type": "ragloop_error", "loc": ["body"], "msg": clip(str(exc), 300)}]
        return JSONResponse(status_code=422, content={"detail": _json_safe(detail)})


def _add_pages(app: FastAPI, api_key: bool, max_body_bytes: int) -> None:
    """GET / (the question page) and GET /docs (the API from /openapi.json), outside the schema."""
    page, csp = _page()

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
    async def index_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": csp, **PAGE_HEADERS})

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_page(app.openapi(), api_key=api_key, max_body_bytes=max_body_bytes),
                            headers={"Content-Security-Policy": DOCS_CSP, **PAGE_HEADERS})


def offered(app: FastAPI, service: Service) -> list[str]:
    """The paths of the API the app serves, as /openapi.json lists them (the /v1 ones when mounted) but
    /health, less those that need a generator when an index alone is served: what /health lists."""
    return [path for path in app.openapi()["paths"]
            if path != "/health" and (service.model is not None or path not in NEEDS_GENERATOR)]


def _add_readiness(app: FastAPI) -> None:
    """GET (and HEAD) /ready: 200 once the server takes requests, 503 before its startup has run (the model
    and index load before the app exists, and `ragloop serve` opens its port only after that) and from the
    moment it begins to stop. The server loads one model and index for its lifetime: a new index is rolled
    out by starting servers on it (docs/scaling.md), not swapped in."""
    app.state.readiness = "starting"

    @app.get("/ready", response_model=ReadyResponse, summary="Ready for traffic: the probe for load balancers",
             responses={503: {"model": ReadyResponse, "description": "not taking requests: starting or stopping"}})
    async def ready() -> JSONResponse:
        status = app.state.readiness
        return JSONResponse({"status": status}, status_code=200 if status == "ready" else 503)

    app.add_api_route("/ready", ready, methods=["HEAD"], include_in_schema=False)


def _check_k(service: Service, k: int | None) -> None:
    if k is not None and k > service.passages:
        raise _invalid("k", f"k is {k} but the index holds only {service.passages} passages")


def _add_api(app: FastAPI, service: Service) -> None:
    """GET /health, POST /answer and POST /search (route handlers carry no docstring: FastAPI would
    publish it in /openapi.json)."""

    @app.get("/health", summary="Status, the model and index served, the endpoints offered, batching statistics")
    async def health() -> dict:
        return service.info(endpoints=offered(app, service))

    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    @app.post("/answer", response_model=AnswerResponse, response_model_exclude_none=True,
              summary="Answer a question with its sources",
              responses={503: {"description": "started with an index folder: no generator"}})
    async def answer(body: AnswerRequest) -> dict:
        if service.model is None:
            raise HTTPException(503, detail="this server serves an index, not a RAG model: /answer needs a "
                                            "generator; start it with a saved RAG model folder, or use /search")
        _check_k(service, body.k)
        start = time.perf_counter()
        result = await service.answers.submit(body.question, key=body.k)
        return {**result, "seconds": round(time.perf_counter() - start, 4)}

    @app.post("/search", response_model=SearchResponse, response_model_exclude_none=True, summary="Search the index")
    async def search(body: SearchRequest) -> dict:
        _check_k(service, body.k)
        k = body.k if body.k is not None else min(DEFAULT_SEARCH_K, service.passages)
        if body.mode != "dense" and service.retriever.index.bm25 is None:
            raise _invalid("mode", f"mode {body.mode!r} needs BM25, and this index was built without it")
        result = await service.searches.submit(body.question, key=(k, body.mode))
        return {"question": body.question, "mode": body.mode, "k": k, **result}
