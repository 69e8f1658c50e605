"""ragsys: retrieval-augmented generation (Lewis et al. 2020) with DPR/FAISS retrieval.

    >>> from ragsys import Index, Retriever, BiEncoder, load_corpus
    >>> passages = load_corpus(["docs/"])
    >>> Index.build(passages, BiEncoder.from_pretrained(), "runs/idx")
    >>> Retriever.from_index("runs/idx").search("what is ragsys?", k=3)
"""

__version__ = "0.1.0"

from ragsys.data import Passage, QAExample, load_corpus, load_qa  # noqa: E402
from ragsys.errors import RagsysError  # noqa: E402
from ragsys.retrieval import BiEncoder, Encoder, Hit, Index, Retriever  # noqa: E402

__all__ = [
    "BiEncoder",
    "Encoder",
    "Hit",
    "Index",
    "Passage",
    "QAExample",
    "RagsysError",
    "Retriever",
    "load_corpus",
    "load_qa",
]
