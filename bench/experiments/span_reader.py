"""Experiment "span-reader": the demo's span reader (its pinned recipe, recipes/span_reader.json) with
the question encoder frozen and trained, side by side: does training the question encoder through
p(z|x) help? Scored like the readers experiment (this module runs it through `readers.run`).

    python -m bench.experiments --only span-reader
"""

from __future__ import annotations

from bench.experiments.readers import run

__all__ = ["run"]
