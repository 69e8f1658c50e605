"""/openapi.json tells the truth: schemathesis (the `schemathesis run` command, every check) sends what the
schema allows and what it does not to a live server, and every answer matches what the schema says:
documented status codes and bodies, schema-valid requests accepted, invalid ones refused, 405 for a
method no route has. It covers whatever routes the app has. Skipped without schemathesis."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ragloop.serving import BackgroundServer, create_app
from ragloop.serving.schemas import MAX_QUESTION_CHARS

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEMATHESIS = shutil.which("schemathesis") or shutil.which("st")
MAX_EXAMPLES = 15  # per operation and phase: the run stays well under a minute with the tiny model


needs_schemathesis = pytest.mark.skipif(SCHEMATHESIS is None, reason="no schemathesis (pip install schemathesis)")


def _schemathesis(url: str, cwd, *options: str) -> None:
    cmd = [SCHEMATHESIS, "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
           "--seed", "0", "--no-color", "--request-timeout", "30", "--generation-database", ":memory:", *options]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=cwd)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert "No issues found" in out or "passed" in out, out[-3000:]


@needs_schemathesis
def test_schemathesis_finds_no_disagreement_between_the_schema_and_the_server(server, tmp_path):
    _schemathesis(server.url, tmp_path)


@needs_schemathesis
def test_with_an_api_key_too(model, tmp_path):
    """The 401 is documented, and schemathesis's auth checks (a request without the key is refused) pass."""
    with BackgroundServer(create_app(model, threads=1, api_key="s3cret")) as keyed:
        _schemathesis(keyed.url, tmp_path, "--header", "Authorization: Bearer s3cret")


def test_the_schema_states_the_limits_the_server_holds_requests_to(server):
    import httpx

    schema = httpx.get(f"{server.url}/openapi.json").json()
    question = schema["components"]["schemas"]["AnswerRequest"]["properties"]["question"]
    assert question["minLength"] == 1 and question["maxLength"] == MAX_QUESTION_CHARS and question["pattern"]
    k = schema["components"]["schemas"]["SearchRequest"]["properties"]["k"]["anyOf"][0]
    assert k["maximum"] == 17  # the tiny index's size, under MAX_K
    for path in ("/answer", "/search"):
        assert {"413", "415", "422"} <= set(schema["paths"][path]["post"]["responses"])
    assert "415" not in schema["paths"]["/health"]["get"]["responses"]
    assert httpx.put(f"{server.url}/health").status_code == 405
    assert httpx.put(f"{server.url}/answer", json={"question": "Who?"}).status_code == 405
