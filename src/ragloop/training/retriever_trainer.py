"""DPR-style retriever training: in-batch negatives plus BM25 hard negatives.

    >>> from ragloop.training.retriever_trainer import RetrieverTrainConfig, train_retriever
    >>> out = train_retriever(RetrieverTrainConfig(train_file="train.json", output_dir="runs/minilm-squad"))
    >>> Encoder.from_pretrained(out["passage_encoder"])    # same pooling / normalisation as the base model

    $ ragloop train-retriever --train_file train.json --output_dir runs/minilm-squad
    $ ragloop index corpus/ --out runs/idx --encoder runs/minilm-squad

Each question's positive is its own paragraph, chunked as `ragloop index` chunks it (the chunk that
holds the answer). Its hard negative is the top BM25 passage from another paragraph that does not
contain the answer. A step scores B questions against the batch's passages (all positives and all
hard negatives) and takes cross-entropy on the own positive over `scale * similarity`, as DPR and
sentence-transformers' MultipleNegativesRankingLoss do. SQuAD has ~6 questions per paragraph, so a
batch often holds two questions of one paragraph: a passage of the question's own paragraph other
than its positive is masked out rather than counted as a negative.

A symmetric model (MiniLM) is trained as one encoder for both sides and saved as one folder; two
towers (DPR, or `--shared_encoder false`) are saved as `question_encoder/` and `passage_encoder/`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ragloop.config import RetrieverTrainConfig
from ragloop.constants import score_scale
from ragloop.data.corpus import Passage
from ragloop.data.qa import context_passages, load_qa
from ragloop.errors import RagloopError
from ragloop.io import atomic_dir, atomic_write_json
from ragloop.manifest import only_replace
from ragloop.retrieval.encoders import BiEncoder, Encoder, resolve_source
from ragloop.training.negatives import TrainItem, build_items
from ragloop.training.optim import adamw, linear_schedule, param_groups
from ragloop.training.steps import run_steps, total_steps

log = logging.getLogger(__name__)

SUMMARY = "retriever_training.json"  # marks a folder this trainer wrote (and may replace)
QUESTION_DIR, PASSAGE_DIR = "question_encoder", "passage_encoder"
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


# -- data -------------------------------------------------------------------------------------


def batch_targets(items: list[TrainItem], passages: list[Passage]) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """The batch's distinct passage rows, each question's positive column, and the mask of columns that
    are another passage of the question's own paragraph (neither positive nor negative)."""
    column: dict[int, int] = {}
    for it in items:
        for r in (it.positive, *it.negatives):
            column.setdefault(r, len(column))
    rows = list(column)
    labels = torch.tensor([column[it.positive] for it in items])
    mask = torch.tensor([[passages[r].doc_id == it.doc_id and r != it.positive for r in rows] for it in items])
    return rows, labels, mask


def contrastive_loss(questions: torch.Tensor, passages: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """Cross-entropy of each question's positive among all the batch's passages."""
    scores = scale * questions @ passages.T
    return torch.nn.functional.cross_entropy(scores.masked_fill(mask, float("-inf")), labels)


# -- encoders ---------------------------------------------------------------------------------


def load_towers(cfg: RetrieverTrainConfig) -> tuple[Encoder, Encoder]:
    """(question, passage) encoders; the same object when one set of weights serves both."""
    bi = BiEncoder.from_pretrained(cfg.encoder, cfg.question_encoder)
    question, passage = bi.question, bi.passage
    if cfg.max_length:  # training truncation; saved with the model so it encodes as it was trained
        for enc in {id(question): question, id(passage): passage}.values():
            enc.spec = dataclasses.replace(enc.spec, max_length=cfg.max_length)
    if question is passage and not cfg.shared_encoder:
        question = copy.deepcopy(passage)
    elif question is not passage and cfg.shared_encoder:
        log.info("%s: question and passage towers are two models; training both", cfg.encoder)
    return question, passage


def _save_encoder(encoder: Encoder, source: str, path: Path) -> None:
    """`save_pretrained` plus the base folder's sentence-transformers files, so `Encoder.from_pretrained`
    finds the same pooling, normalisation and max length."""
    src = Path(resolve_source(source))
    st = src.is_dir() and (src / "modules.json").is_file()
    if not st:  # plain HF folder: from_pretrained takes max length from the tokenizer
        encoder.tokenizer.model_max_length = encoder.spec.max_length
    encoder.save_pretrained(path)
    if st:
        for name in ST_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, path / name)
        for module in json.loads((src / "modules.json").read_text()):
            sub = module.get("path", "")
            if sub and (src / sub).is_dir():
                shutil.copytree(src / sub, path / sub, dirs_exist_ok=True)
            elif sub:
                (path / sub).mkdir(parents=True, exist_ok=True)  # e.g. Normalize, which has no files
        sbert = path / "sentence_bert_config.json"
        settings = json.loads(sbert.read_text()) if sbert.is_file() else {}
        settings["max_seq_length"] = encoder.spec.max_length
        sbert.write_text(json.dumps(settings, indent=2))
    again = Encoder.from_pretrained(str(path))
    same = ("dim", "pooling", "normalize", "max_length")
    if any(getattr(again.spec, k) != getattr(encoder.spec, k) for k in same):
        raise RuntimeError(f"saved encoder {path} reloads as {again.spec}, trained as {encoder.spec}")


