"""Corpus and QA loading: chunking, stable ids, de-duplication, formats, and clear errors."""

import json
import logging
import re
import sys

import pytest

from ragloop import RagloopError, load_corpus, load_qa
from ragloop.data import chunk_words


def test_chunking_windows_overlap_and_tail():
    text = " ".join(f"w{i}" for i in range(230))
    chunks = chunk_words(text, size=100, overlap=0)
    assert [len(c.split()) for c in chunks] == [100, 100, 30]  # a 30-word tail is a passage of its own
    chunks = chunk_words(" ".join(f"w{i}" for i in range(220)), size=100)
    assert [len(c.split()) for c in chunks] == [100, 120]  # a 20-word tail (< 1/4 window) joins the one before
    over = chunk_words(text, size=100, overlap=20)
    assert over[1].split()[0] == "w80"  # the second window starts 80 words in
    assert chunk_words("short text", size=100) == ["short text"]
    assert chunk_words("   ", size=100) == []
    with pytest.raises(RagloopError):
        chunk_words(text, size=10, overlap=10)


def test_squad_contexts_become_passages_with_stable_ids(squad_small):
    a = load_corpus([squad_small])
    b = load_corpus([squad_small])
    assert [p.id for p in a] == [p.id for p in b]
    assert len({p.id for p in a}) == len(a)
    questions = load_qa(squad_small)
    docs = {p.doc_id for p in a}
    assert all(q.doc_id in docs for q in questions)  # every question's own paragraph is in the corpus
    assert {p.title for p in a} == {"Super Bowl 50", "Warsaw", "Normans"}


def test_exact_duplicates_are_dropped(squad_small):
    once = load_corpus([squad_small])
    twice = load_corpus([squad_small, squad_small])
    assert len(once) == len(twice)


