"""The SQuAD v1.1 samples shipped inside the package (CC BY-SA 4.0, see _bundled/README.md)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SQUAD_DEV = "squad-v1.1-dev.articles-00-31.json"
SQUAD_TRAIN = "squad-v1.1-train.first12articles.json"


def bundled_path(name: str) -> Path:
    return Path(str(resources.files("ragloop") / "_bundled" / name))
