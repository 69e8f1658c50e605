"""The gold passage of a question: the chunk of its paragraph that holds its answer."""

from ragloop.data.qa import QAExample


def test_the_answer_passage_is_the_chunk_holding_the_answer_or_else_the_paragraph():
    context = " ".join(f"w{i}" for i in range(250)) + " Warsaw lies on the Vistula."
    ex = QAExample("q", "Which river?", ["the Vistula"], context=context, title="Poland", doc_id="p1")
    got = ex.answer_passage(chunk_words=100)
    assert "the Vistula" in got.text and got.text in context and got.text != context and got.doc_id == "p1"
    across = QAExample("q", "Which words?", ["w99 w100"], context=context, title="Poland", doc_id="p1")
    assert across.answer_passage(chunk_words=100).text == context  # no one chunk holds it: the paragraph


def test_squad_v2_unanswerable_questions_are_left_out_or_kept_without_answers(tmp_path):
    import json

    from ragloop.data.qa import load_qa

    qas = [{"id": "a", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 0}]},
           {"id": "u", "question": "Who?", "answers": [], "is_impossible": True,
            "plausible_answers": [{"text": "Paris", "answer_start": 0}]},
           {"id": "w", "question": "When?", "answers": [{"text": "Paris", "answer_start": 0}], "is_impossible": True}]
    path = tmp_path / "v2.json"
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "T", "paragraphs": [
        {"context": "Paris is big.", "qas": qas}]}]}))
    assert [ex.id for ex in load_qa(path)] == ["a"]
    kept = load_qa(path, keep_unanswerable=True)
    assert [(ex.id, ex.answers) for ex in kept] == [("a", ["Paris"]), ("u", []), ("w", [])]