def test_documents_from_text_markdown_jsonl_and_csv(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Getting started\n\n" + "word " * 150)
    (tmp_path / "docs" / "notes.txt").write_text("Plain notes about FAISS indexes.")
    (tmp_path / "more.jsonl").write_text(json.dumps({"id": "d1", "title": "T1", "text": "alpha beta"}) + "\n\n")
    (tmp_path / "more.csv").write_text('id,title,text\nd2,T2,"gamma, delta"\n')
    passages = load_corpus([tmp_path / "docs", tmp_path / "more.jsonl", tmp_path / "more.csv"], chunk_size=100)
    by_title = {}
    for p in passages:
        by_title.setdefault(p.title, []).append(p)
    assert len(by_title["Getting started"]) == 2  # 150 words -> two windows, title from the heading
    assert by_title["notes"][0].text == "Plain notes about FAISS indexes."
    assert by_title["T1"][0].id == "d1-0" and by_title["T2"][0].text == "gamma, delta"


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": oops}\n')
    with pytest.raises(RagloopError, match=r"bad\.jsonl:2: not valid JSON"):
        load_corpus([bad])


def test_non_utf8_jsonl_names_the_line(tmp_path):
    bad = tmp_path / "latin.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(RagloopError, match=r"latin\.jsonl:2: not UTF-8"):
        load_corpus([bad])


def test_missing_file_empty_corpus_and_rows_without_text(tmp_path):
    with pytest.raises(RagloopError, match="no such file"):
        load_corpus([tmp_path / "nope.jsonl"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(RagloopError, match="no passages"):
        load_corpus([empty])
    notext = tmp_path / "notext.jsonl"
    notext.write_text(json.dumps({"id": 1, "body": "x"}) + "\n")
    with pytest.raises(RagloopError, match=r"notext\.jsonl:1: a document needs a 'text'"):
        load_corpus([notext])


def test_qa_from_jsonl_and_csv_in_hf_layout(tmp_path):
    row = {"id": "q1", "title": "T", "context": "Paris is the capital of France.", "question": "Capital of France?",
           "answers": {"text": ["Paris"], "answer_start": [0]}}
    (tmp_path / "qa.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "qa.csv").write_text('id,question,answers,context\nq2,Who?,"[""Ann"", ""Anne""]",Ann did.\n')
    [a] = load_qa(tmp_path / "qa.jsonl")
    [b] = load_qa(tmp_path / "qa.csv")
    assert (a.question, a.answers) == ("Capital of France?", ["Paris"])
    assert b.answers == ["Ann", "Anne"] and b.doc_id


def test_empty_question_is_an_error(tmp_path):
    (tmp_path / "qa.jsonl").write_text(json.dumps({"question": "  ", "answers": ["x"]}) + "\n")
    with pytest.raises(RagloopError, match=r"qa\.jsonl:1: missing or empty 'question'"):
        load_qa(tmp_path / "qa.jsonl")


def test_hub_dataset_unreachable_is_one_clear_error(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RagloopError, match="could not load dataset .squad.*use local files"):
        load_qa("squad")


def test_hub_dataset_without_datasets_names_the_extra(monkeypatch):
    """`datasets` is an optional extra: a hub name without it is one error that says what to install."""
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(RagloopError, match=r"'squad'.*pip install 'ragloop\[datasets\]'"):
        load_qa("squad")
    with pytest.raises(RagloopError, match=r"'wiki_dpr'.*pip install 'ragloop\[datasets\]'"):
        load_corpus(["wiki_dpr"])


def test_local_files_load_without_datasets(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)
    (tmp_path / "qa.jsonl").write_text(json.dumps({"question": "Who?", "context": "Ann did.", "answers": ["Ann"]}))
    assert [ex.answers for ex in load_qa(tmp_path / "qa.jsonl")] == [["Ann"]]
    assert [p.text for p in load_corpus([tmp_path / "qa.jsonl"])] == ["Ann did."]


def test_dpr_passage_tsv_indexes_as_it_is(tmp_path):
    """DPR's psgs_w100.tsv: id, text, title; tab-separated, a header, CSV quoting of the text."""
    tsv = tmp_path / "psgs_w100.tsv"
    tsv.write_text('id\ttext\ttitle\n'
                   '1\t"Aaron Aaron ( or ; ""Ahärôn"") is a prophet, high priest"\tAaron\n'
                   '2\tGod at Sinai granted Aaron the priesthood\tAaron\n')
    p1, p2 = load_corpus([tsv])
    assert (p1.id, p1.title, p1.doc_id) == ("1-0", "Aaron", "1")
    assert p1.text == 'Aaron Aaron ( or ; "Ahärôn") is a prophet, high priest'
    assert p2.id == "2-0" and p1.source == p2.source == "psgs_w100.tsv"


def test_passages_say_which_file_they_came_from_relative_to_what_was_named(tmp_path, monkeypatch):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.md").write_text("# A\n\nalpha")
    (tmp_path / "docs" / "sub" / "c.txt").write_text("gamma")
    (tmp_path / "b.jsonl").write_text(json.dumps({"id": "b", "text": "beta"}) + "\n")
    expected = {"alpha": "docs/a.md", "gamma": "docs/sub/c.txt", "beta": "b.jsonl"}  # no path of this machine
    passages = load_corpus([tmp_path / "docs", str(tmp_path / "b.jsonl")])
    assert {p.text: p.source for p in passages} == expected
    monkeypatch.chdir(tmp_path / "docs")  # named relatively, even as ".": the same names
    assert {p.text: p.source for p in load_corpus([".", "../b.jsonl"])} == expected
    (tmp_path / "qa.jsonl").write_text(json.dumps({"question": "q?", "answers": ["a"], "context": "a b"}) + "\n")
    assert [ex.source for ex in load_qa(tmp_path / "qa.jsonl")] == ["qa.jsonl"]


def test_empty_documents_are_said_to_be_skipped_not_counted(tmp_path, caplog):
    (tmp_path / "docs").mkdir()
    for name, text in (("a.md", "# A\n\nalpha"), ("b.txt", "beta"), ("c.txt", "gamma"), ("empty.txt", "")):
        (tmp_path / "docs" / name).write_text(text)
    with caplog.at_level(logging.INFO, logger="ragloop"):
        assert len(load_corpus([tmp_path / "docs"])) == 3
    said = [r.getMessage() for r in caplog.records if r.name == "ragloop.data.corpus"]
    empty = tmp_path / "docs" / "empty.txt"
    assert said == [f"corpus: 3 passages from 3 documents (1 empty document skipped: {empty})"]
    caplog.clear()
    (tmp_path / "one.txt").write_text("just one")
    with caplog.at_level(logging.INFO, logger="ragloop"):
        load_corpus([tmp_path / "one.txt"])
    assert [r.getMessage() for r in caplog.records] == ["corpus: 1 passage from 1 document"]


def test_bundled_files_are_read_by_name_anywhere_a_data_file_is_read():
    dev = load_qa("bundled:squad-v1.1-dev.articles-00-31.json")
    assert len(dev) == 7235 and {ex.source for ex in dev} == {"bundled:squad-v1.1-dev.articles-00-31.json"}
    passages = load_corpus(["bundled:squad-v1.1-train.first12articles.json"])
    assert len(passages) >= 678 and passages[0].source == "bundled:squad-v1.1-train.first12articles.json"


@pytest.mark.parametrize("name, words", [
    ("bundled:../model.py", "named by its file name alone"),
    ("bundled:../../ragloop/__init__.py", "named by its file name alone"),
    ("bundled:..", "named by its file name alone"),
    ("bundled:/etc/passwd", "named by its file name alone"),
    ("bundled:", "named by its file name alone"),
    ("bundled:README.md", "no such file 'bundled:README.md'"),
    ("bundled:nope.json", "no such file 'bundled:nope.json'; the bundled files are squad-v1.1-dev"),
])
def test_a_bundled_name_cannot_leave_the_bundled_folder(name, words):
    for read in (load_qa, lambda n: load_corpus([n])):
        with pytest.raises(RagloopError, match=re.escape(words)):
            read(name)


def test_same_id_with_other_text_is_an_error_naming_both(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"id": "d1", "text": "alpha"}) + "\n")
    (tmp_path / "b.csv").write_text("id,text\nd0,gamma\nd1,beta\n")
    with pytest.raises(RagloopError, match=r"document id 'd1' is used twice with different text: "
                                           r".*a\.jsonl:1 and .*b\.csv:3"):
        load_corpus([tmp_path / "a.jsonl", tmp_path / "b.csv"])
    (tmp_path / "b.csv").write_text("id,text\nd1,alpha\n")  # the same document again: skipped
    assert [p.id for p in load_corpus([tmp_path / "a.jsonl", tmp_path / "b.csv"])] == ["d1-0"]


def test_squad_paragraphs_without_questions_are_passages_not_errors(tmp_path):
    """A filtered SQuAD file: some paragraphs have an empty 'qas' list."""
    data = {"data": [{"title": "T", "paragraphs": [
        {"context": "Paris is the capital of France.", "qas": [
            {"id": "q1", "question": "Capital of France?", "answers": [{"text": "Paris", "answer_start": 0}]}]},
        {"context": "Berlin is the capital of Germany.", "qas": []},
    ]}]}
    (tmp_path / "squad.json").write_text(json.dumps(data))
    assert [ex.id for ex in load_qa(tmp_path / "squad.json")] == ["q1"]
    assert len(load_corpus([tmp_path / "squad.json"])) == 2
    data["data"][0]["paragraphs"] = data["data"][0]["paragraphs"][1:]
    (tmp_path / "squad.json").write_text(json.dumps(data))
    with pytest.raises(RagloopError, match=r"squad\.json: no answerable questions"):
        load_qa(tmp_path / "squad.json")


def test_every_file_is_checked_when_a_corpus_stream_is_opened(tmp_path):
    """`iter_corpus` reads each file's header and first document when called, before it yields a
    passage: a bad last file fails before the good ones are read for their passages."""
    from ragloop.data import iter_corpus
    from ragloop.data.records import first_row

    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "one"}\n{"text": "two"}\n')
    bad = tmp_path / "bad.csv"
    bad.write_text("title,body\nx,y\n")
    assert first_row(good) == ({"text": "one"}, f"{good}:1")
    assert first_row(bad) == ({"title": "x", "body": "y"}, f"{bad}:2")
    with pytest.raises(RagloopError, match=r"bad\.csv:2: a document needs a 'text' field"):
        iter_corpus([good, bad])  # not consumed: the check is not deferred to the first passage
    header_only = tmp_path / "header.tsv"
    header_only.write_text("id\ttext\ttitle\n")
    assert first_row(header_only) is None
    assert [p.text for p in iter_corpus([good, header_only])] == ["one", "two"]
