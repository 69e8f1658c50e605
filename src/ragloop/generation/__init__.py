"""Generation: a seq2seq generator (T5, BART, BERT2BERT) fed "question: … title: … context: …".

inputs.py (formatting, collation, token cache), copy_head.py, warm_start.py, decoding.py (beam search,
RAG-Token and RAG-Sequence decoding), constrain.py (answers held to the passages' token spans), fusion.py
(Fusion-in-Decoder), spans.py (the passage characters an answer copied), generator.py (the `Generator`)
and readers.py (the reader modes: losses and decoders, one entry of `READERS` each); none imports `ragloop.model`.
"""

from ragloop.generation.copy_head import CopyHead
from ragloop.generation.generator import BUNDLED_GENERATOR, Generator
from ragloop.generation.inputs import format_passage, format_question

__all__ = ["BUNDLED_GENERATOR", "CopyHead", "Generator", "format_passage", "format_question"]
