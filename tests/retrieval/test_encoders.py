"""Encoder input shapes: one string is one vector (as in sentence-transformers), a list is a matrix."""

import re

import numpy as np
import pytest
import torch

from ragloop.errors import RagloopError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_one_string_gives_one_vector_a_list_one_row_each(encoder):
    one = encoder.question.encode("hello world", progress=False)
    many = encoder.question.encode(["hello world", "who wrote hamlet?"], progress=False)
    assert one.shape == (encoder.question.dim,) and many.shape == (2, encoder.question.dim)
    assert np.allclose(one, many[0], atol=1e-5)
    assert encoder.encode_questions("hello world").shape == (encoder.question.dim,)
    assert encoder.encode_questions(("hello world",)).shape == (1, encoder.question.dim)


def test_passage_side_one_title_and_text_give_one_vector(encoder):
    one = encoder.encode_passages("Hamlet", "a play by Shakespeare", progress=False)
    many = encoder.encode_passages(["Hamlet", "Faust"], ["a play by Shakespeare", "a play by Goethe"],
                                   progress=False)
    assert one.shape == (encoder.passage.dim,) and many.shape == (2, encoder.passage.dim)
    assert np.allclose(one, many[0], atol=1e-5)


def test_encode_with_grad_one_string_gives_one_vector(encoder):
    with torch.no_grad():
        one = encoder.question.encode_with_grad("hello world")
        many = encoder.question.encode_with_grad(["hello world", "another"])
    assert tuple(one.shape) == (encoder.question.dim,) and tuple(many.shape) == (2, encoder.question.dim)
    assert torch.allclose(one, many[0], atol=1e-5)


@pytest.mark.parametrize("bad, words", [
    (b"hello world", "texts must be a string or a list of strings (got bytes)"),
    (42, "texts must be a string or a list of strings (got int)"),
    ({"q": "hello"}, "got dict"),
    (["fine", b"bytes"], "texts[1] is not a string (got bytes)"),
])
def test_input_that_is_not_text_is_one_clear_error(encoder, bad, words):
    with pytest.raises(RagloopError, match=re.escape(words)):
        encoder.question.encode(bad, progress=False)
    with pytest.raises(RagloopError, match="not a string|must be a string"):
        encoder.question.encode_with_grad(bad)


def test_pairs_must_match_the_texts(encoder):
    with pytest.raises(RagloopError, match="2 texts but 1 pairs"):
        encoder.passage.encode(["a", "b"], ["x"], progress=False)
    with pytest.raises(RagloopError, match="one text .a string. takes one pair"):
        encoder.passage.encode("a", ["x", "y"], progress=False)


def test_an_unknown_bundled_model_is_named_not_looked_up():
    from ragloop import Encoder

    with pytest.raises(RagloopError, match="no bundled model 'bundled:nope': the package ships the encoder "
                                           "bundled:all-MiniLM-L6-v2"):
        Encoder.from_pretrained("bundled:nope")
