"""Generation: a seq2seq generator (T5, BART, BERT2BERT) fed "question: … title: … context: …"."""

from ragloop.generation.generator import BUNDLED_GENERATOR, Generator, format_passage, format_question

__all__ = ["BUNDLED_GENERATOR", "Generator", "format_passage", "format_question"]
