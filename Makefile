# Two entry points, each installing first: `make demo` (the main job) and `make test` (the suite);
# `make wheel-check` builds the package and tries it as a user would (CI runs it after the tests).
PYTHON ?= python3
# torch: a torch you already have is kept (CUDA or not). Without one, this installs TORCH; on the
# ragloop dev/CI machines torch==2.13.0 is a local CPU wheel, while a bare `torch` would pull a
# multi-GB CUDA build. Elsewhere: `make install TORCH=torch` (or install your torch first).
TORCH ?= torch==2.13.0

.PHONY: install demo test lint wheel-check
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH)"
	$(PYTHON) -m pip install -q -e ".[test]"

demo: install
	$(PYTHON) -m ragloop demo

test: install
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -c 'import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())'  # the layer contract and no import cycles ([tool.importlinter] in pyproject.toml)

# The sdist and the wheel built, their contents checked, the wheel installed into a fresh venv outside
# the checkout, and its `ragloop` command run on the bundled data (.ci/wheel-check; about 2 minutes).
wheel-check: install
	bash .ci/wheel-check $(PYTHON)
