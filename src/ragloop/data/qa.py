"""Question-answer examples from SQuAD-style files or a Hugging Face dataset by name.

    >>> from ragloop.data import load_qa
    >>> examples = load_qa("squad-dev.json")
    >>> examples[0].question, examples[0].answers
    ('Which NFL team represented the AFC at Super Bowl 50?', ['Denver Broncos', ...])
    >>> passages = context_passages(examples, chunk_words=100)   # their paragraphs, chunked as an index chunks
    >>> examples[0].context_passage()                            # its own paragraph as one passage
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from ragloop.data.corpus import Passage, make_passages, passage_id
from ragloop.data.corpus import chunk_words as chunk_text
from ragloop.data.records import check_text, content_id, is_local, named_files, read_hub_dataset, read_rows
from ragloop.errors import RagloopError


@dataclass
class QAExample:
    id: str
    question: str
    answers: list[str]
    title: str = ""
    context: str = ""
    doc_id: str = field(default="")
    source: str = ""  # the file (its name relative to what was named: `named_files`) or the dataset name

    def __post_init__(self) -> None:
        if self.context and not self.doc_id:
            self.doc_id = content_id(self.context)

    def context_passage(self) -> Passage:
        """The question's own paragraph, whole, as one passage (id and doc_id: the paragraph's id)."""
        return Passage(self.doc_id, self.title, self.context, self.doc_id, self.source)

    def answer_passage(self, chunk_words: int = 100) -> Passage:
        """The passage of its paragraph, chunked as an index chunks it (`context_passages`), that holds
        its first answer; the whole paragraph when no one chunk does (an answer across a chunk boundary)."""
        answer = self.answers[0].lower() if self.answers else ""
        chunks = (Passage(passage_id(self.doc_id, i), self.title, text, self.doc_id, self.source)
                  for i, text in enumerate(chunk_text(self.context, chunk_words)))
        return next((p for p in chunks if answer and answer in p.text.lower()), self.context_passage())


def context_passages(examples: list[QAExample], chunk_words: int = 100) -> list[Passage]:
    """The examples' context paragraphs (each once) chunked into passages `{doc_id}-{i}`, as `ragloop index`
    chunks documents; examples without a context add nothing."""
    return make_passages(({"doc_id": ex.doc_id, "title": ex.title, "text": ex.context, "source": ex.source}
                          for ex in examples if ex.context), chunk_words)


def _answers(value, where: str) -> list[str]:
    """SQuAD's [{'text':..}], HF's {'text': [...]}, a list of strings, or (CSV) a JSON string."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):  # not JSON, nested too deeply, a number too long
            parsed = None
        # a JSON list/object, else a CSV cell holding one plain answer (which may look like 1945 or true)
        value = parsed if isinstance(parsed, (list, dict)) else [value]
    if isinstance(value, dict):
        value = value.get("text", [])
    if not isinstance(value, list):
        raise RagloopError(f"{where}: 'answers' must be a list, a {{'text': [...]}} object or a string")
    out = []
    for a in value:
        text = a.get("text") if isinstance(a, dict) else a
        if not isinstance(text, str):
            raise RagloopError(f"{where}: an answer is not a string: {repr(a)[:80]}")
        out.append(text)
    check_text(out, where)
    return out


def load_qa(source: str | Path, split: str | None = None, keep_unanswerable: bool = False) -> list[QAExample]:
    """Load QA examples. `source` is a file, a folder of files, `bundled:NAME` (the package's SQuAD
    samples) or a dataset name (`squad`). Unanswerable questions (no answers, or SQuAD v2.0's
    `is_impossible`) are left out, or with `keep_unanswerable` kept with `answers == []`."""
    if is_local(source):
        rows = ((r, name) for path, name in named_files([source]) for r in read_rows(path))
    else:
        rows = ((r, str(source)) for r in read_hub_dataset(str(source), split or "validation"))
    examples: list[QAExample] = []
    for n, ((row, where), origin) in enumerate(rows):
        if row.get("qas") == [] and "question" not in row:
            continue  # a SQuAD paragraph with no questions: a passage for the corpus, nothing to ask here
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise RagloopError(f"{where}: missing or empty 'question'")
        answers = _answers(row.get("answers", []), where)
        if row.get("is_impossible") is True:  # SQuAD v2.0: unanswerable, whatever its answers say
            answers = []
        if not answers and not keep_unanswerable:
            continue
        context = row.get("context") or ""
        if not isinstance(context, str):
            raise RagloopError(f"{where}: 'context' must be a string")
        qid = str(row["id"]) if row.get("id") not in (None, "") else f"q{n}"
        examples.append(QAExample(qid, question.strip(), answers, str(row.get("title") or ""), context,
                                  source=origin))
    if not examples:
        raise RagloopError(f"{source}: no answerable questions found")
    return examples


def sample_evenly(examples: list[QAExample], n: int) -> list[QAExample]:
    """n examples spread evenly over the list (QA files are grouped by article), in order."""
    if len(examples) <= n:
        return examples
    step = len(examples) / n
    return [examples[int(i * step)] for i in range(n)]


_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, squeeze whitespace (as SQuAD's script):
    what the metrics compare, and what a reader adds up the same answer found twice by."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())
