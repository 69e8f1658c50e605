"""The duplicate check of `iter_passages` (what `ragloop index` streams): which documents and passages it drops,
the error for a document id used twice with different text, and what it logs. Pinned on the rule the check
had when it kept every key in memory (`_in_memory_rule` below), so keeping the keys on disk, batched, finds
the same duplicates with the same messages."""

from __future__ import annotations

import json
import logging
import random

import pytest

from ragloop import RagloopError
from ragloop.cli import main
from ragloop.data import corpus
from ragloop.data.corpus import Passage, chunk_words, iter_passages, make_passages, passage_id
from ragloop.data.records import content_id


def _in_memory_rule(documents: list[dict], size: int, overlap: int) -> tuple[list[Passage], int, int]:
    """The specification: (passages kept, exact duplicates dropped, documents repeated with the same id
    and text that are not QA contexts); a document seen before is skipped whole, a passage whose title and
    text an earlier one had is dropped."""
    seen_docs, seen_text, kept, duplicates, repeated = {}, set(), [], 0, 0
    for doc in documents:
        text_key = content_id(doc["text"])
        if doc["doc_id"] in seen_docs:
            repeated += doc["doc_id"] != text_key
            continue
        seen_docs[doc["doc_id"]] = text_key
        for i, chunk in enumerate(chunk_words(doc["text"], size, overlap)):
            key = content_id(doc["title"] + "\n" + chunk)
            if key in seen_text:
                duplicates += 1
                continue
            seen_text.add(key)
            pid = passage_id(doc["doc_id"], i)
            kept.append(Passage(pid, doc["title"], chunk, doc["doc_id"], doc.get("source", "")))
    return kept, duplicates, repeated


