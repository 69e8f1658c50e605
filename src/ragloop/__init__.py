"""ragloop: retrieval-augmented generation (Lewis et al. 2020) with DPR/FAISS retrieval.

    >>> from ragloop import Index, Retriever, BiEncoder, load_corpus
    >>> passages = load_corpus(["docs/"])
    >>> Index.build(passages, BiEncoder.from_pretrained(), "runs/idx")
    >>> Retriever.from_index("runs/idx").search("what is ragloop?", k=3)
    >>> RAG.from_pretrained("runs/rag/best_model").answer("what is ragloop?")

The names below load on first use (`ragloop._lazy`): `import ragloop` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragloop._lazy import lazy_exports
from ragloop._version import __version__ as __version__  # re-exported: ragloop.__version__

_EXPORTS = {
    "BiEncoder": "ragloop.retrieval.encoders",
    "Encoder": "ragloop.retrieval.encoders",
    "Generator": "ragloop.generation.generator",
    "Hit": "ragloop.retrieval.retriever",
    "Index": "ragloop.retrieval.index",
    "IndexSettings": "ragloop.retrieval.settings",
    "Passage": "ragloop.data.corpus",
    "QAExample": "ragloop.data.qa",
    "RAG": "ragloop.model",
    "RAGConfig": "ragloop.config",
    "RagloopError": "ragloop.errors",
    "Reranker": "ragloop.retrieval.rerank",
    "Retriever": "ragloop.retrieval.retriever",
    "load_corpus": "ragloop.data.corpus",
    "load_qa": "ragloop.data.qa",
}
__all__ = [
    "BiEncoder",
    "Encoder",
    "Generator",
    "Hit",
    "Index",
    "IndexSettings",
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
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from ragloop.config import RAGConfig
    from ragloop.data import Passage, QAExample, load_corpus, load_qa
    from ragloop.errors import RagloopError
    from ragloop.generation import Generator
    from ragloop.model import RAG
    from ragloop.retrieval import BiEncoder, Encoder, Hit, Index, IndexSettings, Reranker, Retriever
