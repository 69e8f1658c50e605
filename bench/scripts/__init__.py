"""Scripts beside the suite; they measure nothing. `python -m bench.scripts.make_corpus --out DIR` makes the
>= 100k-passage corpus the compress and stream sections read; `python -m bench.scripts.project` projects DPR's
21M-passage Wikipedia from a full run's search.json and stream.json."""
