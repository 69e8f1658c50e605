"""Every command checks its inputs before a model loads: a bad file (its header, first record or JSON
shape), a missing or foreign index, an --out that cannot hold an index is one error naming it, and
no model loader is called; a build that stops on a bad file writes nothing."""

import json

import pytest

from ragloop.cli import main
from ragloop.generation.extractive import SpanReader
from ragloop.generation.generator import Generator
from ragloop.retrieval.encoders import BiEncoder, Encoder
from ragloop.retrieval.rerank import Reranker

# what loads weights (a saved RAG folder loads its question encoder before its reader, through Encoder)
LOADERS = [(BiEncoder, "from_pretrained"), (Encoder, "from_pretrained"), (Generator, "from_pretrained"),
           (SpanReader, "from_pretrained"), (Reranker, "from_pretrained")]


class ModelLoaded(Exception):
    pass


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The model loaders called during the test (each raises `ModelLoaded` instead of loading)."""
    called: list[str] = []
    for cls, name in LOADERS:
        def refuse(*args, _who=f"{cls.__name__}.{name}", **kwargs):
            called.append(_who)
            raise ModelLoaded(_who)

        monkeypatch.setattr(cls, name, refuse)
    return called


@pytest.fixture
def files(tmp_path):
    """Good and bad inputs, each in the folder `in/`."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "good.jsonl").write_text('{"text": "Warsaw lies on the Vistula."}\n{"text": "Paris lies on the Seine."}\n')
    (d / "good.md").write_text("# Oslo\n\nOslo is the capital of Norway.\n")
    (d / "bad.json").write_text('{"data": [1,\n')
    (d / "shape.json").write_text('{"rows": []}')
    (d / "nofield.jsonl").write_text('{"title": "no text"}\n')
    (d / "line2.jsonl").write_text('{"text": "fine"}\nnot json\n')
    (d / "empty.csv").write_text("")
    (d / "wide.tsv").write_text("id\ttext\n1\tone\textra\n")
    (d / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (d / "qa.jsonl").write_text(json.dumps({"question": "where?", "context": "Warsaw lies on the Vistula.",
                                            "answers": ["Warsaw"]}) + "\n")
    (d / "noquestion.jsonl").write_text('{"context": "c", "answers": ["c"]}\n')
    (d / "not_an_index").mkdir()
    (d / "not_an_index" / "notes.txt").write_text("mine")
    (d / "a_file").write_text("mine")
    return d


def _fails(capsys, args: list[str], message: str) -> str:
    assert main(args) == 2, args
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, (args, err)
    return err


INDEX_CASES = [
    (["missing.json"], "missing.json: no such file or folder"),
    (["bad.json"], "bad.json:2: not valid JSON"),
    (["shape.json"], "shape.json: expected SQuAD JSON"),
    (["nofield.jsonl"], "nofield.jsonl:1: a document needs a 'text' field"),
    (["line2.jsonl"], "line2.jsonl:2: not valid JSON"),  # read with the first chunk, before the model
    (["empty.csv"], "empty.csv: empty CSV (no header row)"),
    (["wide.tsv"], "wide.tsv:2: more fields than the header has"),
    (["latin1.txt"], "latin1.txt: not UTF-8 text"),
    (["good.jsonl", "good.md", "bad.json"], "bad.json:2: not valid JSON"),  # the last of three files
]


@pytest.mark.parametrize("corpus, message", INDEX_CASES, ids=[c[1].split(":")[0] for c in INDEX_CASES])
@pytest.mark.parametrize("how", [[], ["--num-shards", "2", "--shard-id", "0"]], ids=["streaming", "shard"])
def test_a_bad_corpus_file_is_named_before_a_model_loads(files, loads, capsys, corpus, message, how):
    out = files.parent / "idx"
    _fails(capsys, ["index", *[str(files / c) for c in corpus], "--out", str(out), *how], message)
    assert loads == []
    assert sorted(p.name for p in files.parent.iterdir()) == ["in"]  # nothing written: no index, no lock


@pytest.mark.parametrize("out, add, message", [
    ("not_an_index", [], "not_an_index: exists and is not a ragloop index"),
    ("a_file", [], "a_file: exists and is not a ragloop index"),
    ("a_file/idx", [], "a_file is a file, not a folder"),
    ("not_an_index", ["--add"], "not_an_index: not a ragloop index (no manifest.json)"),
    ("nowhere", ["--add"], "nowhere: no such ragloop index folder"),
])
def test_an_out_that_cannot_hold_an_index_is_named_before_a_model_loads(files, loads, capsys, out, add, message):
    before = sorted(p.name for p in files.iterdir())
    _fails(capsys, ["index", str(files / "good.jsonl"), "--out", str(files / out), *add], message)
    assert loads == []
    assert sorted(p.name for p in files.iterdir()) == before
    assert [p.name for p in (files / "not_an_index").iterdir()] == ["notes.txt"]


def test_a_bad_file_added_to_an_index_is_named_before_a_model_loads(files, loads, capsys, index_dir):
    _fails(capsys, ["index", str(files / "good.md"), str(files / "nofield.jsonl"), "--out", str(index_dir), "--add"],
           "nofield.jsonl:1: a document needs a 'text' field")
    assert loads == []


@pytest.mark.parametrize("args, message", [
    (["search", "{in}/not_an_index", "q"], "not a ragloop index"),
    (["search", "{in}/nowhere", "q", "--mode", "dense"], "nowhere: no such ragloop index folder"),
    (["answer", "{in}/nowhere", "q"], "nowhere: no such saved RAG model folder"),
    (["answer", "{in}/nowhere", "q", "--index", "{in}/not_an_index"], "not_an_index: not a ragloop index"),
    (["eval", "{in}/nowhere", "--data", "{in}/missing.json"], "missing.json: no such file or folder"),
    (["eval", "{in}/nowhere", "--data", "{in}/bad.json"], "bad.json:2: not valid JSON"),
    (["eval", "{in}/nowhere", "--data", "{in}/noquestion.jsonl"], "noquestion.jsonl:1: missing or empty 'question'"),
    (["eval", "{in}/nowhere", "--data", "{in}/qa.jsonl", "--index", "{in}/not_an_index"], "not a ragloop index"),
    (["eval-retrieval", "{in}/not_an_index", "--data", "{in}/qa.jsonl"], "not a ragloop index"),
    (["train", "--train_file", "{in}/bad.json", "--output_dir", "{in}/run"], "bad.json:2: not valid JSON"),
    (["train", "--train_file", "{in}/qa.jsonl", "--index", "{in}/not_an_index", "--output_dir", "{in}/run"],
     "not_an_index: not a ragloop index"),
    (["train-retriever", "--train_file", "{in}/noquestion.jsonl", "--output_dir", "{in}/run"],
     "noquestion.jsonl:1: missing or empty 'question'"),
    (["train-reranker", "--train_file", "{in}/missing.json", "--output_dir", "{in}/run"], "missing.json: no such"),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_other_commands_name_a_bad_input_before_a_model_loads(files, loads, capsys, args, message):
    before = sorted(p.name for p in files.iterdir())
    _fails(capsys, [a.format(**{"in": files}) for a in args], message)
    assert loads == []
    assert sorted(p.name for p in files.iterdir()) == before


def test_a_streaming_build_that_meets_a_bad_record_later_writes_nothing(files, capsys, tiny_bert_dir):
    """Past the first chunk a bad record is met while encoding: the build stops, naming it, and the
    index is not written (nor is an earlier one at --out replaced)."""
    bad = files / "later.jsonl"
    bad.write_text("".join(json.dumps({"text": f"passage number {i}"}) + "\n" for i in range(5)) + "{oops\n")
    out = files.parent / "idx"
    _fails(capsys, ["index", str(bad), "--out", str(out), "--encoder", str(tiny_bert_dir), "--chunk-size", "2",
                    "-q"], "later.jsonl:6: not valid JSON")
    assert sorted(p.name for p in files.parent.iterdir()) == ["in"]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, squad_small, tiny_bert_dir):
    out = tmp_path_factory.mktemp("inputs") / "idx"
    assert main(["index", str(squad_small), "--out", str(out), "--encoder", str(tiny_bert_dir), "-q"]) == 0
    return out
