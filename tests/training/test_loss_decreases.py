"""A few optimisation steps of a tiny RAG model on a few fixed examples lower its loss, in every reader
mode: the loss, its gradient and the parameters the model hands an optimizer fit together end to end.

Only the public model API (`RAG.from_index`, `model(questions, answers).loss`, `model.parameters()`), so
it holds whatever the trainer does around it."""

from __future__ import annotations

import pytest
import torch

from ragloop.model import RAG, RAGConfig

QUESTIONS = ["Which NFL team represented the AFC at Super Bowl 50?", "Where did Super Bowl 50 take place?",
             "What is the capital of Poland?", "Which river flows through Warsaw?"]
ANSWERS = ["Denver Broncos", "Levi's Stadium", "Warsaw", "the Vistula"]
STEPS, WINDOW = 25, 5

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("mode", ["sequence", "token", "fid", "span"])
def test_a_few_steps_lower_the_loss(index, tiny_t5_dir, tiny_bert_dir, mode):
    from ragloop.generation.extractive import SpanReader

    torch.manual_seed(0)  # the generator's dropout draws from it: the same run every time
    reader = SpanReader.from_pretrained(tiny_bert_dir) if mode == "span" else tiny_t5_dir
    # the span reader learns only from passages that hold the answer: it reads all 17, the others 2
    k = len(index) if mode == "span" else 2
    model = RAG.from_index(index, generator=reader, config=RAGConfig(n_docs=k, mode=mode)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(STEPS):
        loss = model(QUESTIONS, ANSWERS).loss  # retrieval (with the question encoder's gradient) + reader
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    first, last = sum(losses[:WINDOW]) / WINDOW, sum(losses[-WINDOW:]) / WINDOW
    # measured: about 32.6 -> 21.5 (sequence, token) and 33.4 -> 22.5 (fid); 0.8 leaves a wide margin
    assert last < 0.8 * first, losses
