"""The reranker trainer's data: every training question once (SQuAD v1.1 + the new v2.0 answerable ones),
unanswerable questions as negatives only, the held-out articles, each negative source, both losses."""

import json
import math
from collections import Counter

import pytest
import torch

from ragloop import Encoder, load_qa
from ragloop.checks import ConfigError
from ragloop.config import RerankerTrainConfig
from ragloop.data.bundled import SQUAD_TRAIN, SQUAD_V2_TRAIN, bundled_path
from ragloop.evaluation import has_answer
from ragloop.retrieval.folder import bm25_text
from ragloop.training.negatives import TrainItem, build_items, split_evenly
from ragloop.training.reranker_data import article_titles, heldout_split, training_questions
from ragloop.training.reranker_losses import batch_pairs, bce_loss, listwise_loss

PARAGRAPHS = [
    ("Alpha", "The alpha river flows north through the green valley of Ardon for ninety miles."),
    ("Alpha", "The alpha bridge was built in 1820 by the engineer Tomas Brell of Ardon."),
    ("Beta", "Beta castle stands on a hill above the town of Corvin since the year 1105."),
    ("Gamma", "Gamma lake freezes every winter and skaters come from Delmar to race on it."),
]


def _squad(questions: list[tuple], version: str) -> dict:
    """A SQuAD file from (paragraph index, id, question, answer or None, is_impossible)."""
    by_title: dict = {}
    for i, (title, context) in enumerate(PARAGRAPHS):
        qas = [{"id": qid, "question": q, "is_impossible": bool(imp),
                "answers": [] if a is None else [{"text": a, "answer_start": context.find(a)}],
                **({"plausible_answers": [{"text": "Corvin", "answer_start": 0}]} if imp else {})}
               for p, qid, q, a, imp in questions if p == i]
        if qas:
            by_title.setdefault(title, []).append({"context": context, "qas": qas})
    return {"version": version, "data": [{"title": t, "paragraphs": ps} for t, ps in by_title.items()]}


@pytest.fixture
def v1_and_v2(tmp_path):
    """A folder with a v1.1 file and a v2.0 file that repeats two of its questions (one under another id)."""
    v1 = [(0, "a1", "Which way does the alpha river flow?", "north", 0),
          (1, "a2", "When was the alpha bridge built?", "1820", 0),
          (2, "b1", "Above which town does Beta castle stand?", "Corvin", 0)]
    v2 = [(0, "a1", "Which way does the alpha river flow?", "north", 0),  # the same id
          (1, "other-id", "When was the alpha bridge built?", "1820", 0),  # the same question and paragraph
          (3, "g1", "Where do the skaters come from?", "Delmar", 0),  # new
          (2, "b2", "Who built Beta castle's bridge?", None, 1)]  # unanswerable
    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "a-v1.json").write_text(json.dumps(_squad(v1, "1.1")))
    (folder / "b-v2.json").write_text(json.dumps(_squad(v2, "v2.0")))
    return folder


def test_v2_answerable_questions_are_added_once_and_unanswerable_ones_kept_apart(v1_and_v2):
    answerable, unanswerable = training_questions(str(v1_and_v2))
    assert [ex.id for ex in answerable] == ["a1", "a2", "b1", "g1"]
    assert [ex.id for ex in unanswerable] == ["b2"] and unanswerable[0].answers == []
    assert [ex.id for ex in training_questions(str(v1_and_v2), limit=2)[0]] == ["a1", "a2"]


