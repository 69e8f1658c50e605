"""Recipes as data: a JSON file pins what a run trains and scores (models, k, reader mode, learning
rates, batch, a fixed step count, precision, the data and its held-out split), so its numbers are the
same on any machine. `ragloop demo --recipe FILE` reads one; the pinned demo recipe ships with the
package (`recipes/demo.json`), and `ragloop.recipes.demo` is the pipeline that runs it.

    >>> from ragloop.recipes import load_recipe
    >>> recipe = load_recipe()                      # the pinned demo recipe
    >>> recipe.steps, recipe.train["n_docs"]
    (300, 2)
    >>> cfg = recipe.train_config(train_file="train.jsonl", output_dir="runs/rag")   # a TrainConfig
    >>> token = recipe.with_train(rag_mode="token", n_docs=5)   # the same recipe, other settings

A file's sections:

    description, notes     text for people (a string; a list of strings)
    data                   train, dev: QA files, `bundled:NAME` (the package's SQuAD samples) or a path
                           relative to the recipe file; holdout_every: every N-th question of each
                           training article is held out (not trained on, scored)
    train                  TrainConfig fields (`ragloop train --help`), max_steps required; the pipeline
                           sets the data, index and output fields itself
    evaluate               questions (per scored set), retrieval_questions, retrieval_k, sample_answers

An unknown key, a value of the wrong type or a missing file is one RagloopError naming the file and
the key. The train section is checked by TrainConfig itself (`ragloop.checks`), as the command line
and the Python API are: a bad value gets the same words from all three. Loading needs no torch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ragloop import checks
from ragloop.checks import ConfigError
from ragloop.config import TrainConfig, flat_fields
from ragloop.errors import RagloopError

DEMO_RECIPE = "demo.json"
# TrainConfig fields a recipe leaves to the pipeline that runs it: where the data, index and outputs
# are, and no time budget (a recipe trains a fixed number of steps)
PIPELINE_FIELDS = frozenset({"dataset_name", "train_file", "validation_file", "max_train_examples",
                             "max_eval_examples", "index", "output_dir", "eval_steps", "resume",
                             "max_train_minutes"})
REQUIRED_TRAIN = ("max_steps",)


def pinned_recipe(name: str = DEMO_RECIPE) -> Path:
    """A recipe file shipped with the package."""
    return Path(str(resources.files("ragloop") / "recipes" / name))


@dataclass(frozen=True)
class Recipe:
    path: Path  # the file it was read from
    train_data: Path
    dev_data: Path
    holdout_every: int
    train: dict[str, Any]  # TrainConfig fields, validated
    questions: int
    retrieval_questions: int
    retrieval_k: tuple[int, ...]
    sample_answers: int
    description: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def steps(self) -> int:
        """The fixed number of optimizer steps the recipe trains."""
        return self.train["max_steps"]

    def train_config(self, **pipeline: Any):
        """The TrainConfig this recipe trains with, given the pipeline's own fields (train_file, index,
        output_dir, ...)."""
        return _train_config({**self.train, **pipeline}, self.path)

    def with_train(self, **changes: Any) -> Recipe:
        """The same recipe with some train fields changed (checked as a file's would be)."""
        train = {**self.train, **changes}
        _check_train(train, self.path)
        return dataclasses.replace(self, train=train)


def load_recipe(path: str | Path | None = None) -> Recipe:
    """Read and check a recipe file (default: the pinned demo recipe)."""
    path = Path(path) if path is not None else pinned_recipe()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RagloopError(f"{path}: no such recipe file") from None
    except IsADirectoryError:
        raise RagloopError(f"{path}: a folder, not a recipe file") from None
    except UnicodeDecodeError:
        raise RagloopError(f"{path}: not a UTF-8 text file") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise RagloopError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    _expect(raw, dict, path, "the file", "an object")
    _known(raw, ("description", "notes", "data", "train", "evaluate"), path, "")
    for section in ("data", "train", "evaluate"):
        if section not in raw:
            raise RagloopError(f"{path}: missing section '{section}'")
        _expect(raw[section], dict, path, section, "an object")
    description = raw.get("description", "")
    _expect(description, str, path, "description", "a string")
    notes = raw.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise RagloopError(f"{path}: notes: expected a list of strings")

    data = raw["data"]
    _known(data, ("train", "dev", "holdout_every"), path, "data.")
    train_data, dev_data = (_data_file(_get(data, key, checks.text, path, "data."), path, f"data.{key}")
                            for key in ("train", "dev"))
    holdout_every = _get(data, "holdout_every", checks.whole, path, "data.", low=2)

    ev = raw["evaluate"]
    _known(ev, ("questions", "retrieval_questions", "retrieval_k", "sample_answers"), path, "evaluate.")
    questions = _get(ev, "questions", checks.whole, path, "evaluate.", low=1)
    retrieval_questions = _get(ev, "retrieval_questions", checks.whole, path, "evaluate.", low=1)
    ks = _get(ev, "retrieval_k", _depths, path, "evaluate.")
    samples = _get(ev, "sample_answers", checks.whole, path, "evaluate.", low=0)

    train = dict(raw["train"])
    _check_train(train, path)
    return Recipe(path=path, train_data=train_data, dev_data=dev_data, holdout_every=holdout_every, train=train,
                  questions=questions, retrieval_questions=retrieval_questions, retrieval_k=tuple(ks),
                  sample_answers=samples, description=description, notes=tuple(notes))


def _check_train(train: dict, path: Path) -> None:
    """The train section: TrainConfig's own settings (by flag name), max_steps given, each value checked
    by TrainConfig."""
    allowed = sorted(name for name, _, _ in flat_fields(TrainConfig) if name not in PIPELINE_FIELDS)
    for key in train:
        if key in PIPELINE_FIELDS:
            raise RagloopError(f"{path}: train.{key}: set by the pipeline that runs the recipe, not by the recipe"
                               + ("; a recipe trains a fixed number of steps (max_steps)"
                                  if key == "max_train_minutes" else ""))
        if key not in allowed:
            raise RagloopError(f"{path}: unknown key 'train.{key}' (known: {', '.join(allowed)})")
    for key in REQUIRED_TRAIN:
        if train.get(key) is None:
            raise RagloopError(f"{path}: train.{key} is required (a recipe trains a fixed number of steps)")
    _train_config(train, path)


def _train_config(values: dict, path: Path) -> TrainConfig:
    """TrainConfig's own checks, said in the file's terms: a value it cannot take at all names its key
    (`train.n_docs: expected a whole number`), any other problem is TrainConfig's message."""
    try:
        return TrainConfig.from_dict(values)
    except ConfigError as e:
        if e.kind == "type":
            raise RagloopError(f"{path}: train.{e.name.lstrip('-')}: {e.problem}") from None
        raise RagloopError(f"{path}: train: {e}") from None
    except RagloopError as e:
        raise RagloopError(f"{path}: train: {e}") from None


def _depths(value: Any, name: str) -> list[int]:
    try:
        if not isinstance(value, list) or not value:
            raise ConfigError(name, "", "type")
        return [checks.whole(k, name, low=1) for k in value]
    except ConfigError:
        raise ConfigError(name, f"expected a list of whole numbers >= 1 (got {checks.shown(value)})", "type") from None


def _expect(value: Any, kind: type, path: Path, key: str, words: str) -> None:
    if not isinstance(value, kind):
        raise RagloopError(f"{path}: {key}: expected {words}, got {json.dumps(value)[:80]}")


def _known(section: dict, keys: tuple[str, ...], path: Path, prefix: str) -> None:
    for key in section:
        if key not in keys:
            raise RagloopError(f"{path}: unknown key '{prefix}{key}' (known: {', '.join(keys)})")


def _get(section: dict, key: str, check: Callable, path: Path, prefix: str, **bounds: int) -> Any:
    """section[key] through one of `ragloop.checks`, an error naming the file and the key."""
    if key not in section:
        raise RagloopError(f"{path}: missing key '{prefix}{key}'")
    try:
        return check(section[key], key, **bounds)
    except ConfigError as e:
        raise RagloopError(f"{path}: {prefix}{key}: {e.problem}") from None


def _data_file(spec: str, path: Path, key: str) -> Path:
    """`bundled:NAME` (the package's data) or a path, relative to the recipe file's folder; it must exist."""
    from ragloop.data.bundled import resolve_bundled

    try:
        found = resolve_bundled(spec)
    except RagloopError as e:  # a name with folders or '..', or not shipped
        raise RagloopError(f"{path}: {key}: {e}") from None
    if found is None:
        found = Path(spec).expanduser()
        found = found if found.is_absolute() else path.parent / found
    if not found.exists():
        raise RagloopError(f"{path}: {key}: no such file {spec!r}" + (f" ({found})" if str(found) != spec else ""))
    return found
