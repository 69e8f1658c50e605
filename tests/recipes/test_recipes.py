"""Recipes as data: the pinned demo recipe, recipe-file validation, the demo's split and its pipeline
steps that need no model, and `ragloop demo --recipe` on the command line."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import replace
from pathlib import Path

import pytest

from ragloop.cli import build_parser, main
from ragloop.data import load_qa
from ragloop.data.qa import QAExample
from ragloop.errors import RagloopError
from ragloop.recipes import demo, load_recipe, pinned_recipe

ROOT = Path(__file__).resolve().parents[2]


def test_the_pinned_demo_recipe_trains_a_fixed_number_of_steps_in_fp32():
    recipe = load_recipe()
    assert recipe.path == pinned_recipe()
    assert recipe.steps == recipe.train["max_steps"] > 0
    assert recipe.train["precision"] == "fp32" and recipe.train["rag_mode"] == "span"
    assert recipe.train_data.is_file() and recipe.dev_data.is_file() and recipe.holdout_every == 5
    cfg = demo.train_config(recipe, "t.jsonl", "idx", "out")
    assert (cfg.max_steps, cfg.max_train_minutes, cfg.n_docs, cfg.batch_size) == (recipe.steps, None, 5, 16)
    assert (cfg.train_file, cfg.index, cfg.output_dir) == ("t.jsonl", "idx", "out")
    assert demo.train_config(recipe, "t.jsonl", "idx", "out", steps=7).max_steps == 7


def test_the_package_ships_the_recipe_files():
    """pyproject's package data covers every recipe file in the source tree (a wheel would carry it)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ragloop"]
    shipped = sorted(p.relative_to(ROOT / "src" / "ragloop").as_posix()
                     for p in (ROOT / "src" / "ragloop" / "recipes").glob("*.json"))
    assert "recipes/demo.json" in shipped
    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in shipped)


def _write(tmp_path: Path, edit) -> Path:
    """The pinned recipe, changed by `edit(dict)`, as tmp_path/recipe.json."""
    raw = json.loads(pinned_recipe().read_text())
    edit(raw)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(raw))
    return path


def _set(section: str, key: str, value):
    def edit(raw):
        raw[section][key] = value
    return edit


