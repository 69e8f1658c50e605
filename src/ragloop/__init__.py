"""ragloop: retrieval-augmented generation (Lewis et al. 2020) with DPR/FAISS retrieval.

    >>> from ragloop import Index, Retriever, BiEncoder, load_corpus
    >>> passages = load_corpus(["docs/"])
    >>> Index.build(passages, BiEncoder.from_pretrained(), "runs/idx")
    >>> Retriever.from_index("runs/idx").search("what is ragloop?", k=3)
    >>> RAG.from_pretrained("runs/rag/best_model").answer("what is ragloop?")
"""

__version__ = "0.1.0"

from ragloop.data import Passage, QAExample, load_corpus, load_qa  # noqa: E402
from ragloop.errors import RagloopError  # noqa: E402
from ragloop.generation import Generator  # noqa: E402
from ragloop.model import RAG, RAGConfig  # noqa: E402
from ragloop.retrieval import BiEncoder, Encoder, Hit, Index, Reranker, Retriever  # noqa: E402

__all__ = [
    "BiEncoder",
    "Encoder",
    "Generator",
    "Hit",
    "Index",
    "Passage",
    "QAExample",
    "RAG",
    "RAGConfig",
    "RagloopError",
    "Reranker",
    "Retriever",
    "load_corpus",
    "load_qa",
]
