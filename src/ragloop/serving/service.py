"""The service behind the HTTP API: the model (or index) served, its micro-batchers and its model thread.

    >>> from ragloop.serving.service import Service
    >>> service = Service.load("runs/demo/rag/best_model", max_batch=16, max_wait_ms=10, threads=2)
    >>> await service.answers.submit("Who won Super Bowl 50?", key=None)   # in a coroutine
    {'question': 'Who won Super Bowl 50?', 'answer': ..., 'passages': [...], 'k': 2, 'batch_size': 1}
    >>> service.info()["batching"]["answer"]["requests"]                   # what /health shows
    1

Three batchers share the model thread: `answers` (RAG.answer), `searches` (Retriever.search) and
`embeddings` (the question encoder alone, for /v1/embeddings: `openai_api.py`).
`Service.load` takes a saved RAG folder, an index folder (search only), a `RAG` or a `Retriever`.
Every model call (answers, searches, the warm-up) runs on one worker thread with a fixed number of
torch and FAISS threads, so the event loop stays responsive and the cores are not oversubscribed; the
question encoder is loaded and run once before `Service` is returned, so the first request does not wait.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from pathlib import Path

from ragloop._version import __version__
from ragloop.errors import RagloopError
from ragloop.model import RAG, Answer
from ragloop.model_io import CONFIG_FILE
from ragloop.retrieval.folder import MANIFEST
from ragloop.retrieval.retriever import Retriever
from ragloop.serving.batcher import MicroBatcher
from ragloop.serving.schemas import MAX_K, MAX_QUESTION_CHARS

log = logging.getLogger(__name__)


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
        self.embeddings = MicroBatcher(self._embed_batch, max_batch=max_batch, max_wait_ms=max_wait_ms,
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

    def _embed_batch(self, requests: list[list[str]], key: None) -> list[dict]:
        """Runs on the model thread: one question-encoder call for the texts of a whole batch of
        /v1/embeddings requests; per request its vectors (float32 rows) and token counts."""
        texts = [text for request in requests for text in request]
        encoder = self.retriever.question_encoder
        vectors = encoder.encode(texts, progress=False)
        tokens = [len(ids) for ids in encoder.tokenize(texts)["input_ids"]]
        out, start = [], 0
        for request in requests:
            end = start + len(request)
            out.append({"vectors": vectors[start:end], "tokens": sum(tokens[start:end]), "batch_size": len(texts)})
            start = end
        return out

    async def usage(self, answer: dict) -> dict[str, int]:
        """The reader's token counts of an answer from `answers` (`RAG.token_usage`), on the model thread:
        the tokenizer is used from that thread alone."""
        loop = asyncio.get_running_loop()
        read = Answer(answer["question"], answer["answer"], answer["passages"])
        return await loop.run_in_executor(self.executor, self.model.token_usage, read)

    async def stop(self) -> None:
        await self.answers.stop()
        await self.searches.stop()
        await self.embeddings.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def info(self, endpoints: list[str] | None = None) -> dict:
        """What /health shows; `endpoints`: the paths the app offers (`app.offered`)."""
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
            "endpoints": endpoints,
            "model": model,
            "retrieval": self.retriever.describe(),
            "index": {"passages": self.passages, "dim": index.dim,
                      "factory": index.manifest["index"]["factory"], "bm25": index.bm25 is not None},
            "limits": {"max_question_chars": MAX_QUESTION_CHARS, "max_k": min(MAX_K, self.passages)},
            "threads": self.threads,
            "batching": {"max_batch": self.answers.max_batch, "max_wait_ms": self.answers.max_wait * 1000,
                         "answer": self.answers.stats.to_dict(), "search": self.searches.stats.to_dict(),
                         "embed": self.embeddings.stats.to_dict()},
            "cache": self.retriever.cache.stats() if self.retriever.cache is not None else None,
            "uptime_s": round(time.time() - self.started, 1),
        }
