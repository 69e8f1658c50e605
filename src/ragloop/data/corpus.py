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
from dataclasses import dataclass, field
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
from ragloop.data.seen import SeenKeys
from ragloop.errors import RagloopError

log = logging.getLogger(__name__)

DEDUP_BATCH = 1024  # documents the duplicate check reads ahead and looks up on disk at once
DEDUP_BATCH_CHARS = 8_000_000  # or fewer, when they hold this much text
EMPTY_SHOWN = 3  # empty documents named in the summary line


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
    in the same order, read as they are consumed (a batch of documents ahead). The duplicate check keeps
    what it has seen on disk (seen.py), so RAM does not grow with the corpus. An empty corpus yields
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
    """`make_passages` one passage at a time. The check reads DEDUP_BATCH documents ahead (fewer when
    they hold more than DEDUP_BATCH_CHARS of text) and asks the keys it has seen (seen.py, on disk) once
    for them all: RAM holds one batch, whatever the corpus size. Passages come out in the same order, and
    those before a clashing document are yielded before its error."""
    tally = _Tally()
    with SeenKeys() as seen:
        for batch in _batches(documents):
            yield from _batch_passages(batch, seen, tally, chunk_size, overlap)
    if tally.repeated_docs:
        log.info("corpus: %d documents repeated with the same id and text were skipped", tally.repeated_docs)
    log.info("corpus: %s", _summary(tally))


@dataclass
class _Tally:
    """What reading a corpus gave: counts, and where the first few empty documents were read."""

    passages: int = 0
    documents: int = 0  # distinct document ids, empty ones included
    duplicates: int = 0
    repeated_docs: int = 0
    empty: int = 0
    empty_shown: list[str] = field(default_factory=list)  # where the first EMPTY_SHOWN empty ones were read


def _batches(documents: Iterable[dict]) -> Iterator[list[dict]]:
    """DEDUP_BATCH documents at a time (fewer past DEDUP_BATCH_CHARS). A document that cannot be read is
    raised after the batch read before it, so the faults of a corpus are met in the order they come."""
    batch: list[dict] = []
    chars = 0
    try:
        for doc in documents:
            batch.append(doc)
            chars += len(doc["text"])
            if len(batch) >= DEDUP_BATCH or chars >= DEDUP_BATCH_CHARS:
                yield batch
                batch, chars = [], 0
    except Exception:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def _batch_passages(batch: list[dict], seen: SeenKeys, tally: _Tally, size: int, overlap: int) -> Iterator[Passage]:
    """The passages of one batch of documents, in order, checked against `seen` (and each other): a document
    id seen before is skipped (the same text) or an error (another text); a passage whose title and text
    were seen before is dropped. What is new is added to `seen` at the end."""
    text_keys = [content_id(doc["text"]) for doc in batch]
    on_disk = seen.documents([doc["doc_id"] for doc in batch])
    first: dict[str, int] = {}  # doc id -> the batch's first document with it, for ids not seen before
    for i, doc in enumerate(batch):
        if doc["doc_id"] not in on_disk:
            first.setdefault(doc["doc_id"], i)
    chunks = {i: [(chunk, content_id(batch[i]["title"] + "\n" + chunk))
                  for chunk in chunk_words(batch[i]["text"], size, overlap)] for i in first.values()}
    known = seen.texts([key for pairs in chunks.values() for _, key in pairs])
    new_keys: list[str] = []
    for i, doc in enumerate(batch):
        doc_id, where = doc["doc_id"], _where(doc)
        earlier = on_disk.get(doc_id) or (None if first[doc_id] == i else
                                          (text_keys[first[doc_id]], _where(batch[first[doc_id]])))
        if earlier is not None:  # a QA context repeats once per question; a file may be named twice
            _repeated(doc_id, text_keys[i], where, earlier, tally)
            continue
        tally.documents += 1
        if not chunks[i]:
            tally.empty += 1
            if len(tally.empty_shown) < EMPTY_SHOWN:
                tally.empty_shown.append(where)
        for j, (chunk, key) in enumerate(chunks[i]):
            if key in known:
                tally.duplicates += 1
                continue
            known.add(key)
            new_keys.append(key)
            tally.passages += 1
            yield Passage(id=passage_id(doc_id, j), title=doc["title"], text=chunk, doc_id=doc_id,
                          source=doc.get("source") or "")
    seen.add_documents([(doc_id, text_keys[i], _where(batch[i])) for doc_id, i in first.items()])
    seen.add_texts(new_keys)


def _where(doc: dict) -> str:
    return doc.get("where") or doc.get("source") or "?"


def _repeated(doc_id: str, text_key: str, where: str, earlier: tuple[str, str], tally: _Tally) -> None:
    """A document id seen before: the same text is skipped (said at debug level, unless it is a repeated QA
    context, whose id is its text's hash); another text is an error naming both places."""
    first_key, first_where = earlier
    if first_key != text_key:
        raise RagloopError(f"document id {doc_id!r} is used twice with different text: {first_where} "
                           f"and {where} (give each document its own id)")
    if doc_id != text_key:
        tally.repeated_docs += 1
        log.debug("%s: document %r again, same text as %s: skipped", where, doc_id, first_where)


def _summary(tally: _Tally) -> str:
    """"3 passages from 3 documents (1 empty document skipped: docs/empty.txt)": what reading a corpus gave."""
    notes = []
    if tally.empty:
        more = tally.empty - len(tally.empty_shown)
        shown = ", ".join(tally.empty_shown) + (f" and {more} more" if more else "")
        notes.append(f"{_count(tally.empty, 'empty document')} skipped: {shown}")
    if tally.duplicates:
        notes.append(f"{_count(tally.duplicates, 'exact duplicate')} dropped")
    return (f"{_count(tally.passages, 'passage')} from {_count(tally.documents - tally.empty, 'document')}"
            + (f" ({'; '.join(notes)})" if notes else ""))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