_check_replaceable = only_replace(SUMMARY, "retriever training output")


# -- training ---------------------------------------------------------------------------------


def _pad(encoder: Encoder, tokens: dict, idx: list[int]) -> dict:
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in tokens]
    return encoder.tokenizer.pad({k: [tokens[k][i] for i in idx] for k in keys}, return_tensors="pt")


def train_retriever(cfg: RetrieverTrainConfig, progress: bool | None = None) -> dict:
    """Fine-tune, save to `cfg.output_dir` (atomically) and return {"output_dir", "question_encoder",
    "passage_encoder", "shared", "steps", "final_loss" (mean of the last 10 steps), "losses", "seconds",
    "validation" (dense retrieval metrics, or None)}."""
    out = Path(cfg.output_dir)
    if out.exists():
        _check_replaceable(out)  # fail before the work, not after
    torch.manual_seed(cfg.seed)
    examples = load_qa(cfg.train_file)
    if cfg.max_train_examples:
        examples = examples[: cfg.max_train_examples]
    passages, items = build_items(examples, cfg.chunk_words, cfg.hard_negatives, where=cfg.train_file)
    q_enc, p_enc = load_towers(cfg)
    shared = q_enc is p_enc
    scale = score_scale(p_enc.spec.normalize, cfg.scale)
    q_tokens = q_enc.tokenize([it.question for it in items])
    p_tokens = p_enc.tokenize([p.title for p in passages], [p.text for p in passages])
    params = list({id(p): p for enc in (q_enc, p_enc) for p in enc.parameters()}.values())
    optimizer = adamw(param_groups(params, weight_decay=cfg.weight_decay), lr=cfg.learning_rate)
    total = total_steps(cfg, len(items))
    scheduler = linear_schedule(optimizer, cfg.warmup_steps, total)
    log.info("training %s (%s) on %d questions: %d steps of %d, scale %g, %d hard negative(s) each",
             cfg.encoder, "shared" if shared else "two towers", len(items), total, cfg.batch_size, scale,
             cfg.hard_negatives)

    def loss_of(idx: list[int]) -> torch.Tensor:
        rows, labels, mask = batch_targets([items[i] for i in idx], passages)
        q_vec = q_enc(**_pad(q_enc, q_tokens, idx))
        p_vec = p_enc(**_pad(p_enc, p_tokens, rows))
        return contrastive_loss(q_vec, p_vec, labels, mask, scale)

    q_enc.train()
    p_enc.train()
    losses, seconds = run_steps(loss_of, len(items), total, cfg, params, optimizer, scheduler, "training retriever",
                                progress)
    q_enc.eval()
    p_enc.eval()
    final_loss = float(np.mean(losses[-10:]))
    log.info("trained %d steps in %.0fs; loss %.4f -> %.4f", len(losses), seconds, losses[0], final_loss)
    validation = evaluate_dense(q_enc, p_enc, cfg.validation_file, cfg.chunk_words, progress) \
        if cfg.validation_file else None
    result = {"shared": shared, "steps": len(losses), "final_loss": final_loss, "seconds": seconds,
              "validation": validation}
    _save(cfg, q_enc, p_enc, {"config": cfg.to_dict(), "scale": scale, **result,
                              "losses": [round(x, 6) for x in losses], "train_questions": len(items),
                              "train_passages": len(passages)})
    return {"output_dir": str(out), "question_encoder": str(out if shared else out / QUESTION_DIR),
            "passage_encoder": str(out if shared else out / PASSAGE_DIR), **result, "losses": losses}


def _save(cfg: RetrieverTrainConfig, q_enc: Encoder, p_enc: Encoder, summary: dict) -> None:
    """The trained encoder (one folder) or towers (two), and the summary, replacing `cfg.output_dir` at once."""
    with atomic_dir(Path(cfg.output_dir), may_replace=_check_replaceable) as tmp:
        if q_enc is p_enc:
            _save_encoder(p_enc, cfg.encoder, tmp)
        else:
            _save_encoder(q_enc, cfg.question_encoder or cfg.encoder, tmp / QUESTION_DIR)
            _save_encoder(p_enc, cfg.encoder, tmp / PASSAGE_DIR)
        atomic_write_json(tmp / SUMMARY, summary)
    log.info("saved -> %s", cfg.output_dir)


def evaluate_dense(question: Encoder, passage: Encoder, qa_file: str, chunk_words: int = 100,
                   progress: bool | None = None) -> dict:
    """Dense hit/gold@k and mrr@10 of `qa_file`'s questions over its own paragraphs (a throwaway index)."""
    from ragloop.evaluation.retrieval import evaluate_retrieval
    from ragloop.retrieval.index import Index
    from ragloop.retrieval.retriever import Retriever

    examples = [ex for ex in load_qa(qa_file) if ex.context]
    if not examples:
        raise RagloopError(f"{qa_file}: no question has a context paragraph to retrieve")
    passages = context_passages(examples, chunk_words)
    with tempfile.TemporaryDirectory(prefix="ragloop-retriever-eval-") as tmp:
        index = Index.build(passages, BiEncoder(question, passage), Path(tmp) / "index", with_bm25=False,
                            progress=progress)
        try:
            return evaluate_retrieval(Retriever(index, question), examples, mode="dense", progress=progress)
        finally:
            index.store.close()