def _drop(section: str, key: str):
    def edit(raw):
        del raw[section][key]
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw.update(extra=1), "unknown key 'extra'"),
    (_set("train", "lr", 1e-4), "unknown key 'train.lr'"),
    (_set("data", "holdout", 5), "unknown key 'data.holdout'"),
    (_set("evaluate", "beams", 4), "unknown key 'evaluate.beams'"),
    (_set("train", "n_docs", "two"), 'train.n_docs: expected a whole number, got "two"'),
    (_set("train", "n_docs", 2.5), "train.n_docs: expected a whole number, got 2.5"),
    (_set("train", "learning_rate", True), "train.learning_rate: expected a number, got true"),
    (_set("train", "question_encoder_lr", "1e-5"), "train.question_encoder_lr: expected a number or null"),
    (_set("train", "generator", 3), "train.generator: expected a string or null, got 3"),
    (_set("train", "max_steps", None), "train.max_steps is required"),
    (_drop("train", "max_steps"), "train.max_steps is required"),
    (_set("train", "max_train_minutes", 15), "train.max_train_minutes: set by the pipeline"),
    (_set("train", "output_dir", "x"), "train.output_dir: set by the pipeline"),
    (_set("train", "rag_mode", "nope"), "train.rag_mode: 'nope' is not one of sequence"),
    (_set("train", "precision", "fp8"), "train.precision: 'fp8' is not one of"),
    (_set("train", "n_docs", 0), "train: --n_docs must be at least 1"),
    (_set("data", "train", "missing.json"), "data.train: no such file 'missing.json'"),
    (_set("data", "dev", "bundled:nope.json"), "data.dev: no such file 'bundled:nope.json'"),
    (_set("data", "holdout_every", 1), "data.holdout_every: must be at least 2"),
    (_drop("data", "holdout_every"), "missing key 'data.holdout_every'"),
    (_set("evaluate", "questions", 0), "evaluate.questions: must be at least 1"),
    (_set("evaluate", "retrieval_k", [1, 0]), "evaluate.retrieval_k: expected a list of whole numbers"),
    (lambda raw: raw.pop("train"), "missing section 'train'"),
    (lambda raw: raw.update(notes="one string"), "notes: expected a list of strings"),
])
def test_a_bad_recipe_is_one_error_naming_the_file_and_the_key(tmp_path, edit, message):
    path = _write(tmp_path, edit)
    with pytest.raises(RagloopError) as e:
        load_recipe(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_a_missing_or_unreadable_recipe_file_is_named(tmp_path):
    with pytest.raises(RagloopError, match=f"{tmp_path / 'nope.json'}: no such recipe file"):
        load_recipe(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "train": {\n    "n_docs": 2,,\n')
    with pytest.raises(RagloopError, match=f"{bad}:3: not valid JSON"):
        load_recipe(bad)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(RagloopError, match="the file: expected an object"):
        load_recipe(tmp_path / "list.json")


def test_data_paths_are_relative_to_the_recipe_file(tmp_path, squad_small):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "qa.json").write_text(squad_small.read_text())

    def edit(raw):
        raw["data"].update(train="data/qa.json", dev=str(squad_small))
    recipe = load_recipe(_write(tmp_path, edit))
    assert recipe.train_data == tmp_path / "data" / "qa.json" and recipe.dev_data == squad_small


def test_with_train_changes_are_checked_like_a_file():
    recipe = load_recipe()
    token = recipe.with_train(rag_mode="token", n_docs=5, question_encoder_lr=0)
    assert (token.train["rag_mode"], token.train["n_docs"], token.steps) == ("token", 5, recipe.steps)
    assert recipe.train["rag_mode"] == "span"  # the original is unchanged
    with pytest.raises(RagloopError, match="train.n_docs: expected a whole number"):
        recipe.with_train(n_docs="5")
    with pytest.raises(RagloopError, match="unknown key 'train.k'"):
        recipe.with_train(k=5)


def _qa(title: str, i: int) -> QAExample:
    return QAExample(f"{title}-{i}", f"question {i} about {title}?", [f"answer {i}"], title, f"{title} text {i}")


def test_split_holds_out_every_nth_question_of_each_article():
    # two articles interleaved: the count runs per article, not over the file
    examples = [_qa(t, i) for i in range(7) for t in ("A", "B")] + [_qa("C", i) for i in range(3)]
    train, held = demo.split_heldout(examples, 3)
    assert [e.id for e in held] == ["A-2", "B-2", "A-5", "B-5", "C-2"]
    assert sorted(e.id for e in train + held) == sorted(e.id for e in examples)
    assert [e.id for e in train][:4] == ["A-0", "B-0", "A-1", "B-1"]  # order kept
    with pytest.raises(RagloopError, match="holdout_every must be at least 2"):
        demo.split_heldout(examples, 1)


def test_the_demo_data_split_and_its_files(tmp_path):
    recipe = load_recipe()
    data = demo.load_data(recipe)
    assert len(data.train) + len(data.heldout) == len(data.train_articles)
    assert {e.title for e in data.heldout} <= {e.title for e in data.train}  # held out of trained articles
    assert not {e.title for e in data.dev} & {e.title for e in data.train}  # dev articles never trained on
    files = demo.write_data(data, tmp_path / "data")
    back = load_qa(files.heldout)
    assert [(e.id, e.question, e.answers, e.title, e.context) for e in back] == \
        [(e.id, e.question, e.answers, e.title, e.context) for e in data.heldout]
    (held_name, held), (new_name, new) = demo.eval_sets(data, 10)
    assert (held_name, new_name) == (demo.HELD_OUT, demo.NEW_ARTICLES) and len(held) == len(new) == 10
    assert {e.id for e in held} <= {e.id for e in data.heldout}


def test_a_finished_run_is_reused_only_with_the_same_config(tmp_path):
    cfg = demo.train_config(load_recipe(), tmp_path / "t.jsonl", tmp_path / "idx", tmp_path / "rag", steps=4)
    out = tmp_path / "rag"
    assert demo.trained_earlier(cfg) is None  # nothing there
    (out / "best_model").mkdir(parents=True)
    (out / "best_model" / "rag_config.json").write_text("{}")
    cfg.save(out / "train_config.json")
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"step": 2, "loss": 3.0, "elapsed_s": 5.0}, {"step": 4, "loss": 2.0, "elapsed_s": 9.5},
        {"step": 4, "dev_f1": 0.1})))
    run = demo.trained_earlier(cfg)
    assert (run.steps, run.seconds, run.best_dir) == (4, 9.5, out / "best_model")
    assert demo.trained_earlier(replace(cfg, n_docs=3)) is None  # other settings: trained again
    assert demo.trained_earlier(replace(cfg, max_steps=8)) is None
    (out / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 3.0, "elapsed_s": 5.0}) + "\n")
    assert demo.trained_earlier(cfg) is None  # interrupted before its last step


def test_demo_arguments():
    args = build_parser().parse_args(["demo"])
    assert (args.recipe, args.steps, args.questions, args.out) == (None, None, None, "runs/demo")
    args = build_parser().parse_args(["demo", "--recipe", "r.json", "--steps", "3", "--questions", "5"])
    assert (args.recipe, args.steps, args.questions) == ("r.json", 3, 5)


@pytest.mark.parametrize("argv, message", [
    (["demo", "--minutes", "15"], "unrecognized arguments: --minutes"),  # a fixed step count, no time budget
    (["demo", "--recipe"], "argument --recipe: expected one argument"),
])
def test_bad_demo_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_demo_with_a_bad_recipe_stops_before_writing_anything(tmp_path, capsys):
    bad = _write(tmp_path, _set("train", "batch", 8))
    capsys.readouterr()
    assert main(["demo", "--recipe", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}: unknown key 'train.batch'" in err[0]
    assert main(["demo", "--recipe", str(tmp_path / "none.json"), "--out", str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'none.json'}: no such recipe file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