def test_the_bundled_training_questions_are_v1_plus_the_new_v2_answerable_ones():
    answerable, unanswerable = training_questions(None)
    v1 = load_qa(str(bundled_path(SQUAD_TRAIN)))
    v2 = load_qa(str(bundled_path(SQUAD_V2_TRAIN)), keep_unanswerable=True)
    raw = json.loads(bundled_path(SQUAD_V2_TRAIN).read_text())
    impossible = {q["id"] for a in raw["data"] for p in a["paragraphs"] for q in p["qas"] if q["is_impossible"]}
    ids = Counter(ex.id for ex in answerable)
    assert max(ids.values()) == 1 and len({(ex.question, ex.context) for ex in answerable}) == len(answerable)
    pairs = {(ex.question, ex.context) for ex in answerable}
    assert {(ex.question, ex.context) for ex in v1} <= pairs  # every v1.1 question (14 were asked twice: once)
    new = {ex.id for ex in v2 if ex.answers} - {ex.id for ex in v1}
    assert len(new) == 731 and new <= set(ids)
    assert len(answerable) == len({(ex.question, ex.context) for ex in v1}) + 731 == 5087
    assert {ex.id for ex in unanswerable} <= impossible and len(unanswerable) == 347
    assert not impossible & set(ids)  # an unanswerable question is never an answerable one
    assert {"To Kill a Mockingbird", "Solar energy"} <= set(article_titles(answerable))


def test_unanswerable_questions_are_never_positives_and_always_negatives(v1_and_v2):
    answerable, unanswerable = training_questions(str(v1_and_v2))
    passages, items = build_items(answerable, hard_negatives=1, unanswerable=unanswerable)
    asked = [it for it in items if it.question == unanswerable[0].question]
    assert len(asked) == 1 and asked[0].positive is None
    assert [passages[r].doc_id for r in asked[0].negatives] == [unanswerable[0].doc_id]  # its own paragraph
    assert all(it.positive is not None for it in items if it is not asked[0])
    with pytest.raises(ValueError, match="never be a positive"):
        build_items(answerable + unanswerable)


def test_the_heldout_split_is_whole_articles_and_deterministic(squad_small):
    answerable, unanswerable = training_questions(str(squad_small))
    split = heldout_split(answerable, unanswerable, every=2, seed=3)
    again = heldout_split(answerable, unanswerable, every=2, seed=3)
    assert [ex.id for ex in split.heldout] == [ex.id for ex in again.heldout] and split.heldout_titles
    assert set(split.heldout_titles).isdisjoint(split.train_titles)
    assert sorted(split.heldout_titles + split.train_titles) == sorted(article_titles(answerable))
    assert {ex.title for ex in split.heldout} == set(split.heldout_titles)
    assert {ex.title for ex in split.train} == set(split.train_titles)
    assert len(split.train) + len(split.heldout) == len(answerable)
    assert {tuple(heldout_split(answerable, [], 2, seed).heldout_titles) for seed in range(8)} != {
        tuple(split.heldout_titles)}  # the seed chooses
    assert heldout_split(answerable, unanswerable, 0, 3).heldout == []
    one = [ex for ex in answerable if ex.title == answerable[0].title]
    assert heldout_split(one, [], 7, 3).train == one  # one article: nothing to hold out


def test_split_evenly():
    assert split_evenly(3, ["bm25", "dense"]) == {"bm25": 2, "dense": 1}
    assert split_evenly(7, ["hybrid", "random"]) == {"hybrid": 4, "random": 3}
    assert split_evenly(8, ["bm25", "dense", "random"]) == {"bm25": 3, "dense": 3, "random": 2}


def assert_negatives_hold_no_answer(examples, passages, items, per_question: int) -> None:
    """Each question's negatives: distinct, from other paragraphs, without an answer string; at most
    `per_question`, and that many for at least 90% of the questions."""
    answers = {ex.question: ex.answers for ex in examples}
    for it in items:
        assert len(set(it.negatives)) == len(it.negatives) <= per_question
        for r in it.negatives:
            assert passages[r].doc_id != it.doc_id
            assert not has_answer(answers[it.question], bm25_text(passages[r]))
    assert sum(len(it.negatives) == per_question for it in items) >= 0.9 * len(items)


@pytest.mark.parametrize("source", ["bm25", "dense", "hybrid", "random"])
def test_each_negative_source_gives_negatives_without_an_answer(source, squad_small, tiny_bert_dir):
    examples = load_qa(squad_small)
    encoder = Encoder.from_pretrained(str(tiny_bert_dir)) if source in ("dense", "hybrid") else None
    passages, items = build_items(examples, sources={source: 2}, dense_encoder=encoder, seed=1)
    assert_negatives_hold_no_answer(examples, passages, items, 2)


