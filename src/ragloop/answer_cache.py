"""`RAG.answer` through the question cache its retriever holds: an answer asked for again is not recomputed.

    >>> from ragloop.retrieval.cache import RetrievalCache
    >>> rag.retriever.cache = RetrievalCache()                 # answers=True by default
    >>> rag.answer("who wrote hamlet?")                        # retrieved and generated
    >>> rag.answer("who wrote hamlet?")                        # from the cache: an equal Answer, a fresh copy
    >>> rag.retriever.cache.stats()["answers"]["hits"]
    1

The RAG layer owns this key; the retriever below knows nothing of answers. An answer is remembered
per question under everything it depends on, so nothing stale is served: k, num_beams,
max_new_tokens, `module_state` of the whole RAG model (generator, question encoder, passage encoder,
copy head: any in-place weight change misses), its config, and what its retriever's search depends
on (`search_setup`: the index, the mode's settings, the reranker).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from copy import deepcopy
from dataclasses import replace
from typing import Any

from ragloop.cache import module_state
from ragloop.retrieval.cache import search_setup

KIND = "answers"


def cached_answers(model: Any, questions: list[str], k: int | None, num_beams: int, max_new_tokens: int,
                   compute: Callable[[list[str]], list]) -> list:
    """`compute(questions)` (a list of `Answer`s, one per question) through `model.retriever.cache` when it
    has one; only the questions not remembered are computed, in one call. `model` is a `ragloop.model.RAG`
    (not imported: model.py imports this module)."""
    retriever = model.retriever
    if retriever.cache is None:
        return compute(questions)
    setup = (k, num_beams, max_new_tokens, module_state(model),
             search_setup(retriever, k or model.config.n_docs, retriever.mode),
             json.dumps(model.config.to_dict(), sort_keys=True, default=str))
    return retriever.cache.get_many(KIND, setup, questions, compute, copy=_copy)


def _copy(answer: Any) -> Any:
    """A copy the caller may change: a passage's `copied` span is a dict too."""
    return replace(answer, passages=deepcopy(answer.passages))
