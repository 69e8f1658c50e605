"""Turn documents or a QA dataset's contexts into ~100-word passages with stable ids.

    >>> from ragloop.data import load_corpus
    >>> passages = load_corpus(["docs/", "faq.jsonl"], chunk_words=100, overlap=20)
    >>> passages[0]
    Passage(id='3f2a...-0', title='Getting started', text='...', doc_id='3f2a...', source='docs/start.md')

DPR's passage files (`psgs_w100.tsv`: id, text, title; tab-separated, with a header) are read as
they are, streamed row by row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ragloop.data.records import (
    DOC_SUFFIXES,
    content_id,
    first_row,
    is_local,
    named_files,
    read_hub_dataset,
    read_rows,
    read_text_document,
)
from ragloop.errors import RagloopError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Passage:
    """One retrievable unit. `doc_id` names the document (or QA context) the passage was cut from,
    `source` the file (as given) or dataset it was read from ("" when not known, e.g. in an index
    built before passages recorded it)."""

    id: str
    title: str
    text: str
    doc_id: str = ""
    source: str = ""


def chunk_words(text: str, size: int = 100, overlap: int = 0) -> list[str]:
    """Split text into windows of `size` words that overlap by `overlap` words.

    A tail shorter than a quarter window is folded into the window before it, so no passage is a
    scrap of a few words.
    """
    if size < 1 or not 0 <= overlap < size:
        raise RagloopError(f"chunking needs size >= 1 and 0 <= overlap < size (got size={size}, overlap={overlap})")
    words = text.split()
    if len(words) <= size:
        return [" ".join(words)] if words else []
    stride = size - overlap
    starts = list(range(0, len(words) - overlap, stride))
    if len(starts) > 1 and len(words) - starts[-1] < max(1, size // 4):
        starts.pop()
    chunks = []
    for i, start in enumerate(starts):
        end = len(words) if i == len(starts) - 1 else start + size
        chunks.append(" ".join(words[start:end]))
    return chunks


def iter_documents(sources: Iterable[str | Path], split: str | None = None) -> Iterator[tuple[dict, str]]:
    """(document, location) pairs: each document has doc_id, title, text, source (the file's name relative
    to what was named, see `named_files`, or the dataset name) and where (the file and line or record it
    came from, as a path of this machine, for error messages). Hugging Face datasets come first, then the
    local files.

    Every local file is checked when this is called, before a document is read (`check_files`): a
    missing or bad file is an error naming it before anything is encoded, not after the files before
    it were.

    A row with `text` is a document (its `id`, if any, becomes the doc id); a row with `context` is a
    QA example whose context is the document (its doc id is the context's content hash, so questions
    can be matched to their own paragraph).
    """
    sources = list(sources)
    files = named_files([src for src in sources if is_local(src)])
    check_files(files)
    return _documents([str(src) for src in sources if not is_local(src)], files, split)


def check_files(files: list[tuple[Path, str]]) -> None:
    """Each file (`named_files`) as far as its first document, read by the same readers as the documents
    are: a text file whole (it is one document), a records file's header and first record
    (`first_row`), which must be a document (`text`, or a QA row's `context`). A RagloopError names the
    file (and line) of the first bad one."""
    for path, _ in files:
        if path.suffix.lower() in DOC_SUFFIXES:
            read_text_document(path)
        elif (first := first_row(path)) is not None:
            _document(*first)


def _documents(datasets: list[str], files: list[tuple[Path, str]],
               split: str | None) -> Iterator[tuple[dict, str]]:
    for name in datasets:
        for row, where in read_hub_dataset(name, split):
            yield {**_document(row, where), "source": name, "where": where}, where
    for path, name in files:
        if path.suffix.lower() in DOC_SUFFIXES:
            doc = read_text_document(path)
            yield {"doc_id": content_id(doc["text"]), **doc, "source": name, "where": str(path)}, str(path)
        else:
            for row, where in read_rows(path):
                yield {**_document(row, where), "source": name, "where": where}, where


def _document(row: dict, where: str) -> dict:
    title = str(row.get("title") or "")
    if isinstance(row.get("text"), str):
        doc_id = str(row["id"]) if row.get("id") not in (None, "") else content_id(row["text"])
        return {"doc_id": doc_id, "title": title, "text": row["text"]}
    if isinstance(row.get("context"), str):
        return {"doc_id": content_id(row["context"]), "title": title, "text": row["context"]}
    raise RagloopError(f"{where}: a document needs a 'text' field (or a QA row a 'context'); found {sorted(row)}")


def load_corpus(
    sources: Iterable[str | Path],
    chunk_size: int = 100,
    overlap: int = 0,
    split: str | None = None,
) -> list[Passage]:
    """Read, chunk and de-duplicate. Same input, same passages, same ids."""
    sources = list(sources)
    passages = list(iter_corpus(sources, chunk_size, overlap, split))
    if not passages:
        raise RagloopError(f"no passages found in {', '.join(map(str, sources))} (is the corpus empty?)")
    return passages


def iter_corpus(
    sources: Iterable[str | Path],
    chunk_size: int = 100,
    overlap: int = 0,
    split: str | None = None,
) -> Iterator[Passage]:
    """`load_corpus` as a stream, for `Index.build` over corpora too big for a list: the same passages
    in the same order, read as they are consumed. What stays O(corpus) is the duplicate check (a set of
    every passage's content id and a dict of document ids), not the passages. An empty corpus yields
    nothing (`load_corpus` says so). Every file's header is read when this is called (`check_files`):
    a bad one fails here, before a model loads to encode the stream."""
    sources = list(sources)
    return iter_passages((doc for doc, _ in iter_documents(sources, split)), chunk_size, overlap)


def passage_id(doc_id: str, i: int) -> str:
    """The id of a document's `i`-th chunk: `{doc_id}-{i}`."""
    return f"{doc_id}-{i}"


def make_passages(documents: Iterable[dict], chunk_size: int = 100, overlap: int = 0) -> list[Passage]:
    """Chunk documents ({doc_id, title, text}, optionally source and where) into passages `{doc_id}-{i}`,
    dropping exact duplicates (a document seen before, or a passage with the same title and text as an
    earlier one). Two documents with the same id and different text are an error naming both."""
    return list(iter_passages(documents, chunk_size, overlap))


def iter_passages(documents: Iterable[dict], chunk_size: int = 100, overlap: int = 0) -> Iterator[Passage]:
    """`make_passages` one passage at a time."""
    count = 0
    seen_text: set[str] = set()
    seen_docs: dict[str, tuple[str, str]] = {}  # doc id -> (content id of its text, where it was read)
    duplicates = repeated_docs = 0
    empty: list[str] = []  # where each document without a word was read (an empty file, a blank row)
    for doc in documents:
        doc_id, where = doc["doc_id"], doc.get("where") or doc.get("source") or "?"
        text_key = content_id(doc["text"])
        if doc_id in seen_docs:  # a QA context repeats once per question; a file may be named twice
            first_key, first_where = seen_docs[doc_id]
            if first_key != text_key:
                raise RagloopError(f"document id {doc_id!r} is used twice with different text: {first_where} "
                                   f"and {where} (give each document its own id)")
            if doc_id != text_key:  # a repeated QA context (id = its hash) is expected, not worth a line
                repeated_docs += 1
                log.debug("%s: document %r again, same text as %s: skipped", where, doc_id, first_where)
            continue
        seen_docs[doc_id] = (text_key, where)
        chunks = chunk_words(doc["text"], chunk_size, overlap)
        if not chunks:
            empty.append(where)
        for i, chunk in enumerate(chunks):
            key = content_id(doc["title"] + "\n" + chunk)
            if key in seen_text:
                duplicates += 1
                continue
            seen_text.add(key)
            count += 1
            yield Passage(id=passage_id(doc_id, i), title=doc["title"], text=chunk, doc_id=doc_id,
                          source=doc.get("source") or "")
    if repeated_docs:
        log.info("corpus: %d documents repeated with the same id and text were skipped", repeated_docs)
    log.info("corpus: %s", _summary(count, len(seen_docs) - len(empty), empty, duplicates))


def _summary(passages: int, documents: int, empty: list[str], duplicates: int) -> str:
    """"3 passages from 3 documents (1 empty document skipped: docs/empty.txt)": what reading a corpus gave."""
    notes = []
    if empty:
        shown = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
        notes.append(f"{_count(len(empty), 'empty document')} skipped: {shown}")
    if duplicates:
        notes.append(f"{_count(duplicates, 'exact duplicate')} dropped")
    return (f"{_count(passages, 'passage')} from {_count(documents, 'document')}"
            + (f" ({'; '.join(notes)})" if notes else ""))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
