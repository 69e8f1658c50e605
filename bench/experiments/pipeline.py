"""What the experiments' modules share: the demo pipeline's data, files and index for a recipe, a work
folder, and results written atomically (so an interrupted run keeps what it measured).

    >>> from bench.experiments.pipeline import prepare, write_results
    >>> prep = prepare(exp.recipe(), work, index=exp.settings.get("index"))   # data, files, index_dir
    >>> write_results(results_path, {"runs": [...]})
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Prepared:
    data: object  # ragloop.recipes.demo.DemoData
    files: object  # ragloop.recipes.demo.DataFiles
    index_dir: Path


def prepare(recipe, work: Path, index: str | Path | None = None) -> Prepared:
    """The recipe's split written under work/data, and its index (`index` if given and built, else
    built under work/index)."""
    from ragloop.cli import quiet_libraries
    from ragloop.recipes import demo

    quiet_libraries()
    data = demo.load_data(recipe)
    files = demo.write_data(data, Path(work) / "data")
    index_dir = demo.ensure_index(recipe, data, index or Path(work) / "index", progress=False)
    return Prepared(data, files, Path(index_dir))


@contextlib.contextmanager
def work_dir(path: str | Path | None, prefix: str) -> Iterator[Path]:
    """`path` (kept), or a temporary folder removed at the end."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    tmp = Path(tempfile.mkdtemp(prefix=f"ragloop-{prefix}-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stamp(exp) -> dict:
    """What every results file starts with: date, commit, machine, the experiment and its recipe."""
    from bench.suite.common import machine_info, source_version

    return {"date": dt.date.today().isoformat(), "commit": source_version(), "machine": machine_info(),
            "experiment": exp.name, "recipe": str(exp.recipe().path)}


def write_results(path: str | Path, result: dict) -> None:
    from ragloop.io import atomic_write_bytes

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(path), (json.dumps(result, indent=2) + "\n").encode())
