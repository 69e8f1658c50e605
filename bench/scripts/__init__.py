"""Data preparation for the benchmarks: `python -m bench.scripts.make_corpus --out DIR` (the >= 100k-passage
corpus the compress and stream sections read). Scripts here make data; they measure nothing."""
