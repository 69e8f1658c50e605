"""What a built ragloop wheel and sdist must hold; prints each missing file and exits 1 if any.

    python .ci/dist_contents.py dist/ragloop-0.1.0-py3-none-any.whl [dist/ragloop-0.1.0.tar.gz]

The wheel: the MIT LICENSE and the NOTICE for the CC BY-SA 4.0 SQuAD samples (in .dist-info/licenses),
py.typed, the top-level rag_system.py, the bundled data with its README, the recipes and the page the
server serves; its metadata: the SPDX licence and the version of src/ragloop/_version.py. The sdist:
what building the wheel from it needs, and the licence files.
"""

from __future__ import annotations

import re
import sys
import tarfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEEL_FILES = [
    "rag_system.py",
    "ragloop/py.typed",
    "ragloop/_bundled/README.md",
    "ragloop/_bundled/squad-v1.1-dev.articles-00-31.json",
    "ragloop/_bundled/squad-v1.1-train.first12articles.json",
    "ragloop/recipes/demo.json",
    "ragloop/serving/index.html",
]
LICENSE_FILES = ["LICENSE", "NOTICE"]
SDIST_FILES = ["pyproject.toml", "README.md", "rag_system.py", "src/ragloop/_version.py",
               *LICENSE_FILES, *(f"src/{name}" for name in WHEEL_FILES if name.startswith("ragloop/"))]


def version() -> str:
    return re.search(r'__version__ = "([^"]+)"', (REPO / "src/ragloop/_version.py").read_text()).group(1)


def wheel_problems(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as whl:
        names = set(whl.namelist())
        info = f"ragloop-{version()}.dist-info"
        wanted = [*WHEEL_FILES, *(f"{info}/licenses/{n}" for n in LICENSE_FILES)]
        problems = [f"{path.name}: no {n}" for n in wanted if n not in names]
        if f"{info}/METADATA" not in names:
            return [*problems, f"{path.name}: no {info}/METADATA (is the version {version()}?)"]
        meta = HeaderParser().parsestr(whl.read(f"{info}/METADATA").decode())
    if meta["License-Expression"] != "MIT":
        problems.append(f"{path.name}: License-Expression is {meta['License-Expression']!r}, not 'MIT'")
    if meta["Version"] != version():
        problems.append(f"{path.name}: Version is {meta['Version']!r}, not {version()!r} (src/ragloop/_version.py)")
    return problems


def sdist_problems(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    return [f"{path.name}: no {n}" for n in SDIST_FILES if n not in names]


def main(paths: list[str]) -> int:
    problems = []
    for p in map(Path, paths):
        problems += wheel_problems(p) if p.suffix == ".whl" else sdist_problems(p)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"dist contents: ok ({', '.join(Path(p).name for p in paths)})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
