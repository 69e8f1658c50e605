"""The bodies the HTTP API reads and writes (pydantic models), and the limits every request is held to.

    >>> from ragloop.serving.schemas import AnswerRequest, MAX_QUESTION_CHARS
    >>> AnswerRequest(question="Who won Super Bowl 50?", k=3).k
    3
    >>> AnswerRequest(question=" ")          # doctest: +SKIP
    ValidationError: ... question is empty (or only whitespace)

The limits are written here once: the request models check them, the service reports them on /health,
the guard (`guard.py`) and the docs page (`docs.py`) use MAX_BODY_BYTES. The response models are what
/openapi.json and /docs describe; the routes themselves are in `app.py`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from ragloop.constants import DEFAULT_SEARCH_K

MAX_QUESTION_CHARS = 1000
MAX_K = 100
# a question of MAX_QUESTION_CHARS written as JSON escapes is ~12 KB; anything far over that is refused unread
MAX_BODY_BYTES = 64 * 1024
# the request line and headers together (uvicorn's h11 parser holds a request to it: 431 past it)
MAX_HEADER_BYTES = 16 * 1024

# -- requests -------------------------------------------------------------------------------------

# the limits are constraints of the field, so /openapi.json states them; `check_question` runs first and
# says what is wrong in words (pydantic would say "String should match pattern '\S'")
QuestionText = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_QUESTION_CHARS, pattern=r"\S",
                                    description=f"the question, 1 to {MAX_QUESTION_CHARS} characters, not all "
                                                "whitespace", examples=["Who won Super Bowl 50?"])]


def check_question(value: object) -> object:
    """The question text, or ValueError saying what is wrong with it in words (a non-string is left to
    the strict str type, which refuses it)."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        raise ValueError("question is empty (or only whitespace)")
    if len(value) > MAX_QUESTION_CHARS:
        raise ValueError(f"question has {len(value)} characters; the limit is {MAX_QUESTION_CHARS}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("question is not valid Unicode text (it holds a lone surrogate)") from None
    return value


def _whole_number(value: object) -> object:
    """A float with no fraction as the int it is: JSON Schema counts 16.0 an integer, so /openapi.json's
    integer k allows it. 2.5, "2" and true stay refused (the strict int type)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


PassageCount = Annotated[int | None, BeforeValidator(_whole_number)]


class _QuestionBody(BaseModel):
    """What both requests share: a question, checked by `check_question`, and no unknown fields."""

    model_config = ConfigDict(extra="forbid")

    question: QuestionText

    _question = field_validator("question", mode="before")(check_question)


class AnswerRequest(_QuestionBody):
    k: PassageCount = Field(None, strict=True, ge=1, le=MAX_K,
                          description="passages to read (default: the model's n_docs; at most the index size)")


class SearchRequest(_QuestionBody):
    k: PassageCount = Field(None, strict=True, ge=1, le=MAX_K,
                          description=f"passages to return (default {DEFAULT_SEARCH_K}; at most the index size)")
    mode: Literal["dense", "bm25", "hybrid"] = Field("dense", description="dense (FAISS), bm25, or hybrid (fused)")


# -- responses ------------------------------------------------------------------------------------


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


class ReadyResponse(BaseModel):
    status: Literal["ready", "starting", "stopping"] = Field(
        description="ready (200): the model, the index and the question encoder are loaded and the server takes "
                    "requests; starting or stopping (503): send traffic elsewhere")


# -- what /openapi.json says that the models alone cannot -----------------------------------------


def limit_k(openapi: dict, passages: int) -> dict:
    """`openapi` (the app's schema) with k at most `passages` in both requests, where the index holds fewer
    than MAX_K: the server refuses a larger k (app.py), so the schema says so. Changed in place, returned."""
    if passages >= MAX_K:
        return openapi
    for model in (AnswerRequest, SearchRequest):
        k = openapi["components"]["schemas"][model.__name__]["properties"]["k"]
        for option in k.get("anyOf", [k]):  # int | None: the integer branch
            if option.get("type") == "integer":
                option["maximum"] = passages
    return openapi
