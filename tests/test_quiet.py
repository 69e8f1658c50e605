"""What ragloop keeps quiet: a library's logger level survives importing it."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import ragloop
from ragloop.quiet import keep_log_level


def test_keep_log_level_restores_what_the_block_changed():
    logger = logging.getLogger("ragloop-test-library")
    logger.setLevel(logging.WARNING)
    with keep_log_level("ragloop-test-library"):
        logger.setLevel(logging.DEBUG)  # what bm25s does to its own logger when imported
    assert logger.level == logging.WARNING


def test_importing_bm25s_through_ragloop_keeps_the_level_set_before():
    code = ("import logging\nlogging.getLogger('bm25s').setLevel(logging.ERROR)\n"
            "import ragloop.retrieval.bm25\nprint(logging.getLogger('bm25s').level)")
    src = str(Path(ragloop.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(logging.ERROR)]  # bm25s alone would have set DEBUG (10)
