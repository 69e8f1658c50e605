"""The demo's pipeline as library steps, shared by `ragloop demo` (which prints) and the bench scripts
(which compare): split the data, index it, train a recipe's fixed number of steps, score with
retrieval, closed book and the gold paragraph, answer a few questions with their sources.

    >>> from ragloop.model import RAG
    >>> from ragloop.recipes import demo, load_recipe
    >>> recipe = load_recipe()                                  # the pinned demo recipe
    >>> data = demo.load_data(recipe)                           # the training articles' questions, split
    >>> files = demo.write_data(data, "runs/demo/data")         # train.jsonl, heldout.jsonl
    >>> demo.ensure_index(recipe, data, "runs/demo/index")      # built once, then reused
    >>> cfg = demo.train_config(recipe, files.train, "runs/demo/index", "runs/demo/rag")
    >>> run = demo.trained_earlier(cfg) or demo.train_rag(cfg)  # TrainRun: steps, seconds, best_dir
    >>> model = RAG.from_pretrained(run.best_dir)
    >>> rows = list(demo.score(model, demo.eval_sets(data, recipe.questions)))

The split: every `holdout_every`-th question of each training article is held out, so held-out
questions ask about articles the model trained on, with answers it never saw; the dev articles'
questions ask about articles it never trained on. Every step logs what it does; none prints.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ragloop.config import TrainConfig
from ragloop.data.qa import QAExample, load_qa, sample_evenly
from ragloop.errors import RagloopError
from ragloop.io import atomic_write_bytes
from ragloop.recipes import Recipe

log = logging.getLogger(__name__)

HELD_OUT = "held-out questions, trained articles"
NEW_ARTICLES = "dev articles never trained on"
CONTEXTS = ("rag", "closed-book", "oracle")  # retrieved passages, none, the gold paragraph
NO_EVAL = 10**9  # eval_steps of a run without validation data: the model is saved once, at the end


def split_heldout(examples: list[QAExample], every: int) -> tuple[list[QAExample], list[QAExample]]:
    """(train, held out): every `every`-th question of each article (by title) is held out."""
    if every < 2:
        raise RagloopError(f"holdout_every must be at least 2 (got {every}): 1 would hold out every question")
    seen: dict[str, int] = {}
    train, held = [], []
    for ex in examples:
        i = seen[ex.title] = seen.get(ex.title, -1) + 1
        (held if i % every == every - 1 else train).append(ex)
    return train, held


def write_qa_jsonl(path: str | Path, examples: list[QAExample]) -> None:
    """QA examples as JSONL (id, title, context, question, answers), written atomically."""
    rows = [{"id": e.id, "title": e.title, "context": e.context, "question": e.question, "answers": e.answers}
            for e in examples]
    atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())


@dataclass
class DemoData:
    train_articles: list[QAExample]  # every question of the training articles
    dev: list[QAExample]  # the dev articles' questions: never trained on
    train: list[QAExample]  # what the model trains on
    heldout: list[QAExample]  # held out of the training articles


@dataclass
class DataFiles:
    train: Path
    heldout: Path


def load_data(recipe: Recipe) -> DemoData:
    train_articles, dev = load_qa(recipe.train_data), load_qa(recipe.dev_data)
    train, held = split_heldout(train_articles, recipe.holdout_every)
    log.info("%d questions of %s: %d to train on, %d held out (every %dth); %d of %s", len(train_articles),
             recipe.train_data.name, len(train), len(held), recipe.holdout_every, len(dev), recipe.dev_data.name)
    return DemoData(train_articles, dev, train, held)


def write_data(data: DemoData, folder: str | Path) -> DataFiles:
    folder = Path(folder)
    files = DataFiles(folder / "train.jsonl", folder / "heldout.jsonl")
    write_qa_jsonl(files.train, data.train)
    write_qa_jsonl(files.heldout, data.heldout)
    return files


def index_exists(index_dir: str | Path) -> bool:
    return (Path(index_dir) / "manifest.json").is_file()


def ensure_index(recipe: Recipe, data: DemoData, index_dir: str | Path, progress: bool | None = None) -> Path:
    """An index of the contexts of the training and dev articles at `index_dir`, encoded with the
    recipe's passage encoder (its question encoder's model unless it names one); built if missing."""
    from ragloop.training.setup import build_index

    index_dir = Path(index_dir)
    if index_exists(index_dir):
        log.info("using the index in %s", index_dir)
    else:
        log.debug("indexing the contexts of %s and %s", recipe.train_data.name, recipe.dev_data.name)
    build_index(recipe.train_config(), data.train_articles + data.dev, index_dir, progress)
    return index_dir


def retrieval_table(recipe: Recipe, data: DemoData, index_dir: str | Path) -> list[dict]:
    """hit@k, gold@k and mrr@10 of each search mode (dense with the index's own question encoder, BM25,
    hybrid) on `retrieval_questions` dev questions: `ragloop.evaluation.evaluate_retrieval` rows."""
    from ragloop.constants import SEARCH_MODES
    from ragloop.evaluation import evaluate_retrieval
    from ragloop.retrieval import Retriever

    retriever = Retriever.from_index(index_dir)
    probe = sample_evenly(data.dev, recipe.retrieval_questions)
    return [evaluate_retrieval(retriever, probe, recipe.retrieval_k, mode, progress=False) for mode in SEARCH_MODES]


def train_config(recipe: Recipe, train_file: str | Path, index_dir: str | Path, output_dir: str | Path,
                 steps: int | None = None) -> TrainConfig:
    """The recipe's TrainConfig on these files; `steps` overrides its fixed step count."""
    return recipe.train_config(train_file=str(train_file), index=str(index_dir), output_dir=str(output_dir),
                               eval_steps=NO_EVAL, **({} if steps is None else {"max_steps": steps}))


