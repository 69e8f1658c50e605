"""Property-based tests (hypothesis): on arbitrary input the loaders return a valid result or raise
one `RagloopError`, and the command line exits 0 or 2 with no traceback and nothing half-written.

Deterministic (derandomized, no example database) and small, so the file runs in well under a minute.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ragloop import Index, Passage, QAExample, RagloopError, load_corpus, load_qa
from ragloop.cli import main

FAST = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
SLOW = settings(FAST, max_examples=40)

SUFFIXES = [".json", ".jsonl", ".csv", ".txt", ".md"]
KEYS = ["data", "title", "paragraphs", "context", "qas", "question", "answers", "text", "id", "answer_start",
        "is_impossible", "doc_id"]


@pytest.fixture(scope="module", autouse=True)
def offline():
    """A name that is not a local file is a hub dataset or model: fail at once instead of timing out."""
    import datasets.config
    import huggingface_hub.constants

    before = huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    yield
    huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = before


# -- strategies ---------------------------------------------------------------------------------------

words = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | words
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5), max_leaves=15)


def maybe(valid):
    """Mostly the right shape, sometimes any JSON value."""
    return st.one_of(valid, valid, json_values)


answer = maybe(st.fixed_dictionaries({"text": maybe(words)}, optional={"answer_start": st.integers()}) | words)
qa = maybe(st.fixed_dictionaries({}, optional={"id": maybe(words), "question": maybe(words),
                                               "answers": maybe(st.lists(answer, max_size=3)),
                                               "is_impossible": st.booleans()}))
paragraph = maybe(st.fixed_dictionaries({}, optional={"context": maybe(words), "qas": maybe(st.lists(qa, max_size=3))}))
article = maybe(st.fixed_dictionaries({}, optional={"title": maybe(words),
                                                    "paragraphs": maybe(st.lists(paragraph, max_size=3))}))
squad = st.builds(lambda data: {"data": data, "version": "1.1"}, maybe(st.lists(article, max_size=3)))
rows = st.lists(maybe(st.dictionaries(st.sampled_from(KEYS), maybe(words) | st.lists(words, max_size=2),
                                      max_size=5)), max_size=4)


def csv_bytes(header: list[str], body: list[list[str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(body)
    return buf.getvalue().encode("utf-8")


json_file = st.one_of(
    st.tuples(st.just(".json"), st.builds(lambda obj, ascii: json.dumps(obj, ensure_ascii=ascii).encode(),
                                          squad | rows | json_values, st.booleans())),
    st.tuples(st.just(".jsonl"), st.builds(lambda objs: "\n".join(json.dumps(o) for o in objs).encode(),
                                           st.lists(maybe(st.dictionaries(st.sampled_from(KEYS), maybe(words),
                                                                          max_size=5)), max_size=4))),
)
csv_file = st.tuples(st.just(".csv"), st.builds(
    csv_bytes, st.lists(st.sampled_from(KEYS) | words, max_size=4),
    st.lists(st.lists(words, max_size=5), max_size=4)))
any_file = st.one_of(
    st.tuples(st.sampled_from(SUFFIXES), st.binary(max_size=200)),
    st.tuples(st.sampled_from(SUFFIXES), st.text(max_size=200).map(lambda s: s.encode("utf-8"))),
    json_file, json_file, csv_file,
)

# inputs that once escaped as other exceptions (or would have)
NASTY = [
    (".json", b"[" * 100_000),  # nested deeper than the parser's recursion limit
    (".jsonl", b"[" * 100_000),
    (".json", b'{"data": [{"paragraphs": [{"context": "' + b"9" * 5000 + b'"}]}]}'),
    (".jsonl", b'{"text": 1' + b"0" * 5000 + b"}"),  # an integer longer than int() accepts
    (".json", b'[{"text": "lone \\ud800 surrogate"}]'),
    (".jsonl", b'{"question": "q?", "answers": ["\\udc00"], "context": "c"}'),
    (".json", b'\xef\xbb\xbf[{"text": "a file with a BOM", "question": "q", "answers": ["a"]}]'),
    (".csv", b"\xef\xbb\xbftext,question,answers\nsome text,q?,1945\n"),  # BOM; a numeric plain answer
    (".csv", b"text,question,answers\nx,q?," + b"[" * 5000 + b"\n"),
    (".csv", b"text\n\xff\xfe broken"),
    (".csv", b"text\n" + b"x" * 200_000),  # a field over the csv module's limit
    (".csv", b'text\n"unterminated'),
    (".csv", b"\x00,\x00\n\x00,\x00"),
    (".txt", b"\xff"),
    (".md", b"# \n"),
]


def with_examples(cases, **fixed):
    def wrap(fn):
        for case in cases:
            fn = example(file=case, **fixed)(fn)
        return fn

    return wrap


def check_passages(passages) -> None:
    assert isinstance(passages, list) and passages
    assert len({p.id for p in passages}) == len(passages)
    for p in passages:
        assert isinstance(p, Passage) and p.text.strip()
        for value in (p.id, p.title, p.text, p.doc_id):
            assert isinstance(value, str)
            value.encode("utf-8")  # storable and tokenizable: no unpaired surrogates


def check_examples(examples) -> None:
    assert isinstance(examples, list) and examples
    for ex in examples:
        assert isinstance(ex, QAExample) and ex.question.strip() and ex.answers
        for value in (ex.id, ex.question, ex.title, ex.context, *ex.answers):
            assert isinstance(value, str)
            value.encode("utf-8")


def one_line(error: RagloopError) -> None:
    assert str(error) and "\n" not in str(error)


# -- loaders -------------------------------------------------------------------------------------------


@FAST
@given(file=any_file)
@with_examples(NASTY)
def test_loaders_return_valid_data_or_one_error(file):
    suffix, data = file
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{suffix}"
        path.write_bytes(data)
        for load, check in ((load_corpus_one, check_passages), (load_qa, check_examples)):
            try:
                result = load(path)
            except RagloopError as e:
                one_line(e)
                assert str(path) in str(e) or "no passages" in str(e)
            else:
                check(result)


def load_corpus_one(path: Path):
    return load_corpus([path], chunk_size=8, overlap=2)


@FAST
@given(doc=squad)
def test_malformed_squad_structures_are_loaded_or_refused(doc):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "squad.json"
        path.write_text(json.dumps(doc))
        try:
            examples = load_qa(path, keep_unanswerable=True)
        except RagloopError as e:
            one_line(e)
        else:
            assert all(isinstance(ex.answers, list) and ex.question.strip() for ex in examples)
        try:
            check_passages(load_corpus([path]))
        except RagloopError as e:
            one_line(e)


def test_csv_plain_answers_and_bom_are_read():
    """Found by the properties above: a CSV answer like 1945 was parsed as JSON and refused."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qa.csv"
        path.write_bytes(b"\xef\xbb\xbfquestion,answers,context\nWhen?,1945,The war ended in 1945.\nWho?,true,x\n")
        examples = load_qa(path)
        assert [ex.answers for ex in examples] == [["1945"], ["true"]]
        assert examples[0].context == "The war ended in 1945."


