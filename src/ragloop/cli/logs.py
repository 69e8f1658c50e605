"""What the command line shows of logging: ragloop's own records, and third-party chatter kept out.

    >>> configure_logging(verbose=False, quiet=False)   # INFO and up from `ragloop.*`, on stderr
    >>> quiet_libraries()                               # transformers, bm25s, datasets ... below WARNING: hidden

The CLI configures the `ragloop` logger, never the root one: a library that logs at INFO or DEBUG (bm25s
logs "Building index from tokens" on a logger it sets to DEBUG when imported) then has no handler to reach
unless -v asks for debug logs, when the handler sits on the root logger and every library's records show.
The handler writes to the `sys.stderr` of the moment, so a `main()` called in-process (tests, notebooks)
writes where stderr is now, not where it was at the first call.
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(levelname)s %(name)s: %(message)s"
# libraries whose records below WARNING (ERROR for most: their warnings are about themselves) stay out unless -v
THIRD_PARTY = ("bm25s", "datasets", "faiss", "huggingface_hub", "accelerate")


class _Stderr(logging.StreamHandler):
    """A StreamHandler on whatever `sys.stderr` is when a record is written."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the property is what counts
        pass


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """-v: DEBUG from every logger (the handler on the root logger); -q: WARNING and up from ragloop;
    otherwise INFO and up from ragloop. Calling it again replaces what an earlier call set up."""
    ours, root = logging.getLogger("ragloop"), logging.getLogger()
    for logger in (ours, root):
        for handler in [h for h in logger.handlers if isinstance(h, _Stderr)]:
            logger.removeHandler(handler)
    ours.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    if verbose:
        root.addHandler(_Stderr())
        root.setLevel(logging.DEBUG)
    else:
        ours.addHandler(_Stderr())


def quiet_libraries(verbose: bool = False) -> None:
    """Library chatter a user does not need: transformers' info and warnings, hub retry warnings, bm25s'
    debug lines; with `verbose`, only the tokenizers' fork warning. Without importing them (a BM25 search
    never loads transformers): their verbosity variables are read when they are first imported; a library
    already imported is told directly."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verbose:  # their own levels, shown through the root logger's handler (an earlier call's undone)
        for name in THIRD_PARTY:
            logging.getLogger(name).setLevel(logging.NOTSET)
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    if "transformers" in sys.modules:  # main() called in a process that has loaded it already
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.ERROR)