@dataclass
class TrainRun:
    steps: int
    seconds: float  # the training loop's wall clock (metrics.jsonl's last elapsed_s)
    best_dir: Path
    config: TrainConfig


def train_rag(cfg: TrainConfig, progress: bool | None = None) -> TrainRun:
    from ragloop.training import train

    log.debug("training %s RAG, k=%d, %d steps of %d (%s) -> %s", cfg.rag.mode, cfg.rag.n_docs, cfg.max_steps,
             cfg.batch_size, cfg.precision, cfg.output_dir)
    result = train(cfg, progress=progress)
    return TrainRun(result.steps, _train_seconds(Path(cfg.output_dir)), result.best_dir, cfg)


def trained_earlier(cfg: TrainConfig) -> TrainRun | None:
    """The run in cfg.output_dir, if it finished training with exactly this config (else None: a model
    trained with other settings is never scored as this recipe's)."""
    from ragloop.training.setup import BEST, CONFIG

    out = Path(cfg.output_dir)
    try:
        saved = json.loads((out / CONFIG).read_text())
    except (OSError, ValueError):
        return None
    if saved != json.loads(json.dumps(cfg.to_dict())) or not (out / BEST / "rag_config.json").is_file():
        return None
    seconds = _train_seconds(out)
    steps = _last_logged(out).get("step")
    if steps != cfg.max_steps:
        return None  # interrupted before its last step
    return TrainRun(steps, seconds, out / BEST, cfg)


def _last_logged(out: Path) -> dict:
    """The last training log record (the one at the final step) of metrics.jsonl, or {}."""
    from ragloop.training.setup import METRICS

    try:
        lines = (out / METRICS).read_text().splitlines()
    except OSError:
        return {}
    records = [json.loads(line) for line in lines if line.strip()]
    return next((r for r in reversed(records) if "elapsed_s" in r), {})


def _train_seconds(out: Path) -> float:
    return float(_last_logged(out).get("elapsed_s", float("nan")))


def eval_sets(data: DemoData, questions: int) -> list[tuple[str, list[QAExample]]]:
    """(name, questions): `questions` held-out questions of the training articles and as many of the dev
    articles, each spread evenly over its articles."""
    return [(HELD_OUT, sample_evenly(data.heldout, questions)), (NEW_ARTICLES, sample_evenly(data.dev, questions))]


def score(model, sets: list[tuple[str, list[QAExample]]], contexts: tuple[str, ...] = CONTEXTS,
          k: int | None = None, progress: bool | None = None) -> Iterator[dict]:
    """One `evaluate_answers` row per (set, context), as each is scored, with "set" added."""
    from ragloop.evaluation import evaluate_answers

    for name, questions in sets:
        for context in contexts:
            row = evaluate_answers(model, questions, context, k=k, progress=progress)
            log.debug("%s, %s: F1 %s EM %s", name, context, row["f1"], row["em"])
            yield {"set": name, **row}


def sample_answers(model, data: DemoData, n: int) -> list[tuple[QAExample, object]]:
    """(question, `Answer`) for `n` dev questions spread over the dev articles (the first one skipped)."""
    examples = sample_evenly(data.dev, n + 1)[1:] if n else []
    return [(ex, model.answer(ex.question)) for ex in examples]
