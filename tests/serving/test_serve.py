"""The HTTP API (`ragloop serve`): endpoints, validation, micro-batching, the page, and properties
over arbitrary request bodies. Tiny models; FastAPI's TestClient and httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import socket
import sys

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragloop import Index, RagloopError
from ragloop.cli import main
from ragloop.model import RAG
from ragloop.serving import MicroBatcher, create_app
from ragloop.serving.guard import RequestGuard
from ragloop.serving.schemas import MAX_BODY_BYTES, MAX_QUESTION_CHARS
from ragloop.serving.server import api_key_for, is_loopback, listen

QUESTIONS = ["Who won Super Bowl 50?", "Where did Super Bowl 50 take place?", "What is the capital of Poland?",
             "Which team represented the NFC?", "Who was the MVP?", "When was the university founded?",
             "What river flows through Warsaw?", "How many people live in Warsaw?"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_rag_dir) -> RAG:
    """The shared saved RAG folder (conftest.py: tiny BERT retriever over squad_small, tiny T5, k=2), loaded."""
    return RAG.from_pretrained(tiny_rag_dir)


@pytest.fixture(scope="module")
def client(tiny_rag_dir):
    with TestClient(create_app(tiny_rag_dir, threads=1)) as c:
        yield c


PASSAGE_FIELDS = {"id", "title", "text", "score"}  # and "source", where the index records the passage's file


def _messages(response) -> str:
    detail = response.json()["detail"]
    return detail if isinstance(detail, str) else " | ".join(d["msg"] for d in detail)


# -- endpoints ------------------------------------------------------------------------------------


def test_health_describes_the_model_the_index_and_batching(client, model):
    r = client.get("/health")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok" and h["serving"] == "rag"
    assert h["endpoints"] == ["/ready", "/answer", "/search", "/v1/models", "/v1/chat/completions", "/v1/embeddings"]
    assert set(h["endpoints"]) == set(client.get("/openapi.json").json()["paths"]) - {"/health"}  # every route
    assert h["model"]["n_docs"] == 2 and h["model"]["rag_mode"] == "sequence"
    assert h["index"]["passages"] == len(model.index) and h["index"]["bm25"] is True
    assert h["batching"]["max_batch"] == 16 and h["batching"]["max_wait_ms"] == 10
    assert {"answer", "search"} <= set(h["batching"]) and h["threads"] == 1
    assert "/answer" in client.get("/openapi.json").json()["paths"]


def test_answer_returns_the_models_answer_and_passages(client, model):
    r = client.post("/answer", json={"question": QUESTIONS[0]})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = model.answer(QUESTIONS[0])
    assert body["question"] == QUESTIONS[0] and body["answer"] == expected.answer
    assert body["k"] == 2 and [p["id"] for p in body["passages"]] == [p["id"] for p in expected.passages]
    assert PASSAGE_FIELDS <= set(body["passages"][0]) <= PASSAGE_FIELDS | {"source"}
    assert body["passages"][0]["score"] == pytest.approx(expected.passages[0]["score"], abs=1e-5)
    assert body["batch_size"] >= 1 and body["seconds"] >= 0
    assert len(client.post("/answer", json={"question": QUESTIONS[1], "k": 3}).json()["passages"]) == 3


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_search_returns_the_retrievers_hits(client, model, mode):
    r = client.post("/search", json={"question": QUESTIONS[0], "k": 3, "mode": mode})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == mode and body["k"] == 3 and len(body["hits"]) == 3
    assert PASSAGE_FIELDS | {"doc_id"} <= set(body["hits"][0]) <= PASSAGE_FIELDS | {"doc_id", "source"}
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    if mode == "dense":  # the model's own (possibly fine-tuned) question encoder, as /answer retrieves
        assert [h["id"] for h in body["hits"]] == [p["id"] for p in model.answer(QUESTIONS[0], k=3).passages]
    assert client.post("/search", json={"question": QUESTIONS[0]}).json()["k"] == 5  # the default


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"question": ""}, "question", "question is empty"),
    ({"question": " \t\n "}, "question", "question is empty"),
    ({"question": "x" * (MAX_QUESTION_CHARS + 1)}, "question", f"the limit is {MAX_QUESTION_CHARS}"),
    ({}, "question", "Field required"),
    ({"question": 42}, "question", "valid string"),
    ({"question": "Who?", "k": 0}, "k", "greater than or equal to 1"),
    ({"question": "Who?", "k": 101}, "k", "less than or equal to 100"),
    ({"question": "Who?", "k": 90}, "k", "the index holds only"),
    ({"question": "Who?", "k": "2"}, "k", "valid integer"),
    ({"question": "Who?", "k": 2.5}, "k", "valid integer"),
    ({"question": "Who?", "k": True}, "k", "valid integer"),
    ({"question": "Who?", "model_dir": "/etc"}, "model_dir", "Extra inputs are not permitted"),
])
@pytest.mark.parametrize("endpoint", ["/answer", "/search"])
def test_bad_requests_are_422_saying_what_is_wrong(client, endpoint, body, field, message):
    r = client.post(endpoint, json=body)
    assert r.status_code == 422, r.text
    assert message in _messages(r)
    assert any(d["loc"][-1] == field for d in r.json()["detail"])


def test_more_422s_mode_surrogates_and_bodies_that_are_not_objects(client):
    r = client.post("/search", json={"question": "Who?", "mode": "sparse"})
    assert r.status_code == 422 and "'dense', 'bm25' or 'hybrid'" in _messages(r)
    lone = b'{"question": "Who \\ud800?"}'  # valid JSON, but no valid Unicode string
    r = client.post("/answer", content=lone, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "lone surrogate" in _messages(r)
    r = client.post("/answer", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON decode error" in _messages(r)
    assert client.post("/answer", json=["Who won?"]).status_code == 422


def test_an_index_folder_serves_search_only(rag_dir):
    with TestClient(create_app(rag_dir / "index", threads=1)) as c:
        h = c.get("/health").json()
        assert h["serving"] == "index" and h["model"] is None
        assert h["endpoints"] == ["/ready", "/search", "/v1/models", "/v1/embeddings"]  # none needing a generator
        assert len(c.post("/search", json={"question": QUESTIONS[0], "k": 2}).json()["hits"]) == 2
        r = c.post("/answer", json={"question": QUESTIONS[0]})
        assert r.status_code == 503 and "serves an index, not a RAG model" in r.json()["detail"]


def test_a_folder_that_is_neither_is_a_clear_error(tmp_path):
    with pytest.raises(RagloopError, match="no such folder"):
        create_app(tmp_path / "missing")
    with pytest.raises(RagloopError, match="neither a saved RAG model"):
        create_app(tmp_path)


# -- micro-batching -------------------------------------------------------------------------------


def _record_calls(monkeypatch, model) -> list[tuple[int, int | None]]:
    calls: list[tuple[int, int | None]] = []
    original = model.answer

    def recording(questions, k=None, **kwargs):
        calls.append((len(questions), k))
        return original(questions, k=k, **kwargs)

    monkeypatch.setattr(model, "answer", recording)
    return calls


async def _post_all(app, bodies: list[dict], endpoint: str = "/answer") -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        try:
            return await asyncio.gather(*(c.post(endpoint, json=b) for b in bodies))
        finally:
            await app.state.service.stop()


def test_concurrent_requests_share_one_model_call(model, monkeypatch):
    unbatched = [model.answer(q) for q in QUESTIONS]
    calls = _record_calls(monkeypatch, model)
    app = create_app(model, max_batch=8, max_wait_ms=500, threads=1)
    responses = asyncio.run(_post_all(app, [{"question": q} for q in QUESTIONS]))
    assert [r.status_code for r in responses] == [200] * len(QUESTIONS)
    assert sum(n for n, _ in calls) == len(QUESTIONS) and max(n for n, _ in calls) > 1, calls
    for r, expected in zip(responses, unbatched):  # batched answers are the unbatched ones
        body = r.json()
        assert body["question"] == expected.question and body["answer"] == expected.answer
        assert [p["id"] for p in body["passages"]] == [p["id"] for p in expected.passages]
    assert max(r.json()["batch_size"] for r in responses) > 1
    stats = app.state.service.info()["batching"]["answer"]
    assert stats["requests"] == len(QUESTIONS) and stats["mean_batch_size"] > 1


def test_batches_group_by_k_and_stay_within_max_batch(model, monkeypatch):
    calls = _record_calls(monkeypatch, model)
    app = create_app(model, max_batch=3, max_wait_ms=300, threads=1)
    bodies = [{"question": q, "k": 1 + i % 2} for i, q in enumerate(QUESTIONS)]
    responses = asyncio.run(_post_all(app, bodies))
    assert [len(r.json()["passages"]) for r in responses] == [b["k"] for b in bodies]
    assert sum(n for n, _ in calls) == len(QUESTIONS) and all(n <= 3 for n, _ in calls), calls
    assert {k for _, k in calls} == {1, 2}


def test_batcher_retries_a_failed_batch_one_by_one():
    seen: list[list[str]] = []

    def fn(items, key):
        seen.append(list(items))
        if "bad" in items:
            raise RagloopError("bad item")
        return [f"{key}:{x}" for x in items]

    async def go():
        batcher = MicroBatcher(fn, max_batch=4, max_wait_ms=200)
        try:
            return await asyncio.gather(*(batcher.submit(x, key="k") for x in ["a", "bad", "c"]),
                                        return_exceptions=True)
        finally:
            await batcher.stop()

    a, bad, c = asyncio.run(go())
    assert (a, c) == ("k:a", "k:c") and isinstance(bad, RagloopError)
    assert seen[0] == ["a", "bad", "c"] and ["a"] in seen and ["c"] in seen


def test_batcher_rejects_bad_settings():
    with pytest.raises(RagloopError, match="at least 1"):
        MicroBatcher(lambda items, key: items, max_batch=0)
    with pytest.raises(RagloopError, match="max wait"):
        MicroBatcher(lambda items, key: items, max_wait_ms=-1)


def _record_searches(monkeypatch, app) -> list[tuple[int, int, str]]:
    retriever = app.state.service.retriever
    calls: list[tuple[int, int, str]] = []
    original = retriever.search

    def recording(questions, k=5, mode="dense"):
        calls.append((len(questions), k, mode))
        return original(questions, k=k, mode=mode)

    monkeypatch.setattr(retriever, "search", recording)
    return calls


def test_concurrent_searches_share_one_retriever_call(rag_dir, monkeypatch):
    app = create_app(rag_dir / "index", max_batch=8, max_wait_ms=500, threads=1)
    unbatched = [[h.passage.id for h in app.state.service.retriever.search([q], k=3)[0]] for q in QUESTIONS]
    calls = _record_searches(monkeypatch, app)
    responses = asyncio.run(_post_all(app, [{"question": q, "k": 3} for q in QUESTIONS], "/search"))
    assert [r.status_code for r in responses] == [200] * len(QUESTIONS)
    assert sum(n for n, _, _ in calls) == len(QUESTIONS) and max(n for n, _, _ in calls) > 1, calls
    assert [[h["id"] for h in r.json()["hits"]] for r in responses] == unbatched  # same hits as one by one
    assert max(r.json()["batch_size"] for r in responses) > 1
    assert app.state.service.info()["batching"]["search"]["requests"] == len(QUESTIONS)


def test_search_batches_group_by_k_and_mode(rag_dir, monkeypatch):
    app = create_app(rag_dir / "index", max_batch=8, max_wait_ms=300, threads=1)
    calls = _record_searches(monkeypatch, app)
    bodies = [{"question": q, "k": 1 + i % 2, "mode": ("dense", "bm25")[i % 4 // 2]} for i, q in enumerate(QUESTIONS)]
    responses = asyncio.run(_post_all(app, bodies, "/search"))
    assert [(len(r.json()["hits"]), r.json()["mode"]) for r in responses] == [(b["k"], b["mode"]) for b in bodies]
    assert sum(n for n, _, _ in calls) == len(QUESTIONS)
    assert {(k, mode) for _, k, mode in calls} == {(1, "dense"), (2, "dense"), (1, "bm25"), (2, "bm25")}


def test_an_index_server_loads_its_question_encoder_before_the_first_request(rag_dir, monkeypatch):
    loads = []
    original = Index.load_encoder
    monkeypatch.setattr(Index, "load_encoder", lambda self: loads.append(1) or original(self))
    app = create_app(rag_dir / "index", threads=1)
    assert len(loads) == 1  # loaded (and run once) while the app was made: before the server says it is ready
    with TestClient(app) as c:
        assert c.post("/search", json={"question": QUESTIONS[0], "mode": "dense"}).status_code == 200
    assert len(loads) == 1


def test_the_model_thread_runs_with_the_threads_asked_for(model):
    for threads, expected in ((2, 2), (None, len(os.sched_getaffinity(0)))):
        service = create_app(model, threads=threads).state.service
        try:
            assert service.executor.submit(torch.get_num_threads).result() == expected
            assert service.info()["threads"] == expected
        finally:
            asyncio.run(service.stop())
    with pytest.raises(RagloopError, match="threads must be at least 1"):
        create_app(model, threads=0)


# -- what the server accepts ----------------------------------------------------------------------


def test_head_answers_and_the_docs_work_offline(client):
    assert client.head("/").status_code == 200
    assert client.head("/health").status_code == 200
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "POST /answer" in r.text and "POST /search" in r.text and "question" in r.text
    assert "<script" not in r.text and not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", r.text)
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert client.get("/redoc").status_code == 404  # FastAPI's would load its script from a CDN


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_only_json_bodies_are_accepted(client, content_type):
    """A cross-site page can post text/plain or a form without the browser asking the server first."""
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/answer", content=json.dumps({"question": QUESTIONS[0]}).encode(), headers=headers)
    assert r.status_code == 415, r.text
    assert r.json()["detail"][0]["loc"] == ["header", "content-type"] and "application/json" in _messages(r)
    ok = client.post("/search", content=json.dumps({"question": QUESTIONS[0]}).encode(),
                     headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_an_over_long_question_is_refused_without_echoing_it(client):
    question = "echo" * 5000
    r = client.post("/search", json={"question": question})
    assert r.status_code == 422 and f"the limit is {MAX_QUESTION_CHARS}" in _messages(r)
    assert r.json()["detail"][0]["loc"] == ["body", "question"]
    assert "echoecho" not in r.text and len(r.content) < 1000
    r = client.post("/search", json={"question": "Who?", "field" * 4000: 1})  # the client's field name, clipped
    assert r.status_code == 422 and "Extra inputs are not permitted" in _messages(r) and len(r.content) < 1000


def test_a_body_that_is_not_utf8_is_a_422_naming_the_body(client):
    for raw in (b'{"question": "Who won \xff?"}', json.dumps({"question": "Who?"}).encode("utf-16")):
        r = client.post("/answer", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body"] and "body is not valid UTF-8 JSON" in _messages(r)


def test_an_oversized_body_is_413(client):
    r = client.post("/answer", json={"question": "x" * (10 << 20)})
    assert r.status_code == 413 and f"over {MAX_BODY_BYTES} bytes" in _messages(r)


@pytest.mark.parametrize("declared", [True, False])
def test_an_oversized_body_is_refused_before_it_is_all_read(declared):
    """By its Content-Length before reading anything; chunked, as soon as it passes the limit."""
    chunk, chunks, reads, sent, reached = b"x" * 16384, 100, [], [], []

    async def app(scope, receive, send):
        reached.append(scope["path"])

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": chunk, "more_body": len(reads) < chunks}

    async def send(message):
        sent.append(message)

    headers = [(b"content-type", b"application/json")]
    if declared:
        headers.append((b"content-length", str(len(chunk) * chunks).encode()))
    scope = {"type": "http", "method": "POST", "path": "/answer", "headers": headers}
    asyncio.run(RequestGuard(app, max_body_bytes=65536)(scope, receive, send))
    assert sent[0]["status"] == 413 and not reached
    assert len(reads) == (0 if declared else 65536 // len(chunk) + 1)


# -- an API key -----------------------------------------------------------------------------------

KEY = "s3cret-Key_0123456789"


@pytest.fixture(scope="module")
def keyed(model):
    with TestClient(create_app(model, threads=1, api_key=KEY)) as c:
        yield c


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/answer", {"question": QUESTIONS[0]}), ("POST", "/search", {"question": QUESTIONS[0]}),
    ("GET", "/health", None), ("GET", "/nowhere", None),
])
def test_with_an_api_key_requests_must_send_it(keyed, method, path, body):
    for headers, why in (({}, "needs an API key"), ({"authorization": "Bearer wrong"}, "wrong API key"),
                         ({"authorization": "Bearer " + KEY[:-1]}, "wrong API key"),
                         ({"authorization": KEY}, "wrong API key"), ({"x-api-key": KEY}, "needs an API key")):
        r = keyed.request(method, path, json=body, headers=headers)
        assert r.status_code == 401 and why in _messages(r), (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
    r = keyed.request(method, path, json=body, headers={"authorization": "Bearer " + KEY})
    assert r.status_code == (404 if path == "/nowhere" else 200), r.text


def test_with_an_api_key_the_page_and_docs_stay_open(keyed):
    assert keyed.get("/").status_code == 200 and keyed.head("/").status_code == 200
    assert keyed.get("/openapi.json").status_code == 200
    docs = keyed.get("/docs")
    assert docs.status_code == 200 and "needs an API key" in docs.text


def test_ready_says_200_only_while_the_server_takes_requests(model):
    """/ready, the load balancer's probe: 503 "starting" before the server's startup has run, 200 "ready"
    while it serves, 503 "stopping" once it stops; open without the API key (health checks rarely send
    headers), so the schema declares no key and no 401 for it."""
    app = create_app(model, threads=1, api_key=KEY)
    before = TestClient(app).get("/ready")  # no `with`: the app's startup has not run
    assert (before.status_code, before.json()) == (503, {"status": "starting"})
    with TestClient(app) as c:
        r = c.get("/ready")
        assert (r.status_code, r.json()) == (200, {"status": "ready"}) and c.head("/ready").status_code == 200
        assert c.get("/health").status_code == 401  # the rest still needs the key
        operation = c.get("/openapi.json").json()["paths"]["/ready"]["get"]
        assert "security" not in operation and set(operation["responses"]) == {"200", "503"}
    after = TestClient(app).get("/ready")
    assert (after.status_code, after.json()) == (503, {"status": "stopping"})


def test_which_servers_need_a_key(monkeypatch, model):
    monkeypatch.delenv("RAGLOOP_API_KEY", raising=False)
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "localhost", "::1"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.com"))
    assert api_key_for("127.0.0.1") is None  # this machine only: no key, as before
    with pytest.raises(RagloopError, match="needs an API key: set RAGLOOP_API_KEY"):
        api_key_for("0.0.0.0")
    assert api_key_for("0.0.0.0", no_auth=True) is None
    assert api_key_for("0.0.0.0", api_key="k") == "k"
    monkeypatch.setenv("RAGLOOP_API_KEY", "from-env")
    assert api_key_for("0.0.0.0") == "from-env" and api_key_for("127.0.0.1") == "from-env"
    with pytest.raises(RagloopError, match="choose one"):
        api_key_for("0.0.0.0", api_key="k", no_auth=True)
    with pytest.raises(RagloopError, match="printable ASCII"):
        create_app(model, threads=1, api_key="two words")


# -- the page -------------------------------------------------------------------------------------


def test_the_page_is_served_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert 'id="question"' in html and 'fetch("answer"' in html and 'id="sources"' in html
    assert 'id="api-key"' in html and "Authorization" in html and "p.source" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing from a CDN
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    script = re.search(r"<script>(.*?)</script>", html, flags=re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp  # the inline script is allowed by its hash, nothing else is


# -- the command ----------------------------------------------------------------------------------


def _err(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_serve_command_errors_are_one_line(tmp_path, monkeypatch, capsys):
    capsys.readouterr()
    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "nope: no such folder" in _err(capsys)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if FastAPI were not installed
    assert main(["serve", str(tmp_path)]) == 2
    assert "pip install fastapi uvicorn" in _err(capsys)


def test_serve_command_off_localhost_needs_a_key(rag_dir, monkeypatch, capsys):
    import ragloop.serving

    served = {}
    monkeypatch.setattr(ragloop.serving, "serve", lambda app, **kw: served.update(app=app, **kw))
    monkeypatch.delenv("RAGLOOP_API_KEY", raising=False)
    capsys.readouterr()
    assert main(["serve", str(rag_dir), "--host", "0.0.0.0", "-q"]) == 2
    assert "needs an API key" in _err(capsys) and not served
    monkeypatch.setenv("RAGLOOP_API_KEY", KEY)
    assert main(["serve", str(rag_dir), "--host", "127.0.0.1", "--port", "0", "--threads", "1", "-q"]) == 0
    served["sock"].close()
    with TestClient(served["app"]) as c:
        assert c.get("/health").status_code == 401
        assert c.get("/health", headers={"authorization": "Bearer " + KEY}).status_code == 200


def test_serve_command_warns_off_localhost_and_serves(rag_dir, monkeypatch, capsys):
    import ragloop.serving
    import ragloop.serving.server

    served = {}
    monkeypatch.setattr(ragloop.serving.server, "listen", lambda host, port: listen("127.0.0.1", 0))
    monkeypatch.setattr(ragloop.serving, "serve", lambda app, **kw: served.update(app=app, **kw))
    capsys.readouterr()
    monkeypatch.delenv("RAGLOOP_API_KEY", raising=False)
    assert main(["serve", str(rag_dir), "--host", "0.0.0.0", "--max-batch", "4", "--threads", "1", "--no-auth",
                 "-q"]) == 0
    out = capsys.readouterr()
    assert "warning: listening on 0.0.0.0" in out.err and "no authentication" in out.err and "serving" in out.out
    assert served["app"].state.service.answers.max_batch == 4 and served["app"].state.service.threads == 1
    served["sock"].close()


def test_a_busy_port_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RagloopError, match=f"cannot listen on 127.0.0.1:{port}"):
            listen("127.0.0.1", port)
    with pytest.raises(RagloopError, match="port must be"):
        listen("127.0.0.1", 70000)


# -- properties: whatever a client sends, the answer is 200 or 422, never a 500 -------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
# any code point, lone surrogates and control characters included
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=60)
request_bodies = json_values | st.fixed_dictionaries(
    {"question": any_text | json_values},
    optional={"k": st.integers(-3, 120) | json_values, "mode": st.sampled_from(["dense", "bm25", "hybrid"]) | any_text},
)
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _post_raw(client, endpoint: str, body) -> httpx.Response:
    return client.post(endpoint, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


@PROPERTY
@given(body=request_bodies)
def test_any_json_body_to_answer_gives_200_or_422(client, body):
    r = _post_raw(client, "/answer", body)
    assert r.status_code in (200, 422), r.text
    if r.status_code == 200:
        out = r.json()
        assert isinstance(out["answer"], str) and len(out["passages"]) == out["k"] >= 1
    else:
        assert _messages(r)


@PROPERTY
@given(body=request_bodies)
def test_any_json_body_to_search_gives_200_or_422(client, body):
    r = _post_raw(client, "/search", body)
    assert r.status_code in (200, 422), r.text
    if r.status_code == 200:
        assert len(r.json()["hits"]) <= r.json()["k"]


@PROPERTY
@given(question=any_text, k=st.integers(-2, 200), mode=st.sampled_from(["dense", "bm25", "hybrid"]))
def test_any_question_text_gives_200_or_422(client, question, k, mode):
    for endpoint, body in (("/search", {"question": question, "k": k, "mode": mode}),
                           ("/answer", {"question": question, "k": k})):
        r = _post_raw(client, endpoint, body)
        assert r.status_code in (200, 422), r.text


@settings(max_examples=30, deadline=None)
@given(raw=st.binary(max_size=80))
def test_any_bytes_are_a_client_error(client, raw):
    r = client.post("/answer", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text


def test_search_k_agrees_with_python_and_the_cli_on_a_small_index(tmp_path, passages, encoder):
    """k left out: every passage of an index smaller than the default; an explicit k over it: refused."""
    from ragloop import Retriever

    small = Index.build(passages[:3], encoder, tmp_path / "small", progress=False)
    python = [h.passage.id for h in Retriever(small).search(QUESTIONS[0])[0]]
    with TestClient(create_app(tmp_path / "small", threads=1)) as c:
        body = c.post("/search", json={"question": QUESTIONS[0]}).json()
        assert body["k"] == 3 and [h["id"] for h in body["hits"]] == python
        r = c.post("/search", json={"question": QUESTIONS[0], "k": 4})
        assert r.status_code == 422 and "holds only 3 passages" in _messages(r)
