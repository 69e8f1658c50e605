"""The OpenAI-compatible endpoints (/v1) through OpenAI's own Python client, against a live server
(`BackgroundServer`) on the tiny RAG model; and the bearer key declared in /openapi.json."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragloop.data.corpus import Passage
from ragloop.model import RAG
from ragloop.serving import BackgroundServer, create_app
from ragloop.serving.openai_api import EMBEDDING_SUFFIX, _cite

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.usefixtures("one_thread")

KEY = "s3cret-Key_0123456789"
QUESTION = "Who won Super Bowl 50?"


@pytest.fixture(scope="module")
def model(tiny_rag_dir) -> RAG:
    return RAG.from_pretrained(tiny_rag_dir)


@pytest.fixture(scope="module")
def server(model):
    with BackgroundServer(create_app(model, threads=1, api_key=KEY)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def ids(client) -> dict[str, str]:
    names = [m.id for m in client.models.list().data]
    return {"chat": names[0], "embeddings": names[1]}


def test_models_lists_the_rag_model_and_its_question_encoder(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["RAG", "RAG" + EMBEDDING_SUFFIX]
    assert all(m.object == "model" and m.owned_by == "ragloop" for m in models)


def test_chat_completion_answers_the_last_user_message_with_numbered_sources(client, ids, model):
    expected = model.answer([QUESTION], num_beams=1, max_new_tokens=32)[0]
    reply = client.chat.completions.create(model=ids["chat"], messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of Poland?"},
        {"role": "assistant", "content": "Warsaw"}, {"role": "user", "content": QUESTION}], temperature=0.2)
    assert reply.object == "chat.completion" and reply.model == ids["chat"]
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    content = choice.message.content
    assert content.startswith(expected.answer + " [1]")
    sources = reply.sources  # ragloop's extra field, kept by the client
    assert [s["id"] for s in sources] == [p["id"] for p in expected.passages]
    assert [s["index"] for s in sources] == list(range(1, len(sources) + 1))
    for s in sources:
        assert f"[{s['index']}] {s['title']}" in content.split("Sources:")[1]


def test_chat_completion_streams_chunks_that_add_up_to_the_answer(client, ids):
    whole = client.chat.completions.create(model=ids["chat"], messages=[{"role": "user", "content": QUESTION}])
    chunks = list(client.chat.completions.create(model=ids["chat"], stream=True,
                                                 messages=[{"role": "user", "content": QUESTION}]))
    assert len(chunks) > 3 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].sources == whole.sources
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"


def test_usage_counts_the_tokens_the_reader_read_and_the_answer(client, ids, model):
    """prompt_tokens: the question with each passage, as the reader's inputs hold them; completion_tokens:
    the answer's tokens; streamed, in a last chunk without choices when stream_options asks for it."""
    expected = model.answer(QUESTION, num_beams=1, max_new_tokens=32)
    gen, k = model.generator, len(expected.passages)
    read = gen.build_inputs([QUESTION], [[Passage(p["id"], p["title"], p["text"]) for p in expected.passages]])
    assert read["input_ids"].shape[0] == k > 0
    question_tokens = len(gen.tokenizer(QUESTION, add_special_tokens=False)["input_ids"])
    answer_tokens = len(gen.tokenizer(expected.answer, add_special_tokens=False)["input_ids"])
    messages = [{"role": "user", "content": QUESTION}]
    usage = client.chat.completions.create(model=ids["chat"], messages=messages).usage
    assert usage.prompt_tokens == int(read["attention_mask"].sum())
    assert k * question_tokens < usage.prompt_tokens <= k * gen.max_source_length  # the question read k times
    assert usage.completion_tokens == answer_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    chunks = list(client.chat.completions.create(model=ids["chat"], messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage == usage
    assert all(c.usage is None and c.choices for c in chunks[:-1])
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == "stop"
    plain = list(client.chat.completions.create(model=ids["chat"], messages=messages, stream=True))
    assert all(c.usage is None and c.choices for c in plain)  # without include_usage: no usage chunk


def test_a_stream_is_server_sent_events_ending_with_done(server, ids):
    body = {"model": ids["chat"], "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"authorization": "Bearer " + KEY}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_embeddings_are_the_question_encoders_vectors(client, ids, model):
    expected = model.retriever.question_encoder.encode([QUESTION, "Warsaw"], progress=False)
    one = client.embeddings.create(model=ids["embeddings"], input=QUESTION)  # the client asks for base64
    assert len(one.data) == 1 and one.data[0].index == 0 and one.usage.prompt_tokens > 0
    np.testing.assert_allclose(one.data[0].embedding, expected[0], rtol=1e-4, atol=1e-5)
    both = client.embeddings.create(model=ids["embeddings"], input=[QUESTION, "Warsaw"], encoding_format="float")
    assert [d.index for d in both.data] == [0, 1]
    np.testing.assert_allclose([d.embedding for d in both.data], expected, rtol=1e-4, atol=1e-5)
    assert both.usage.total_tokens > one.usage.total_tokens


def test_concurrent_embedding_requests_share_one_encoder_call(model):
    texts = [[QUESTION], ["Warsaw", "Poland"], ["Who was the MVP?"], ["Denver", "Carolina", "Santa Clara"]]
    expected = [model.retriever.question_encoder.encode(t, progress=False) for t in texts]

    async def embed_all(url: str) -> list:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        async with client:
            return await asyncio.gather(*(client.embeddings.create(model="RAG" + EMBEDDING_SUFFIX, input=t)
                                          for t in texts))

    with BackgroundServer(create_app(model, threads=1, max_batch=8, max_wait_ms=500)) as s:
        replies = asyncio.run(embed_all(s.url))
        stats = httpx.get(s.url + "/health").json()["batching"]["embed"]
    for reply, vectors in zip(replies, expected):
        np.testing.assert_allclose([d.embedding for d in reply.data], vectors, rtol=1e-4, atol=1e-5)
    assert stats["requests"] == len(texts) and stats["mean_batch_size"] > 1, stats


def test_a_wrong_api_key_is_an_authentication_error(server, ids):
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.models.list()
    assert caught.value.status_code == 401 and caught.value.body["type"] == "authentication_error"
    assert "wrong API key" in caught.value.body["message"]
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=ids["chat"], messages=[{"role": "user", "content": QUESTION}])


@pytest.mark.parametrize(("call", "param", "words"), [
    (lambda c, ids: c.chat.completions.create(model=ids["chat"], messages=[]), "messages", "messages is empty"),
    (lambda c, ids: c.chat.completions.create(model=ids["chat"], messages=[{"role": "user", "content": "  "}]),
     "messages.0.content", "content is empty"),
    (lambda c, ids: c.chat.completions.create(model=ids["chat"], messages=[{"role": "system", "content": "Hi"}]),
     "messages", "no message with role 'user'"),
    (lambda c, ids: c.chat.completions.create(model=ids["chat"], n=2, messages=[{"role": "user", "content": "Hi"}]),
     "n", "less than or equal to 1"),
    (lambda c, ids: c.embeddings.create(model=ids["embeddings"], input=[]), "input", "input is an empty list"),
    (lambda c, ids: c.embeddings.create(model=ids["embeddings"], input="x" * 1001), "input", "limit is 1000"),
    (lambda c, ids: c.embeddings.create(model=ids["embeddings"], input=["Hi", [1, 2]]), "input.1",
     "valid string"),  # token arrays are not read
    (lambda c, ids: c.embeddings.create(model=ids["embeddings"], input="Hi", dimensions=3), "dimensions",
     "cannot shorten"),
])
def test_bad_requests_are_400s_in_openais_shape_naming_the_field(client, ids, call, param, words):
    with pytest.raises(openai.BadRequestError) as caught:
        call(client, ids)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == param and words in error["message"], error


def test_the_text_cites_the_passages_the_answer_copied_from():
    passage = {"id": "p", "title": "T", "text": "It was Denver.", "score": 1.0, "source": None, "copied": None}
    copied = {**passage, "title": "U", "copied": {"start": 7, "end": 13, "text": "Denver"}}
    text, sources = _cite({"answer": "Denver", "passages": [passage, copied, passage]})
    assert text == "Denver [2]\n\nSources:\n[1] T\n[2] U\n[3] T"
    assert [s["index"] for s in sources] == [1, 2, 3] and sources[1]["copied"]["text"] == "Denver"
    assert _cite({"answer": "Denver", "passages": [passage]})[0].startswith("Denver [1]\n")  # no copy: the best
    assert _cite({"answer": "", "passages": []}) == ("", [])


def test_an_unknown_model_is_a_404_naming_the_served_one(client, ids):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": QUESTION}])
    assert caught.value.body["code"] == "model_not_found" and ids["chat"] in caught.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model=ids["chat"], input=QUESTION)  # the chat model does not embed


def test_an_index_server_embeds_but_does_not_chat(rag_dir):
    with TestClient(create_app(rag_dir / "index", threads=1)) as c:
        names = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert names == ["index" + EMBEDDING_SUFFIX]
        assert c.post("/v1/embeddings", json={"model": names[0], "input": "Hi"}).status_code == 200
        r = c.post("/v1/chat/completions", json={"model": "index", "messages": [{"role": "user", "content": "Hi"}]})
        assert r.status_code == 503 and "serves an index" in r.json()["error"]["message"]


def test_openapi_declares_the_bearer_key_when_the_server_has_one(server, model):
    schema = httpx.get(server.url + "/openapi.json").json()  # open without the key
    scheme = schema["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer" and "API key" in scheme["description"]
    for path in ("/answer", "/search", "/health", "/v1/models", "/v1/chat/completions", "/v1/embeddings"):
        for operation in schema["paths"][path].values():
            assert operation["security"] == [{"bearer": []}], path
    with TestClient(create_app(model, threads=1)) as open_server:  # no key: none declared
        assert "securitySchemes" not in open_server.get("/openapi.json").json().get("components", {})


# -- any body -------------------------------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                      max_size=3), max_leaves=6)
# any code point, lone surrogates and control characters included
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=40)
model_names = st.sampled_from(["RAG", "RAG" + EMBEDDING_SUFFIX]) | any_text
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]) | any_text,
                                           "content": any_text | json_values}), max_size=3)
chat_bodies = json_values | st.fixed_dictionaries({"model": model_names, "messages": messages | json_values},
                                                  optional={"stream": st.booleans() | json_values})
embedding_bodies = json_values | st.fixed_dictionaries(
    {"model": model_names, "input": any_text | st.lists(any_text, max_size=3) | json_values},
    optional={"encoding_format": st.sampled_from(["float", "base64"]) | any_text})


@pytest.fixture(scope="module")
def open_client(model):
    with TestClient(create_app(model, threads=1)) as c:
        yield c


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chat=chat_bodies, embedding=embedding_bodies)
def test_any_json_body_gives_200_or_a_4xx_in_openais_shape(open_client, chat, embedding):
    for path, body in (("/v1/chat/completions", chat), ("/v1/embeddings", embedding)):
        r = open_client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        assert r.status_code in (200, 400, 404), r.text
        if r.status_code != 200:
            error = r.json()["error"]
            assert error["message"] and error["type"] in ("invalid_request_error", "not_found_error"), error