# -- the command line ----------------------------------------------------------------------------------


def run_cli(args: list[str]) -> tuple[int, str]:
    """`ragloop ARGS` in this process: (exit code, stderr). Any exception but SystemExit fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(args)
        except SystemExit as e:  # argparse: --help (0) or a usage error (2)
            code = e.code
    stderr = err.getvalue()
    assert code in (0, 2), (args, code, stderr)
    assert "Traceback" not in stderr, (args, stderr)
    if code == 2 and not stderr.startswith("usage:"):
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ragloop: error: "), (args, stderr)
    return code, stderr


@pytest.fixture(scope="module")
def previous_index(tiny_index) -> Path:
    """The shared index folder (conftest.py), copied where a command may replace it."""
    return tiny_index.path


@contextlib.contextmanager
def workdir():
    """A fresh current folder, so relative paths the CLI is given stay inside it."""
    before = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(before)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden temporaries included) with its content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@SLOW
@given(file=any_file, replace=st.booleans(), no_bm25=st.booleans())
@with_examples([(".json", b"[" * 100_000), (".csv", b"text\n\xff"), (".txt", b"just a few words")], replace=True,
               no_bm25=False)
def test_cli_index_writes_a_whole_index_or_nothing(previous_index, tiny_bert_dir, file, replace, no_bm25):
    suffix, data = file
    with workdir() as cwd:
        corpus = cwd / "in" / f"docs{suffix}"
        corpus.parent.mkdir()
        corpus.write_bytes(data)
        out = cwd / "runs" / "idx"
        if replace:
            shutil.copytree(previous_index, out)
        before = snapshot(cwd / "runs") if replace else None
        args = ["index", str(corpus), "--out", str(out), "--encoder", str(tiny_bert_dir), "-q"]
        code, _ = run_cli(args + ["--no-bm25"] * no_bm25)
        if code == 0:
            assert sorted(p.name for p in (cwd / "runs").iterdir()) == ["idx"]
            with Index.load(out) as index:
                assert len(index) > 0
        elif replace:
            assert snapshot(cwd / "runs") == before  # the previous index, byte for byte; no temporaries
        else:
            assert not (cwd / "runs").exists() or not any((cwd / "runs").iterdir())


TOKEN = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\."), max_size=12)
NUMBER = st.integers(-3, 40).map(str) | st.sampled_from(["0", "1e3", "nan", "-inf", "2.5", "x", ""])
WORD = st.sampled_from(["Flat", "HNSW8", "IVF4,Flat", "IVF999,PQ8", "nonsense", "dense", "bm25", "hybrid", "rrf",
                        "score", "all", "Warsaw", "   ", "train", "validation"]) | TOKEN
PATHS = ["idx", "qa.jsonl", "bad.json", "missing", "newidx"]
FLAG = None
OPTIONS = {  # option -> kind of value it takes
    "index": {"--out": "path", "--encoder": "model", "--question-encoder": "model", "--index-type": "word",
              "--chunk-words": "number", "--chunk-overlap": "number", "--batch-size": "number", "--split": "word",
              "--no-bm25": FLAG, "--add": FLAG, "--num-shards": "number", "--shard-id": "number",
              "--merge-shards": FLAG, "--keep-shards": FLAG, "-q": FLAG},
    "search": {"-k": "number", "--mode": "word", "--json": FLAG, "--encoder": "model", "--fusion": "word",
               "--weight": "number", "-q": FLAG},
    "eval": {"--data": "path", "--split": "word", "--index": "path", "-k": "number", "--num-beams": "number",
             "--closed-book": FLAG, "--oracle": FLAG, "--json": FLAG, "-q": FLAG},
}


@SLOW
@given(data=st.data(), command=st.sampled_from(sorted(OPTIONS)))
def test_cli_arbitrary_arguments_exit_0_or_2_and_leave_nothing_half_written(
        data, command, previous_index, rag_dir, tiny_bert_dir):
    with workdir() as cwd:
        shutil.copytree(previous_index, cwd / "idx")  # --out idx replaces it or leaves it whole
        (cwd / "qa.jsonl").write_text(json.dumps({"question": "Where is Warsaw?", "answers": ["Poland"],
                                                  "context": "Warsaw is the capital of Poland."}) + "\n")
        (cwd / "bad.json").write_bytes(b'{"data": [{"paragraphs": 5}]}')
        values = {"path": st.sampled_from(PATHS) | TOKEN, "word": WORD, "number": NUMBER,
                  "model": st.sampled_from([str(tiny_bert_dir), str(rag_dir), "idx", "missing"]) | TOKEN}
        if command == "index":
            args = ["index", data.draw(st.sampled_from(["qa.jsonl", "bad.json", "missing.txt", "idx"])),
                    "--out", data.draw(st.sampled_from(["idx", "newidx"])), "--encoder", str(tiny_bert_dir)]
        elif command == "search":
            args = ["search", data.draw(st.sampled_from(["idx", "missing", str(rag_dir)])), data.draw(WORD)]
        else:
            args = ["eval", data.draw(st.sampled_from([str(rag_dir), "idx", "missing"])), "--data",
                    data.draw(st.sampled_from(["qa.jsonl", "bad.json", "missing.json"]))]
        for option in data.draw(st.lists(st.sampled_from(sorted(OPTIONS[command])), max_size=4)):
            kind = OPTIONS[command][option]
            args += [option] if kind is FLAG else [option, data.draw(values[kind])]
        if data.draw(st.integers(0, 9)) == 0:  # now and then a stray word anywhere
            args.insert(data.draw(st.integers(1, len(args))), data.draw(WORD | NUMBER))
        if command == "eval":
            args += ["--limit", "1"]  # one question at most, so a successful run stays quick
        before = snapshot(cwd)
        code, _ = run_cli(args)
        after = snapshot(cwd)
        assert not [name for name in after if ".tmp-" in name or ".old-" in name], args  # no temporaries
        if code == 2:
            assert after == before, args  # a failed command changed nothing
        elif after != before:  # a successful `index` wrote a whole index
            for name in {Path(n).parts[0] for n in set(after) ^ set(before)}:
                if name.endswith(".shards"):  # `--num-shards N --shard-id I`: one whole shard
                    assert all((shard / "shard.json").is_file() for shard in (cwd / name).iterdir()), args
                    continue
                with Index.load(cwd / name) as index:
                    assert len(index) > 0


@pytest.mark.parametrize("extra", [["--batch-size", "0"], ["--batch-size", "-1"], ["--chunk-words", "0"],
                                   ["--chunk-overlap", "100"], ["--num-shards", "0", "--shard-id", "0"]])
def test_cli_index_bad_numbers_are_one_error(extra, tiny_bert_dir):
    """Cases the properties turned up (a ValueError traceback, a silently wrong index), kept as examples."""
    with workdir() as cwd:
        (cwd / "docs.txt").write_text("a few words to index")
        code, stderr = run_cli(["index", "docs.txt", "--out", "idx", "--encoder", str(tiny_bert_dir), "-q", *extra])
        assert code == 2 and (extra[0] in stderr or "chunking" in stderr)
        assert sorted(p.name for p in cwd.iterdir()) == ["docs.txt"]
        code, stderr = run_cli(["index", "--out", "idx", "--merge-shards", "--num-shards", "0"])
        assert code == 2 and "argument --num-shards: must be at least 1" in stderr  # refused by argparse


def test_passage_store_under_a_folder_named_like_a_uri():
    """Found while reading the store: the SQLite URI was not escaped, so "#" or "?" in a path opened another file."""
    from ragloop.retrieval.store import PassageStore

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run#1?mode=rw%20"
        folder.mkdir()
        with PassageStore(folder / "passages.sqlite", readonly=False) as store:
            store.add([Passage("p0", "Title", "Some text.")], 0)
        with PassageStore(folder / "passages.sqlite") as store:
            assert store.get_rows([0])[0].text == "Some text."
        assert sorted(p.name for p in Path(tmp).rglob("*")) == ["passages.sqlite", folder.name]
