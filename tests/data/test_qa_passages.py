"""The gold passage of a question: the chunk of its paragraph that holds its answer."""

from ragloop.data.qa import QAExample


def test_the_answer_passage_is_the_chunk_holding_the_answer_or_else_the_paragraph():
    context = " ".join(f"w{i}" for i in range(250)) + " Warsaw lies on the Vistula."
    ex = QAExample("q", "Which river?", ["the Vistula"], context=context, title="Poland", doc_id="p1")
    got = ex.answer_passage(chunk_words=100)
    assert "the Vistula" in got.text and got.text in context and got.text != context and got.doc_id == "p1"
    across = QAExample("q", "Which words?", ["w99 w100"], context=context, title="Poland", doc_id="p1")
    assert across.answer_passage(chunk_words=100).text == context  # no one chunk holds it: the paragraph
