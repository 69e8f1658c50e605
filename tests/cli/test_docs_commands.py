"""Every `ragloop ...` command quoted in README.md, docs/*.md and bench/README.md parses with today's
command line, so a renamed or removed flag cannot leave the documentation behind."""

import re
import shlex
from pathlib import Path

import pytest

from ragloop.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
COMMAND = re.compile(r"(?:^|\s)(?:-m ragloop|ragloop)\s(.*)$")
# Placeholders the pages use for values a reader fills in.
PLACEHOLDERS = {"$(openssl rand -hex 16)": "KEY", "$NODE_RANK": "0", "$MASTER": "host", "$I": "0"}


def quoted_commands(page: Path) -> list[tuple[int, str]]:
    """(line, arguments after `ragloop`) of each command in the page's code blocks, continuations joined."""
    found, in_block, pending = [], False, ""
    for number, line in enumerate(page.read_text(encoding="utf-8").split("\n"), 1):
        if line.startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        line = f"{pending} {line.strip()}" if pending else line
        pending = line.rstrip()[:-1] if line.rstrip().endswith("\\") else ""
        code = re.split(r"\s#\s|\s\s+#", line)[0]
        match = None if pending or "import" in code else COMMAND.search(code)
        if match:
            found.append((number, match.group(1)))
    return found


def as_argv(arguments: str) -> list[str]:
    for placeholder, value in PLACEHOLDERS.items():
        arguments = arguments.replace(placeholder, value)
    return [a for a in shlex.split(arguments) if a != "..."]


CASES = [(page, number, args) for page in PAGES if page.exists() for number, args in quoted_commands(page)]


def test_the_pages_quote_commands():
    assert {page.name for page, _, _ in CASES} >= {"README.md", "retrieval.md", "training.md", "serving.md"}


@pytest.mark.parametrize(("page", "number", "arguments"), CASES,
                         ids=[f"{p.relative_to(ROOT)}:{n}" for p, n, _ in CASES])
def test_quoted_command_parses(page, number, arguments):
    try:
        build_parser().parse_args(as_argv(arguments))
    except SystemExit as exc:
        pytest.fail(f"{page.relative_to(ROOT)}:{number}: `ragloop {arguments}` does not parse (exit {exc.code})")
