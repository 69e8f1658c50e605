"""The SQuAD v1.1 and v2.0 samples shipped inside the package (CC BY-SA 4.0, see _bundled/README.md), named
`bundled:NAME` wherever ragloop reads a data file: the command line, recipes, `load_qa`, `load_corpus`.

    >>> resolve_bundled("bundled:squad-v1.1-dev.articles-00-31.json")   # the file inside the package
    PosixPath('.../ragloop/_bundled/squad-v1.1-dev.articles-00-31.json')
    >>> resolve_bundled("docs/faq.jsonl")                                # any other name: None
    >>> bundled_path("../model.py")                                      # a RagloopError: a file name only

A name is a file name in the bundled folder and nothing else: no folders, no `..` (which would reach
any file of the installed package, or beyond it).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ragloop.errors import RagloopError

BUNDLED = "bundled:"
SQUAD_DEV = "squad-v1.1-dev.articles-00-31.json"
SQUAD_TRAIN = "squad-v1.1-train.first12articles.json"
SQUAD_V2_TRAIN = "squad-v2.0-train.subset10articles.json"  # 731 answerable questions not in SQUAD_TRAIN
SQUAD_TRAIN_FILES = (SQUAD_TRAIN, SQUAD_V2_TRAIN)  # every bundled training question (`ragloop train-reranker`)


def bundled_folder() -> Path:
    return Path(str(resources.files("ragloop") / "_bundled"))


def bundled_names() -> list[str]:
    """The data files shipped in the package, by name (its README is about them, not one of them)."""
    return sorted(p.name for p in bundled_folder().iterdir() if p.is_file() and p.name != "README.md")


def bundled_path(name: str) -> Path:
    """The bundled file `name` (a file name alone), or one RagloopError naming the bundled files."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or Path(name).name != name:
        raise RagloopError(f"{BUNDLED}{name}: a bundled file is named by its file name alone (no folders, "
                           f"no '..'); the bundled files are {', '.join(bundled_names())}")
    path = bundled_folder() / name
    if not path.is_file() or name not in bundled_names():
        raise RagloopError(f"no such file {BUNDLED + name!r}; the bundled files are {', '.join(bundled_names())}")
    return path


def is_bundled(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(BUNDLED)


def resolve_bundled(spec) -> Path | None:
    """The file a `bundled:NAME` spec names (checked by `bundled_path`); None for anything else."""
    return bundled_path(spec[len(BUNDLED):]) if is_bundled(spec) else None
