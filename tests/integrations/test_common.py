"""The adapters without their frameworks: `import ragloop` never imports LangChain or LlamaIndex, and an
adapter whose framework is missing is one RagloopError naming the extra that installs it."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ragloop
from ragloop import RagloopError
from ragloop.integrations.common import checked_retriever, hit_metadata
from ragloop.retrieval.retriever import Retriever


def test_importing_ragloop_imports_no_framework():
    frameworks = ("langchain_core", "llama_index")
    probe = ("import ragloop, ragloop.integrations, ragloop.retrieval, ragloop.cli\nimport sys\n"
             f"print(*(m for m in {frameworks!r} if m in sys.modules))")
    here = str(Path(ragloop.__file__).parents[1])  # this checkout's ragloop, whatever the working folder
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


@pytest.mark.parametrize(("adapter", "framework", "extra"), [
    ("ragloop.integrations.langchain", "langchain_core.retrievers", "pip install 'ragloop[langchain]'"),
    ("ragloop.integrations.llamaindex", "llama_index.core.retrievers", "pip install 'ragloop[llamaindex]'"),
])
def test_a_missing_framework_names_the_extra(monkeypatch, adapter, framework, extra):
    monkeypatch.setitem(sys.modules, framework, None)  # what an uninstalled package looks like to an import
    monkeypatch.delitem(sys.modules, adapter, raising=False)
    with pytest.raises(RagloopError) as err:
        importlib.import_module(adapter)
    assert extra in str(err.value) and framework in str(err.value)


def test_metadata_and_checks(index):
    retriever = Retriever(index, mode="bm25")
    hit = retriever.search("Which NFL team represented the AFC at Super Bowl 50?", k=1)[0][0]
    assert hit_metadata(hit) == {"score": hit.score, "id": hit.passage.id, "title": hit.passage.title,
                                 "source": hit.passage.source, "doc_id": hit.passage.doc_id, "row": hit.row}
    assert checked_retriever(retriever, 3) == (retriever, 3)
    with pytest.raises(RagloopError, match="k must be at least 1"):
        checked_retriever(retriever, 0)
    with pytest.raises(RagloopError, match="retriever must be a ragloop Retriever"):
        checked_retriever(index, 3)
