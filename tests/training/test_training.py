"""Training: length-grouped batches, exact resume, checkpoints that fail loudly, train -> answer."""

import json
import sys
from dataclasses import replace

import pytest

from ragloop import RagloopError
from ragloop.config import TrainConfig
from ragloop.training import batching, evaluate_save, train
from ragloop.training import trainer as trainer_mod


def test_length_grouped_batches_cover_everything_deterministically():
    lengths = [(i * 37) % 101 for i in range(1000)]
    a = batching.length_grouped_batches(lengths, 8, seed=1, epoch=0, group_factor=10)
    assert a == batching.length_grouped_batches(lengths, 8, seed=1, epoch=0, group_factor=10)
    assert a != batching.length_grouped_batches(lengths, 8, seed=1, epoch=1, group_factor=10)
    assert sorted(i for b in a for i in b) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    assert spread < 15  # random batches of 8 would spread ~78 of the 0..100 range


@pytest.fixture
def cfg(tmp_path, squad_small, tiny_bert_dir, tiny_t5_dir):
    return TrainConfig(train_file=str(squad_small), validation_file=str(squad_small),
                       question_encoder=str(tiny_bert_dir), generator=str(tiny_t5_dir), n_docs=2, batch_size=4,
                       max_steps=4, eval_steps=2, logging_steps=1, warmup_steps=1, max_eval_examples=4,
                       learning_rate=1e-3, output_dir=str(tmp_path / "run"))


def test_nonsense_settings_are_one_clear_error():
    for bad in ({"batch_size": 0}, {"gradient_accumulation_steps": 0}, {"eval_steps": 0}, {"learning_rate": 0.0},
                {"learning_rate": float("nan")}, {"max_train_minutes": float("inf")}):
        with pytest.raises(RagloopError, match=next(iter(bad))):
            TrainConfig(**bad)


@pytest.mark.parametrize("args", [["train", "--learning_rate", "nan"], ["train-retriever", "--weight_decay", "inf"]])
def test_float_flags_refuse_nan_and_infinity(args, capsys):
    from ragloop.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and "must be a finite number" in capsys.readouterr().err


class Crash(Exception):
    pass


@pytest.mark.parametrize("mode", ["sequence", "fid", "span"])  # fid: with the retriever's distillation loss
def test_resume_continues_the_same_run_exactly(mode, cfg, tmp_path, monkeypatch, tiny_bert_dir):
    cfg = replace(cfg, rag_mode=mode, generator=str(tiny_bert_dir) if mode == "span" else cfg.generator)
    straight = train(replace(cfg, output_dir=str(tmp_path / "straight")), progress=False)
    assert straight.steps == 4 and len(straight.losses) == 4

    real_save = evaluate_save.save_checkpoint

    def save_then_crash(path, *args, **kwargs):
        real_save(path, *args, **kwargs)
        raise Crash("killed after the step-2 checkpoint")

    monkeypatch.setattr(evaluate_save, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        train(cfg, progress=False)
    monkeypatch.setattr(evaluate_save, "save_checkpoint", real_save)
    resumed = train(replace(cfg, resume=True), progress=False)
    assert resumed.steps == 4
    assert resumed.losses == pytest.approx(straight.losses[2:], rel=1e-5)
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4]  # one run's log, no duplicates
    assert [r["loss"] for r in logged if "loss" in r] == pytest.approx(straight.losses, rel=1e-4)
    train(replace(cfg, max_steps=1), progress=False)  # a fresh run in the same folder: a fresh log
    assert [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 1]


def test_corrupt_checkpoint_and_changed_settings_are_refused(cfg):
    train(replace(cfg, max_steps=2), progress=False)
    with pytest.raises(RagloopError, match="differ from the run's.*n_docs"):
        train(replace(cfg, resume=True, n_docs=3), progress=False)
    weights = trainer_mod.Path(cfg.output_dir) / "last" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(RagloopError, match=r"model\.safetensors: does not match the checksum"):
        train(replace(cfg, resume=True), progress=False)