def test_bm25_and_dense_negatives_are_never_gold_nor_hold_the_answer(squad_small, tiny_bert_dir):
    """The older arguments (hard_negatives, dense_negatives) give the same guarantees."""
    examples = load_qa(squad_small)
    passages, items = build_items(examples, hard_negatives=2, dense_negatives=2,
                                  dense_encoder=Encoder.from_pretrained(str(tiny_bert_dir)))
    assert_negatives_hold_no_answer(examples, passages, items, 4)


def test_a_mix_of_sources_shares_the_negatives(squad_small):
    passages, items = build_items(load_qa(squad_small), sources={"bm25": 2, "random": 1}, seed=0)
    bm25_only = build_items(load_qa(squad_small), sources={"bm25": 2})[1]
    assert all(a.negatives[:2] == b.negatives for a, b in zip(items, bm25_only) if len(b.negatives) == 2)
    assert sum(len(it.negatives) == 3 for it in items) >= 0.9 * len(items)


def _toy_batch():
    return [TrainItem("q1", "d1", 0, [1, 2]), TrainItem("q2", "d2", 3, [4]), TrainItem("u", "d3", None, [5])]


def test_listwise_loss_by_hand():
    flat = torch.tensor([2.0, 1.0, 0.0, 0.5, -1.0, 0.3])  # q1: pos, neg, neg | q2: pos, neg | unanswerable
    assert batch_pairs(_toy_batch()) == [("q1", 0), ("q1", 1), ("q1", 2), ("q2", 3), ("q2", 4), ("u", 5)]
    q1 = -math.log(math.exp(2) / (math.exp(2) + math.exp(1) + math.exp(0) + math.exp(0.3)))
    q2 = -math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(-1) + math.exp(0.3)))  # padding adds nothing
    assert listwise_loss(flat, _toy_batch()).item() == pytest.approx((q1 + q2) / 2, abs=1e-6)
    only = torch.tensor([0.7], requires_grad=True)
    loss = listwise_loss(only, [TrainItem("u", "d", None, [0])])
    loss.backward()
    assert loss.item() == 0.0 and only.grad.tolist() == [0.0]


def test_bce_loss_by_hand():
    flat = torch.tensor([2.0, 1.0, 0.0, 0.5, -1.0, 0.3])
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731  -log(sigmoid(-x)), the loss of a label 0
    pairs = [3 * softplus(-2.0), softplus(1.0), softplus(0.0), 3 * softplus(-0.5), softplus(-1.0), softplus(0.3)]
    assert bce_loss(flat, _toy_batch(), pos_weight=3.0).item() == pytest.approx(sum(pairs) / 6, abs=1e-6)


@pytest.mark.parametrize("values, message", [
    (dict(loss="hinge"), "unknown loss 'hinge'; choose one of listwise, bce"),
    (dict(negative_sources="bm25,tfidf"), "--negative_sources: 'bm25,tfidf': unknown 'tfidf'"),
    (dict(negative_sources="bm25,bm25"), "--negative_sources: 'bm25,bm25': a source named twice"),
    (dict(negative_sources=","), "--negative_sources: ',': none given"),
    (dict(negative_sources="hybrid", dense_encoder="none"), "--negative_sources hybrid needs a --dense_encoder"),
    (dict(negatives=2, negative_sources="bm25,dense,random"), "--negatives (2) is fewer than the --negative_sources"),
    (dict(heldout_every=1), "--heldout_every must be 0 (no held-out split) or at least 2"),
    (dict(eval_steps=0), "--eval_steps must be at least 1"),
])
def test_bad_recipe_options_are_one_error_naming_the_option(values, message):
    with pytest.raises(ConfigError) as e:
        RerankerTrainConfig(**values)
    assert message in str(e.value)


def test_default_negative_sources():
    assert RerankerTrainConfig().sources() == ["bm25", "dense"]
    assert RerankerTrainConfig(dense_encoder="none").sources() == ["bm25"]
    assert RerankerTrainConfig(negatives=1).sources() == ["bm25"]
    assert RerankerTrainConfig(negative_sources=" hybrid , random").sources() == ["hybrid", "random"]
