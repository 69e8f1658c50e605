"""The page at `/` in a real browser: headless Chromium opens `/?q=...`, the page posts the question
to /answer, and the answer and its sources appear in the DOM. Skipped without Chromium."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from urllib.parse import urlencode

import pytest
import torch

from ragloop.model import RAG
from ragloop.serving import BackgroundServer, create_app

pytestmark = pytest.mark.browser

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)
if CHROMIUM is None:
    pytest.skip("no Chromium on PATH (apt-get install chromium) to drive the page", allow_module_level=True)


@pytest.fixture(scope="module")
def model(tiny_rag_dir) -> RAG:
    """The shared saved RAG folder (conftest.py: tiny BERT retriever over squad_small, tiny T5, k=2), loaded."""
    torch.set_num_threads(1)
    return RAG.from_pretrained(tiny_rag_dir)


def dump_dom(url: str, profile) -> str:
    """The DOM after the page's scripts (and the fetch they start) have run."""
    cmd = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def element_text(dom: str, element_id: str) -> str:
    match = re.search(rf'<(\w+)[^>]*\bid="{element_id}"[^>]*>(.*?)</\1>', dom, flags=re.S)
    assert match, f"no #{element_id} in the page"
    return html.unescape(re.sub(r"<[^>]+>", "", match.group(2)))


def test_asking_on_the_page_shows_the_answer_and_its_sources(server, model, tmp_path):
    question = "Where did Super Bowl 50 take place?"
    dom = dump_dom(f"{server.url}/?{urlencode({'q': question, 'k': 2})}", tmp_path / "profile")
    assert 'data-state="done"' in dom, element_text(dom, "status")
    expected = model.answer(question, k=2)
    assert element_text(dom, "answer") == expected.answer
    shown = re.findall(r'<li class="source" data-id="([^"]+)"', dom)
    assert shown == [html.escape(p["id"]) for p in expected.passages]
    assert html.escape(expected.passages[0]["title"]) in dom


def test_the_page_shows_where_a_passage_came_from_when_the_answer_says(model, monkeypatch, tmp_path):
    app = create_app(model, threads=1)
    service = app.state.service
    answer_batch = service._answer_batch

    def with_sources(questions, k):  # as an index that records each passage's file answers
        results = answer_batch(questions, k)
        for result in results:
            for p in result["passages"]:
                p["source"] = f"docs/{p['title']}.txt"
        return results

    monkeypatch.setattr(service.answers, "fn", with_sources)
    question = "Where did Super Bowl 50 take place?"
    with BackgroundServer(app) as s:
        dom = dump_dom(f"{s.url}/?{urlencode({'q': question, 'k': 2})}", tmp_path / "profile")
    assert 'data-state="done"' in dom, element_text(dom, "status")
    titles = [p["title"] for p in model.answer(question, k=2).passages]
    shown = re.findall(r'<li class="source" data-id="[^"]+" data-source="([^"]+)"', dom)
    assert shown == [html.escape(f"docs/{t}.txt") for t in titles]


def test_the_page_highlights_the_span_the_answer_copied_as_text(model, monkeypatch, tmp_path):
    """The span is marked where the server says, counted in code points as Python counts (the emoji
    before it is two UTF-16 units), and markup in a passage stays text."""
    app = create_app(model, threads=1)
    service = app.state.service
    answer_batch = service._answer_batch
    text = "<b>not bold</b> \U0001f3ad It was Jean-Luc God\u00e1rd, in <i>1960</i>."
    start = text.index("Jean-Luc")

    def with_a_copied_span(questions, k):  # as a generator with a copy head answers
        results = answer_batch(questions, k)
        for result in results:
            for i, p in enumerate(result["passages"]):
                p["text"] = text
                if i == 0:
                    p["copied"] = {"start": start, "end": start + 15, "text": text[start : start + 15]}
        return results

    monkeypatch.setattr(service.answers, "fn", with_a_copied_span)
    with BackgroundServer(app) as s:
        dom = dump_dom(f"{s.url}/?{urlencode({'q': 'Who made it?', 'k': 2})}", tmp_path / "profile")
    assert 'data-state="done"' in dom, element_text(dom, "status")
    texts = re.findall(r'<div class="text">(.*?)</div>', dom, flags=re.S)
    assert len(texts) == 2
    assert texts[0] == (html.escape("<b>not bold</b> \U0001f3ad It was ", quote=False)
                        + '<mark title="the answer was copied from here">Jean-Luc God\u00e1rd</mark>'
                        + html.escape(", in <i>1960</i>.", quote=False))
    assert texts[1] == html.escape(text, quote=False)  # no span: plain text, nothing marked


def test_the_page_says_when_the_server_needs_an_api_key(model, tmp_path):
    with BackgroundServer(create_app(model, threads=1, api_key="a-key-the-page-lacks")) as s:
        dom = dump_dom(f"{s.url}/?{urlencode({'q': 'Who won Super Bowl 50?'})}", tmp_path / "profile")
    assert 'data-state="error"' in dom
    assert "needs an API key" in element_text(dom, "status")


def test_the_page_shows_why_a_question_was_refused(server, tmp_path):
    dom = dump_dom(f"{server.url}/?{urlencode({'q': '   '})}", tmp_path / "profile")
    assert 'data-state="error"' in dom
    assert "question is empty" in element_text(dom, "status")
