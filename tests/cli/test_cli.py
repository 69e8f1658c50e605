"""The command line: index, search, eval-retrieval; bad input is one line on stderr and exit 2."""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ragloop
from ragloop.cli import build_parser, main


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, squad_small, tiny_bert_dir):
    out = tmp_path_factory.mktemp("cli") / "idx"
    assert main(["index", str(squad_small), "--out", str(out), "--encoder", str(tiny_bert_dir), "-q"]) == 0
    return out


def test_index_search_and_eval_json(index_dir, squad_small, capsys):
    capsys.readouterr()
    assert main(["search", str(index_dir), "Warsaw Vistula", "-k", "2", "--mode", "bm25", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["hits"]) == 2 and out["hits"][0]["title"] == "Warsaw"
    assert set(out["hits"][0]) >= {"id", "title", "text", "score"}
    assert main(["eval-retrieval", str(index_dir), "--data", str(squad_small), "-k", "1", "5",
                 "--mode", "hybrid", "--json", "-q"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["mode"] == "hybrid" and res["questions"] == 139
    assert set(res) == {"mode", "questions", "answers_not_in_context", "hit@1", "hit@5", "gold@1", "gold@5",
                        "mrr@10"}
    assert 0 <= res["gold@1"] <= res["gold@5"] <= 1


def test_add_documents_from_the_cli(index_dir, tmp_path, capsys):
    doc = tmp_path / "new.md"
    doc.write_text("# Zanzibar\n\nZanzibar is an archipelago off the coast of Tanzania.")
    copy = tmp_path / "idx"
    import shutil

    shutil.copytree(index_dir, copy)
    assert main(["index", str(doc), "--out", str(copy), "--add", "-q"]) == 0
    assert "added 1 new passage to" in capsys.readouterr().out
    assert main(["search", str(copy), "Zanzibar archipelago", "-k", "1", "--mode", "bm25", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["title"] == "Zanzibar"


def _run(*args):
    """`python -m ragloop.cli ARGS` in a fresh process, importing the ragloop these tests import."""
    src = str(Path(ragloop.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", "ragloop.cli", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_bad_input_is_one_line_and_nonzero_exit(tmp_path, index_dir, other_bert_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    cases = [
        (["index", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")], "missing.json: no such file"),
        (["index", str(bad), "--out", str(tmp_path / "o")], "bad.jsonl:2: not valid JSON"),
        (["search", str(tmp_path), "q"], "not a ragloop index"),
        (["search", str(index_dir), "q", "--encoder", str(other_bert_dir)], "other weights"),
        (["search", str(index_dir), "   "], "question 0 is empty"),
    ]
    for args, message in cases:
        proc = _run(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()  # a failed `ragloop index` leaves nothing at --out
    assert [p.name for p in tmp_path.iterdir()] == ["bad.jsonl"]


def test_search_shows_sources_and_says_when_nothing_is_found(index_dir, squad_small, capsys):
    capsys.readouterr()
    assert main(["search", str(index_dir), "Warsaw Vistula", "-k", "1", "--mode", "bm25"]) == 0
    assert f"from {squad_small.name})" in capsys.readouterr().out  # its name, not this machine's path
    assert main(["search", str(index_dir), "zzqx qqzzv", "--mode", "bm25"]) == 0
    assert "no passages found" in capsys.readouterr().out
    assert main(["search", str(index_dir), "Warsaw", "-k", "1", "--mode", "bm25", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["source"] == squad_small.name


@pytest.mark.parametrize("args, message", [
    (["eval", "m", "--data", "d.json", "--limit", "-1"], "argument --limit: must be at least 1 (got -1)"),
    (["eval-retrieval", "i", "--data", "d.json", "--limit", "0"], "argument --limit: must be at least 1"),
    (["index", "c.jsonl", "--out", "o", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["search", "i", "q", "--weight", "nan"], "argument --weight: must be a finite number"),
    (["search", "i", "q", "--weight", "1.5"], "argument --weight: must be between 0 and 1"),
    (["search", "i", "q", "--fusion", "max"], "argument --fusion: invalid choice"),
    (["search", "i", "q", "-k", "0"], "argument -k: must be at least 1"),
    (["eval-retrieval", "i", "--data", "d.json", "-k", "1", "x"], "argument -k: expected a whole number, got 'x'"),
    (["serve", "m", "--max-wait-ms", "inf"], "argument --max-wait-ms: must be a finite number"),
    (["demo", "--steps", "0"], "argument --steps: must be at least 1"),
])
def test_bad_numbers_are_refused_before_anything_runs(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_k_beyond_the_index_is_one_line(index_dir, capsys):
    capsys.readouterr()
    assert main(["search", str(index_dir), "Warsaw", "-k", "10000000", "--mode", "bm25"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"k=10000000 but {index_dir} holds" in err[0]


def test_quiet_before_or_after_the_command(index_dir, capsys):
    from ragloop.cli import build_parser

    parser = build_parser()
    argv = ["search", str(index_dir), "q"]
    assert parser.parse_args(argv).quiet is False
    assert parser.parse_args(["-q", *argv]).quiet is True
    assert parser.parse_args([*argv, "-q"]).quiet is True
    assert parser.parse_args(["--verbose", *argv]).verbose is True
    capsys.readouterr()
    assert main(["-q", "search", str(index_dir), "Warsaw Vistula", "-k", "1", "--mode", "bm25", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["title"] == "Warsaw"


def _help_entries(text: str) -> dict[str, str]:
    """argparse help text -> {first name of each argument: its whole help}."""
    entries: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("  ") and not line.startswith("   "):  # "  -k K   passages ..." starts an entry
            name = line.split()[0].rstrip(",")
            entries[name] = line
        elif line.startswith("   ") and name:
            entries[name] += " " + line.strip()
        else:
            name = None
    return entries


def test_search_help_documents_every_argument_and_its_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--help"])
    assert exit_.value.code == 0
    entries = _help_entries(capsys.readouterr().out)
    options = ["-q", "-v", "-k", "--mode", "--json", "--encoder", "--fusion", "--weight", "--rerank-depth",
               "--quantize"]
    assert set(entries) == {"index_dir", "question", "-h", "--rerank", *options}  # --rerank: none unless given
    for option in options:
        assert "default" in entries[option], entries[option]
    assert "(default: 5)" in entries["-k"] and "(default: dense)" in entries["--mode"]
    assert "(default: rrf)" in entries["--fusion"] and "(default: 0.5)" in entries["--weight"]
    assert "(default: off)" in entries["--json"]
    assert len(entries["index_dir"].split()) > 1 and len(entries["question"].split()) > 1  # each has a help


def _modules_after(code: str) -> set[str]:
    """Which of torch / transformers / faiss a fresh interpreter has imported after running `code`."""
    heavy = ("torch", "transformers", "faiss")
    probe = f"{code}\nimport sys\nprint('modules:', *(m for m in {heavy!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.splitlines()[-1].split()[1:])


def test_import_and_help_do_not_load_torch_and_bm25_search_loads_no_model(index_dir):
    assert _modules_after("import ragloop") == set()
    assert _modules_after("import ragloop.cli, ragloop.config, ragloop.evaluation, ragloop.retrieval") == set()
    help_ = ("import runpy, sys\nsys.argv = ['ragloop', '--help']\n"
             "try:\n    runpy.run_module('ragloop', run_name='__main__')")
    assert _modules_after(help_ + "\nexcept SystemExit:\n    pass") == set()  # python -m ragloop --help
    for command in ("train", "train-retriever", "train-reranker"):  # a bad value is refused before torch loads
        bad = f"from ragloop.cli import main\nassert main([{command!r}, '--batch_size', '0']) == 2"
        assert _modules_after(bad) == set()
    search = f"from ragloop.cli import main\nmain(['search', {str(index_dir)!r}, 'Warsaw', '--mode', 'bm25'])"
    assert not _modules_after(search) & {"torch", "transformers"}
    # the public names still import, each loading what it needs when first used
    assert _modules_after("from ragloop import Retriever, RagloopError, load_qa") <= {"faiss"}
    assert _modules_after("from ragloop import RAG, BiEncoder, Index\nimport ragloop\nassert 'RAG' in dir(ragloop)") \
        >= {"torch", "transformers"}


# -- a small folder: three documents and an empty file -------------------------------------------------


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    docs = tmp_path_factory.mktemp("small") / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "bm25.md").write_text("# BM25\n\nBM25 was developed by Stephen Robertson and Karen Sparck Jones.")
    (docs / "faiss.md").write_text("# FAISS\n\nFAISS is a library for similarity search of dense vectors.")
    (docs / "sub" / "t5.txt").write_text("T5 is a text to text transformer.")
    (docs / "empty.txt").write_text("")
    return docs


@pytest.fixture(scope="module")
def small_index(small_folder, tiny_bert_dir) -> tuple[Path, subprocess.CompletedProcess]:
    """`ragloop index` run as a user runs it (a fresh process, default verbosity): the index and the run."""
    out = small_folder.parent / "idx"
    proc = _run("index", str(small_folder), "--out", str(out), "--encoder", str(tiny_bert_dir))
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_indexing_says_each_thing_once_in_ragloop_words(small_index, small_folder):
    out, proc = small_index
    assert proc.stdout.splitlines() == [f"indexed 3 passages -> {out} (Flat, dim 32)"]
    err = proc.stderr.splitlines()
    assert "DEBUG" not in proc.stderr and "bm25s" not in proc.stderr  # a library's debug line stays out
    assert not any("passages ->" in line for line in err)  # the closing line is the CLI's, once
    corpus = [line for line in err if line.startswith("INFO ragloop.data.corpus:")]
    assert corpus == [f"INFO ragloop.data.corpus: corpus: 3 passages from 3 documents (1 empty document skipped: "
                      f"{small_folder / 'empty.txt'})"]


def test_verbose_shows_library_debug_logs(small_folder, tiny_bert_dir, tmp_path):
    proc = _run("index", str(small_folder), "--out", str(tmp_path / "idx"), "--encoder", str(tiny_bert_dir), "-v")
    assert proc.returncode == 0, proc.stderr
    assert "DEBUG bm25s: Building index from tokens" in proc.stderr
    assert sum("corpus: 3 passages" in line for line in proc.stderr.splitlines()) == 1  # -v: no line twice


def test_one_passage_is_singular(tmp_path, tiny_bert_dir, capsys):
    (tmp_path / "one.md").write_text("# One\n\nA single short document.")
    assert main(["index", str(tmp_path / "one.md"), "--out", str(tmp_path / "idx"), "--encoder", str(tiny_bert_dir),
                 "-q"]) == 0
    assert capsys.readouterr().out.startswith(f"indexed 1 passage -> {tmp_path / 'idx'} (")


def test_default_k_searches_a_small_index_and_an_explicit_larger_k_is_refused(small_index, capsys):
    out, _ = small_index
    capsys.readouterr()
    assert main(["search", str(out), "who developed BM25?", "--mode", "bm25", "--json"]) == 0
    got = capsys.readouterr()
    assert json.loads(got.out)["hits"][0]["title"] == "BM25"
    assert "holds 3 passages, fewer than the default k=5: returning all of them" in got.err  # said, not an error
    assert main(["search", str(out), "who developed BM25?", "--json"]) == 0  # dense: all three
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 3
    assert main(["search", str(out), "who developed BM25?", "-k", "4", "--mode", "bm25"]) == 2
    assert capsys.readouterr().err.strip() == f"ragloop: error: k=4 but {out} holds 3 passages"


def test_sources_are_relative_to_the_indexed_folder(small_index, small_folder, capsys):
    out, _ = small_index
    capsys.readouterr()
    assert main(["search", str(out), "transformer text", "--json", "-q"]) == 0
    sources = {h["title"]: h["source"] for h in json.loads(capsys.readouterr().out)["hits"]}
    assert sources == {"BM25": "docs/bm25.md", "FAISS": "docs/faiss.md", "t5": "docs/sub/t5.txt"}
    assert not any(str(small_folder.parent) in s for s in sources.values())


def test_bundled_data_is_named_on_the_command_line(tmp_path, tiny_bert_dir, capsys):
    name = "bundled:squad-v1.1-train.first12articles.json"
    assert main(["index", name, "--out", str(tmp_path / "idx"), "--encoder", str(tiny_bert_dir), "-q",
                 "--no-bm25"]) == 0
    assert capsys.readouterr().out.startswith("indexed ")
    assert main(["search", str(tmp_path / "idx"), "Notre Dame", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["source"] == name
    assert main(["eval-retrieval", str(tmp_path / "idx"), "--data", name, "--limit", "5", "-k", "1", "--json",
                 "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["questions"] == 5
    for bad, words in ((f"bundled:../{Path(ragloop.__file__).name}", "named by its file name alone"),
                       ("bundled:nope.json", "no such file 'bundled:nope.json'")):
        assert main(["index", bad, "--out", str(tmp_path / "o"), "--encoder", str(tiny_bert_dir)]) == 2
        assert words in capsys.readouterr().err
    assert main(["index", "bundled:squad-v1.1-dev.articles-00-31.json", "--out", str(tmp_path / "o"),
                 "--encoder", "bundled:nope"]) == 2
    assert "no bundled model 'bundled:nope'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# -- help -------------------------------------------------------------------------------------------


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_the_summary_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    summary = " ".join(capsys.readouterr().out.split())
    assert "answer, serve, demo." in summary
    assert all(name in summary for name in _commands())


@pytest.mark.parametrize("command", list(_commands()))
def test_every_argument_has_help_and_one_default(command, capsys):
    parser = _commands()[command]
    assert [a.dest for a in parser._actions if not a.help] == []
    with pytest.raises(SystemExit):
        main([command, "--help"])
    entries = _help_entries(capsys.readouterr().out)
    # a default added after a help that already says its own ("(default max(k, 20)) (default: None)")
    twice = {name: text for name, text in entries.items()
             if "(default: None)" in text or re.search(r"default.*\(default: [^()]*\)$", text)}
    assert twice == {}


def test_train_rerank_depth_says_its_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    entry = _help_entries(capsys.readouterr().out)["--rerank_depth"]
    assert "(default max(k, 20))" in entry and "None" not in entry


@pytest.mark.parametrize("command", ["train", "train-retriever"])  # train-reranker has no true/false flag
def test_a_mistyped_boolean_value_is_refused(command, capsys):
    flag = next(a.option_strings[0] for a in _commands()[command]._actions if a.type is not None
                and getattr(a.type, "__name__", "") == "_parse_bool")
    with pytest.raises(SystemExit) as e:
        main([command, flag, "treu"])
    assert e.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err
    parser = _commands()[command]
    for text, value in (("yes", True), ("off", False), ("FALSE", False), ("1", True)):
        assert getattr(parser.parse_args([flag, text]), parser._option_string_actions[flag].dest) is value