def _random_documents(seed: int, n: int = 400) -> list[dict]:
    """Documents that repeat: the same id and text again, QA contexts (id = the text's hash) again, the same
    text under another id or title, shared windows between documents, empty ones."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(12)]
    made: list[dict] = []
    for i in range(n):
        roll = rng.random()
        if made and roll < 0.25:
            made.append(dict(rng.choice(made)))  # the same document again (a file named twice, a QA context)
            continue
        text = " ".join(rng.choice(words) for _ in range(rng.choice([0, 1, 3, 5, 9, 14])))
        if made and roll < 0.4:
            text = rng.choice(made)["text"]  # the same text under a new id: its passages are duplicates
        title = rng.choice(["", "A", "B"])
        doc_id = content_id(text) if roll > 0.8 else f"d{i}"
        made.append({"doc_id": doc_id, "title": title, "text": text, "source": f"s{i % 3}", "where": f"f:{i + 1}"})
    return made


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("batch", [1, 3, 64, 10_000])
def test_the_same_duplicates_are_found_as_by_the_in_memory_rule(seed, batch, monkeypatch, caplog):
    monkeypatch.setattr(corpus, "DEDUP_BATCH", batch, raising=False)  # the check on disk reads this many at a time
    docs = _random_documents(seed)
    expected, duplicates, repeated = _in_memory_rule(docs, 4, 1)
    with caplog.at_level(logging.INFO, logger="ragloop"):
        assert list(iter_passages(iter(docs), 4, 1)) == expected
    said = [r.getMessage() for r in caplog.records if r.name == "ragloop.data.corpus"]
    assert said[-1].startswith(f"corpus: {len(expected)} passage")
    assert (f"{duplicates} exact duplicate" in said[-1]) == (duplicates > 0) and duplicates > 0
    if repeated:
        assert said[0] == f"corpus: {repeated} documents repeated with the same id and text were skipped"


@pytest.mark.parametrize("batch", [1, 2, 64])
def test_an_id_used_twice_with_other_text_is_one_error_after_the_passages_before_it(batch, monkeypatch):
    monkeypatch.setattr(corpus, "DEDUP_BATCH", batch, raising=False)
    docs = [{"doc_id": "a", "title": "", "text": "alpha", "where": "x.jsonl:1"},
            {"doc_id": "b", "title": "", "text": "beta", "where": "x.jsonl:2"},
            {"doc_id": "a", "title": "", "text": "alpha", "where": "y.jsonl:1"},  # the same: skipped
            {"doc_id": "c", "title": "", "text": "gamma", "where": "y.jsonl:2"},
            {"doc_id": "b", "title": "", "text": "other", "where": "y.jsonl:3"},
            {"doc_id": "d", "title": "", "text": "delta", "where": "y.jsonl:4"}]
    got = []
    with pytest.raises(RagloopError) as error:
        for p in iter_passages(iter(docs)):
            got.append(p.id)
    assert str(error.value) == ("document id 'b' is used twice with different text: x.jsonl:2 and y.jsonl:3 "
                                "(give each document its own id)")
    assert got == ["a-0", "b-0", "c-0"]  # streamed: what came before the clash was yielded first


def test_the_first_fault_of_a_corpus_is_the_one_said(tmp_path):
    """Reading ahead does not change which error a corpus with two faults gives: the one met first."""
    from ragloop import load_corpus

    rows = [json.dumps({"id": "a", "text": "alpha"}), json.dumps({"id": "a", "text": "beta"}), '{"id": oops}']
    (tmp_path / "c.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(RagloopError, match="document id 'a' is used twice with different text"):
        load_corpus([tmp_path / "c.jsonl"])
    (tmp_path / "c.jsonl").write_text("\n".join([rows[0], rows[2], rows[1]]) + "\n")
    got = []
    with pytest.raises(RagloopError, match=r"c\.jsonl:2: not valid JSON"):
        got.extend(p.id for p in corpus.iter_corpus([tmp_path / "c.jsonl"]))
    assert got == ["a-0"]


def test_what_the_check_logs(caplog):
    docs = [{"doc_id": "a", "title": "T", "text": "one two", "where": "x:1"},
            {"doc_id": "a", "title": "T", "text": "one  two", "where": "x:2"},  # same words: the same text
            {"doc_id": content_id("q"), "title": "", "text": "q", "where": "qa:1"},
            {"doc_id": content_id("q"), "title": "", "text": "q", "where": "qa:2"},  # a QA context again: silent
            {"doc_id": "b", "title": "T", "text": "one two", "where": "x:3"},  # its passage: a duplicate
            *({"doc_id": f"e{i}", "title": "", "text": " ", "where": f"empty:{i}"} for i in range(5))]
    with caplog.at_level(logging.DEBUG, logger="ragloop"):
        assert [p.id for p in make_passages(docs)] == ["a-0", f"{content_id('q')}-0"]
    said = [r.getMessage() for r in caplog.records if r.name == "ragloop.data.corpus"]
    assert said == ["x:2: document 'a' again, same text as x:1: skipped",
                    "corpus: 1 documents repeated with the same id and text were skipped",
                    "corpus: 2 passages from 3 documents (5 empty documents skipped: empty:0, empty:1, empty:2 "
                    "and 2 more; 1 exact duplicate dropped)"]


def test_streaming_cli_build_and_add_keep_the_same_passages(tmp_path, tiny_bert_dir, capsys):
    """`ragloop index` (streaming) indexes the passages `load_corpus` keeps; `--add` of what is already in
    the index adds nothing; a clash is the same one-line error."""
    from ragloop import Index, load_corpus

    rows = [{"id": "a", "title": "T", "text": "alpha beta"}, {"id": "b", "title": "T", "text": "alpha beta"},
            {"id": "a", "title": "T", "text": "alpha beta"}, {"id": "c", "title": "U", "text": "gamma"}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "e", "text": "eps"}) + "\n")
    out = tmp_path / "idx"
    args = ["--out", str(out), "--encoder", str(tiny_bert_dir), "--no-bm25", "-q"]
    assert main(["index", str(tmp_path / "c.jsonl"), *args]) == 0
    with Index.load(out) as index:
        assert [p.id for p in index.store] == [p.id for p in load_corpus([tmp_path / "c.jsonl"])] == ["a-0", "c-0"]
    capsys.readouterr()
    assert main(["index", str(tmp_path / "c.jsonl"), str(tmp_path / "d.jsonl"), *args, "--add"]) == 0
    assert "added 1 new passage to" in capsys.readouterr().out
    with Index.load(out) as index:
        assert [p.id for p in index.store] == ["a-0", "c-0", "e-0"]
    (tmp_path / "x.jsonl").write_text(json.dumps({"id": "c", "text": "not gamma"}) + "\n")
    assert main(["index", str(tmp_path / "c.jsonl"), str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "j"),
                 "--encoder", str(tiny_bert_dir), "-q"]) == 2
    assert capsys.readouterr().err == (f"ragloop: error: document id 'c' is used twice with different text: "
                                       f"{tmp_path / 'c.jsonl'}:4 and {tmp_path / 'x.jsonl'}:1 (give each document "
                                       "its own id)\n")
    assert not (tmp_path / "j").exists()
