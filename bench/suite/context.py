"""What the sections share: the workload (bundled SQuAD samples), models and indexes, built once on
first use and kept for the run (so `--only` builds only what its sections need)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from bench.suite.common import say, timed
from ragloop.data import load_corpus, load_qa
from ragloop.data.bundled import SQUAD_DEV, SQUAD_TRAIN, bundled_path
from ragloop.data.corpus import Passage
from ragloop.data.qa import QAExample, context_passages, sample_evenly

log = logging.getLogger(__name__)


@dataclass
class Sizes:
    """Workload sizes of one mode. Quick mode keeps every code path and cuts the data."""

    dev_articles: int | None  # dev articles in the retrieval corpus (None: all 32, 2,001 passages)
    quality_questions: int | None  # section 1 questions (None: every question of those articles)
    index_passages: int  # section 2
    search_single: int  # section 3: questions searched one per call, per round
    search_batch: int  # section 3: questions per batched call
    pq_sweep: tuple[int, ...]  # section 3: PQ sub-quantizer counts tried on the real corpus
    scale_sizes: tuple[int, ...]  # section 3: synthetic corpus sizes
    hnsw_budget_s: float  # section 3: HNSW builds stop growing past this many seconds
    train_articles: int | None  # sections 4-5: training articles (None: all 12)
    speed_rounds: int  # section 4
    speed_steps: int  # section 4: optimizer steps per side per round
    rss_steps: int  # section 4: steps in each peak-memory subprocess
    latency_questions: int  # section 4: questions per side per round
    answer_tokens: int  # sections 4, 6 and 7: tokens generated per answer
    train_minutes: float  # section 5: wall-clock training budget per model
    heldout: int  # section 5: held-out dev questions scored (sections 6-7 ask some of them)
    quantize_passages: int  # section 6: passages encoded per round, float32 vs int8
    quantize_timed: int  # section 6: questions answered per variant per round (timed)
    quantize_answers: int  # section 6: held-out questions answered for EM/F1, per variant
    cache_calls: int  # section 7: calls of the repeated question per side per round (retrieval)
    rag_batch: int = 8  # sections 4-5: questions per training batch
    rounds: int = 5  # sections 2-3: alternating rounds (medians need at least 5)


QUICK = Sizes(dev_articles=6, quality_questions=300, index_passages=64, search_single=30, search_batch=64,
              pq_sweep=(48, 96, 192), scale_sizes=(10_000, 30_000, 100_000), hnsw_budget_s=20,
              train_articles=2, speed_rounds=5, speed_steps=1, rss_steps=1, latency_questions=2, answer_tokens=8,
              train_minutes=0.15, heldout=24, quantize_passages=64, quantize_timed=1, quantize_answers=8,
              cache_calls=10, rag_batch=4)
FULL = Sizes(dev_articles=None, quality_questions=None, index_passages=256, search_single=100, search_batch=512,
             pq_sweep=(32, 48, 64, 96, 128, 192), scale_sizes=(10_000, 30_000, 100_000, 300_000, 1_000_000),
             hnsw_budget_s=100, train_articles=None, speed_rounds=5, speed_steps=1, rss_steps=2,
             latency_questions=4, answer_tokens=16, train_minutes=2.0, heldout=100, quantize_passages=256,
             quantize_timed=2, quantize_answers=100, cache_calls=20)


def first_articles(examples: list[QAExample], n: int | None) -> set[str]:
    titles = list(dict.fromkeys(e.title for e in examples))
    return set(titles if n is None else titles[:n])


def articles_of(bundled: str, n: int | None) -> list[QAExample]:
    """The questions of the first `n` articles (None: all) of a bundled QA file."""
    examples = load_qa(bundled_path(bundled))
    titles = first_articles(examples, n)
    return [e for e in examples if e.title in titles]


@dataclass
class Context:
    sizes: Sizes
    work: Path  # scratch folder, removed at the end of the run
    quick: bool
    rag_model: str | None = None  # a trained RAG model folder (section 6's answers), else the bundled generator
    notes: list[str] = field(default_factory=list)

    # -- data -------------------------------------------------------------------------------------

    @cached_property
    def dev_examples(self) -> list[QAExample]:
        return articles_of(SQUAD_DEV, self.sizes.dev_articles)

    @cached_property
    def dev_passages(self) -> list[Passage]:
        titles = {e.title for e in self.dev_examples}
        return [p for p in load_corpus([bundled_path(SQUAD_DEV)]) if p.title in titles]

    @cached_property
    def quality_examples(self) -> list[QAExample]:
        n = self.sizes.quality_questions
        return self.dev_examples if n is None else sample_evenly(self.dev_examples, n)

    @cached_property
    def train_examples(self) -> list[QAExample]:
        return articles_of(SQUAD_TRAIN, self.sizes.train_articles)

    @cached_property
    def heldout(self) -> list[QAExample]:
        return sample_evenly(self.dev_examples, self.sizes.heldout)

    # -- the retrieval index (default MiniLM encoder), sections 1 and 3 -----------------------------

    @cached_property
    def minilm(self):
        from ragloop.retrieval import BiEncoder

        return BiEncoder.from_pretrained()

    @cached_property
    def dev_index(self):
        """ragloop index (Flat, all-MiniLM-L6-v2, BM25) of the dev passages."""
        from ragloop.retrieval import Index

        say(f"building the retrieval index: {len(self.dev_passages)} passages, all-MiniLM-L6-v2 ...")
        seconds, index = timed(Index.build, self.dev_passages, self.minilm, self.work / "dev-index", progress=False)
        self.index_build_s = seconds
        return index

    @cached_property
    def dev_retriever(self):
        from ragloop.retrieval import Retriever

        return Retriever(self.dev_index, self.minilm.question)

    @cached_property
    def dev_vectors(self) -> np.ndarray:
        return self.dev_index.backend.index.reconstruct_n(0, len(self.dev_index))

    @cached_property
    def quality_question_vectors(self) -> np.ndarray:
        """Vectors of the first 1,000 section-1 questions (section 3's queries)."""
        return self.dev_retriever.question_encoder.encode([e.question for e in self.quality_examples[:1000]])

    # -- RAG models, sections 2, 4 and 5 ------------------------------------------------------------

    @cached_property
    def dpr_dirs(self) -> tuple[Path, Path]:
        from bench.suite.models import dpr_from_minilm

        return dpr_from_minilm(self.work / "models")

    @cached_property
    def t5_dir(self) -> Path:
        from bench.suite.models import small_t5

        return small_t5(self.work / "models" / "t5-small-minilm-vocab")

    @cached_property
    def rag_passages(self) -> list[Passage]:
        """Passages of the training articles' and the dev articles' paragraphs (held-out questions
        are answerable, training questions too), as ragloop's trainer indexes a QA dataset."""
        return context_passages(self.train_examples + self.dev_examples)

    @cached_property
    def rag_setup(self):
        """The shared setup of sections 4-5: DPR-MiniLM encoders, the small T5, a ragloop index of
        `rag_passages` (Flat) and the same passages and vectors as a transformers knowledge base."""
        from bench.suite.models import Setup, save_hf_knowledge_base
        from ragloop.retrieval import BiEncoder, Index

        q_dir, c_dir = self.dpr_dirs
        index_dir = self.work / "rag-index"
        say(f"building the RAG index: {len(self.rag_passages)} passages, DPR towers with MiniLM weights ...")
        seconds, index = timed(Index.build, self.rag_passages, BiEncoder.from_pretrained(str(c_dir), str(q_dir)),
                               index_dir, progress=False)
        self.rag_index_build_s = seconds
        index.store.close()
        ds_path, faiss_path = save_hf_knowledge_base(index_dir, self.work)
        return Setup(str(q_dir), str(c_dir), str(self.t5_dir), str(index_dir), str(ds_path), str(faiss_path),
                     max_new_tokens=self.sizes.answer_tokens, batch_size=self.sizes.rag_batch)
