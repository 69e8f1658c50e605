"""The side-by-side benchmark suite behind `python -m bench`: one module per section, shared
measurement helpers in `common` (also used by bench/bench_retrieval.py)."""
