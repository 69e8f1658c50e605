"""Data: QA datasets and document corpora, read from Hugging Face `datasets` or local files."""

from ragloop.data.corpus import Passage, chunk_words, iter_corpus, load_corpus
from ragloop.data.qa import QAExample, context_passages, load_qa

__all__ = ["Passage", "QAExample", "chunk_words", "context_passages", "iter_corpus", "load_corpus", "load_qa"]
