"""OpenAI-compatible endpoints under /v1, so OpenAI's clients (and the tools built on them) can talk to
`ragloop serve`:

    >>> from openai import OpenAI
    >>> client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY")  # any key when the server has none
    >>> model = client.models.list().data[0].id                               # the served model's folder name
    >>> reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Who won?"}])
    >>> reply.choices[0].message.content            # 'Denver Broncos [1]\\n\\nSources:\\n[1] Super Bowl 50\\n...'
    >>> reply.sources                                # the passages, numbered as cited: [{"index": 1, ...}, ...]

Endpoints:
    GET  /v1/models            the chat model (a RAG server only) and the question encoder, as OpenAI model objects
    POST /v1/chat/completions  the last user message is the question (earlier messages are not read); the
                               answer, then its sources numbered "[n]" (cited inline: the passages the answer
                               copied from, else the best one), and `sources` (a ragloop field) on the
                               response, or on the first chunk with `stream: true` (server-sent events,
                               OpenAI's chunk format, ending with `data: [DONE]`); `usage` counts the
                               reader's tokens (the question with its passages, and the answer), in a last
                               chunk when streamed with stream_options.include_usage. OpenAI's sampling fields
                               (temperature, max_tokens, ...) are accepted and ignored: the server's decoding
                               settings answer. `n` must be 1.
    POST /v1/embeddings        the question encoder's vectors (the ones the index is searched with) for a
                               string or a list of strings; `encoding_format` float or base64 (float32, little-endian)

The same API key, body limits and micro-batching as /answer and /search (`guard.py`, `service.py`); every
text is checked like a question (`schemas.py`). Errors on /v1 are OpenAI's shape,
{"error": {"message", "type", "param", "code"}}, and an invalid body is a 400 (OpenAI's status) rather
than the 422 of the rest of the API: `OpenAIErrors` reshapes them (the guard's too). `install(app)` adds both.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from ragloop.serving.guard import ASGIApp, Message, Receive, Scope, Send, clip
from ragloop.serving.schemas import MAX_QUESTION_CHARS, AnswerPassageOut, check_question
from ragloop.serving.service import Service

PREFIX = "/v1"
CHAT_PATH = "/chat/completions"  # under PREFIX: the route that needs a generator
EMBEDDING_SUFFIX = "-question-encoder"  # the question encoder's model id: the served name and this
MAX_MESSAGES = 256
MAX_EMBEDDING_INPUTS = 256
ERROR_SHAPE = {PREFIX + "/": "ErrorResponse"}  # the guard's refusals under /v1/ come in OpenAI's error shape
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               429: "rate_limit_error"}  # other 4xx: invalid_request_error; 5xx: server_error

# -- request and response bodies ------------------------------------------------------------------


# text the server reads is not empty nor only whitespace: the validators say so in words, the schema in
# its constraints (so /openapi.json and the server agree)
_TEXT_SCHEMA = {"type": "string", "minLength": 1, "pattern": r"\S"}


def _some_text(text: str, what: str) -> str:
    if not text.strip():
        raise ValueError(f"{what} is empty (or only whitespace)")
    return text


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"] = Field(description="only text parts are read")
    text: Annotated[str, WithJsonSchema(_TEXT_SCHEMA)]

    _text = field_validator("text")(lambda text: _some_text(text, "a text part"))


_CONTENT_SCHEMA = {"anyOf": [_TEXT_SCHEMA, {"type": "array", "minItems": 1, "items": {
    "type": "object", "properties": {"type": {"const": "text"}, "text": _TEXT_SCHEMA}, "required": ["type", "text"]}}]}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, ...: accepted, not read
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Annotated[str | list[ContentPart], WithJsonSchema(_CONTENT_SCHEMA)]

    @field_validator("content")
    @classmethod
    def _has_text(cls, content: str | list[ContentPart]) -> str | list[ContentPart]:
        if isinstance(content, list) and not content:
            raise ValueError("content is an empty list")
        return _some_text(content, "content") if isinstance(content, str) else content

    def text(self) -> str:
        """The message as text: a string, or its text parts joined."""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = Field(False, description="a last chunk (no choices) with the usage, before [DONE]")


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI's sampling fields: accepted, not used
    model: str = Field(description="an id from GET /v1/models")
    messages: list[ChatMessage] = Field(description="the last user message is the question", json_schema_extra={
        "minItems": 1, "maxItems": MAX_MESSAGES,
        "contains": {"type": "object", "properties": {"role": {"const": "user"}}, "required": ["role"]}})
    stream: bool = Field(False, description="server-sent events in OpenAI's chunk format")
    stream_options: StreamOptions | None = Field(None, description="with stream: whether to send the usage")
    n: int = Field(1, ge=1, le=1, description="one choice only")

    @field_validator("messages")
    @classmethod
    def _has_a_question(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not messages:
            raise ValueError("messages is empty: send at least one message with role 'user'")
        if len(messages) > MAX_MESSAGES:
            raise ValueError(f"messages has {len(messages)} entries; the limit is {MAX_MESSAGES}")
        if not any(m.role == "user" for m in messages):
            raise ValueError("messages holds no message with role 'user' (its content is the question)")
        return messages

    def question(self) -> str:
        """The last user message, checked like any question (a ValueError says what is wrong)."""
        return check_question(next(m for m in reversed(self.messages) if m.role == "user").text())


# a text or a list of texts; read as a list, so an error names the item ("input.2"), not a union branch
_INPUT_SCHEMA = {**_TEXT_SCHEMA, "maxLength": MAX_QUESTION_CHARS}
Texts = Annotated[list[Annotated[str, Field(strict=True)]], WithJsonSchema({"anyOf": [
    _INPUT_SCHEMA, {"type": "array", "items": _INPUT_SCHEMA, "minItems": 1, "maxItems": MAX_EMBEDDING_INPUTS}]})]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # user
    model: str = Field(description="an id from GET /v1/models")
    input: Texts = Field(description=f"a text or a list of at most {MAX_EMBEDDING_INPUTS}, each checked like a "
                                     "question (token arrays are not read)")
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: float32, little-endian")
    dimensions: int | None = Field(None, description="only the encoder's own dimension")

    @field_validator("input", mode="before")
    @classmethod
    def _a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("input")
    @classmethod
    def _check_input(cls, texts: list[str]) -> list[str]:
        if not texts:
            raise ValueError("input is an empty list")
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"input has {len(texts)} texts; the limit is {MAX_EMBEDDING_INPUTS}")
        return [check_question(text) for text in texts]


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="when the server started (Unix time)")
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class SourceOut(AnswerPassageOut):
    index: int = Field(description="the number the answer text cites the passage by: [index]")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str = Field(description="the answer, [n] citations, then the sources listed by number and title")


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class ChatUsage(BaseModel):
    prompt_tokens: int = Field(description="the reader's tokens read: the question with each source passage")
    completion_tokens: int = Field(description="the answer's tokens")
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    sources: list[SourceOut] = Field(description="ragloop's field: the passages the answer was drawn from, "
                                                 "best first, numbered as the text cites them")
    usage: ChatUsage = Field(description="in the reader's tokens (its tokenizer's)")


class EmbeddingOut(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="the vector, or its float32 bytes in base64")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[EmbeddingOut]
    usage: EmbeddingUsage


class ErrorOut(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorOut


# -- errors ---------------------------------------------------------------------------------------


def _fail(status: int, code: str, field: str | None, message: str) -> HTTPException:
    """An HTTPException with the server's usual detail, which `OpenAIErrors` turns into OpenAI's shape."""
    return HTTPException(status, detail=[{"type": code, "loc": ["body", field] if field else ["body"], "msg": message}])


def openai_error(status: int, detail: Any) -> dict:
    """The server's error detail ({"detail": [{"type", "loc", "msg"}]} or a string) in OpenAI's shape:
    `param` is the first failing body field ("messages", "input.2"), `code` its error type."""
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    if not isinstance(detail, list) or not detail:
        return {"error": {"message": str(detail), "type": kind, "param": None, "code": None}}
    fields = [_field(d) for d in detail]
    messages = [str(d.get("msg", "")).removeprefix("Value error, ") if isinstance(d, dict) else str(d) for d in detail]
    message = "; ".join(f"{field}: {msg}" if field else msg for field, msg in zip(fields, messages))
    code = detail[0].get("type") if isinstance(detail[0], dict) else None
    return {"error": {"message": message, "type": kind, "param": fields[0], "code": code}}


def _field(error: Any) -> str | None:
    """The body field an error is about, dotted ("messages.0.role"); None for the body or a header."""
    loc = [str(part) for part in error.get("loc", ())] if isinstance(error, dict) else []
    return ".".join(loc[1:]) if len(loc) > 1 and loc[0] == "body" else None


class OpenAIErrors:
    """ASGI middleware: error responses under /v1 in OpenAI's shape (see `openai_error`), an invalid
    body (422 elsewhere) as a 400. Added outside the guard, so its refusals are reshaped too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def reshape(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                await _send_reshaped(send, start, b"".join(chunks))

        await self.app(scope, receive, reshape)


async def _send_reshaped(send: Send, start: Message, body: bytes) -> None:
    status = start["status"]
    try:
        detail = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):  # not the server's error shape: sent as it is
        await send(start)
        await send({"type": "http.response.body", "body": body})
        return
    status = 400 if status == 422 else status
    body = json.dumps(openai_error(status, detail)).encode()
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    await send({**start, "status": status, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# -- the routes -----------------------------------------------------------------------------------

REFUSED = 'refused: {"error": {"message", "type", "param", "code"}} (OpenAI\'s shape; an invalid body is a 400)'
router = APIRouter(prefix=PREFIX, tags=["OpenAI-compatible"],
                   responses={"4XX": {"model": ErrorResponse, "description": REFUSED}})


def _service(request: Request) -> Service:
    return request.app.state.service


def _model_ids(service: Service) -> dict[str, str]:
    """Model id -> what it serves: the RAG model (chat) under the served name, the question encoder."""
    ids = {service.name + EMBEDDING_SUFFIX: "embeddings"}
    if service.model is not None:
        ids = {service.name: "chat", **ids}
    return ids


def _check_model(service: Service, model: str, serves: str) -> None:
    if _model_ids(service).get(model) != serves:
        ids = [name for name, what in _model_ids(service).items() if what == serves]
        if not ids:
            raise HTTPException(503, detail="this server serves an index, not a RAG model: chat completions "
                                            "need a generator; start it with a saved RAG model folder")
        raise _fail(404, "model_not_found", "model", f"no model {clip(model)!r} for {serves} here; use {ids[0]!r}")


@router.get("/models", response_model=ModelList, summary="The models served (OpenAI's model list)")
async def models(service: Annotated[Service, Depends(_service)]) -> dict:
    created = int(service.started)
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "ragloop"}
                                       for name in _model_ids(service)]}


