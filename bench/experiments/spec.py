"""An experiment as data: its recipe, its settings, its results file and its expected figures.

    >>> from bench.experiments.spec import load_experiments
    >>> exps = load_experiments()                     # every expected/*.json, by name
    >>> exp = exps["readers"]
    >>> exp.recipe().steps, exp.results_path().name   # a ragloop Recipe; bench/results/readers.json
    (100, 'readers.json')
    >>> exp.figures[0].tolerance, exp.tolerances["f1"].abs
    ('f1', 0.03)

An expected file:

    {"experiment": "readers", "question": "...", "recipe": "readers.json" (under recipes/),
     "results": "bench/results/readers.json" (from the repository root), "command": "...",
     "settings": {...} (free-form: read by the experiment's module),
     "tolerances": {"f1": {"abs": 0.03, "rel": 0.0, "why": "..."}},
     "figures": [{"figure": "fid, trained: held-out RAG F1",
                  "at": ["runs", {"mode": "fid", "question_encoder": "trained"}, "scores", "held-out", "rag", "f1"],
                  "expected": 0.0935, "tolerance": "f1"}],
     "not_pinned": "what the results file holds no figure for, or what is left out on purpose"}

`at` walks the results JSON: a string is a key, a number a list position, an object picks the one list
element whose fields equal it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXPERIMENTS_DIR = Path(__file__).resolve().parent
ROOT = EXPERIMENTS_DIR.parents[1]


class SpecError(ValueError):
    """An expected file that cannot be read as an experiment (says which file and which key)."""


@dataclass(frozen=True)
class Tolerance:
    abs: float = 0.0  # allowed |got - expected|
    rel: float = 0.0  # plus this fraction of |expected|
    why: str = ""

    def bound(self, expected: float) -> float:
        return self.abs + self.rel * abs(expected)

    def describe(self) -> str:
        parts = ([f"±{self.abs:g}"] if self.abs else []) + ([f"±{self.rel:.0%}"] if self.rel else [])
        return " + ".join(parts) or "exact"


@dataclass(frozen=True)
class Figure:
    figure: str  # what it is, for people
    at: tuple  # where it is in the results file
    expected: float
    tolerance: str  # a name in the experiment's tolerances


@dataclass(frozen=True)
class Experiment:
    name: str
    path: Path  # the expected file
    question: str
    recipe_file: str
    results: str
    command: str
    settings: dict[str, Any]
    tolerances: dict[str, Tolerance]
    figures: tuple[Figure, ...]
    not_pinned: str = ""
    module: str = field(default="")  # bench.experiments.<name>, which runs it

    def recipe(self):
        """The experiment's ragloop Recipe (checked by `ragloop.recipes.load_recipe`)."""
        from ragloop.recipes import load_recipe

        return load_recipe(EXPERIMENTS_DIR / "recipes" / self.recipe_file)

    def results_path(self, results_dir: Path | None = None) -> Path:
        """Where its results file is: as the expected file says, or its name under `results_dir`."""
        return Path(results_dir) / Path(self.results).name if results_dir else ROOT / self.results


def _need(raw: dict, key: str, kind: type, path: Path, where: str = "") -> Any:
    if key not in raw:
        raise SpecError(f"{path}: missing key '{where}{key}'")
    if not isinstance(raw[key], kind) or isinstance(raw[key], bool) and kind is not bool:
        wanted = getattr(kind, "__name__", "a number")
        raise SpecError(f"{path}: {where}{key}: expected {wanted}, got {json.dumps(raw[key])[:60]}")
    return raw[key]


def _figure(raw: dict, i: int, tolerances: dict[str, Tolerance], path: Path) -> Figure:
    where = f"figures[{i}]."
    fig = Figure(_need(raw, "figure", str, path, where), tuple(_need(raw, "at", list, path, where)),
                 float(_need(raw, "expected", (int, float), path, where)), _need(raw, "tolerance", str, path, where))
    if fig.tolerance not in tolerances:
        raise SpecError(f"{path}: {where}tolerance: {fig.tolerance!r} is not one of {', '.join(tolerances)}")
    return fig


def load_experiment(path: str | Path) -> Experiment:
    """Read and check one expected file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SpecError(f"{path}: not readable as JSON ({e})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected an object")
    tolerances = {}
    for name, t in _need(raw, "tolerances", dict, path).items():
        if not isinstance(t, dict) or set(t) - {"abs", "rel", "why"}:
            raise SpecError(f"{path}: tolerances.{name}: expected {{abs, rel, why}}")
        tolerances[name] = Tolerance(float(t.get("abs", 0.0)), float(t.get("rel", 0.0)), str(t.get("why", "")))
    name = _need(raw, "experiment", str, path)
    figures = tuple(_figure(f, i, tolerances, path) for i, f in enumerate(_need(raw, "figures", list, path)))
    return Experiment(name=name, path=path, question=_need(raw, "question", str, path),
                      recipe_file=_need(raw, "recipe", str, path), results=_need(raw, "results", str, path),
                      command=_need(raw, "command", str, path), settings=raw.get("settings", {}),
                      tolerances=tolerances, figures=figures, not_pinned=raw.get("not_pinned", ""),
                      module=f"bench.experiments.{name.replace('-', '_')}")


def load_experiments(folder: str | Path | None = None) -> dict[str, Experiment]:
    """Every `*.json` in `folder` (default bench/experiments/expected/), by experiment name."""
    folder = Path(folder) if folder else EXPERIMENTS_DIR / "expected"
    exps = [load_experiment(p) for p in sorted(folder.glob("*.json"))]
    return {e.name: e for e in exps}
