"""The original script's interface (rag_system.py), kept working over ragloop:

    python rag_system.py --dataset_name squad --batch_size 8 --learning_rate 5e-5 --num_epochs 3 --warmup_steps 500

(those are the defaults; every `ragloop train` flag works here too, e.g. `--train_file`), and in Python

    from rag_system import RAG, RAGRetriever
    retriever = RAGRetriever(question_encoder, context_encoder, index, tokenizer)
    model = RAG(retriever, generator, tokenizer)
    model.load_state_dict(torch.load("runs/rag/best_rag_model.pth", weights_only=True))
    model.generate_answer("Who won Super Bowl 50?")                 # retrieve, then generate
    model.generate_answer("Who won?", context="The Broncos won Super Bowl 50.")   # a given context

Here `question_encoder` / `context_encoder` are Hugging Face encoders (e.g. `DPRQuestionEncoder`,
`DPRContextEncoder`, or any `AutoModel`), `index` a ragloop index (folder or `ragloop.Index`) built
with that context encoder, `generator` a seq2seq model and `tokenizer` its tokenizer (the encoders
bring their own tokenizers through `encoder_tokenizer=`, or share the generator's vocabulary).

Two classes are called RAG: `rag_system.RAG` is `OriginalRAG`, this file's class with the original
constructor RAG(retriever, generator, tokenizer) and `generate_answer`; it is a subclass of the library's
model, `ragloop.RAG` (`ragloop.model.RAG`: built by `from_index` / `from_pretrained`, answering with
`answer`), which new code should use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ragloop.data.corpus import Passage
from ragloop.generation import Generator
from ragloop.model import RAG as RagloopRAG
from ragloop.model import RAGConfig
from ragloop.retrieval import Encoder, Index, Retriever
from ragloop.retrieval.encoders import EncoderSpec

BEST_STATE_DICT = "best_rag_model.pth"

__all__ = ["RAG", "OriginalRAG", "RAGRetriever", "main"]


def _as_encoder(model, tokenizer) -> Encoder:
    if isinstance(model, Encoder):
        return model
    cfg = model.config
    is_dpr = cfg.model_type == "dpr"
    dim = (cfg.projection_dim or cfg.hidden_size) if is_dpr else cfg.hidden_size
    name = getattr(cfg, "_name_or_path", "") or type(model).__name__
    spec = EncoderSpec(name, int(dim), "pooler" if is_dpr else "mean", False, 512, type(model).__name__)
    return Encoder(model.eval(), tokenizer, spec)


class RAGRetriever:
    """The original constructor shape: (question_encoder, context_encoder, index, tokenizer), over
    ragloop's one retrieval path (`self.retriever`, a `ragloop.Retriever`)."""

    def __init__(self, question_encoder, context_encoder, index, tokenizer, encoder_tokenizer=None) -> None:
        index = index if isinstance(index, Index) else Index.load(index)
        enc_tok = encoder_tokenizer or tokenizer
        self.question_encoder = _as_encoder(question_encoder, enc_tok)
        self.context_encoder = _as_encoder(context_encoder, enc_tok) if context_encoder is not None else None
        self.tokenizer = tokenizer
        index.check_question_encoder(self.question_encoder, allow_finetuned=True)
        self.retriever = Retriever(index, self.question_encoder)

    @property
    def index(self) -> Index:
        return self.retriever.index

    def retrieve(self, questions: list[str], k: int = 5) -> list[list[Passage]]:
        return self.retriever.retrieve(questions, k).passages


class OriginalRAG(RagloopRAG):
    """The original script's RAG, exported here as `rag_system.RAG`: the constructor
    RAG(retriever, generator, tokenizer) over a `RAGRetriever`, and `generate_answer`. It is a
    `ragloop.RAG` (the library's model) underneath, so everything that one does works on it too."""

    def __init__(self, retriever: RAGRetriever, generator, tokenizer, n_docs: int = 5, mode: str = "sequence") -> None:
        gen = generator if isinstance(generator, Generator) else Generator(generator, tokenizer)
        super().__init__(retriever.index, retriever.question_encoder, gen, RAGConfig(n_docs=n_docs, mode=mode))
        self.rag_retriever = retriever  # the original object; `self.retriever` is the model's Retriever

    def generate_answer(self, question: str, context: str | None = None, num_beams: int = 1) -> str:
        """Answer from retrieved passages, or from `context` when one is given."""
        if context is None:
            return self.answer(question, num_beams=num_beams).answer
        passages = [[Passage("context", "", context)]]
        return self.generate([question], num_beams=num_beams, passages=passages, doc_scores=torch.zeros(1, 1))[0]


RAG = OriginalRAG  # the name the original script exported: `from rag_system import RAG`


def save_state_dict(model: RagloopRAG, path: Path) -> None:
    """`best_rag_model.pth` as in the original: a plain state dict, readable with weights_only=True."""
    import io

    from ragloop.io import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    import logging

    from ragloop.cli import run_guarded
    from ragloop.config import add_config_args, config_from_args

    parser = argparse.ArgumentParser(description="Train a RAG model end to end (the original rag_system.py).")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")

    def run() -> None:
        from ragloop.training import train

        cfg = config_from_args(args)
        result = train(cfg, progress=False if args.quiet else None)
        best = RagloopRAG.from_pretrained(result.best_dir)
        save_state_dict(best, Path(cfg.output_dir) / BEST_STATE_DICT)
        f1 = f"{result.best_f1:.4f}" if result.best_f1 is not None else "n/a"
        print(f"trained {result.steps} steps; best dev F1 {f1}; best model: {result.best_dir} "
              f"(state dict: {Path(cfg.output_dir) / BEST_STATE_DICT})")

    return run_guarded(run)


if __name__ == "__main__":
    sys.exit(main())