@pytest.mark.parametrize("mode", ["sequence", "span"])
def test_train_save_load_answer(cfg, mode, tiny_bert_dir):
    from ragloop.model import RAG

    cfg = replace(cfg, rag_mode=mode, generator=str(tiny_bert_dir) if mode == "span" else cfg.generator)
    result = train(cfg, progress=False)
    model = RAG.from_pretrained(result.best_dir)
    ans = model.answer("Which team won Super Bowl 50?", k=2)
    assert isinstance(ans.answer, str) and len(ans.passages) == 2
    assert set(ans.passages[0]) >= {"id", "title", "text", "score"}
    with pytest.raises(RagloopError):
        model.answer("   ")


def test_time_budget_ends_the_run_with_a_saved_model(cfg):
    result = train(replace(cfg, max_steps=50, max_train_minutes=1e-6), progress=False)
    assert result.steps == 1  # the budget is checked after every optimizer step
    assert (result.best_dir / "rag_config.json").is_file() and (result.last_dir / "trainer_state.json").is_file()


def test_gold_passage_steps_read_the_question_s_own_paragraph_first(cfg, monkeypatch):
    from ragloop.model import RAG

    seen = []
    forward = RAG.forward

    def spy(self, questions, answers, passages=None, doc_scores=None):
        seen.append(passages)
        return forward(self, questions, answers, passages, doc_scores)

    monkeypatch.setattr(RAG, "forward", spy)
    result = train(replace(cfg, gold_passage_steps=2, max_steps=3, eval_steps=100), progress=False)
    assert result.steps == 3
    training_calls = seen[1:]  # the first call is the start-up probe for parameters without gradient
    assert [p is not None for p in training_calls[:3]] == [True, True, False]  # 2 gold steps, then retrieval
    assert all(len(ps) == 1 and ps[0].text for ps in training_calls[0])


def test_gold_passage_steps_need_paragraphs():
    from ragloop.data.qa import QAExample

    with pytest.raises(RagloopError, match="paragraph"):
        trainer_mod.gold_passages([QAExample("q1", "who?", ["me"])])
    with pytest.raises(RagloopError, match="gold_passage_steps"):
        TrainConfig(gold_passage_steps=-1)


def test_logged_loss_is_the_mean_of_its_window_and_the_curves_are_drawn(cfg):
    result = train(replace(cfg, max_steps=4, logging_steps=2, eval_steps=100), progress=False)
    out = trainer_mod.Path(cfg.output_dir)
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in logged if "loss" in r]
    assert [r["step"] for r in losses] == [2, 4]
    means = [sum(result.losses[:2]) / 2, sum(result.losses[2:]) / 2]  # not the loss of steps 2 and 4 alone
    assert [r["loss"] for r in losses] == pytest.approx(means, abs=1e-5)
    assert trainer_mod.window_mean([4.0, 1.0, 2.0, 3.0], 3) == 2.0
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    png = out / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(png).shape[:2] == (350, 900)  # 9 x 3.5 inches at 100 dpi: loss and dev F1 side by side
    assert not [p.name for p in out.iterdir() if p.name.startswith(".metrics.png")]  # no temporary left


def test_plot_is_skipped_without_matplotlib(tmp_path, monkeypatch):
    from ragloop.training.plot import plot_metrics

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 2.0}\n{"step": 1, "dev_f1": 0.1}\n')
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    assert plot_metrics(metrics) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_a_failing_run_leaves_no_output_folder(cfg, tmp_path):
    out = tmp_path / "runs" / "rag"
    with pytest.raises(RagloopError, match="nope.json"):  # bad data: fails before anything is written
        train(replace(cfg, train_file=str(tmp_path / "nope.json"), output_dir=str(out)), progress=False)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(RagloopError, match="generator"):  # fails after the config and the index are written
        train(replace(cfg, generator=str(tmp_path / "no-such-generator"), output_dir=str(out)), progress=False)
    assert not (tmp_path / "runs").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(RagloopError):  # a folder the run did not create stays, as it was
        train(replace(cfg, generator=str(tmp_path / "no-such-generator"), output_dir=str(tmp_path / "mine")),
              progress=False)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
