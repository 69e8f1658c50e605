"""The reranker trainer's questions: every training question there is, and whole articles held out to
choose the checkpoint by.

    >>> answerable, unanswerable = training_questions(None)      # every bundled training question
    >>> split = heldout_split(answerable, unanswerable, every=7, seed=42)
    >>> split.train, split.train_unanswerable, split.heldout, split.heldout_titles

By default (`train_file` None) the questions are those of the bundled training files: the SQuAD v1.1
train articles and the SQuAD v2.0 ones. A question already seen (the same id, or the same question
text on the same paragraph) is not added again: of the v2.0 file's 4,371 answerable questions, 3,640
are the v1.1 file's, and 731 are new; 14 questions asked twice of the same paragraph in each file are
kept once. The bundled files give 5,087 answerable questions over 14 articles and 347 unanswerable
ones. Unanswerable questions (v2.0's `is_impossible`, or no answer) are kept apart: the trainer uses
them only as negatives (`training.negatives.unanswerable_items`).

The held-out split takes whole articles (by title): the articles in order of first appearance,
shuffled by `seed`, every `every`-th one from the first on is held out, with its unanswerable
questions. The same data, `every` and `seed` always give the same split; with fewer than two articles
there is nothing to hold out and every question trains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ragloop.data.bundled import SQUAD_TRAIN_FILES, bundled_path
from ragloop.data.qa import QAExample, load_qa

log = logging.getLogger(__name__)


def training_files(train_file: str | None) -> list[str]:
    """`train_file`, or every bundled training file."""
    return [train_file] if train_file else [str(bundled_path(name)) for name in SQUAD_TRAIN_FILES]


def training_questions(train_file: str | None, limit: int | None = None
                       ) -> tuple[list[QAExample], list[QAExample]]:
    """(answerable, unanswerable) questions of `train_file` (default: the bundled training files), each
    question once; `limit`: only the first N questions of the files, in order."""
    seen_ids: set[str] = set()
    seen_pairs: set[tuple[str, str]] = set()
    kept: list[QAExample] = []
    duplicates = 0
    for path in training_files(train_file):
        for ex in load_qa(path, keep_unanswerable=True):
            new = ex.id not in seen_ids and (ex.question, ex.context) not in seen_pairs
            kept += [ex] if new else []
            duplicates += not new
            seen_ids.add(ex.id)
            seen_pairs.add((ex.question, ex.context))
    kept = kept[:limit] if limit else kept
    answerable = [ex for ex in kept if ex.answers]
    unanswerable = [ex for ex in kept if not ex.answers]
    log.info("training questions: %d answerable, %d unanswerable (negatives only), %d duplicates left out",
             len(answerable), len(unanswerable), duplicates)
    return answerable, unanswerable


@dataclass
class HeldOutSplit:
    train: list[QAExample]
    train_unanswerable: list[QAExample]
    heldout: list[QAExample]  # answerable questions of the held-out articles
    heldout_titles: list[str] = field(default_factory=list)
    train_titles: list[str] = field(default_factory=list)


def article_titles(examples: list[QAExample]) -> list[str]:
    """The articles' titles, each once, in order of first appearance."""
    return list(dict.fromkeys(ex.title for ex in examples))


def heldout_split(answerable: list[QAExample], unanswerable: list[QAExample], every: int, seed: int
                  ) -> HeldOutSplit:
    """Hold out every `every`-th article (0: none) after a shuffle seeded by `seed`; see the module."""
    titles = article_titles(answerable + unanswerable)
    if every == 0 or len(titles) < 2:
        if every:
            log.warning("only one article (%r): nothing to hold out, every question trains", titles[0])
        return HeldOutSplit(answerable, unanswerable, [], [], titles)
    order = np.random.default_rng(seed).permutation(len(titles))
    held = {titles[i] for n, i in enumerate(order.tolist()) if n % every == 0}
    split = HeldOutSplit([ex for ex in answerable if ex.title not in held],
                         [ex for ex in unanswerable if ex.title not in held],
                         [ex for ex in answerable if ex.title in held],
                         [t for t in titles if t in held], [t for t in titles if t not in held])
    log.info("held out %d of %d articles (%s): %d questions; %d questions train", len(split.heldout_titles),
             len(titles), ", ".join(split.heldout_titles), len(split.heldout), len(split.train))
    return split
