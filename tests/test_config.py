"""Configs: one validation mechanism (the Python API, the command line and recipe files say the same
thing about a bad value), TrainConfig holding a RAGConfig, and old flat run configs still loading."""

import json
from dataclasses import replace

import pytest

from ragloop import RagloopError, checks
from ragloop.config import RAGConfig, RerankerTrainConfig, RetrieverTrainConfig, TrainConfig
from ragloop.recipes import load_recipe, pinned_recipe

MESSAGE = "--n_docs must be at least 1 (got 0)"


def test_a_bad_value_gets_the_same_message_from_python_the_cli_and_a_recipe(tmp_path, capsys):
    from ragloop.cli import main

    with pytest.raises(RagloopError) as python:
        TrainConfig.from_dict({"n_docs": 0})
    assert str(python.value) == MESSAGE

    assert main(["train", "--n_docs", "0", "--output_dir", str(tmp_path / "run")]) != 0
    assert capsys.readouterr().err.strip() == f"ragloop: error: {MESSAGE}"
    assert not (tmp_path / "run").exists()

    raw = json.loads(pinned_recipe().read_text())
    raw["train"]["n_docs"] = 0  # its data are bundled: names, valid from any folder
    (tmp_path / "recipe.json").write_text(json.dumps(raw))
    with pytest.raises(RagloopError) as recipe:
        load_recipe(tmp_path / "recipe.json")
    assert str(recipe.value) == f"{tmp_path / 'recipe.json'}: train: {MESSAGE}"


def test_train_config_holds_a_rag_config():
    cfg = TrainConfig(rag=RAGConfig(n_docs=2, mode="fid"), max_steps=10)
    assert cfg == TrainConfig(n_docs=2, rag_mode="fid", max_steps=10)  # the same, by flag name
    assert cfg == TrainConfig.from_dict({"n_docs": 2, "rag_mode": "fid", "max_steps": 10})
    assert cfg.rag.mode == "fid" and cfg.rag_mode == "fid" and cfg.n_docs == 2  # flat names still read
    assert replace(cfg, n_docs=3, batch_size=2).rag == RAGConfig(n_docs=3, mode="fid")
    assert TrainConfig(rag=RAGConfig(n_docs=3), rag_mode="token").rag == RAGConfig(n_docs=3, mode="token")
    assert cfg.to_dict()["rag_mode"] == "fid" and "rag" not in cfg.to_dict()
    with pytest.raises(TypeError):
        replace(cfg, k=3)


def test_setting_a_rag_field_by_its_flag_name_sets_it_in_rag():
    cfg = TrainConfig(n_docs=2)
    cfg.n_docs = 3  # as on the flat config it used to be: the trainer and the saved config see it
    assert cfg.rag.n_docs == 3 and cfg.to_dict()["n_docs"] == 3
    with pytest.raises(RagloopError) as refused:
        cfg.rag_mode = "bogus"
    with pytest.raises(RagloopError) as built:
        TrainConfig(rag_mode="bogus")
    assert str(refused.value) == str(built.value) == "--rag_mode: 'bogus' is not one of sequence, token, fid, span"
    assert cfg.rag.mode == "sequence"  # a refused value changes nothing


def test_precision_auto_means_one_thing_for_every_trainer():
    from ragloop.training.optim import autocast_dtype

    # fp32 on any CPU (native bf16 or not), so a run's numbers do not depend on the CPU it met
    assert autocast_dtype("auto", "cpu") is None and autocast_dtype("fp32", "cpu") is None
    assert str(autocast_dtype("bf16", "cpu")) == "torch.bfloat16"
    with pytest.raises(RagloopError, match="fp16 needs a CUDA GPU"):
        autocast_dtype("fp16", "cpu")


def test_an_old_flat_run_config_still_loads(tmp_path):
    old = {**TrainConfig().to_dict(), "n_docs": 3, "rag_mode": "token", "search_mode": "bm25", "a_removed_flag": 1}
    (tmp_path / "train_config.json").write_text(json.dumps(old))
    cfg = TrainConfig.load(tmp_path / "train_config.json")
    assert (cfg.rag.n_docs, cfg.rag.mode, cfg.rag.search_mode) == (3, "token", "bm25")
    cfg.save(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == {k: v for k, v in old.items() if k != "a_removed_flag"}


def test_constrain_is_off_by_default_and_spans_by_flag():
    import argparse

    from ragloop.config import add_config_args, config_from_args

    parser = argparse.ArgumentParser()
    add_config_args(parser, TrainConfig)
    assert "{spans}" in parser.format_help()
    assert config_from_args(parser.parse_args([])).rag.constrain is None
    assert config_from_args(parser.parse_args(["--constrain", "spans"])).rag.constrain == "spans"
    assert config_from_args(parser.parse_args(["--constrain", "none"])).rag.constrain is None  # off again
    assert RAGConfig.from_dict(RAGConfig(constrain="spans").to_dict()) == RAGConfig(constrain="spans")
    assert RAGConfig.from_dict({"n_docs": 2}).constrain is None  # a config saved before the option


@pytest.mark.parametrize("make, message", [
    (lambda: RAGConfig(n_docs=0), "n_docs must be at least 1 (got 0)"),
    (lambda: RAGConfig(mode="both"), "unknown RAG mode 'both'; choose one of sequence, token, fid"),
    (lambda: TrainConfig(batch_size=True), "--batch_size: expected a whole number, got true"),
    (lambda: TrainConfig(learning_rate=float("nan")), "--learning_rate must be a finite number (got nan)"),
    (lambda: TrainConfig(rag_mode="x"), "--rag_mode: 'x' is not one of sequence, token, fid"),
    (lambda: TrainConfig(distill_temperature=-1.0), "--distill_temperature must be > 0 (got -1)"),
    (lambda: RAGConfig(constrain="words"), "constrain: 'words' is not one of spans"),
    (lambda: TrainConfig(constrain=1), "--constrain: 1 is not one of spans"),
    (lambda: RetrieverTrainConfig(train_file="t.json", hard_negatives=-1), "--hard_negatives must be at least 0"),
    (lambda: RetrieverTrainConfig(), "--train_file is required"),
    (lambda: RerankerTrainConfig(negatives=0), "--negatives must be at least 1 (got 0)"),
    (lambda: RerankerTrainConfig(head_lr=0.0), "--head_lr must be > 0 (got 0)"),
    (lambda: RerankerTrainConfig(precision="fp16"), "--precision: 'fp16' is not one of auto, bf16, fp32"),
])
def test_every_config_checks_its_values_one_way(make, message):
    with pytest.raises(checks.ConfigError) as e:
        make()
    assert message in str(e.value)


def test_checks():
    assert checks.whole(3, "k", low=1) == 3 and checks.whole(None, "k", optional=True) is None
    assert checks.number(1, "lr", above=0) == 1.0 and isinstance(checks.number(1, "lr"), float)
    with pytest.raises(checks.ConfigError, match="between 0 and 1"):
        checks.whole(2, "w", low=0, high=1)
    with pytest.raises(checks.ConfigError, match='expected a string, got 3') as e:
        checks.text(3, "name")
    assert e.value.kind == "type" and e.value.problem == "expected a string, got 3"