def _cite(answer: dict) -> tuple[str, list[dict]]:
    """The answer text with numbered citations, and the passages as sources numbered to match: the
    passages it copied from are cited inline (without a copy head: the best-scored one), all listed."""
    sources = [SourceOut(index=i, **p).model_dump() for i, p in enumerate(answer["passages"], 1)]
    cited = [s["index"] for s in sources if s.get("copied")] or [1] * bool(sources)
    inline = "".join(f"[{i}]" for i in cited)
    listing = "\n".join(f"[{s['index']}] {s['title']}" for s in sources)
    text = " ".join(part for part in (answer["answer"], inline) if part)
    return (f"{text}\n\nSources:\n{listing}" if sources else text), sources


@router.post(CHAT_PATH, response_model=ChatCompletion,
             summary="Answer the last user message, with its sources (OpenAI's chat API)",
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "a chat.completion, or with stream: chunks as server-sent events"}})
async def chat_completions(body: ChatCompletionRequest, service: Annotated[Service, Depends(_service)]):
    _check_model(service, body.model, "chat")
    try:
        question = body.question()
    except ValueError as e:
        raise _fail(400, "invalid_question", "messages", str(e)) from None
    answer = await service.answers.submit(question, key=None)
    usage = await service.usage(answer)
    content, sources = _cite(answer)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
    if body.stream:
        with_usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(_chunks(head, content, sources, usage if with_usage else None),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return ChatCompletion(**head, choices=[ChatChoice(index=0, message=AssistantMessage(content=content))],
                          sources=sources, usage=usage)


async def _chunks(head: dict, content: str, sources: list[dict], usage: dict | None) -> AsyncIterator[str]:
    """The answer as OpenAI's chat.completion.chunk events: the role and the sources, the text a word
    at a time (it is whole already: the generator decodes before the reply starts), the finish, then
    (with `usage`, as OpenAI does for stream_options.include_usage) a chunk without choices holding it
    while the others say "usage": null, and [DONE]."""
    null_usage = {"usage": None} if usage is not None else {}

    def event(delta: dict, finish: str | None = None, **extra) -> str:
        chunk = {**head, "object": "chat.completion.chunk", **extra, **null_usage,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return f"data: {json.dumps(chunk)}\n\n"

    yield event({"role": "assistant", "content": ""}, sources=sources)
    for piece in re.findall(r"\s*\S+|\s+$", content):  # every character, in order
        yield event({"content": piece})
    yield event({}, "stop")
    if usage is not None:
        yield f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


@router.post("/embeddings", response_model=EmbeddingList, summary="Question-encoder vectors (OpenAI's embeddings API)")
async def embeddings(body: EmbeddingRequest, service: Annotated[Service, Depends(_service)]) -> dict:
    _check_model(service, body.model, "embeddings")
    dim = service.retriever.index.dim
    if body.dimensions is not None and body.dimensions != dim:
        raise _fail(400, "invalid_dimensions", "dimensions", f"this encoder's vectors have {dim} dimensions "
                                                             f"(got {body.dimensions}); it cannot shorten them")
    result = await service.embeddings.submit(body.input)

    def encoded(vector: np.ndarray) -> list[float] | str:
        if body.encoding_format == "base64":
            return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        return vector.tolist()

    data = [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(result["vectors"])]
    return {"object": "list", "model": body.model, "data": data,
            "usage": {"prompt_tokens": result["tokens"], "total_tokens": result["tokens"]}}


def install(app: FastAPI) -> None:
    """The /v1 routes, and their errors in OpenAI's shape (call after the guard is added: outside it)."""
    app.include_router(router)
    app.add_middleware(OpenAIErrors)
