"""`ragloop <command>`: index, search, eval-retrieval, train, train-retriever, train-reranker, rerank-fit, eval,
answer, serve, demo.

One module per command (`ragloop/cli/index.py` for `ragloop index` ...), each with `add_parser(sub,
common)` and `run(args)`; shared option groups and argparse types in `options.py`, printing helpers in
`output.py`. Library code logs; only this package prints. A `RagloopError` becomes one line on stderr
and exit 2.

    >>> from ragloop.cli import main
    >>> main(["search", "runs/idx", "who wrote hamlet?", "--mode", "bm25"])   # the exit status
    0
    >>> build_parser().parse_args(["index", "docs/", "--out", "runs/idx"]).func   # ragloop.cli.index.run
"""

from __future__ import annotations

import argparse
import sys

from ragloop.cli import (
    answer,
    demo,
    eval_answers,
    eval_retrieval,
    index,
    rerank_fit,
    search,
    serve,
    train,
    train_reranker,
    train_retriever,
)
from ragloop.cli.logs import configure_logging, quiet_libraries
from ragloop.cli.options import add_common_options
from ragloop.cli.output import format_table, snippet
from ragloop.errors import RagloopError

# in the order `ragloop --help` lists them
COMMANDS = (index, search, eval_retrieval, train, train_retriever, train_reranker, rerank_fit, eval_answers, answer,
            serve, demo)
_snippet = snippet  # its old name, kept for callers of ragloop.cli._snippet
__all__ = ["COMMANDS", "build_parser", "format_table", "main", "quiet_libraries", "run_guarded"]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; builds without importing torch, so `--help` answers at once."""
    from ragloop._version import __version__

    summary = " ".join(__doc__.split("\n\n")[0].split())  # the first paragraph, however it is wrapped
    parser = argparse.ArgumentParser(prog="ragloop", description=summary)
    parser.add_argument("--version", action="version", version=f"ragloop {__version__}")
    add_common_options(parser, default=False)
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub, common)
    return parser


def run_guarded(fn, *args) -> int:
    """Run a command: a RagloopError is one line on stderr and exit 2, never a traceback."""
    try:
        fn(*args)
    except RagloopError as e:
        print(f"ragloop: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # permissions, a full disk, a path that is a file: the OS said what and where
        print(f"ragloop: error: {e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ragloop: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose, quiet=args.quiet)  # the `ragloop` logger, not the root one
    quiet_libraries(verbose=args.verbose)
    return run_guarded(args.func, args)
