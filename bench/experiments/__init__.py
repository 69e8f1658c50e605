"""Experiments: runs that train models and score them, each pinned to a recipe and its expected figures.

    python -m bench.experiments --check                # re-check the stored results (seconds, no training)
    python -m bench.experiments --only readers         # train and score one experiment, then check it

Each experiment is two files, in the spirit of pyserini's 2CR (`2cr/*.yaml` + `2cr/msmarco.py`):

- `recipes/<recipe>.json`: what it trains with, in the format `ragloop.recipes.load_recipe` reads
  (the same file `ragloop demo --recipe FILE` takes);
- `expected/<name>.json`: what it varies (`settings`, read by its module `bench/experiments/<name>.py`),
  where its results go, and the figures it must reproduce, each with a named tolerance.

`spec` reads the second file, `check` compares a results file with it, `__main__` is the command.
"""
