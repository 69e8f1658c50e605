"""Answer quality: SQuAD EM/F1 of generated answers, with retrieval, without passages (closed book),
or with the question's own paragraph (oracle) — the three together show what retrieval adds.

    >>> evaluate_answers(RAG.from_pretrained("runs/rag/best_model"), load_qa("dev.json"), context="rag")
    {'context': 'rag', 'questions': 7235, 'em': ..., 'f1': ..., 'hit@5': ...}
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ragloop.contexts import rag_contexts
from ragloop.data.corpus import Passage
from ragloop.data.qa import QAExample
from ragloop.errors import RagloopError
from ragloop.evaluation.metrics import exact_match, f1_score, has_answer
from ragloop.evaluation.retrieval import answers_not_in_context
from ragloop.quiet import bar_disabled
from ragloop.retrieval.retriever import check_k

CONTEXTS = ("rag", "closed-book", "oracle")


def given_passages(batch: list[QAExample], context: str) -> list[list[Passage]] | None:
    """The passages the generator reads in `closed-book` and `oracle` modes (None: retrieve)."""
    if context == "closed-book":
        return [[Passage("closed-book", "", "")] for _ in batch]
    if context == "oracle":
        return [[ex.context_passage()] for ex in batch]
    return None


def check_answer_args(examples: list[QAExample], context: str, k: int | None) -> None:
    """RagloopError for a `context` not in CONTEXTS, an oracle run over an example without its paragraph
    (naming the first such example), or a `k` below 1 (None: the model's n_docs)."""
    if context not in CONTEXTS:
        raise RagloopError(f"context must be one of {', '.join(CONTEXTS)} (got {context!r})")
    if k is not None:
        check_k(k)
    if context == "oracle":
        for i, ex in enumerate(examples):
            if not ex.context:
                raise RagloopError(f"{ex.source or 'examples'}: oracle evaluation needs each question's context "
                                   f"paragraph; question {ex.id!r} (example {i}) has none")


@torch.inference_mode()
def evaluate_answers(model, examples: list[QAExample], context: str = "rag", k: int | None = None,
                     batch_size: int = 16, num_beams: int = 1, progress: bool | None = None,
                     predictions: dict | None = None) -> dict:
    """EM/F1 (max over gold answers) and, with retrieval, hit@k of the passages the model read; "quantize"
    when the model is quantized. An extractive reader has no closed-book score: EM/F1 None, and why in
    "not_applicable". `k`: passages read per question (None: the model's n_docs). The model is
    put in eval mode and back in its training mode afterwards, also when generation fails. A `predictions`
    dict is filled with {question id: answer} (evaluation/files.py writes it as SQuAD's script reads it)."""
    check_answer_args(examples, context, k)
    if context == "closed-book" and getattr(getattr(model, "reader", None), "extractive", False):
        return {"context": context, "questions": len(examples), "em": None, "f1": None,
                "not_applicable": f"the {model.config.mode} reader answers only with spans of passages"}
    em = f1 = hits = 0.0
    k = model.config.n_docs if k is None else k
    disable = bar_disabled(progress)
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(examples), batch_size), desc=f"evaluating ({context})", disable=disable,
                          leave=False):
            batch = examples[start : start + batch_size]
            questions = [e.question for e in batch]
            passages = given_passages(batch, context)
            if passages is None:  # from the on-disk retrieval cache when the model's retriever has one
                passages, doc_scores = rag_contexts(model, questions, k)
                hits += sum(any(has_answer(ex.answers, p.text) for p in ps) for ex, ps in zip(batch, passages))
            else:
                doc_scores = torch.zeros(len(batch), 1)
            answers = model.generate(questions, num_beams=num_beams, passages=passages, doc_scores=doc_scores)
            for ex, pred in zip(batch, answers):
                if predictions is not None:
                    predictions[ex.id] = pred
                em += exact_match(pred, ex.answers)
                f1 += f1_score(pred, ex.answers)
    finally:
        model.train(was_training)
    n = max(len(examples), 1)
    result = {"context": context, "questions": len(examples), "em": round(em / n, 4), "f1": round(f1 / n, 4)}
    if getattr(model, "quantization", None):  # a quantized model's scores are reported as such
        result["quantize"] = model.quantization
        result["lm_head_quantized"] = model.generator.lm_head_quantized
    if context == "rag":
        result[f"hit@{k}"] = round(hits / n, 4)
        # EM/F1 stand without it, but hit@k cannot count a question whose answer is not in its paragraph
        result["answers_not_in_context"] = answers_not_in_context(examples, refuse_all=False)
    return result
